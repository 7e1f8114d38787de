"""Write (and read back) a sample directory.

Layout (see docs/contracts.md)::

    SAMPLE/
      volume.zarr              OME-Zarr 0.5 image, axes c,z,y,x, uint16
      volume.zarr/labels/truth ground-truth neuron labels, uint64
      truth/neurons.parquet
      truth/synapses.parquet
      truth/meta.json          written last: its presence marks a complete sample

Everything is written into a temporary directory next to the target, which
is renamed onto the target only when complete, so a crash never leaves a
half-written sample under the requested name.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.volume import Volume

from .config import SampleConfig
from .generate import Sample, generate_sample

__all__ = ["is_complete", "load_sample", "save_sample", "write_sample"]

log = logging.getLogger(__name__)

VOLUME_NAME = "volume.zarr"
TRUTH_LABELS = "truth"
TRUTH_DIR = "truth"
RAW_DIR = "raw"
META_NAME = "meta.json"


def is_complete(sample_dir) -> bool:
    """True when ``sample_dir`` holds a completely written sample (``truth/meta.json``)."""
    return (Path(sample_dir) / TRUTH_DIR / META_NAME).is_file()


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not overwrite:
        state = "a complete sample" if is_complete(out_dir) else "something that is not a complete sample"
        raise FileExistsError(f"{out_dir} already exists ({state}); pass overwrite=True to replace it")
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")


def _write_raw(directory: Path, sample: Sample) -> Path:
    """Write the image as a microscope would: one multi-page TIFF per channel + CHANNELS.yaml."""
    import tifffile
    import yaml

    meta = sample.meta
    raw = directory / RAW_DIR
    raw.mkdir()
    entries = []
    for index, spec in enumerate(meta["channels"]):
        name = f"{index:02d}_{spec['name']}.tif"
        tifffile.imwrite(raw / name, sample.image[index], photometric="minisblack")
        entries.append({"name": spec["name"], "role": spec["role"], "source": name,
                        "color": spec["color"], "window": [float(w) for w in spec["window"]]})
    channel_spec = {"voxel_size": [float(v) for v in meta["voxel_size"]], "unit": "micrometer",
                    "channels": entries}
    spec_path = raw / "channels.yaml"
    spec_path.write_text(yaml.safe_dump(channel_spec, sort_keys=False))
    return spec_path


def _write_into(directory: Path, sample: Sample) -> None:
    """Write raw TIFFs, ingest them into ``volume.zarr`` (the path users' data takes), add the truth."""
    from ingest import ingest

    meta = sample.meta
    config = meta["config"]
    shape = tuple(sample.truth_labels.shape)
    chunks = tuple(min(int(c), s) for c, s in zip(config["chunks_zyx"], shape))
    spec_path = _write_raw(directory, sample)
    vol = ingest([], directory / VOLUME_NAME, spec_path, chunks=chunks, progress=False)
    labels = vol.create_labels(TRUTH_LABELS, dtype="uint64")
    labels[...] = sample.truth_labels
    truth = directory / TRUTH_DIR
    truth.mkdir()
    sample.neurons.to_parquet(truth / "neurons.parquet", index=False)
    sample.synapses.to_parquet(truth / "synapses.parquet", index=False)
    # the completion marker goes last
    (truth / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def save_sample(sample: Sample, out_dir, *, overwrite: bool = False) -> Path:
    """Write an already generated ``sample`` to ``out_dir`` (atomically).

    Parameters
    ----------
    sample : Sample
    out_dir : str or PathLike
    overwrite : bool
        Replace an existing ``out_dir``.

    Returns
    -------
    pathlib.Path
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    _check_target(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        _write_into(tmp, sample)
        _check_target(out_dir, overwrite)
        if out_dir.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, trash / out_dir.name)
            os.replace(tmp, out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote sample to %s", out_dir)
    return out_dir


def write_sample(out_dir, config: SampleConfig | None = None, *, overwrite: bool = False) -> Path:
    """Generate a sample with ``config`` and write it to ``out_dir``.

    Parameters
    ----------
    out_dir : str or PathLike
        Target directory; must not exist unless ``overwrite``.
    config : SampleConfig, optional
        Defaults to ``SampleConfig()``.
    overwrite : bool
        Replace an existing ``out_dir``.

    Returns
    -------
    pathlib.Path
        ``out_dir``, complete (``truth/meta.json`` present).

    Raises
    ------
    FileExistsError
        If ``out_dir`` exists and ``overwrite`` is false.
    """
    out_dir = Path(out_dir)
    _check_target(out_dir, overwrite)          # fail before the expensive part
    return save_sample(generate_sample(config or SampleConfig()), out_dir, overwrite=overwrite)


def load_sample(sample_dir) -> Sample:
    """Read a written sample back into memory (image, truth labels, tables, meta).

    Raises
    ------
    FileNotFoundError
        If ``sample_dir`` is not a complete sample.
    """
    sample_dir = Path(sample_dir)
    if not is_complete(sample_dir):
        raise FileNotFoundError(f"{sample_dir}: not a complete sample (no {TRUTH_DIR}/{META_NAME})")
    meta = json.loads((sample_dir / TRUTH_DIR / META_NAME).read_text())
    vol = Volume.open(sample_dir / VOLUME_NAME, mode="r")
    image = np.asarray(vol.image[...])
    labels = np.asarray(vol.labels(TRUTH_LABELS)[...])
    return Sample(
        image=image,
        channels=[(c.name, c.role) for c in vol.channels],
        truth_labels=labels,
        neurons=pd.read_parquet(sample_dir / TRUTH_DIR / "neurons.parquet"),
        synapses=pd.read_parquet(sample_dir / TRUTH_DIR / "synapses.parquet"),
        meta=meta,
    )
