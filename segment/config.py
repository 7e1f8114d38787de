"""Configuration of the segmentation stage.

Every field has a working default tuned on the bundled sample volume; a
workflow file may override any of them under its ``segment:`` section. Lengths
are in voxels (z, y, x) unless the field says otherwise; a single number is
used for all three axes.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline import StrictModel

__all__ = ["SegmentConfig"]

Triple = tuple[float, float, float]

#: The final contact pass reads this many PSF sigmas (plus the unmixing radius) around a block.
CONTACT_PSF_SIGMAS = 3.0
#: Kernel half-width, in sigmas, of ``contact_unmix_smoothing``.
SMOOTHING_TRUNCATE = 4.0
#: The contact fit's back projector is never narrower than this (voxels) unless the PSF is:
#: a narrower Gaussian stops averaging the per-voxel noise (see ``contact_unmix_back_projector``).
BACK_PROJECTOR_FLOOR = 1.0


def _triple(value, name):
    if isinstance(value, (int, float)):
        value = (float(value),) * 3
    value = tuple(float(v) for v in value)
    if len(value) != 3:
        raise ValueError(f"{name} needs one value or three (z, y, x), got {list(value)}")
    return value


class SegmentConfig(StrictModel):
    """Parameters of neuron segmentation (fragments, stitching, agglomeration).

    Attributes
    ----------
    sigma : float or (z, y, x)
        Gaussian smoothing of the fill (and membrane) channel before the
        foreground threshold and the boundary map, in ``sigma_unit``.
    barcode_sigma : float or (z, y, x)
        Gaussian smoothing of the barcode channels before their discontinuity
        is measured, in ``sigma_unit``.
    psf_sigma : float or (z, y, x)
        Standard deviation of the microscope's point-spread function, in
        ``sigma_unit``, for the deconvolution of the barcode channels. The
        default, 1.5 voxels, is the PSF of the bundled sample (0.6, 0.15,
        0.15 um at 0.4, 0.1, 0.1 um voxels); set it for your microscope.
    deconvolution_iterations : int
        Richardson-Lucy iterations on the barcode channels (0 disables, except
        with ``deconvolution_method: wiener``, where they refine the Wiener
        estimate). 24 suits the default binned method; use 16 with full
        ``richardson-lucy``.
        Deconvolution separates the codes of neurites that the PSF blurs
        together, above all along z. More iterations separate them better
        (measured in BENCHMARKS.md) and cost time linearly.
    deconvolution_acceleration : {"nesterov", "none"}
        Momentum schedule of the iterations (see :func:`segment.kernels.deconvolve`);
        ``nesterov`` separates codes in 16 iterations better than plain Richardson-Lucy in 30.
    deconvolution_method : {"binned-richardson-lucy", "richardson-lucy", "wiener"}
        ``richardson-lucy``: ``deconvolution_iterations`` (accelerated)
        Richardson-Lucy iterations from the observation (the default until
        2026-11-26, with 16 iterations). ``binned-richardson-lucy``
        (default): the iterations on the 2x2-binned (y, x) grid, a quarter of
        the voxels; their gain, upsampled, multiplies the observation. With 24
        iterations it costs ~0.55 of 16 full-resolution ones and has lower VOI
        and ARAND on four sample seeds. ``wiener``: one
        Wiener / Tikhonov inverse filter of the Gaussian PSF (a DCT per channel
        and block, about the cost of four Gaussian blurs), clipped to be
        positive, then ``deconvolution_iterations`` Richardson-Lucy iterations
        refining it (0: the Wiener estimate alone). See
        :func:`segment.kernels.deconvolve` and BENCHMARKS.md for the measured
        quality and speed of both. The Wiener filter reaches further than the
        PSF: keep ``halo`` at least 6 PSF sigmas (the default halo is).
    wiener_balance : float
        Regularisation ``lambda`` of the Wiener filter ``H / (H^2 + lambda)``
        (noise-to-signal power; > 0, at most 1): smaller deconvolves more
        sharply and amplifies noise more (peak gain ``1 / (2 sqrt(lambda))``).
    sigma_unit : {"voxel", "physical"}
        ``physical`` divides the sigmas by the volume's voxel size.
    norm_percentiles : (low, high)
        Robust global normalisation: every channel is mapped so that these
        percentiles of a global sample become 0 and 1 (the same numbers for
        every block, so blocks agree).
    sample_voxels : int
        Upper bound on the voxels read (per channel, whole chunks spread over
        the volume) to estimate the global percentiles and the Otsu threshold.
    threshold_method : {"otsu", "fixed"}
        Foreground threshold on the smoothed, normalised fill: Otsu's threshold
        computed once on the global sample, or ``threshold``.
    threshold : float
        The fixed foreground threshold (normalised fill units) when
        ``threshold_method == "fixed"``.
    threshold_scale : float
        Multiplies the Otsu threshold (below 1 keeps dim, thin neurites).
    use_barcodes : bool
        Use the barcode channels at all (boundary map, seeds, agglomeration).
        ``False`` is the fill-only ablation.
    barcode_method : {"codebook", "greedy"}
        ``codebook`` (default): discover the barcode codes globally, label
        every foreground voxel with the closest code, and join touching
        pieces of one code (see :mod:`segment.codebook`). ``greedy``:
        watershed fragments joined by greedy agglomeration on mean barcode
        distances (see :mod:`segment.agglomerate`). Either falls back to the
        fill-only watershed when the volume has no barcode channels (and
        ``codebook`` to ``greedy`` when no code is found).
    code_pure_discontinuity : float
        Codebook voxels must have a barcode discontinuity below this.
    code_min_brightness : float
        Codebook voxels must have a normalised barcode channel at least this bright.
    code_min_gap : float
        Smallest on/off ratio gap for a codebook voxel to vote for its code.
    code_min_support : int
        Pure voxels (summed over all blocks) a code needs to enter the codebook.
    code_merge_distance : float
        Codes whose mean directions are closer than this are one identity.
    code_split_distance : float
        A code whose pure voxels' directions form two groups at least this far
        apart (unit vectors) becomes two identities: two neurons that share a
        binary code (a collision) but not their expression levels. 0 disables.
        Keep it at or above ``code_merge_distance``.
    code_split_separation : float
        The two groups must also be two modes, not one spread cut in half:
        Ashman's D along the axis through them at least this
        (:func:`segment.codebook.split_code`; single-neuron codes measured
        2.1–3.05, shared codes 3.7–7.5 on the bundled samples).
    code_mixture_coherence : float
        A code that is the union of more frequent codes is dropped as a blur
        mixture only when its voxels' mean unit vector is shorter than this
        (:func:`segment.codebook.codebook_from_statistics`); a neuron whose
        code is such a union keeps it. 1 drops every union.
    link_radius : float
        Pieces of one codebook identity whose bounding boxes come within this
        physical distance (the volume's unit) are joined: long-range linking
        across crossings and dim stretches. 0 joins only overlapping boxes.
    link_min_size : int
        Pieces smaller than this are not linked (they join a neighbour instead).
    despeckle_size : int
        Connected pieces of one identity smaller than this (voxels, in the
        block's read region) are flooded by their neighbours. 50 (was 100
        until 2026-11-26): pieces of 50-100 voxels are mostly right (measured
        on four sample seeds, see ``despeckle_landscape``).
    despeckle_landscape : {"discontinuity", "boundary"}
        The landscape on which specks and code-less foreground voxels are
        flooded: ``discontinuity`` (default), the barcode discontinuity, so a
        contact voxel goes to the neighbour whose barcode changes least
        towards it; ``boundary``, the boundary map (fill dip plus
        discontinuity; the default until 2026-11-26). This landscape with
        ``despeckle_size`` 50 instead of the boundary map with 100 lowered
        VOI by 0.017-0.028 on four sample seeds.
    refine_contacts : bool
        After flooding, re-decide every labelled voxel that touches another
        identity by its own barcode: it takes the identity, among its own and
        its 26 neighbours', with the highest cosine score
        (:func:`segment.codebook.refine_contacts`). Flooding hands dim and
        speck voxels at a contact to a whole region; this gives them back to
        the neighbour their barcode points to (VOI -0.05 to -0.06 on four
        seeds). ``False``: the labels after flooding (until 2026-11-26).
    refine_neuron_contacts : bool
        After agglomeration, while the final labels are written, re-decide
        once more every labelled voxel that touches another *neuron*
        (``contact_method`` says how; :func:`segment.blockwise.relabel_step`).
        Fragments are decided against the codebook's codes, before the
        agglomeration knows which neurons meet where; the final labels know.
        Contact voxels carry most of the VOI left: giving the wrongly
        assigned voxels that touch their true neuron back to it would lower
        the demo's VOI from 0.57 to 0.12. With the cosine method VOI fell by
        0.10-0.12 on six sample seeds (0.57-0.62 to 0.45-0.52); the unmixing
        method lowers it further (README, BENCHMARKS.md).
        Needs barcodes and a codebook;
        ``False``: labels straight from the lookup table (until 2026-11-26).
    contact_deconvolution_iterations : int
        Richardson-Lucy iterations (``deconvolution_method``) of the final
        contact pass with ``contact_method`` cosine. More than ``deconvolution_iterations``: sharper
        barcodes decide contacts better, while the codebook, fragments and
        merges upstream are tuned for the default and merged neurons with 40
        (BENCHMARKS.md).
    contact_method : {"unmix", "cosine"}
        How the final contact pass (``refine_neuron_contacts``) decides a
        contact voxel. ``unmix`` (default): fit every neuron's abundance
        near its current label to the raw barcode channels under the PSF
        (Richardson-Lucy on abundances with the neurons' barcodes known,
        :mod:`segment.unmix`), then give the voxel the neuron of largest
        abundance. ``cosine``: deconvolve each channel
        (``contact_deconvolution_iterations``) and take the neuron whose
        barcode direction is closest (until 2026-11-27). Measured on
        seeds 0-5: VOI 0.350-0.385 with unmix, 0.452-0.520 with cosine; the
        whole CPU pipeline runs 2.9x longer with unmix (BENCHMARKS.md,
        ``python -m benchmarks.contact_cost``).
    contact_unmix_iterations : int
        Iterations of the abundance fit. It fits the noise too when run for
        long: VOI on the sample seeds is lowest near 50-60 and rises again
        past 80 (session 6, with the matched back projector). With the smoothed
        decision (session 9; seed 2, two rounds, brightness 0.25): 0.315 /
        0.305 / 0.309 at 60 / 80 / 100. With ``contact_unmix_back_projector``
        2/3 the fit gets there sooner: see that field.
    contact_unmix_back_projector : float
        Sigma of the Gaussian that blurs each iteration's ratio back onto the
        abundances, as a fraction of ``psf_sigma`` per axis, but never below
        one voxel (:data:`BACK_PROJECTOR_FLOOR`) unless the PSF itself is
        narrower. 1 is classic Richardson-Lucy, whose back projector is the
        PSF; a narrower one (an *unmatched* back projector, Guo et al. 2020,
        Nat. Biotechnol. 38:1337) takes larger steps. Sum of VOI split and
        merge, three default rounds, PSF 1.5 voxels, seeds 0 (64x256x256)
        and 1-3 (the demo size): 1 with 60 iterations 0.266 / 0.279 / 0.383
        / 0.268; 2/3 with 30 iterations 0.272 / 0.294 / 0.385 / 0.288, with
        40 0.252 / 0.271 / 0.361 / 0.263, with 50 0.253 / 0.272 / 0.364 /
        0.260. Narrower ones fit the noise: 1/3 with 30 iterations 0.53; no
        back blur at all, 1.43 with 60. Below one voxel a Gaussian no longer
        averages the per-voxel noise: with a PSF of 1 voxel (demo-size
        samples, seeds 0-2) 2/3 with 40 iterations gave 0.117 / 0.115 /
        0.130, the PSF with 60 0.102 / 0.103 / 0.114, and the PSF with 40
        (what the floor gives there) 0.099 / 0.103 / 0.108 (session 23,
        BENCHMARKS.md).
    contact_unmix_radius : int
        How far (voxels, per axis) a neuron's abundance may reach beyond its
        current label; the candidates of a contact voxel are the neurons
        labelled within this box. Seed 2 (two rounds, brightness 0.25):
        VOI 0.340 / 0.315 / 0.309 at 1 / 2 / 3.
    contact_unmix_background : float
        Constant (in units of the normalised barcode channels) added to the
        observation and the model of the abundance fit, so that voxels with
        little signal are not fitted to their noise. Seed 2 as above: 0.315
        at 0.05, 0.310 at 0.02.
    contact_unmix_rounds : int
        How many times the unmixing pass runs, each on the labels the
        previous round left (with the neurons' core barcodes taken again).
        Each round costs as much as the first. On the demo sample, before
        ``contact_unmix_smoothing`` and ``contact_unmix_grow``, two rounds
        gave VOI 0.340 instead of 0.359. With both, the brightness power,
        radius 3 and background 0.02: seed 2 0.304 / 0.296 and seed 5
        0.296 / 0.286 with two / three rounds (session 9).
    contact_unmix_early_iterations : int or None
        Iterations of the abundance fit in every round but the last, never
        more than ``contact_unmix_iterations`` (None: that many in every
        round). An early round's labels only seed the next round's core
        barcodes and candidates, and the next round decides every contact
        voxel again, so its fit need not go as far; the last round's
        decision is the result and needs all of
        ``contact_unmix_iterations``. VOI split + merge, three rounds, 40
        iterations in the last, seeds 0 (64x256x256) and 1-3 (the demo size),
        whole pipeline runs (session 24): every round 40, 0.251 / 0.271 /
        0.361 / 0.263; first two rounds 25, 0.252 / 0.270 / 0.361 / 0.264
        with a quarter fewer iterations; 20, 0.253 / 0.271 / 0.362 / 0.265.
        The second round matters more than the first (40, 20, 40: 0.253 on
        seed 0; 20, 40, 40: 0.251), and the last most (40, 40, 20: 0.350).
    contact_unmix_smoothing : float or (z, y, x) or None
        Gaussian sigma by which each neuron's fitted abundance is blurred
        before a voxel takes the largest
        (:func:`segment.unmix.smooth_abundances`), per axis as a fraction of
        ``psf_sigma`` (so it needs no unit): it averages the per-voxel
        expression noise over a few neighbours. None decides on the raw fit.
        Demo sample (PSF sigma 1.5 voxels on every axis), one round: VOI
        0.360 raw, 0.340 with (0.2, 0.4, 0.4); sigmas of (0.5, 0.7, 0.7) and
        (0.7, 0.7, 0.7) voxels gave 0.376 and 0.524.
    contact_unmix_grow : float or None
        An unlabelled voxel within ``contact_unmix_radius`` of a neuron whose
        (smoothed) abundances sum to more than this (normalised barcode units)
        joins the neuron of largest abundance: the fit finds dim neurite
        voxels that the foreground threshold missed (on the demo sample 2616
        truth voxels were unlabelled; truth background next to a neuron sums
        to at most 0.01 in 99 % of its voxels). None: the pass never labels
        an unlabelled voxel.
    contact_unmix_brightness : float
        Power of each neuron's brightness by which its abundance is divided
        before the decision (:func:`segment.unmix.unmix_contacts`'s
        ``brightness_power``): 0 compares abundances, so a bright neuron
        wins its dim neighbour's boundary voxels; 1 compares occupancies,
        but the brightness of thin neurites is underestimated. Seed 2, two
        smoothed rounds: VOI 0.326 at 0, 0.315 at 0.25, 0.316 at 0.5, 0.328
        at 0.75, 0.354 at 1.
    contact_halo : (z, y, x) int or None
        Context read around each block's write region for the final contact
        pass (either method). ``None`` (default): per axis, three PSF sigmas
        plus one (the 26-neighbour contact test) plus, for each of
        ``contact_unmix_rounds``, ``contact_unmix_radius`` and the reach of
        ``contact_unmix_smoothing``'s kernel, never more than ``halo``: with
        today's three rounds that is ``halo``, (8, 16, 16), for the sample;
        with one plain round of radius 2 it is 8 voxels on every axis. The
        pass only needs that reach around the write region, and its cost
        grows with the read region: with one plain round an interior
        64x128x128 block reads 80x144x144 voxels instead of 80x160x160.
    barcode_weight : float
        How much barcode discontinuity (0..1) adds to the boundary map
        (0 disables that term: ablation). The boundary map is the watershed
        landscape of the greedy and fill-only methods and, with a codebook,
        only the landscape on which specks are flooded; barcodes still decide
        identities and merges unless ``use_barcodes`` is false.
    barcode_floor : float
        Regulariser of the barcode direction ``b / sqrt(|b|^2 + floor^2)``
        (normalised units): dim voxels, whose direction is noise, change little.
    membrane_weight : float
        Weight of the smoothed membrane channel (if the volume has one) in the
        boundary map.
    fill_weight : float
        Weight of the inverted smoothed fill in the boundary map.
    seed_method : {"barcode", "hmaxima", "local_max"}
        ``barcode``: seeds are connected regions of one quantised barcode
        (bit ``k`` on where channel ``k`` is at least ``code_alpha`` times the
        voxel's brightest barcode channel), at least ``seed_min_size`` voxels;
        volumes without barcode channels fall back to ``hmaxima``.
        ``hmaxima`` / ``local_max``: maxima of the distance transform of the
        foreground interior, with h-maxima (robust to noise, CPU) or plain
        local maxima at least ``seed_min_distance`` apart (cheaper, GPU).
    seed_min_size : int
        Smallest barcode seed region, in voxels.
    code_alpha : float
        Relative brightness at which a barcode bit counts as on.
    code_floor : float
        Voxels whose brightest normalised barcode channel is below this get no
        code (no seed, no codebook identity: they are flooded from their
        neighbours).
    seed_h : float
        h-maxima height, in voxels of the distance transform (physical
        distances divided by the smallest voxel size).
    seed_min_distance : float
        Minimal distance between ``local_max`` seeds, in voxels (xy).
    seed_barcode_cut : float
        Voxels whose weighted barcode discontinuity exceeds this are cut out of
        the foreground before the distance transform, so touching neurons with
        different barcodes get separate seeds.
    halo : (z, y, x) int
        Context read around each block's write region.
    min_fragment_size : int
        Fragments (and agglomerated clusters) smaller than this many voxels are
        merged into their best neighbour regardless of barcode evidence (their
        mean barcode is too noisy to trust). 500 voxels (2 µm³ at the sample's
        0.4 × 0.1 × 0.1 µm) removes the small code pieces that no link
        reached: on seeds 0-5 of the sample 24-26 segments for 24 neurons
        instead of 26-31, with VOI, partner accuracy and edge F1 equal or
        better on every seed (20 before; measured in session 4).
    min_neuron_size : int
        Final segments smaller than this many voxels become background (0).
    min_mean_fill_ratio : float
        Segments whose mean smoothed fill is below this many times the
        foreground threshold are the dim halo of a neurite (where sharp
        deconvolution turns noise into codes), not neurons: each joins the
        neighbour it touches most (or is dropped when alone). On the bundled
        sample real neurons have 2.1 to 5.6 times the threshold. 0 disables.
    merge_threshold : float
        Agglomeration stops when the best remaining edge score exceeds this.
        The score of an edge is the fill *dip* on the contact (1 - contact
        fill / inner fill, 0 for a neurite cut crosswise) plus
        ``barcode_merge_weight`` times the barcode distance of the two sides
        plus ``contact_barcode_weight`` times the mean barcode discontinuity
        on the contact (see :mod:`segment.agglomerate`).
    barcode_merge_weight : float
        Weight of the barcode distance in the edge score.
    contact_barcode_weight : float
        Weight of the mean barcode discontinuity along the contact.
    barcode_conflict : float
        Two clusters whose mean barcode directions are further apart than this
        (Euclidean distance of unit vectors, 0..sqrt 2) are never merged.
    isolate_agglomeration : bool
        Run the global agglomeration (and the proximity links) in a forked
        child process (:mod:`pipeline.isolate`; Linux), so the Python objects
        it builds leave with the child instead of keeping a fragmented heap
        resident through the relabel pass. The same result either way.
    """

    sigma: Triple = (0.5, 1.0, 1.0)
    barcode_sigma: Triple = (0.5, 1.0, 1.0)
    psf_sigma: Triple = (1.5, 1.5, 1.5)
    deconvolution_iterations: int = Field(default=24, ge=0)
    deconvolution_acceleration: Literal["nesterov", "none"] = "nesterov"
    deconvolution_method: Literal["binned-richardson-lucy", "richardson-lucy", "wiener"] = "binned-richardson-lucy"
    wiener_balance: float = Field(default=0.003, gt=0, le=1)
    sigma_unit: Literal["voxel", "physical"] = "voxel"
    norm_percentiles: tuple[float, float] = (1.0, 99.5)
    sample_voxels: int = Field(default=2**23, ge=1000)
    threshold_method: Literal["otsu", "fixed"] = "otsu"
    threshold: float = 0.2
    threshold_scale: float = Field(default=0.4, gt=0)
    use_barcodes: bool = True
    barcode_method: Literal["codebook", "greedy"] = "codebook"
    code_pure_discontinuity: float = Field(default=0.15, gt=0)
    code_min_brightness: float = Field(default=0.3, ge=0)
    code_min_gap: float = Field(default=2.0, ge=1)
    code_min_support: int = Field(default=1000, ge=1)
    code_merge_distance: float = Field(default=0.2, ge=0)
    code_split_distance: float = Field(default=0.2, ge=0)
    code_split_separation: float = Field(default=3.4, gt=0)
    code_mixture_coherence: float = Field(default=0.97, ge=0, le=1)
    despeckle_size: int = Field(default=50, ge=0)
    despeckle_landscape: Literal["discontinuity", "boundary"] = "discontinuity"
    refine_contacts: bool = True
    refine_neuron_contacts: bool = True
    contact_deconvolution_iterations: int = Field(default=40, ge=0)
    contact_method: Literal["unmix", "cosine"] = "unmix"
    contact_unmix_iterations: int = Field(default=40, ge=1)
    contact_unmix_back_projector: float = Field(default=2 / 3, gt=0, le=1)
    contact_unmix_radius: int = Field(default=3, ge=1, le=8)
    contact_unmix_background: float = Field(default=0.02, gt=0)
    contact_unmix_rounds: int = Field(default=3, ge=1, le=10)
    contact_unmix_early_iterations: int | None = Field(default=25, ge=1)
    contact_unmix_smoothing: Triple | None = (0.2, 0.4, 0.4)
    contact_unmix_grow: float | None = Field(default=0.05, gt=0)
    contact_unmix_brightness: float = Field(default=0.25, ge=0, le=1)
    contact_halo: tuple[int, int, int] | None = None
    link_radius: float = Field(default=2.0, ge=0)
    link_min_size: int = Field(default=20, ge=0)
    barcode_weight: float = Field(default=1.0, ge=0)
    barcode_floor: float = Field(default=0.1, gt=0)
    membrane_weight: float = Field(default=1.0, ge=0)
    fill_weight: float = Field(default=1.0, ge=0)
    seed_method: Literal["barcode", "hmaxima", "local_max"] = "barcode"
    seed_min_size: int = Field(default=20, ge=1)
    code_alpha: float = Field(default=0.5, gt=0, lt=1)
    code_floor: float = Field(default=0.1, ge=0)
    seed_h: float = Field(default=0.5, ge=0)
    seed_min_distance: float = Field(default=3.0, ge=1)
    seed_barcode_cut: float = Field(default=0.3, gt=0)
    halo: tuple[int, int, int] = (8, 16, 16)
    min_fragment_size: int = Field(default=500, ge=0)
    min_neuron_size: int = Field(default=100, ge=0)
    min_mean_fill_ratio: float = Field(default=1.75, ge=0)
    merge_threshold: float = Field(default=0.5, ge=0)
    barcode_merge_weight: float = Field(default=1.0, ge=0)
    contact_barcode_weight: float = Field(default=0.0, ge=0)
    barcode_conflict: float = Field(default=0.4, gt=0)
    isolate_agglomeration: bool = True

    @field_validator("sigma", "barcode_sigma", "psf_sigma", mode="before")
    @classmethod
    def _expand(cls, value, info):
        value = _triple(value, info.field_name)
        if any(v < 0 for v in value):
            raise ValueError(f"{info.field_name} must be >= 0, got {list(value)}")
        return value

    @field_validator("contact_unmix_smoothing", mode="before")
    @classmethod
    def _expand_optional(cls, value, info):
        return None if value is None else cls._expand(value, info)

    @field_validator("halo", "contact_halo", mode="before")
    @classmethod
    def _halo(cls, value, info):
        if value is None and info.field_name == "contact_halo":
            return None
        if isinstance(value, int):
            value = (value,) * 3
        value = tuple(int(v) for v in value)
        if len(value) != 3 or any(v < 0 for v in value):
            raise ValueError(f"{info.field_name} needs three sizes >= 0 (z, y, x), got {list(value)}")
        return value

    @model_validator(mode="after")
    def _check(self):
        lo, hi = self.norm_percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"norm_percentiles must satisfy 0 <= low < high <= 100, got {[lo, hi]}")
        return self

    def contact_halo_voxels(self, voxel_size) -> tuple[int, int, int]:
        """The read-region context (z, y, x) of the final contact pass for ``voxel_size`` (see ``contact_halo``)."""
        if self.contact_halo is not None:
            return tuple(self.contact_halo)
        psf = self.sigma_voxels(voxel_size, "psf_sigma")
        smoothing = self.contact_smoothing_voxels(voxel_size) or (0.0, 0.0, 0.0)
        # each round may move a label by the radius plus the smoothing's reach, from
        # labels the previous round decided: errors near the read edge creep in by as much
        rounds = self.contact_unmix_rounds if self.contact_method == "unmix" else 1
        need = (math.ceil(CONTACT_PSF_SIGMAS * s) + 1
                + rounds * (self.contact_unmix_radius + int(SMOOTHING_TRUNCATE * m + 0.5))
                for s, m in zip(psf, smoothing))
        return tuple(min(int(n), h) for n, h in zip(need, self.halo))

    def contact_smoothing_voxels(self, voxel_size) -> Triple | None:
        """``contact_unmix_smoothing`` in voxels for ``voxel_size`` (None when off)."""
        if self.contact_unmix_smoothing is None:
            return None
        psf = self.sigma_voxels(voxel_size, "psf_sigma")
        return tuple(f * p for f, p in zip(self.contact_unmix_smoothing, psf))

    def contact_back_projector_voxels(self, voxel_size) -> Triple:
        """The sigma (z, y, x) of the contact fit's back projector in voxels for ``voxel_size``.

        ``contact_unmix_back_projector`` times the PSF's sigma on each axis, but
        not below :data:`BACK_PROJECTOR_FLOOR` voxels, nor above the PSF's sigma.
        """
        psf = self.sigma_voxels(voxel_size, "psf_sigma")
        return tuple(max(self.contact_unmix_back_projector * p, min(p, BACK_PROJECTOR_FLOOR)) for p in psf)

    def sigma_voxels(self, voxel_size, which: str = "sigma") -> Triple:
        """A sigma field (``sigma``, ``barcode_sigma`` or ``psf_sigma``) in voxels for ``voxel_size`` (z, y, x)."""
        value = getattr(self, which)
        if self.sigma_unit == "physical":
            return tuple(s / v for s, v in zip(value, voxel_size))
        return tuple(value)
