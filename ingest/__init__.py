"""Ingest: any microscopy source with many molecular channels -> a validated OME-Zarr 0.5 volume.

Python::

    from ingest import ingest
    volume = ingest(["stack.ome.tif", "prism.zarr"], "volume.zarr", "CHANNELS.yaml",
                    expansion_factor=4.0, levels=4)

Command line (registered by ``workflows.cli`` through :func:`ingest.cli.add_ingest_parser`)::

    connectome ingest stack.ome.tif prism.zarr volume.zarr --channels CHANNELS.yaml

Readers (TIFF / OME-TIFF files and plane folders, HDF5, Zarr v2/v3, N5,
Neuroglancer precomputed, ``.npy``) live in :mod:`ingest.sources`; the
channel spec in :mod:`ingest.spec`; the streaming, resume and dtype rule in
:mod:`ingest.core`; the multiscale pyramid in :mod:`ingest.pyramid`.
"""

from .core import STATE_DIR, IngestPlan, PlannedChannel, ingest, ingest_config, is_complete, plan_ingest
from .pyramid import build_pyramid
from .sources import ArraySource, Source, StackSource, open_source
from .spec import ChannelSpec, IngestConfig, load_channel_spec, normalize_unit

__all__ = [
    "ArraySource", "ChannelSpec", "IngestConfig", "IngestPlan", "PlannedChannel", "STATE_DIR", "Source",
    "StackSource", "build_pyramid", "ingest", "ingest_config", "is_complete", "load_channel_spec",
    "normalize_unit", "open_source", "plan_ingest",
]
