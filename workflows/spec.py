"""Workflow specs: one YAML file describes a whole run, validated into typed config.

Example (``workflows/sample.yaml``)::

    name: sample
    input:
      sample: {path: sample_data/sample}    # or: volume: path/to/volume.zarr
                                            # or: ingest: {channels: raw/CHANNELS.yaml, out: data/volume.zarr}
      truth: sample_data/sample              # optional: evaluate at the end
    output: runs/sample
    compute: {scheduler: local, block_shape: [48, 128, 128]}
    cell_types:
      rules:
        - {type: pv, require: {vgat: high, pv: high}}

Relative paths are relative to the directory the command runs in. Every
section is optional except ``input``; unknown keys are errors naming their
key path.

Where a workflow may write (:func:`check_write_paths`, run before any block):

- ``output``, the run directory, is the user's choice and may be anywhere;
- everything else the run writes has a fixed name inside it
  (:data:`RUN_ENTRIES`) and must stay there: a symbolic link that leads out of
  the run directory is refused;
- ``input.ingest.out`` and ``input.sample.path`` are folders the input step
  *creates*; they may lie outside the run directory (a volume is shared by
  many runs), but there a workflow only ever creates: ``input.ingest.overwrite:
  true`` (which deletes what is at ``out``) is refused unless ``out`` resolves
  inside the run directory, and a sample is only generated where nothing (or
  an empty folder) is. Neither may be the run directory, contain it, or take
  one of its entries' names.

Paths are compared after ``..``, symbolic links and absolute paths are
resolved. Read-only inputs (``input.volume``, ``input.truth``, the ingest
sources and channel spec) may be anywhere.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from graph.annotate import BarcodeConfig, CellTypeConfig
from graph.synapses import SynapseConfig
from pipeline.config import ComputeConfig, StrictModel, load_yaml, validate_config
from pipeline.errors import ConfigError
from sample_data import SampleConfig
from segment.config import SegmentConfig
from segment.puncta import PunctaConfig

__all__ = ["RUN_ENTRIES", "SampleInput", "IngestInput", "InputConfig", "WorkflowConfig", "check_write_paths",
           "load_workflow"]


class SampleInput(StrictModel):
    """Use the bundled synthetic sample; it is generated at ``path`` if absent."""

    path: Path = Path("sample_data/sample")
    config: SampleConfig = Field(default_factory=SampleConfig)


class IngestInput(StrictModel):
    """Ingest microscope files first (``connectome ingest`` as a workflow step).

    ``channels`` is a CHANNELS.yaml (see :mod:`ingest.spec`); ``sources`` may
    be left empty when the spec lists them. An ingest that already finished
    with the same sources and options is not repeated; an interrupted one resumes.
    """

    channels: Path
    out: Path
    sources: list[str] = Field(default_factory=list)
    overwrite: bool = False


class InputConfig(StrictModel):
    """Where the image comes from: exactly one of ``volume``, ``ingest`` or ``sample``."""

    volume: Path | None = None
    ingest: IngestInput | None = None
    sample: SampleInput | None = None
    truth: Path | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self):
        given = [s for s in (self.volume, self.ingest, self.sample) if s is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'volume' (an OME-Zarr path), 'ingest' or 'sample'")
        return self

    @property
    def volume_path(self) -> Path:
        if self.volume is not None:
            return self.volume
        if self.ingest is not None:
            return self.ingest.out
        return self.sample.path / "volume.zarr"


class WorkflowConfig(StrictModel):
    """A whole run: input, output, compute settings and every stage's parameters."""

    name: str = "run"
    input: InputConfig
    output: Path = Path("runs/run")
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    puncta: PunctaConfig = Field(default_factory=PunctaConfig)
    synapses: SynapseConfig = Field(default_factory=SynapseConfig)
    barcodes: BarcodeConfig = Field(default_factory=BarcodeConfig)
    cell_types: CellTypeConfig = Field(default_factory=CellTypeConfig)


def load_workflow(path) -> WorkflowConfig:
    """Read and validate a workflow YAML file (``yaml.safe_load`` only)."""
    return validate_config(WorkflowConfig, load_yaml(path), source=str(path))


#: What a run writes inside its run directory, under these fixed names only.
RUN_ENTRIES = ("run.json", "run.lock", "work", "labels.zarr", "neurons.parquet", "synapses.parquet",
               "edges.parquet", "report.html")

#: A generated sample is complete once this file exists (``sample_data`` writes it last).
_SAMPLE_MARKER = Path("truth") / "meta.json"


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _escaping_links(run_dir: Path, resolved_run: Path) -> list[tuple[Path, Path]]:
    """Symbolic links among the run's own entries (and one level below) that lead outside it."""
    found = []
    for name in RUN_ENTRIES:
        entry = run_dir / name
        candidates = [entry]
        if entry.is_dir() and not entry.is_symlink():
            candidates += sorted(entry.iterdir())
        for path in candidates:
            if path.is_symlink():
                target = path.resolve()
                if not _inside(target, resolved_run):
                    found.append((path, target))
    return found


def _check_created_folder(key: str, raw: Path, run_dir: Path, resolved_run: Path) -> Path:
    """An input step's output folder: not the run directory, not around it, not one of its entries."""
    path = raw.resolve()
    if _inside(resolved_run, path):
        what = "is" if path == resolved_run else "contains"
        raise ConfigError(f"{key}: {str(raw)!r} ({path}) {what} the run directory {run_dir}; "
                          "choose a folder beside or inside it")
    if _inside(path, resolved_run):
        first = path.relative_to(resolved_run).parts[0]
        if first in RUN_ENTRIES:
            raise ConfigError(f"{key}: {str(raw)!r} ({path}) would write into the run's own {first!r}; "
                              f"choose another name inside {run_dir}")
    return path


def check_write_paths(config: WorkflowConfig) -> None:
    """Refuse a workflow that would write outside its run directory or replace what it did not make.

    Called by :func:`workflows.run.run_workflow` before anything is created;
    the rules are in the module docstring.

    Raises
    ------
    ConfigError
        Naming the key path (``input.ingest.out``, ``output``, ...) and the offending path.
    """
    run_dir = Path(config.output)
    resolved_run = run_dir.resolve()
    for link, target in _escaping_links(run_dir, resolved_run):
        raise ConfigError(f"output: {link} is a symbolic link to {target}, outside the run directory "
                          f"{run_dir}; a run writes only inside its run directory (remove the link)")
    step = config.input.ingest
    if step is not None:
        out = _check_created_folder("input.ingest.out", step.out, run_dir, resolved_run)
        if step.overwrite and not _inside(out, resolved_run):
            raise ConfigError(f"input.ingest.out: {str(step.out)!r} resolves to {out}, outside the run directory "
                              f"{run_dir}; 'input.ingest.overwrite: true' may only replace a volume inside the "
                              "run directory (delete the old volume yourself, or drop 'overwrite')")
    sample = config.input.sample
    if sample is not None:
        path = _check_created_folder("input.sample.path", sample.path, run_dir, resolved_run)
        generated = (path / _SAMPLE_MARKER).is_file()
        if path.exists() and not generated and not (path.is_dir() and not any(path.iterdir())):
            raise ConfigError(f"input.sample.path: {str(sample.path)!r} ({path}) exists and is not a generated "
                              "sample (no truth/meta.json); the sample is only generated where nothing is "
                              "(choose another path, or delete it yourself)")
