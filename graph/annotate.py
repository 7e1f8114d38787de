"""Barcode calling and cell typing from per-neuron channel means.

Both work on the neuron table of :func:`graph.measure.measure_neurons`
(columns ``mean_<channel>``; barcodes use ``median_<channel>`` by default).

On/off calls: a two-component 1-D mixture
-----------------------------------------
Per channel, :func:`fit_mixture` fits a two-component Gaussian mixture by EM
(NumPy, no scikit-learn) to the log of the neuron means (optionally weighted
by neuron size), initialised by Otsu's split. :func:`mixture_posterior` gives
each neuron the posterior probability of the *high* component, made monotone
in the intensity (a broad component's far tail never flips the call).
A channel is *bimodal* only when the two components are well separated
(Ashman's D >= ``min_separation``), differ by at least ``min_fold_change`` in
intensity, and there are at least ``min_neurons`` neurons. Otherwise it is
unimodal: every neuron gets ``unimodal_call`` (posterior 0 for ``low``, 1 for
``high``) and a warning names the channel.

Barcodes (:func:`call_barcodes`)
--------------------------------
Bit ``c`` is ``1`` when ``p_<channel> > 0.5`` (with ``bits_on``, the call is
then re-decided per neuron in contrast units, see :class:`BarcodeConfig`; a
switched bit keeps its ``p_<channel>``); ``barcode`` is the string of
bits in channel order; ``barcode_confidence`` is the product (or the minimum)
over channels of the posterior of the called state; ``barcode_shared`` marks
barcodes carried by two or more neurons.

Cell types (:func:`assign_cell_types`)
--------------------------------------
With rules, from the workflow YAML::

    cell_types:
      rules:                                  # first matching rule wins
        - {type: pv, require: {vgat: high, pv: high}}
        - {type: inhibitory, require: {vgat: high}}
        - {type: excitatory, require: {vglut: high}}
      default: unknown                        # when no rule matches

Each marker is called high/low by the mixture posterior of its (optionally
normalised) mean. A rule matches when every required state is the called one.
``cell_type_confidence`` is the product of the posteriors of the required
states for the matching rule, and for the default type the product over rules
of ``1 - P(rule)`` (``P(rule)`` = product of its required-state posteriors).

Without rules, marker profiles (standardised log means) are clustered by
k-means (k-means++ init, fixed seed, several restarts), k from the best mean
silhouette over ``2..max_clusters`` (or ``n_clusters``); types are
``cluster_0, cluster_1, ...`` numbered by decreasing cluster size. The
confidence is the soft assignment ``exp(-d_k^2 / 2 s^2)`` normalised over
clusters, ``s^2`` the pooled within-cluster variance per feature.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Literal, Sequence

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from pipeline.config import StrictModel
from pipeline.errors import ConfigError, InputError

__all__ = [
    "MixtureConfig",
    "BarcodeConfig",
    "CellTypeRule",
    "CellTypeConfig",
    "MixtureFit",
    "fit_mixture",
    "mixture_posterior",
    "channel_posteriors",
    "call_barcodes",
    "assign_cell_types",
    "check_cell_type_channels",
    "kmeans",
    "annotate_neurons",
]

log = logging.getLogger(__name__)


class MixtureConfig(StrictModel):
    """How one channel's neuron means are split into low and high.

    Attributes
    ----------
    log_transform : bool
        Fit on ``log(max(mean, 0) + offset)`` (intensities are multiplicative).
    offset : float
        Added before the log.
    weight_by_size : bool
        Weight neurons by ``size_voxels`` in the fit (small fragments count
        less). On by default: a segmentation leaves small pieces (at block
        faces, around puncta) whose means are extreme and few-voxel noisy;
        unweighted, on a 128x384x384 sample with 54 neurons and 51 such
        pieces, they made the vglut channel look unimodal and every
        excitatory neuron "unknown" (cell-type accuracy 0.41; weighted 0.98).
    min_separation : float
        Smallest Ashman's D, ``|mu1 - mu0| / sqrt((var0 + var1) / 2)``, of a bimodal channel.
    min_fold_change : float
        Smallest ratio of the high to the low component's (geometric) mean intensity.
    min_neurons : int
        Fewer neurons than this: the channel is treated as unimodal.
    min_sd_fraction : float
        Floor of each component's standard deviation, as a fraction of the data range.
    max_iter : int
    tol : float
        EM stops when the mean log-likelihood improves by less than this.
    unimodal_call : {"low", "high"}
        Call of every neuron on a unimodal channel.
    dim_fraction : float
        Prior weight of a "dim high" state spread between the two components
        (see :func:`mixture_posterior`): values standing clearly above the
        low component count as high. 0 disables it.
    """

    log_transform: bool = True
    offset: float = Field(default=1.0, ge=0.0)
    weight_by_size: bool = True
    min_separation: float = Field(default=2.0, ge=0.0)
    min_fold_change: float = Field(default=1.5, ge=1.0)
    min_neurons: int = Field(default=4, ge=2)
    min_sd_fraction: float = Field(default=0.02, gt=0.0)
    max_iter: int = Field(default=300, ge=1)
    tol: float = Field(default=1e-9, gt=0.0)
    unimodal_call: Literal["low", "high"] = "low"
    dim_fraction: float = Field(default=0.0, ge=0.0, le=1.0)


class BarcodeConfig(StrictModel):
    """Barcode calling.

    Attributes
    ----------
    statistic : {"median", "mean"}
        Which per-neuron statistic of each barcode channel is called
        (``<statistic>_<channel>`` columns of :func:`graph.measure.measure_neurons`).
        The median ignores the voxels where a neighbour's signal spills over
        at contacts, which scatter the off level of the mean: on the sample's
        seed 1 a dim bit stands 5.1 off standard deviations above the off
        level in medians and 2.2 in means.
    mixture : MixtureConfig
        Default: ``dim_fraction=0.02`` (dim, dropped-out bits count as on).
    subtract_background : bool
        Subtract each channel's background (the label-0 mean that
        :func:`graph.measure.measure_neurons` records in ``attrs["background"]``,
        or the ``background`` argument) before fitting. Off by default for
        barcodes: their "off" level is non-specific signal well above the
        background, and subtracting widens the off component in log space,
        which hides dim (dropped-out) bits (measured on the sample: 3/96
        neurons wrong without, 20/96 with).
    normalize : {"none", "total", "max"}
        Divide each neuron's barcode means by their sum (``total``) or maximum
        (``max``) before fitting, to cancel per-neuron brightness.
    confidence : {"product", "min"}
        How per-bit posteriors combine into ``barcode_confidence``.
    bits_on : tuple of int, optional
        ``(min, max)`` number of "on" bits of a valid code (constant-weight
        codes, e.g. ``[3, 4]``). ``None``: no constraint. With it, each
        neuron's call is re-decided in *contrast units* (see
        :func:`_enforce_weight`): the number of bits on is the number of
        posteriors above 0.5 clipped to ``[min, max]``, and the bits on are
        that many of the neuron's brightest bits, brightness measured as the
        fraction of each channel's on-off contrast (a dim, "dropped-out" bit
        is a fraction of its on level). A call with too few bits on thus gets
        its brightest off bits, too many loses its dimmest on bits, and an
        off bit brighter than a called-on bit of the same neuron swaps with it.
    dim_z : float, optional
        Only with ``bits_on``: a call with fewer than ``max`` bits on also
        switches on its brightest off bit when that bit stands at least
        ``dim_z`` off standard deviations above its channel's off level
        (a one-sided outlier test, in contrast units, against the scatter of
        the off bits of all channels, or of the bit's own channel when that
        is larger: under Gaussian off scatter a false promotion has
        probability 0.13 % per off bit at 3). ``None``: never.
        Switched bits keep their channel posterior ``p_<channel>``, so the
        ``barcode_confidence`` of a call with a switched bit is low.
    """

    statistic: Literal["median", "mean"] = "median"
    mixture: MixtureConfig = Field(default_factory=lambda: MixtureConfig(dim_fraction=0.02))
    subtract_background: bool = False
    normalize: Literal["none", "total", "max"] = "none"
    confidence: Literal["product", "min"] = "product"
    bits_on: tuple[int, int] | None = None
    dim_z: float | None = Field(default=3.0, gt=0.0)

    @field_validator("bits_on")
    @classmethod
    def _ordered(cls, value):
        if value is not None and not 0 <= value[0] <= value[1]:
            raise ValueError(f"bits_on must be (min, max) with 0 <= min <= max, got {list(value)}")
        return value


class CellTypeRule(StrictModel):
    """One rule: ``type`` when every marker in ``require`` is in the given state."""

    type: str = Field(min_length=1)
    require: dict[str, Literal["high", "low"]] = Field(min_length=1)


class CellTypeConfig(StrictModel):
    """Cell typing from marker channels.

    Attributes
    ----------
    rules : list of CellTypeRule, optional
        First matching rule wins. ``None`` or empty: cluster instead.
    default : str
        Type when no rule matches.
    subtract_background : bool
        Subtract each channel's background (see :class:`BarcodeConfig`; also
        applied to ``normalize_by``). On by default: marker expression is
        concentrated near the soma, so a neuron's mean is only a little above
        background and the on/off ratio only shows after subtraction.
    normalize_by : str, optional
        Channel whose neuron mean divides every marker mean (e.g. ``fill``).
    mixture : MixtureConfig
        High/low calls of each marker.
    n_clusters : int, optional
        Clustering without rules: fixed k (else chosen by silhouette).
    max_clusters : int
        Largest k tried.
    min_silhouette : float
        Below this best mean silhouette, everything is one cluster.
    seed : int
        k-means seed.
    """

    rules: list[CellTypeRule] | None = None
    default: str = "unknown"
    subtract_background: bool = True
    normalize_by: str | None = None
    mixture: MixtureConfig = Field(default_factory=MixtureConfig)
    n_clusters: int | None = Field(default=None, ge=1)
    max_clusters: int = Field(default=6, ge=1)
    min_silhouette: float = Field(default=0.25, ge=-1.0, le=1.0)
    seed: int = 0


# ---------------------------------------------------------------------------
# 1-D two-component Gaussian mixture
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class MixtureFit:
    """A fitted two-component 1-D mixture (component 1 is the high one).

    ``means``, ``variances`` and ``weights`` are the EM estimates (they decide
    bimodality); ``centers`` and ``scales`` are robust (median, 1.4826 x MAD)
    estimates of each component from the values EM assigns to it, and are
    what :func:`mixture_posterior` uses, so a few dim outliers cannot widen
    the low component. ``bimodal`` False means the data did not support two
    components; then ``call`` is the state given to every value.
    """

    bimodal: bool
    means: tuple[float, float]
    variances: tuple[float, float]
    weights: tuple[float, float]
    separation: float
    log_transform: bool
    offset: float
    call: Literal["low", "high"] = "low"
    reason: str = ""
    centers: tuple[float, float] = (float("nan"), float("nan"))
    scales: tuple[float, float] = (float("nan"), float("nan"))
    dim_fraction: float = 0.0

    def transform(self, values) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if self.log_transform:
            return np.log(np.clip(values, 0.0, None) + self.offset)
        return values


def _transform(values, config: MixtureConfig) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if config.log_transform:
        if config.offset == 0 and np.any(values <= 0):
            raise InputError("log transform with offset 0 needs positive values")
        return np.log(np.clip(values, 0.0, None) + config.offset)
    return values


def _otsu_split(x: np.ndarray, w: np.ndarray) -> float:
    """Weighted Otsu threshold: the split of the sorted values with the largest between-class variance."""
    order = np.argsort(x, kind="stable")
    xs, ws = x[order], w[order]
    cw = np.cumsum(ws)[:-1]
    cwx = np.cumsum(ws * xs)[:-1]
    total_w, total_wx = ws.sum(), (ws * xs).sum()
    w0, w1 = cw, total_w - cw
    mu0 = cwx / w0
    mu1 = (total_wx - cwx) / w1
    between = w0 * w1 * (mu1 - mu0) ** 2
    distinct = xs[1:] > xs[:-1]
    between = np.where(distinct, between, -1.0)
    k = int(np.argmax(between))
    return 0.5 * (xs[k] + xs[k + 1])


def _log_normal_pdf(x, mean, var):
    return -0.5 * (np.log(2 * np.pi * var) + (x - mean) ** 2 / var)


def _robust(values: np.ndarray, fallback_center: float, fallback_scale: float, floor_sd: float):
    if values.size == 0:
        return fallback_center, max(fallback_scale, floor_sd)
    center = float(np.median(values))
    scale = 1.4826 * float(np.median(np.abs(values - center)))
    return center, max(scale, floor_sd)


def fit_mixture(values, weights=None, config: MixtureConfig | None = None) -> MixtureFit:
    """Fit a two-component 1-D Gaussian mixture by EM (Otsu initialisation).

    Parameters
    ----------
    values : array_like
        Raw (untransformed) intensities, one per neuron.
    weights : array_like, optional
        Non-negative weight per value (e.g. neuron size).
    config : MixtureConfig, optional

    Returns
    -------
    MixtureFit
    """
    config = config or MixtureConfig()
    x = _transform(values, config).ravel()
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if w.shape != x.shape:
        raise InputError(f"weights shape {w.shape} differs from values shape {x.shape}")
    finite = np.isfinite(x) & np.isfinite(w) & (w > 0)
    x, w = x[finite], w[finite]

    def unimodal(reason, means=(np.nan, np.nan), variances=(np.nan, np.nan), weights_=(1.0, 0.0), sep=0.0):
        return MixtureFit(False, tuple(map(float, means)), tuple(map(float, variances)),
                          tuple(map(float, weights_)), float(sep), config.log_transform, config.offset,
                          config.unimodal_call, reason)

    if x.size < config.min_neurons:
        return unimodal(f"only {x.size} neurons (min_neurons={config.min_neurons})")
    span = float(x.max() - x.min())
    if span <= 0:
        return unimodal("all values are equal")
    w = w / w.sum()
    floor = max((config.min_sd_fraction * span) ** 2, 1e-12)
    split = _otsu_split(x, w)
    r = (x > split).astype(np.float64)  # responsibility of the high component
    prev = -np.inf
    for _ in range(config.max_iter):
        w1 = float((w * r).sum())
        w0 = 1.0 - w1
        if w0 <= 1e-9 or w1 <= 1e-9:
            return unimodal("one component vanished")
        mu0 = float((w * (1 - r) * x).sum() / w0)
        mu1 = float((w * r * x).sum() / w1)
        v0 = max(float((w * (1 - r) * (x - mu0) ** 2).sum() / w0), floor)
        v1 = max(float((w * r * (x - mu1) ** 2).sum() / w1), floor)
        l0 = np.log(w0) + _log_normal_pdf(x, mu0, v0)
        l1 = np.log(w1) + _log_normal_pdf(x, mu1, v1)
        top = np.maximum(l0, l1)
        total = top + np.log(np.exp(l0 - top) + np.exp(l1 - top))
        r = np.exp(l1 - total)
        loglik = float((w * total).sum())
        if loglik - prev < config.tol:
            break
        prev = loglik
    if mu1 < mu0:
        mu0, mu1, v0, v1, w0, w1 = mu1, mu0, v1, v0, w1, w0
        r = 1.0 - r
    sep = abs(mu1 - mu0) / np.sqrt(0.5 * (v0 + v1))
    fold = np.exp(mu1 - mu0) if config.log_transform else ((mu1 / mu0) if mu0 > 0 else np.inf)
    params = ((mu0, mu1), (v0, v1), (w0, w1), sep)
    if sep < config.min_separation:
        return unimodal(f"components overlap (Ashman's D {sep:.2f} < {config.min_separation})", *params)
    if fold < config.min_fold_change:
        return unimodal(f"fold change {fold:.2f} < {config.min_fold_change}", *params)
    # BIC of one Gaussian vs the two-component fit (same weighting, n = number of values)
    n = x.size
    m1 = float((w * x).sum())
    var1 = max(float((w * (x - m1) ** 2).sum()), floor)
    loglik1 = float((w * _log_normal_pdf(x, m1, var1)).sum()) * n
    bic1 = -2 * loglik1 + 2 * np.log(n)
    bic2 = -2 * prev * n + 5 * np.log(n) if np.isfinite(prev) else np.inf
    if not bic2 < bic1:
        return unimodal(f"one Gaussian explains the values as well (BIC {bic1:.1f} <= {bic2:.1f})", *params)
    floor_sd = float(np.sqrt(floor))
    c0, s0 = _robust(x[r < 0.5], mu0, np.sqrt(v0), floor_sd)
    c1, s1 = _robust(x[r >= 0.5], mu1, np.sqrt(v1), floor_sd)
    return MixtureFit(True, (mu0, mu1), (v0, v1), (w0, w1), float(sep), config.log_transform, config.offset,
                      centers=(c0, c1), scales=(s0, s1), dim_fraction=config.dim_fraction)


def mixture_posterior(fit: MixtureFit, values) -> np.ndarray:
    """Posterior probability that each value belongs to the high state.

    With robust components ``N(c0, s0)`` (low) and ``N(c1, s1)`` (high),
    EM weights ``w0, w1`` and a "dim high" class of prior weight ``d =
    dim_fraction`` spread uniformly between ``c0`` and ``c1`` (e.g. a barcode
    bit that dropped out to a fraction of its level)::

        p_high(x) = (w1 N1(x) + d U(x)) / (w0 N0(x) + w1 N1(x) + d U(x))

    evaluated at ``x`` clipped to ``[c0, c1]``: monotone in the value, ~0
    below the low center and ~1 above the high center (a broad component's
    far tail never flips the call). Unimodal fits give 0 (``call="low"``)
    or 1 (``call="high"``) everywhere.
    """
    x = fit.transform(values)
    if not fit.bimodal:
        return np.full(x.shape, 1.0 if fit.call == "high" else 0.0)
    (c0, c1), (s0, s1), (w0, w1) = fit.centers, fit.scales, fit.weights
    xc = np.clip(np.where(np.isfinite(x), x, c0), c0, c1)
    l0 = np.log(w0) + _log_normal_pdf(xc, c0, s0 ** 2)
    l1 = np.log(w1) + _log_normal_pdf(xc, c1, s1 ** 2)
    top = np.maximum(l0, l1)
    b0, b1 = np.exp(l0 - top), np.exp(l1 - top)
    dim = fit.dim_fraction / max(c1 - c0, 1e-12) * np.exp(-top) if fit.dim_fraction > 0 else 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        p = (b1 + dim) / (b0 + b1 + dim)
    p = np.where(np.isfinite(p), p, 1.0)  # dim term overflowed: far from both Gaussians, between them
    return np.where(np.isfinite(x), p, 0.0)


def _means(neurons: pd.DataFrame, channels: Sequence[str], what: str, statistic: str = "mean") -> np.ndarray:
    """The ``<statistic>_<channel>`` columns (n, c) of the neuron table."""
    if not isinstance(neurons, pd.DataFrame):
        raise InputError(f"neurons must be a pandas DataFrame, got {type(neurons).__name__}")
    prefix = f"{statistic}_"
    missing = [c for c in channels if prefix + c not in neurons.columns]
    if missing:
        have = [c[len(prefix):] for c in neurons.columns if c.startswith(prefix)]
        raise InputError(f"{what}: the neuron table has no {prefix}<channel> column for {missing}; "
                         f"channels with that statistic are {have}")
    return neurons[[prefix + c for c in channels]].to_numpy(dtype=np.float64).reshape(len(neurons), len(channels))


def _background(neurons: pd.DataFrame, channels: Sequence[str], background, enabled: bool,
                statistic: str = "mean") -> np.ndarray:
    """Per-channel background to subtract (zeros when disabled or unknown)."""
    if not enabled:
        return np.zeros(len(channels))
    key = "background" if statistic == "mean" else f"background_{statistic}"
    known = dict(neurons.attrs.get(key) or {}) if background is None else dict(background)
    missing = [c for c in channels if c not in known]
    if missing:
        log.warning("no background level for channels %s (pass background= or measure with "
                    "graph.measure); they are not background-subtracted", missing)
    return np.array([float(known.get(c, 0.0)) for c in channels])


def channel_posteriors(values: np.ndarray, names: Sequence[str], config: MixtureConfig,
                       sizes=None) -> tuple[np.ndarray, dict[str, MixtureFit]]:
    """Fit one mixture per column of ``values`` (n, c); return the high posteriors (n, c) and the fits."""
    post = np.zeros(values.shape, dtype=np.float64)
    fits = {}
    weights = sizes if (config.weight_by_size and sizes is not None) else None
    for i, name in enumerate(names):
        fit = fit_mixture(values[:, i], weights, config)
        if not fit.bimodal and len(values):
            log.warning("channel %s looks unimodal (%s); every neuron is called %s", name, fit.reason, fit.call)
        fits[name] = fit
        post[:, i] = mixture_posterior(fit, values[:, i])
    return post, fits


def _contrast(values, channels, fits):
    """Each value as a fraction of its channel's on-off contrast: 0 at the off center, 1 at the on center.

    Linear intensity units (the fit's robust centers transformed back), so a
    bit expressed at a fraction ``f`` of its on level sits near ``f``.
    Unimodal channels get ``nan``.
    """
    y = np.full(values.shape, np.nan)
    for i, c in enumerate(channels):
        fit = fits[c]
        if not fit.bimodal:
            continue
        if fit.log_transform:
            off, on = (float(np.exp(v)) - fit.offset for v in fit.centers)
        else:
            off, on = fit.centers
        if on > off:
            y[:, i] = (values[:, i] - off) / (on - off)
    return y


def _robust_scale(values) -> float:
    """1.4826 x the median absolute deviation from 0 (the off level); ``nan`` for fewer than 4 values."""
    values = np.asarray(values, dtype=np.float64)
    return 1.4826 * float(np.median(np.abs(values))) if values.size >= 4 else float("nan")


def _enforce_weight(bits, values, channels, fits, bits_on, dim_z=None):
    """Re-decide each call under ``bits_on`` in contrast units (see :class:`BarcodeConfig`).

    Per neuron: ``n`` = number of bits called on, clipped to ``bits_on``; the
    bits on are the ``n`` with the largest contrast fraction
    (:func:`_contrast`) among the bimodal channels (unimodal channels keep
    their call and count towards ``n``). When ``n < bits_on[1]`` and
    ``dim_z`` is set, the next brightest bit is switched on too if it stands
    at least ``dim_z`` off standard deviations above the off level. The scale
    is the robust (1.4826 MAD) spread of the contrast fractions of the
    called-off bits of all bimodal channels (at least 8), or that of the
    bit's own channel when it is larger (a noisy channel is not promoted
    more often than a clean one).
    Rows whose called bits already are their brightest ones and satisfy the
    constraint are unchanged.
    """
    lo, hi = bits_on
    y = _contrast(values, channels, fits)
    switchable = np.isfinite(y)
    fixed_on = bits & ~switchable
    scale = None
    if dim_z is not None:
        off = switchable & ~bits
        pooled = _robust_scale(y[off]) if off.sum() >= 8 else np.nan
        if pooled > 0:
            # a channel noisier than the pool is judged on its own scatter
            scale = np.array([max(pooled, _robust_scale(y[off[:, i], i])) for i in range(y.shape[1])])
    out = bits.copy()
    promoted = 0
    for row in range(len(bits)):
        n = min(max(int(bits[row].sum()), lo), hi)
        cols = np.flatnonzero(switchable[row])
        order = cols[np.argsort(-y[row, cols], kind="stable")]
        n_sw = min(max(n - int(fixed_on[row].sum()), 0), order.size)
        if scale is not None and n < hi and n_sw < order.size:
            nxt = order[n_sw]
            if y[row, nxt] / scale[nxt] >= dim_z:
                n_sw += 1
                promoted += 1
        out[row] = fixed_on[row]
        out[row, order[:n_sw]] = True
    changed = int((out != bits).any(axis=1).sum())
    if changed:
        log.info("barcodes: %d calls changed to respect bits_on=%s (%d with a dim bit promoted by dim_z=%s)",
                 changed, list(bits_on), promoted, dim_z)
    return out


def call_barcodes(neurons: pd.DataFrame, barcode_channels: Sequence[str],
                  config: BarcodeConfig | None = None, *, background: dict | None = None) -> pd.DataFrame:
    """Call each neuron's barcode from its barcode-channel means.

    Parameters
    ----------
    neurons : pandas.DataFrame
        Needs ``<config.statistic>_<channel>`` for every barcode channel (and ``size_voxels``
        when the mixture is weighted by size).
    barcode_channels : sequence of str
        Channel names, in barcode bit order.
    config : BarcodeConfig, optional
    background : dict, optional
        Channel name -> background level; defaults to ``neurons.attrs["background"]``.

    Returns
    -------
    pandas.DataFrame
        A copy of ``neurons`` with ``p_<channel>`` (posterior of "on"),
        ``barcode`` (str of '0'/'1'), ``barcode_confidence`` and
        ``barcode_shared``. ``attrs["barcode_fits"]`` holds the fits.
    """
    config = config or BarcodeConfig()
    channels = list(barcode_channels)
    out = neurons.copy()
    if not channels:
        out["barcode"] = ""
        out["barcode_confidence"] = 1.0
        out["barcode_shared"] = False
        return out
    statistic = config.statistic
    if (isinstance(neurons, pd.DataFrame) and statistic != "mean"
            and any(f"{statistic}_{c}" not in neurons.columns for c in channels)
            and all(f"mean_{c}" in neurons.columns for c in channels)):
        log.warning("call_barcodes: the neuron table has no %s_<channel> columns (graph.measure "
                    "adds them); calling barcodes from the channel means instead", statistic)
        statistic = "mean"
    values = _means(neurons, channels, "call_barcodes", statistic)
    values = values - _background(neurons, channels, background, config.subtract_background, statistic)
    if config.normalize != "none" and len(values):
        clipped = np.clip(values, 0.0, None)
        scale = clipped.sum(axis=1) if config.normalize == "total" else clipped.max(axis=1)
        # back to intensity units (times the median scale) so the log offset keeps its meaning
        typical = float(np.median(scale[scale > 0])) if np.any(scale > 0) else 1.0
        values = clipped / np.where(scale > 0, scale, np.inf)[:, None] * typical
    sizes = neurons["size_voxels"].to_numpy(dtype=np.float64) if "size_voxels" in neurons.columns else None
    post, fits = channel_posteriors(values, channels, config.mixture, sizes)
    bits = post > 0.5
    if config.bits_on is not None and len(values):
        bits = _enforce_weight(bits, values, channels, fits, config.bits_on, config.dim_z)
    for i, c in enumerate(channels):
        out[f"p_{c}"] = post[:, i]
    out["barcode"] = ["".join("1" if b else "0" for b in row) for row in bits]
    state = np.where(bits, post, 1.0 - post)
    confidence = state.prod(axis=1) if config.confidence == "product" else state.min(axis=1)
    out["barcode_confidence"] = confidence.astype(np.float64)
    out["barcode_shared"] = out["barcode"].duplicated(keep=False).to_numpy()
    out.attrs["barcode_fits"] = {c: asdict(f) for c, f in fits.items()}
    return out


# ---------------------------------------------------------------------------
# Cell types
# ---------------------------------------------------------------------------
def _check_rules(rules: Sequence[CellTypeRule], marker_channels: Sequence[str]) -> None:
    available = list(marker_channels)
    for i, rule in enumerate(rules):
        for marker in rule.require:
            if marker not in available:
                raise ConfigError(
                    f"cell_types.rules[{i}] (type {rule.type!r}): unknown marker {marker!r}; "
                    f"available marker channels are {available}")


def check_cell_type_channels(config: CellTypeConfig | dict | None, channels) -> None:
    """Refuse, before any work, cell-type rules or ``normalize_by`` that name an absent channel.

    Parameters
    ----------
    config : CellTypeConfig or dict, optional
    channels : Volume or sequence of Channel
        The volume's channels (with roles).

    Raises
    ------
    ConfigError
        Naming the rule and marker, or ``normalize_by``, and the channels there are.
    """
    if config is None:
        return
    if isinstance(config, dict):
        config = CellTypeConfig(**config)
    channel_list = list(getattr(channels, "channels", channels))
    _check_rules(config.rules or [], [c.name for c in channel_list if c.role == "marker"])
    names = [c.name for c in channel_list]
    if config.normalize_by and config.normalize_by not in names:
        raise ConfigError(f"cell_types.normalize_by: unknown channel {config.normalize_by!r}; "
                          f"the volume's channels are {names}")


def _marker_values(neurons, markers, config: CellTypeConfig, background) -> np.ndarray:
    values = _means(neurons, markers, "assign_cell_types")
    values = values - _background(neurons, markers, background, config.subtract_background)
    if config.normalize_by:
        ref = _means(neurons, [config.normalize_by], "cell_types.normalize_by")[:, 0]
        ref = ref - _background(neurons, [config.normalize_by], background, config.subtract_background)[0]
        typical = float(np.median(ref[ref > 0])) if np.any(ref > 0) else 1.0
        values = np.clip(values, 0.0, None) / np.where(ref > 0, ref, np.inf)[:, None] * typical
    return values


def assign_cell_types(neurons: pd.DataFrame, marker_channels: Sequence[str],
                      rules: CellTypeConfig | dict | None = None, *,
                      background: dict | None = None) -> pd.DataFrame:
    """Give every neuron a cell type from its marker means.

    Parameters
    ----------
    neurons : pandas.DataFrame
        Needs ``mean_<marker>`` for every marker channel.
    marker_channels : sequence of str
        Names of the marker channels.
    rules : CellTypeConfig or dict, optional
        Rules and options (a dict is validated, e.g. the ``cell_types``
        section of a workflow). Without rules the markers are clustered.
    background : dict, optional
        Channel name -> background level; defaults to ``neurons.attrs["background"]``.

    Returns
    -------
    pandas.DataFrame
        A copy of ``neurons`` with ``cell_type``, ``cell_type_confidence`` and,
        with rules, ``p_<marker>_high`` per marker.

    Raises
    ------
    ConfigError
        When a rule names a marker that is not among ``marker_channels``.
    """
    if rules is None:
        config = CellTypeConfig()
    elif isinstance(rules, CellTypeConfig):
        config = rules
    elif isinstance(rules, dict):
        from pipeline.config import validate_config

        config = validate_config(CellTypeConfig, rules, "cell_types")
    else:
        raise ConfigError(f"cell type rules must be a CellTypeConfig or a mapping, got {type(rules).__name__}")
    markers = list(marker_channels)
    out = neurons.copy()
    if config.rules:
        _check_rules(config.rules, markers)
    if not markers or len(neurons) == 0:
        if not markers:
            log.warning("no marker channels: every neuron gets cell type %r", config.default)
        out["cell_type"] = pd.Series([config.default] * len(out), index=out.index, dtype=object)
        out["cell_type_confidence"] = 0.0
        return out
    values = _marker_values(neurons, markers, config, background)
    if config.rules:
        sizes = neurons["size_voxels"].to_numpy(dtype=np.float64) if "size_voxels" in neurons.columns else None
        post, fits = channel_posteriors(values, markers, config.mixture, sizes)
        index = {m: i for i, m in enumerate(markers)}
        n = len(neurons)
        types = np.full(n, config.default, dtype=object)
        confidence = np.zeros(n)
        assigned = np.zeros(n, dtype=bool)
        none_prob = np.ones(n)
        for rule in config.rules:
            match = np.ones(n, dtype=bool)
            prob = np.ones(n)
            for marker, state in rule.require.items():
                p_high = post[:, index[marker]]
                match &= (p_high > 0.5) if state == "high" else (p_high <= 0.5)
                prob *= p_high if state == "high" else 1.0 - p_high
            new = match & ~assigned
            types[new] = rule.type
            confidence[new] = prob[new]
            assigned |= match
            none_prob *= 1.0 - prob
        confidence[~assigned] = none_prob[~assigned]
        for m in markers:
            out[f"p_{m}_high"] = post[:, index[m]]
        out["cell_type"] = types
        out["cell_type_confidence"] = confidence
        out.attrs["marker_fits"] = {c: asdict(f) for c, f in fits.items()}
        return out
    # no rules: cluster standardised log marker profiles
    feats = np.log(np.clip(values, 0.0, None) + config.mixture.offset)
    sd = feats.std(axis=0)
    feats = (feats - feats.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    labels, centers, k = _choose_clusters(feats, config)
    sizes = np.bincount(labels, minlength=k)
    rank = np.lexsort((np.arange(k), -sizes))  # largest cluster first, ties by index
    rename = np.empty(k, dtype=np.int64)
    rename[rank] = np.arange(k)
    d2 = ((feats[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
    s2 = max(float(d2[np.arange(len(feats)), labels].mean()) / max(feats.shape[1], 1), 1e-6)
    logits = -d2 / (2 * s2)
    logits -= logits.max(axis=1, keepdims=True)
    soft = np.exp(logits)
    soft /= soft.sum(axis=1, keepdims=True)
    out["cell_type"] = np.array([f"cluster_{rename[lab]}" for lab in labels], dtype=object)
    out["cell_type_confidence"] = soft[np.arange(len(feats)), labels] if k > 1 else 1.0
    return out


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, n_init: int = 8, max_iter: int = 100):
    """k-means (k-means++ initialisation, best of ``n_init`` restarts) in NumPy.

    Returns
    -------
    labels : ndarray of int64, centers : ndarray (k, d), inertia : float
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if not 1 <= k <= n:
        raise InputError(f"k-means needs 1 <= k <= n points, got k={k}, n={n}")
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(n_init):
        centers = [x[rng.integers(n)]]
        for _ in range(1, k):
            d2 = ((x[:, None, :] - np.asarray(centers)[None]) ** 2).sum(axis=2).min(axis=1)
            total = d2.sum()
            pick = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
            centers.append(x[pick])
        centers = np.asarray(centers)
        labels = np.zeros(n, dtype=np.int64)
        for it in range(max_iter):
            d2 = ((x[:, None, :] - centers[None]) ** 2).sum(axis=2)
            new = np.argmin(d2, axis=1)
            if it and np.array_equal(new, labels):
                break
            labels = new
            for j in range(k):
                members = x[labels == j]
                if len(members):
                    centers[j] = members.mean(axis=0)
        inertia = float(((x - centers[labels]) ** 2).sum())
        if best is None or inertia < best[2] - 1e-12:
            best = (labels.copy(), centers.copy(), inertia)
    return best


def _silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette (exact, O(n^2); subsample large n before calling)."""
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2))
    ks = np.unique(labels)
    if len(ks) < 2:
        return -1.0
    mean_to = np.stack([d[:, labels == k].mean(axis=1) for k in ks], axis=1)
    counts = np.array([(labels == k).sum() for k in ks])
    own = np.searchsorted(ks, labels)
    n_own = counts[own]
    a = np.where(n_own > 1, mean_to[np.arange(len(x)), own] * n_own / np.maximum(n_own - 1, 1), 0.0)
    mean_to[np.arange(len(x)), own] = np.inf
    b = mean_to.min(axis=1)
    s = np.where(n_own > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


def _choose_clusters(feats: np.ndarray, config: CellTypeConfig):
    n = len(feats)
    if config.n_clusters is not None:
        k = min(config.n_clusters, n)
        labels, centers, _ = kmeans(feats, k, seed=config.seed)
        return labels, centers, k
    best = None
    rng = np.random.default_rng(config.seed)
    sample = rng.choice(n, size=min(n, 2000), replace=False) if n > 2000 else np.arange(n)
    for k in range(2, min(config.max_clusters, n - 1) + 1):
        labels, centers, _ = kmeans(feats, k, seed=config.seed)
        score = _silhouette(feats[sample], labels[sample])
        if best is None or score > best[0] + 1e-12:
            best = (score, labels, centers, k)
    if best is None or best[0] < config.min_silhouette:
        labels = np.zeros(n, dtype=np.int64)
        return labels, feats.mean(axis=0, keepdims=True), 1
    return best[1], best[2], best[3]


def annotate_neurons(neurons: pd.DataFrame, channels, *, barcodes: BarcodeConfig | None = None,
                     cell_types: CellTypeConfig | dict | None = None,
                     background: dict | None = None) -> pd.DataFrame:
    """Barcodes and cell types in one call, channels picked by role.

    Parameters
    ----------
    neurons : pandas.DataFrame
        From :func:`graph.measure.measure_neurons`.
    channels : Volume or sequence of Channel
        Channels with roles (``barcode`` channels in bit order, ``marker`` channels).
    barcodes : BarcodeConfig, optional
    cell_types : CellTypeConfig or dict, optional
    background : dict, optional
        Channel name -> background level; defaults to ``neurons.attrs["background"]``.

    Returns
    -------
    pandas.DataFrame
        ``neurons`` with the barcode and cell-type columns added.
    """
    channel_list = list(getattr(channels, "channels", channels))
    barcode_names = [c.name for c in channel_list if c.role == "barcode"]
    marker_names = [c.name for c in channel_list if c.role == "marker"]
    out = call_barcodes(neurons, barcode_names, barcodes, background=background)
    return assign_cell_types(out, marker_names, cell_types, background=background)
