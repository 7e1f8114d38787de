"""Image formation: label expression -> PSF blur -> background, shot and read noise.

Every channel is built the same way: an ideal fluorophore density (a level
per neuron times per-voxel multiplicative expression noise, or Gaussian
puncta for the synaptic channels), attenuated with depth, blurred with an
anisotropic Gaussian point-spread function (one ``gaussian_filter`` call),
offset by the background, turned into photons (Poisson, ``gain`` ADU per
photon) plus Gaussian read noise, and clipped to uint16.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.special import erf

from .config import SampleConfig

__all__ = ["blob_density", "expression_density", "form_image"]

_SQRT2 = np.sqrt(2.0)


def _lognormal_sigma(cv: float) -> float:
    return float(np.sqrt(np.log1p(cv * cv)))


def expression_density(rng, n_voxels: int, fg: np.ndarray, per_voxel_level: np.ndarray,
                       cv: float) -> np.ndarray:
    """Flat float32 density: ``per_voxel_level`` on the voxels ``fg`` times lognormal noise."""
    out = np.zeros(n_voxels, np.float32)
    sigma = _lognormal_sigma(cv)
    noise = rng.standard_normal(fg.size, dtype=np.float32)
    noise *= sigma
    noise -= 0.5 * sigma * sigma
    np.exp(noise, out=noise)
    out[fg] = per_voxel_level * noise
    return out


def blob_density(shape, centres: np.ndarray, masses: np.ndarray, sigma_vox) -> np.ndarray:
    """Flat float32 density of Gaussian blobs integrated over each voxel.

    Integrating (rather than sampling) keeps every blob's mass and sub-voxel
    centroid exact even when its sigma is far below a voxel (z).
    """
    out = np.zeros(int(np.prod(shape)), np.float32)
    if len(centres) == 0:
        return out
    centres = np.asarray(centres, float)
    weights, indices, valids = [], [], []
    for axis in range(3):
        s = float(sigma_vox[axis])
        half = int(np.ceil(3.0 * s + 0.5))
        base = np.round(centres[:, axis]).astype(np.int64)
        idx = base[:, None] + np.arange(-half, half + 1)                   # (P, B)
        upper = erf((idx + 0.5 - centres[:, axis:axis + 1]) / (_SQRT2 * s))
        lower = erf((idx - 0.5 - centres[:, axis:axis + 1]) / (_SQRT2 * s))
        weights.append(0.5 * (upper - lower))
        indices.append(idx)
        valids.append((idx >= 0) & (idx < shape[axis]))
    wz, wy, wx = weights
    iz, iy, ix = indices
    w = (masses[:, None, None, None] * wz[:, :, None, None] * wy[:, None, :, None]
         * wx[:, None, None, :])
    valid = valids[0][:, :, None, None] & valids[1][:, None, :, None] & valids[2][:, None, None, :]
    linear = (iz[:, :, None, None] * (shape[1] * shape[2]) + iy[:, None, :, None] * shape[2]
              + ix[:, None, None, :])
    np.add.at(out, linear[valid], w[valid].astype(np.float32))
    return out


def form_image(config: SampleConfig, rng, density: np.ndarray, out: np.ndarray,
               background: float) -> None:
    """Blur, add background and noise to a flat ``density``; write uint16 into ``out``.

    Parameters
    ----------
    config : SampleConfig
    rng : numpy.random.Generator
    density : ndarray, float32, flat
        Ideal signal in ADU above background (modified in place).
    out : ndarray, uint16, (z, y, x)
    background : float
        Background offset of this channel (ADU).
    """
    shape = config.shape
    vol = density.reshape(shape)
    if config.z_attenuation > 0:
        depth = 1.0 - config.z_attenuation * np.linspace(0.0, 1.0, shape[0], dtype=np.float32)
        vol *= depth[:, None, None]
    sigma = np.asarray(config.psf_sigma_um) / np.asarray(config.voxel_size)
    blurred = ndi.gaussian_filter(vol, sigma=tuple(sigma), mode="nearest", truncate=3.0,
                                  output=np.float32)
    blurred += np.float32(background)
    np.maximum(blurred, 0.0, out=blurred)
    photons = rng.poisson(blurred / np.float32(config.gain))
    signal = photons.astype(np.float32)
    signal *= np.float32(config.gain)
    if config.read_noise > 0:
        read = rng.standard_normal(signal.shape, dtype=np.float32)
        read *= np.float32(config.read_noise)
        signal += read
    np.rint(signal, out=signal)
    np.clip(signal, 0, np.iinfo(np.uint16).max, out=signal)
    out[...] = signal.astype(np.uint16)
