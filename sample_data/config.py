"""Configuration of the synthetic sample: one validated pydantic model.

The defaults give the bundled demo sample (96 x 256 x 256 voxels, 24 neurons,
8 barcode channels). ``dense=True`` switches to a tissue in which labelled
neurites fill most of the volume; the settings whose default depends on the
mode (``n_neurons``, ``fill_fraction``) may be left out (or given as ``None``)
and are then filled in for the chosen mode.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, field_validator, model_validator

from pipeline.config import StrictModel

__all__ = ["CELL_TYPES", "MARKERS", "SampleConfig", "bits_on_choices", "n_codes"]

#: Cell types of the sample, in the order of :attr:`SampleConfig.type_fractions`
#: and of the rows/columns of :attr:`SampleConfig.connection_matrix`.
CELL_TYPES = ("excitatory", "inhibitory", "pv")

#: Marker channels and the cell types that express each of them strongly.
MARKERS = {
    "vglut": ("excitatory",),
    "vgat": ("inhibitory", "pv"),
    "pv": ("pv",),
}

_MODE_DEFAULTS = {
    # name: (sparse default, dense default)
    "n_neurons": (24, 64),
    "fill_fraction": (0.2, 0.65),
}


def bits_on_choices(n_barcodes: int) -> tuple[int, ...]:
    """Numbers of "on" bits a barcode may have: 3 or 4, clipped to ``n_barcodes``."""
    return tuple(sorted({min(3, n_barcodes), min(4, n_barcodes)}))


def n_codes(n_barcodes: int) -> int:
    """How many distinct barcodes with :func:`bits_on_choices` ones exist."""
    return sum(math.comb(n_barcodes, k) for k in bits_on_choices(n_barcodes))


def _ordered_range(name: str, value):
    lo, hi = value
    if not (0 < lo <= hi):
        raise ValueError(f"{name} must be a range 0 < low <= high, got {tuple(value)}")
    return value


class SampleConfig(StrictModel):
    """Everything that shapes the synthetic sample; same config, same bytes.

    Physical sizes are in micrometres; the generator converts them with
    ``voxel_size`` so that changing the sampling keeps the anatomy.

    Attributes
    ----------
    shape : tuple of int
        Volume shape (z, y, x) in voxels.
    n_neurons : int
        Number of neurons (ids 1..n). Default 24, or 64 when ``dense``.
    n_barcodes : int
        Number K of barcode channels ``bc00..``; every neuron has 3-4 of them
        on (fewer when K < 4).
    dense : bool
        Dense tissue: neurites fill most of the volume, so segmentation cannot
        rely on background gaps between cells.
    seed : int
        Seed of the only random generator used (``numpy.random.default_rng``).
    voxel_size : tuple of float
        Voxel size (z, y, x) in micrometres; z is usually coarser.
    n_collisions : int
        Number of deliberate pairs of neurons that share one barcode.
    dropout : float
        Probability that an "on" barcode bit of a neuron is dim (about 15 %
        of its normal level).
    fill_fraction : float
        Target fraction of the volume covered by labelled neurons (somata and
        neurites). Default 0.2, or 0.65 when ``dense``. The achieved fraction
        is reported in ``meta["foreground_fraction"]``.
    type_fractions : tuple of float
        Share of each cell type of :data:`CELL_TYPES`.
    connection_matrix : tuple of tuple of float
        Probability that a neuron whose axon touches a dendrite of another
        neuron makes synapses on it; rows = presynaptic type, columns =
        postsynaptic type, in :data:`CELL_TYPES` order.
    soma_radius_um, dendrite_radius_um, axon_radius_um : tuple of float
        Ranges (low, high) of soma, dendrite and axon radii.
    dendrites_per_neuron : tuple of int
        Range (low, high), inclusive, of primary dendrites per neuron.
    axon_share : float
        Share of a neuron's neurite length that is axon.
    psf_sigma_um : tuple of float
        Standard deviation (z, y, x) of the Gaussian point-spread function.
    punctum_sigma_um : float
        Standard deviation of a synaptic punctum before the PSF.
    background : float
        Background offset (ADU) of every channel.
    fill_level, barcode_level, marker_level, punctum_level : float
        Typical signal (ADU above background) of a neurite in the fill,
        barcode and marker channels, and the peak of a synaptic punctum after
        the PSF.
    gain : float
        ADU per detected photon (sets the Poisson shot noise).
    read_noise : float
        Standard deviation (ADU) of the Gaussian camera read noise.
    expression_noise : float
        Per-voxel multiplicative noise (coefficient of variation) of labels.
    z_attenuation : float
        Fraction of the signal lost from the first to the last z slice.
    synapse_spacing_um : float
        Minimum distance between two synapses.
    synapse_distance_um : tuple of float
        Range of pre-to-post punctum distances.
    min_contact_voxels : int
        Contacts smaller than this (axon voxels within ``synapse_distance_um``
        of the other neuron's dendrite) never carry a synapse.
    contact_voxels_per_synapse : int
        A connected pair gets ``1 + Poisson(contact size / this)`` synapses.
    max_synapses_per_contact : int
        At most this many synapses between one ordered pair of neurons.
    orphan_puncta_fraction : float
        Extra unpaired pre and post puncta (on axons / dendrites), as a
        fraction of the number of synapses; they are not in the truth table.
    chunks_zyx : tuple of int
        Zarr chunk shape of the written volume (clipped to ``shape``).
    """

    shape: tuple[int, int, int] = (96, 256, 256)
    n_neurons: int = Field(default=24, ge=1, le=100_000)
    n_barcodes: int = Field(default=8, ge=1, le=64)
    dense: bool = False
    seed: int = Field(default=0, ge=0)
    voxel_size: tuple[float, float, float] = (0.4, 0.1, 0.1)
    n_collisions: int = Field(default=1, ge=0)
    dropout: float = Field(default=0.03, ge=0.0, le=1.0)
    fill_fraction: float = Field(default=0.2, gt=0.0, le=0.9)
    type_fractions: tuple[float, float, float] = (0.6, 0.25, 0.15)
    connection_matrix: tuple[
        tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]
    ] = (
        # -> excitatory, inhibitory, pv
        (0.10, 0.30, 0.30),   # excitatory ->
        (0.30, 0.15, 0.15),   # inhibitory ->
        (0.45, 0.15, 0.20),   # pv ->
    )
    soma_radius_um: tuple[float, float] = (1.0, 2.0)
    dendrite_radius_um: tuple[float, float] = (0.25, 0.6)
    axon_radius_um: tuple[float, float] = (0.15, 0.2)
    dendrites_per_neuron: tuple[int, int] = (4, 7)
    axon_share: float = Field(default=0.4, gt=0.0, lt=1.0)
    psf_sigma_um: tuple[float, float, float] = (0.6, 0.15, 0.15)
    punctum_sigma_um: float = Field(default=0.1, gt=0.0)
    background: float = Field(default=100.0, ge=0.0)
    fill_level: float = Field(default=2000.0, ge=0.0)
    barcode_level: float = Field(default=1500.0, ge=0.0)
    marker_level: float = Field(default=1200.0, ge=0.0)
    punctum_level: float = Field(default=2500.0, ge=0.0)
    gain: float = Field(default=2.0, gt=0.0)
    read_noise: float = Field(default=8.0, ge=0.0)
    expression_noise: float = Field(default=0.3, ge=0.0, le=2.0)
    z_attenuation: float = Field(default=0.2, ge=0.0, lt=1.0)
    synapse_spacing_um: float = Field(default=0.6, ge=0.0)
    synapse_distance_um: tuple[float, float] = (0.2, 0.4)
    min_contact_voxels: int = Field(default=20, ge=1)
    contact_voxels_per_synapse: int = Field(default=150, ge=1)
    max_synapses_per_contact: int = Field(default=6, ge=1)
    orphan_puncta_fraction: float = Field(default=0.1, ge=0.0, le=10.0)
    chunks_zyx: tuple[int, int, int] = (32, 128, 128)

    @model_validator(mode="before")
    @classmethod
    def _mode_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            dense = bool(data.get("dense", False))
            for name, (sparse_value, dense_value) in _MODE_DEFAULTS.items():
                if data.get(name) is None:
                    data[name] = dense_value if dense else sparse_value
        return data

    @field_validator("shape", "chunks_zyx")
    @classmethod
    def _positive_sizes(cls, value, info):
        if any(v < 1 for v in value):
            raise ValueError(f"{info.field_name} sizes must be positive, got {tuple(value)}")
        return value

    @field_validator("voxel_size", "psf_sigma_um")
    @classmethod
    def _positive_lengths(cls, value, info):
        if any(not (v > 0) for v in value):
            raise ValueError(f"{info.field_name} must be three positive lengths, got {tuple(value)}")
        return value

    @field_validator("soma_radius_um", "dendrite_radius_um", "axon_radius_um", "synapse_distance_um")
    @classmethod
    def _ranges(cls, value, info):
        return _ordered_range(info.field_name, value)

    @field_validator("dendrites_per_neuron")
    @classmethod
    def _count_range(cls, value):
        lo, hi = value
        if not (0 <= lo <= hi):
            raise ValueError(f"dendrites_per_neuron must be a range 0 <= low <= high, got {tuple(value)}")
        return value

    @field_validator("type_fractions")
    @classmethod
    def _fractions(cls, value):
        if any(v < 0 for v in value) or sum(value) <= 0:
            raise ValueError(f"type_fractions must be non-negative with a positive sum, got {tuple(value)}")
        return value

    @field_validator("connection_matrix")
    @classmethod
    def _probabilities(cls, value):
        if any(not (0.0 <= p <= 1.0) for row in value for p in row):
            raise ValueError(f"connection_matrix entries must lie in [0, 1], got {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        if 2 * self.n_collisions > self.n_neurons:
            raise ValueError(
                f"n_collisions={self.n_collisions} needs {2 * self.n_collisions} neurons "
                f"but n_neurons={self.n_neurons}"
            )
        codes = n_codes(self.n_barcodes)
        if self.n_neurons - self.n_collisions > codes:
            raise ValueError(
                f"n_neurons={self.n_neurons} with n_collisions={self.n_collisions} needs "
                f"{self.n_neurons - self.n_collisions} distinct barcodes, but n_barcodes="
                f"{self.n_barcodes} allows only {codes}; raise n_barcodes"
            )
        if min(self.shape) < 4:
            raise ValueError(f"shape must be at least 4 voxels along every axis, got {self.shape}")
        return self
