"""Refinement of the deep localizations on the raw pixels (docs/method.md, "Refinement at the CRLB").

Each localization is refitted by maximum likelihood (physics/fit.py) in a box of ``2 ceil(3 sigma + 1/2) + 1``
raw pixels around it (3 sigma beyond the emitter wherever it lies in the centre pixel), together with up to
``NEIGHBOURS - 1`` other localizations whose light reaches the box (physics/boxes.py),
starting from the deep positions. The PSF width is fitted on the stack's isolated spots (a
running median over the frames seen), unless given or known before the first frame (:class:`RefinerPrior`:
inference/pipeline.py learns it from the stack first, so that the first frames are not fitted with the
default width). The reported uncertainty combines the fit's
Cramer-Rao bound (what the photons allow), the spot's width beyond the PSF's (two emitters closer than
the PSF width, localized as one at their centre), and, where other localizations lie near, the
diffusion samples' calibrated spread (overlapping spots: where the scene is ambiguous;
``crowded``: another localization within ``CROWDED`` PSF sigmas):
``sigma^2 = sigma_fisher^2 + max(excess, hidden) + DIFFUSION_WEIGHT * sigma_diffusion^2 * crowded`` with
``excess = s^2 - sigma_psf^2`` where the box's fitted width ``s`` exceeds the PSF's by more than
``WIDTH_NOISE`` of its Cramer-Rao bound (else 0), and ``hidden = (max(s, sigma_psf) + sigma_s)^2 - sigma_psf^2``
(``sigma_s`` the width's bound) where the spot carries the photons of more than one of the stack's single
emitters (``pair_like``; ``Refiner.single_photons``), else 0: two emitters closer than the width's noise shows.
An isolated spot's position is limited by its photons alone, which the bound states (the diffusion spread
there only restates it). A fit that moves a localization by more than ``MAX_SHIFT`` raw pixels, or leaves
its box unexplained (chi-square per degree of freedom above ``MAX_CHI2``: an emitter the deep model
missed), keeps the deep position and uncertainty. A spot wider than the PSF, or with two emitters'
photons, is also fitted as two emitters, started apart along its long axis; where the second emitter
raises the log-likelihood by more than ``SPLIT_GAIN / 2`` (``SPLIT_GAIN_CROWDED / 2`` where other emitters
share the box; ``SPLIT_GAIN_PAIR / 2`` where the photons already say two), both carry at least
``SPLIT_SHARE`` of the photons, both lie in the frame and each lies nearer its truth than the pair's
centre would (half their separation at least their lateral bound), the pair replaces it (two
localizations, each with its own bound). With ``Refiner.search`` the light the refit leaves unexplained is
searched for emitters the localizations missed (residual_search.py); those found are refitted with their
neighbours (``refine_frame(..., which=...)``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy.spatial import cKDTree

from ..localizations import Localizations
from ..physics.boxes import Boxes, box_half_width, fit_frame, neighbour_slots, reaching
from ..physics.camera import Camera
from ..physics.fit import ImagingModel, RoiFit
from .residual_search import find_missed

MAX_SHIFT = 1.0           # raw pixels: a refined position further than this from the deep one is rejected
MAX_CHI2 = 3.0            # a box the fit does not explain (a missed emitter: chi-square/dof above this) is rejected
DIFFUSION_WEIGHT = 0.03   # c in sigma^2 = sigma_fisher^2 + max(excess, hidden) + c sigma_diffusion^2 crowded
CROWDED = 5.0             # PSF sigmas: a localization with another this near is crowded (its spread counts)
WIDTH_NOISE = 2.0         # a box's fitted width counts as wider than the PSF beyond this many of its bounds
DEFAULT_PSF_SIGMA = 1.0   # raw pixels: until the stack's isolated spots have given a width
MIN_WIDTH_FITS = 20       # isolated-spot fits before their median replaces the default width
MAX_LEARNED = 1000        # widths and single-emitter photons learned, at most: then the refiner stops changing
MAX_WIDTH_CRLB = 0.25     # px: isolated-spot widths known better than this enter the median (dim spots too)
# twice the log-likelihood a second emitter must add to a wide spot alone in its box (chi2(3): p ~ 1e-3)
SPLIT_GAIN = 16.0
SPLIT_GAIN_CROWDED = 25.0 # the same where other emitters share the box (their misfit also rewards a second emitter)
SPLIT_GAIN_PAIR = 12.0    # the same where the spot has two emitters' photons (pair_like: they already say two)
SPLIT_SHARE = 0.15        # each emitter of a split carries at least this share of the pair's photons
SPLIT_SEPARATION = (0.3, 3.0)   # PSF sigmas: the range of separations a split may take
PAIR_PHOTONS = np.sqrt(2) # a spot above this many times the single emitters' median photons may be two (log midpoint)
PAIR_SPREAD = 1.5         # ... and beyond this many of their log-photon spreads (a broad distribution hides pairs)


@dataclass
class RefinedFrame:
    """One frame's refit, per localization out: ``parent`` (the input localization it comes from; a split
    spot gives two), raw-pixel ``row``/``col``, ``fisher`` (per-axis Cramer-Rao bound, px), ``excess``
    (px^2: the variance of the spot's width beyond the PSF's), ``hidden`` (px^2: the pair's width that a spot
    with two emitters' photons may hide, else 0), ``crowded`` (another localization within
    ``CROWDED`` PSF sigmas), ``photons``, ``background`` (photons/px), and ``ok`` (the fit was kept)."""

    parent: np.ndarray
    row: np.ndarray
    col: np.ndarray
    fisher: np.ndarray
    excess: np.ndarray
    hidden: np.ndarray
    crowded: np.ndarray
    photons: np.ndarray
    background: np.ndarray
    ok: np.ndarray

    def with_splits(self, split: Split) -> RefinedFrame:
        """The split spots' first emitters in their place, their second ones appended."""
        i = split.index
        out = RefinedFrame(*(np.array(getattr(self, k)) for k in self.__dataclass_fields__))
        out.row[i], out.col[i] = split.row[:, 0], split.col[:, 0]
        out.fisher[i], out.photons[i] = split.fisher[:, 0], split.photons[:, 0]
        out.excess[i], out.hidden[i], out.crowded[i], out.ok[i] = 0.0, 0.0, True, True
        zero, true = np.zeros(len(i)), np.ones(len(i), bool)
        second = RefinedFrame(i, split.row[:, 1], split.col[:, 1], split.fisher[:, 1], zero, zero, true,
                              split.photons[:, 1], self.background[i], true)
        return out.concat(second)

    def take(self, index) -> RefinedFrame:
        return RefinedFrame(*(getattr(self, k)[index] for k in self.__dataclass_fields__))

    def concat(self, other: RefinedFrame) -> RefinedFrame:
        return RefinedFrame(*(np.concatenate([getattr(self, k), getattr(other, k)]) for k in self.__dataclass_fields__))


@dataclass
class Split:
    """Spots fitted as two emitters: ``index`` ``(m,)`` of the localizations, and per emitter ``(m, 2)``
    raw-pixel ``row``, ``col``, per-axis bound ``fisher`` (px) and ``photons``."""

    index: np.ndarray
    row: np.ndarray
    col: np.ndarray
    fisher: np.ndarray
    photons: np.ndarray


def refine_frame(photoelectrons: np.ndarray, rows: np.ndarray, cols: np.ndarray, model: ImagingModel,
                 single_photons: tuple[float, float] | None = None, which: np.ndarray | None = None) -> RefinedFrame:
    """Maximum-likelihood positions of one frame's localizations, the PSF width fitted per box from
    ``model.psf_sigma`` on (see the module docstring); ``single_photons``: the stack's single emitters' median
    photons and log spread (``Refiner.single_photons``), None where unknown; ``which``: the localizations
    refitted (sorted indices; all by default), the others their neighbours only, fitted beside them."""
    which = np.arange(len(rows)) if which is None else which
    if not len(which):
        z = np.zeros(0)
        return RefinedFrame(z.astype(int), z, z, z, z, z, z.astype(bool), z, z, z.astype(bool))
    psf_sigma, half = model.psf_sigma, box_half_width(model.psf_sigma)
    boxes = Boxes.around(photoelectrons, rows, cols, half, model, which=which)
    fit = boxes.fit()
    row, col = fit.row[:, 0] + boxes.corner[:, 0], fit.col[:, 0] + boxes.corner[:, 1]
    fisher = axis_bound(fit.crlb_row[:, 0], fit.crlb_col[:, 0])
    ok = (np.hypot(row - rows[which], col - cols[which]) <= MAX_SHIFT) & (fit.chi2 <= MAX_CHI2) & np.isfinite(fisher) \
        & (fisher > 0)
    at_row, at_col = rows.copy(), cols.copy()   # the frame's positions once refitted
    at_row[which], at_col[which] = row, col = np.where(ok, row, rows[which]), np.where(ok, col, cols[which])
    # the width from a second fit: with a free width, positions scatter more in crowded boxes (benchmarks.md)
    wide = Boxes.around(photoelectrons, at_row, at_col, half, model, which=which).fit(fit_sigma=True)
    width = width_excess(wide.sigma, wide.crlb_sigma, psf_sigma)
    pair = np.zeros(len(rows), bool)
    pair[which] = pair_like(fit.photons[:, 0], single_photons) & np.isfinite(wide.crlb_sigma)
    hidden = np.where(pair[which], hidden_pair_excess(wide.sigma, wide.crlb_sigma, psf_sigma), 0.0)
    refined = RefinedFrame(np.arange(len(which)), row, col, fisher, width, hidden,
                           crowded(rows, cols, psf_sigma)[which], fit.photons[:, 0], fit.background, ok)
    split = split_wide_spots(photoelectrons, at_row, at_col, which[(width > 0) | pair[which]], model, pair)
    refined = refined.with_splits(replace(split, index=np.searchsorted(which, split.index)))
    return replace(refined, parent=which[refined.parent])


def crowded(rows: np.ndarray, cols: np.ndarray, psf_sigma: float) -> np.ndarray:
    """Which localizations have another within ``CROWDED`` PSF sigmas."""
    if len(rows) < 2:
        return np.zeros(len(rows), bool)
    pts = np.column_stack([rows, cols])
    return cKDTree(pts).query(pts, k=2)[0][:, 1] <= CROWDED * psf_sigma


def axis_bound(crlb_row: np.ndarray, crlb_col: np.ndarray) -> np.ndarray:
    """The per-axis Cramer-Rao bound (px): root mean square of the row and column bounds."""
    return np.sqrt(0.5 * (crlb_row**2 + crlb_col**2))


def long_axis(boxes: Boxes, fit: RoiFit, psf_sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each box's spot (slot 0 of ``fit``) by its second moments above the background within 2.5 PSF sigmas:
    the unit vector ``(d_row, d_col)`` of its long axis and the separation ``d`` (px) of two PSFs that would
    widen it that much along it (``d^2 / 4`` beyond ``psf_sigma^2``)."""
    size = boxes.e.shape[-1]
    r = np.arange(size)[None, :, None] - fit.row[:, :1, None]
    c = np.arange(size)[None, None, :] - fit.col[:, :1, None]
    w = np.clip(boxes.e - fit.background[:, None, None], 0, None) * boxes.inside * (np.hypot(r, c) <= 2.5 * psf_sigma)
    total = w.sum(axis=(1, 2)) + 1e-9
    rr, cc, rc = ((w * a * b).sum(axis=(1, 2)) / total for a, b in ((r, r), (c, c), (r, c)))
    angle = 0.5 * np.arctan2(2 * rc, cc - rr)
    longest = 0.5 * (rr + cc) + np.sqrt(0.25 * (cc - rr) ** 2 + rc**2)
    d = np.clip(2 * np.sqrt(np.clip(longest - psf_sigma**2, 0, None)), 0.6 * psf_sigma, 2.5 * psf_sigma)
    return np.sin(angle), np.cos(angle), d


def split_wide_spots(photoelectrons: np.ndarray, rows: np.ndarray, cols: np.ndarray, candidates: np.ndarray,
                     model: ImagingModel, two_photons: np.ndarray | None = None) -> Split:
    """The ``candidates`` of a frame's localizations (spots wider than the PSF, or with two emitters' photons:
    ``two_photons``, per localization) fitted as one emitter and as two, with the same neighbours in the same box;
    the pairs that pass the module's tests (SPLIT_*)."""
    none = Split(np.zeros(0, int), *(np.zeros((0, 2)) for _ in range(4)))
    if not len(candidates):
        return none
    psf_sigma = model.psf_sigma
    one = Boxes.around(photoelectrons, rows, cols, box_half_width(psf_sigma), model, which=candidates)
    single = one.fit()
    u, v, d = long_axis(one, single, psf_sigma)
    r0, c0 = single.row[:, :1], single.col[:, :1]
    step_r, step_c = (0.5 * d * u)[:, None], (0.5 * d * v)[:, None]
    two = replace(one, rows=np.concatenate([r0 - step_r, r0 + step_r, one.rows[:, 1:]], axis=1),
                  cols=np.concatenate([c0 - step_c, c0 + step_c, one.cols[:, 1:]], axis=1),
                  active=np.concatenate([np.ones((len(candidates), 1), bool), one.active], axis=1))
    pair = two.fit()
    photons = pair.photons[:, :2]
    separation = np.hypot(*(np.diff(a[:, :2], axis=1)[:, 0] for a in (pair.row, pair.col))) / psf_sigma
    fisher = axis_bound(pair.crlb_row[:, :2], pair.crlb_col[:, :2])
    row, col = pair.row[:, :2] + one.corner[:, :1], pair.col[:, :2] + one.corner[:, 1:]
    h, w = photoelectrons.shape
    in_frame = ((row >= -0.5) & (row <= h - 0.5) & (col >= -0.5) & (col <= w - 0.5)).all(axis=1)
    gain = np.where(one.active[:, 1:].any(axis=1), SPLIT_GAIN_CROWDED, SPLIT_GAIN)
    if two_photons is not None:
        gain = np.where(two_photons[candidates], SPLIT_GAIN_PAIR, gain)
    resolved = 0.5 * separation * psf_sigma >= np.hypot(fisher[:, 0], fisher[:, 1])   # nearer the truth than the centre
    keep = ((pair.log_likelihood - single.log_likelihood) * 2 > gain) & (pair.chi2 <= MAX_CHI2) & resolved \
        & (photons.min(axis=1) >= SPLIT_SHARE * photons.sum(axis=1)) & in_frame \
        & (separation >= SPLIT_SEPARATION[0]) & (separation <= SPLIT_SEPARATION[1]) & np.isfinite(fisher).all(axis=1)
    return Split(candidates[keep], row[keep], col[keep], fisher[keep], photons[keep])


def pair_like(photons: np.ndarray, single_photons: tuple[float, float] | None) -> np.ndarray:
    """Which spots carry more photons than one of the stack's single emitters would: above ``PAIR_PHOTONS``
    times their median and ``PAIR_SPREAD`` of their log spread (``single_photons``: median, spread)."""
    if single_photons is None:
        return np.zeros(len(photons), bool)
    median, spread = single_photons
    return photons > median * max(PAIR_PHOTONS, np.exp(PAIR_SPREAD * spread))


def hidden_pair_excess(sigma: np.ndarray, crlb_sigma: np.ndarray, psf_sigma: float) -> np.ndarray:
    """``(max(sigma, psf_sigma) + crlb_sigma)^2 - psf_sigma^2`` (px^2): the width excess of two emitters
    that a spot's fitted width ``sigma`` allows within one bound, however little it exceeds the PSF's."""
    return (np.maximum(sigma, psf_sigma) + crlb_sigma) ** 2 - psf_sigma**2


def width_excess(sigma: np.ndarray, crlb_sigma: np.ndarray, psf_sigma: float) -> np.ndarray:
    """``sigma^2 - psf_sigma^2`` (px^2) where a spot's fitted width ``sigma`` exceeds the PSF's by more than
    ``WIDTH_NOISE`` of its bound, else 0: two emitters ``d`` apart fitted as one widen the spot by about
    ``d^2 / 8`` (per axis, on average), and their centre is ``d / 2`` from each, along one axis: a position
    variance of ``d^2 / 8`` per axis on average."""
    wider = sigma - psf_sigma > WIDTH_NOISE * crlb_sigma   # False where the fit gave no bound (NaN)
    return np.where(wider, sigma**2 - psf_sigma**2, 0.0)


def isolated_widths(photoelectrons: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                    model: ImagingModel) -> tuple[RoiFit | None, np.ndarray]:
    """Free-width fits (from ``model.psf_sigma``) of the localizations alone in their box; returns the fit
    (None without any) and which were isolated."""
    half = box_half_width(model.psf_sigma)
    _, active = neighbour_slots(rows, cols, half)
    alone = ~active[:, 1:].any(axis=1)
    if not alone.any():
        return None, alone
    fit, _ = fit_frame(photoelectrons, rows[alone], cols[alone], model, fit_sigma=True, k=1)
    return fit, alone


def photon_statistics(photons) -> tuple[float, float] | None:
    """Median photons and log spread (1.4826 median absolute deviation of log photons) of single emitters;
    None below ``MIN_WIDTH_FITS`` of them."""
    if len(photons) < MIN_WIDTH_FITS:
        return None
    median = float(np.median(photons))
    return median, float(1.4826 * np.median(np.abs(np.log(np.asarray(photons) / median))))


@dataclass(frozen=True)
class RefinerPrior:
    """What the refinement knows of a stack before its first frame: the PSF width ``psf_sigma`` (raw px) and
    its single emitters' median photons and log spread ``single_photons`` (None: too few of them seen)."""

    psf_sigma: float
    single_photons: tuple[float, float] | None


@dataclass
class Refiner:
    """Refines a stack frame by frame (``__call__``), keeping the PSF width estimated from the isolated
    spots seen so far when ``psf_sigma`` is None, and the photons of the single emitters refined so far
    (``single_photons``); with a ``prior`` both are known and nothing is learned. ``excess``: the camera's
    excess noise factor ``F^2``."""

    camera: Camera
    psf_sigma: float | None = None
    excess: float = 1.0
    widths: list = field(default_factory=list)
    photons: list = field(default_factory=list)
    prior: RefinerPrior | None = None
    isolated: list = field(default_factory=list)   # (photons, width, its bound) of the isolated spots' fits
    search: bool = False   # look for emitters the localizations missed in the refit's residual (residual_search.py)

    def __post_init__(self):
        if self.prior is not None and self.psf_sigma is None:
            self.psf_sigma = self.prior.psf_sigma

    def width(self) -> float:
        if self.psf_sigma is not None:
            return self.psf_sigma
        return float(np.median(self.widths)) if len(self.widths) >= MIN_WIDTH_FITS else DEFAULT_PSF_SIGMA

    def learned(self) -> RefinerPrior:
        """What the isolated spots seen so far say, as the prior of a run: the width, and the photons of those
        no wider than it (:func:`width_excess`: single emitters, as :meth:`learn_photons` keeps them)."""
        width = self.width()
        spots = np.reshape(self.isolated, (-1, 3))
        single = (spots[:, 0] > 0) & (width_excess(spots[:, 1], spots[:, 2], width) == 0)
        return RefinerPrior(width, photon_statistics(spots[single, 0]))

    def single_photons(self) -> tuple[float, float] | None:
        """:func:`photon_statistics` of the single emitters refined so far (the prior's, where given)."""
        return self.prior.single_photons if self.prior is not None else photon_statistics(self.photons)

    @property
    def settled(self) -> bool:
        """Whether the PSF width and the single emitters' photons have stopped changing (from the start with a
        ``prior``): the refits of later frames then depend on their own frame alone (they may run in parallel)."""
        width = self.psf_sigma is not None or len(self.widths) >= MAX_LEARNED
        return width and (self.prior is not None or len(self.photons) >= MAX_LEARNED)

    def learn_width(self, e: np.ndarray, locs: Localizations, read_variance) -> None:
        if self.psf_sigma is not None or len(self.widths) >= MAX_LEARNED or not len(locs):
            return
        fit, _ = isolated_widths(e, locs.row, locs.col, ImagingModel(self.width(), read_variance, self.excess))
        if fit is None:
            return
        fitted = np.isfinite(fit.crlb_sigma) & (fit.sigma > 0.45) & (fit.sigma < 3.9)
        self.widths.extend(fit.sigma[fitted & (fit.crlb_sigma < MAX_WIDTH_CRLB)].tolist())
        self.isolated.extend(np.column_stack([fit.photons[:, 0], fit.sigma, fit.crlb_sigma])[fitted].tolist())

    def learn_photons(self, fit: RefinedFrame) -> None:
        """The photons of a refit's single emitters: kept, alone (not crowded), not wider than the PSF."""
        if len(self.photons) < MAX_LEARNED and self.prior is None:
            single = fit.ok & ~fit.crowded & (fit.excess == 0) & (fit.photons > 0)
            self.photons.extend(fit.photons[single].tolist())

    def refit(self, locs: Localizations, frame_adu: np.ndarray) -> tuple[RefinedFrame, Localizations]:
        """The refit of one frame's ``locs`` on its camera frame ``frame_adu`` (``(H, W)`` ADU), and per refined
        localization the one it comes from (a split spot's two emitters keep its frame, detection, SNR and spread);
        with ``search``, and the emitters found in the residual (:meth:`with_missed`; in a frame with localizations:
        they give its index)."""
        e = self.camera.to_photoelectrons(frame_adu).astype(np.float64)
        read_variance = np.asarray(self.camera.read_noise, float) ** 2
        self.learn_width(e, locs, read_variance)
        model = ImagingModel(self.width(), read_variance, self.excess)
        fit = refine_frame(e, locs.row, locs.col, model, self.single_photons())
        source = locs.take(fit.parent)
        if self.search and len(locs):
            fit, source = self.with_missed(e, fit, source, model)
        self.learn_photons(fit)
        return fit, source

    def with_missed(self, e: np.ndarray, fit: RefinedFrame, source: Localizations,
                    model: ImagingModel) -> tuple[RefinedFrame, Localizations]:
        """The frame refitted again from the refit's positions with the emitters found in its residual
        (residual_search.find_missed), which no diffusion sample saw (detection 0) and whose diffusion spread
        is the nearest localization's (NaN with phi alone, as every other's); unchanged where none is found."""
        single = self.single_photons()
        reference = single[0] if single is not None else float(np.median(fit.photons[fit.ok])) if fit.ok.any() else 0.0
        missed = find_missed(e, fit.row, fit.col, fit.photons, model, reference)
        if not len(missed):
            return fit, source
        n = len(missed)
        nearest = cKDTree(np.column_stack([fit.row, fit.col])).query(np.column_stack([missed.row, missed.col]))[1]
        spread = source.uncertainty[nearest]
        new = Localizations(np.full(n, source.frame[0]), missed.row, missed.col, spread, np.zeros(n), missed.snr)
        start = Localizations.concat([replace(source, row=fit.row, col=fit.col), new])
        # refitted: the new emitters and the localizations whose boxes their light reaches
        half = box_half_width(model.psf_sigma)
        near = reaching(start.row, start.col, (missed.row, missed.col), half, 1)[1].any(axis=1)
        again = refine_frame(e, start.row, start.col, model, single, which=np.flatnonzero(near))
        kept = np.flatnonzero(~near[:len(fit.row)])
        out = replace(fit.take(kept), parent=kept).concat(again)
        return out, start.take(out.parent)

    def __call__(self, locs: Localizations, frame_adu: np.ndarray) -> Localizations:
        """``locs`` of one frame refined on its camera frame ``frame_adu`` (``(H, W)`` ADU)."""
        return refined_localizations(*self.refit(locs, frame_adu))


def refined_localizations(fit: RefinedFrame, source: Localizations,
                          diffusion_weight: float = DIFFUSION_WEIGHT) -> Localizations:
    """The refit's positions with the uncertainty of the module docstring (``c`` = ``diffusion_weight``); the
    ``source`` localization's where the fit was not kept."""
    diffusion = diffusion_weight * fit.crowded * source.uncertainty**2   # NaN stays NaN (phi alone)
    combined = np.sqrt(fit.fisher**2 + np.maximum(fit.excess, fit.hidden) + diffusion)
    return replace(source, row=fit.row, col=fit.col, uncertainty=np.where(fit.ok, combined, source.uncertainty))
