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
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from graph.annotate import BarcodeConfig, CellTypeConfig
from graph.synapses import SynapseConfig
from pipeline.config import ComputeConfig, StrictModel, load_yaml, validate_config
from sample_data import SampleConfig
from segment.config import SegmentConfig
from segment.puncta import PunctaConfig

__all__ = ["SampleInput", "IngestInput", "InputConfig", "WorkflowConfig", "load_workflow"]


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
