"""3D refinement with an astigmatic z calibration (docs/3d.md): each localization is refitted by maximum
likelihood on the raw pixels with the astigmatic PSF (physics/fit3d.py) for x, y, z, photons and
background, jointly with the neighbours whose light reaches its box, as in 2D (refine.py). Each emitter's z
starts from a free elliptical fit of its box (physics/elliptical_fit.py, started round at the deep position)
through ``z_from_widths``. phi, trained on round spots, may see two peaks in one defocused spot: two
localizations closer than ``MERGE_DISTANCE`` become one unless a second emitter raises twice the
log-likelihood by more than ``MERGE_GAIN`` (:func:`merge_duplicates`). Spots are not split in 3D (a defocused
spot is elongated: the 2D width test would split it).

Uncertainty: the lateral one is that of refine.py with the 3D Fisher bound (x and y with z unknown), the
width test against the calibrated widths at the fitted z (``excess``: a box alone whose free elliptical fit
is wider, in either axis, than the calibration at that z by more than ``WIDTH_NOISE`` of its bound), and the
diffusion spread where crowded. The axial one is the 3D Fisher bound of z, inflated by the same factor as
the lateral one (psi's samples are 2D: they say how ambiguous the scene is, not where along z; an emitter
whose lateral variance the crowding doubles has its z variance doubled); with phi alone (no samples) the z
uncertainty is the bound inflated by the width excess only, while the lateral one is NaN as in 2D. A fit
that moves a localization by more than ``SHIFT_3D`` (times the spot's width at its start z over the
focus's) or leaves its box unexplained keeps the deep position and uncertainty, the z of its elliptical
fit and a NaN z uncertainty.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.spatial import cKDTree

from ..localizations import Localizations
from ..physics.astigmatism import ZCalibration, z_from_widths
from ..physics.boxes import Boxes, box_half_width, neighbour_slots
from ..physics.camera import Camera
from ..physics.elliptical_fit import EllipticalFit, fit_elliptical
from ..physics.fit import ImagingModel, _start
from ..physics.fit3d import fit_rois_3d
from .refine import (
    DIFFUSION_WEIGHT,
    MAX_CHI2,
    SPLIT_GAIN,
    WIDTH_NOISE,
    RefinedFrame,
    axis_bound,
    crowded,
    refined_localizations,
)

FLAT_FRACTION = 0.6   # a stack is called flat (no astigmatism) when this share of its z lie within ...
FLAT_BOUNDS = 3.0     # ... this many of their axial bounds of the focus (where sigma_x = sigma_y)
MIN_FLAT_TEST = 50    # localizations before the flatness test speaks
SHIFT_3D = 3.0        # px at focus: phi, trained on round spots, places elongated ones up to this far off
MERGE_DISTANCE = 4.5  # px: two localizations this near may be one elongated spot (merge_duplicates)
MERGE_ROUNDS = 3        # a spot seen as three peaks merges in two rounds
MERGE_GAIN = SPLIT_GAIN   # twice the log-likelihood a second emitter must add to stay (chi2(4): p ~ 3e-3)


@dataclass
class RefinedFrame3D(RefinedFrame):
    """A :class:`RefinedFrame` with each localization's ``z`` (nm) and its Fisher bound ``fisher_z`` (nm)."""

    z: np.ndarray
    fisher_z: np.ndarray


def focus(calibration: ZCalibration) -> float:
    """z (nm) where the calibrated widths are equal (or nearest to)."""
    grid = np.linspace(*calibration.z_range, 2001)
    sx, sy = calibration.sigmas(grid)
    return float(grid[np.argmin(np.abs(sx - sy))])


def focus_width(calibration: ZCalibration) -> float:
    """The mean calibrated width (px) at the focus."""
    return float(np.mean(calibration.sigmas(focus(calibration))))


def widest(calibration: ZCalibration) -> float:
    """The largest calibrated width (px) over the z range: the boxes' size."""
    return float(max(s.max() for s in calibration.sigmas(np.linspace(*calibration.z_range, 201))))


def calibrated_width_excess(sx: np.ndarray, sy: np.ndarray, crlb_sx: np.ndarray, crlb_sy: np.ndarray,
                            z: np.ndarray, calibration: ZCalibration) -> np.ndarray:
    """Per-axis position variance (px^2) of a spot wider than the calibration at ``z``: half the sum over
    the axes of ``s^2 - s(z)^2`` where a fitted width ``s`` exceeds the calibrated ``s(z)`` by more than
    ``WIDTH_NOISE`` of its bound (refine.width_excess, per axis)."""
    total = np.zeros(len(z))
    for s, bound, expected in zip((sx, sy), (crlb_sx, crlb_sy), calibration.sigmas(z)):
        wider = s - expected > WIDTH_NOISE * bound   # False where the fit gave no bound (NaN)
        total += np.where(wider, s**2 - expected**2, 0.0)
    return 0.5 * total


def free_widths(boxes: Boxes, width: float) -> EllipticalFit:
    """Free elliptical fit of each box's spot (slot 0) started round (``width`` px) at its position, pixels
    outside the frame set to the start's background (the fit has no mask)."""
    model = boxes.model
    flat = _start(boxes.e, boxes.inside, boxes.cols[:, :1], boxes.rows[:, :1], boxes.active[:, :1], width)
    b, col, row, photons = flat[:, 0], flat[:, 2], flat[:, 3], flat[:, 4]
    start = np.column_stack([b, col, row, np.full_like(b, width), np.full_like(b, width), photons])
    filled = np.where(boxes.inside, boxes.e, b[:, None, None]) / model.excess
    read_noise = float(np.sqrt(np.mean(model.read_variance) / model.excess))
    return fit_elliptical(filled, read_noise, start=start)


def shift_limit(z: np.ndarray, calibration: ZCalibration) -> np.ndarray:
    """How far (px) a fit may move a localization: ``SHIFT_3D`` scaled by the spot's width at ``z`` (nm)
    over the focus's (a defocused spot's deep position is as uncertain as it is wide)."""
    return SHIFT_3D * np.sqrt(np.prod(calibration.sigmas(z), axis=0)) / focus_width(calibration)


def start_z(boxes: Boxes, calibration: ZCalibration) -> tuple[np.ndarray, EllipticalFit]:
    """Each box's spot's z (nm) from its free elliptical fit's widths, and that fit."""
    free = free_widths(boxes, focus_width(calibration))
    return z_from_widths(free["sigma_x"], free["sigma_y"], calibration), free


def fit_boxes(boxes: Boxes, slots: np.ndarray, active: np.ndarray, z0: np.ndarray, calibration: ZCalibration):
    """fit_rois_3d of ``boxes`` with the emitters ``slots`` (indices into ``z0``, nm) that are ``active``."""
    used = boxes.active.shape[1]
    return fit_rois_3d(boxes.e, boxes.cols, boxes.rows, z0[slots[:, :used]], active[:, :used], calibration,
                       boxes.model, boxes.inside)


def best_fit(fits: list) -> object:
    """Per box, the fit of highest likelihood among ``fits`` (RoiFit3D of the same boxes from other starts)."""
    best = fits[0]
    for fit in fits[1:]:
        better = fit.log_likelihood > best.log_likelihood
        for name in best.__dataclass_fields__:
            getattr(best, name)[better] = getattr(fit, name)[better]
    return best


def best_single(boxes: Boxes, slots: np.ndarray, active: np.ndarray, z_all: np.ndarray, mid: np.ndarray,
                starts: tuple[np.ndarray, ...], rows: np.ndarray, cols: np.ndarray, calibration: ZCalibration):
    """Each pair's box (slot 0: its midpoint ``mid``) fitted with one emitter from each of ``starts`` (indices
    into ``rows``, ``cols``, ``z_all``: the midpoint's and each localization's position and z), the others
    ``active`` too; the fit of highest likelihood per box (an elongated spot's z may trap one start)."""
    fits = []
    for start in starts:
        moved = replace(boxes, rows=boxes.rows.copy(), cols=boxes.cols.copy())
        moved.rows[:, 0], moved.cols[:, 0] = rows[start] - boxes.corner[:, 0], cols[start] - boxes.corner[:, 1]
        z = z_all.copy()
        z[mid] = z_all[start]
        fits.append(fit_boxes(moved, slots, active, z, calibration))
    return best_fit(fits)


def merge_duplicates(photoelectrons: np.ndarray, rows: np.ndarray, cols: np.ndarray, z0: np.ndarray,
                     calibration: ZCalibration, model: ImagingModel, half: int) -> tuple[np.ndarray, ...]:
    """One localization for two that a single elongated spot gave (phi, trained on round spots, may see two
    peaks in a defocused one): each pair closer than ``MERGE_DISTANCE`` px (nearest first, each localization
    in one pair) is fitted in a box at its midpoint, with the other localizations near, as one emitter and as
    two (one: the best of three starts, :func:`best_single`; two: from their own z or the focus); it stays
    two where the second raises twice the log-likelihood by more than ``MERGE_GAIN``. Returns the kept
    localizations' indices, their start positions and z (nm) (a merged pair's: its single-emitter fit's; a
    pair that stays: its pair fit's z)."""
    n = len(rows)
    pts = np.column_stack([rows, cols])
    pairs = cKDTree(pts).query_pairs(MERGE_DISTANCE, output_type="ndarray")
    if not len(pairs):
        return np.arange(n), rows, cols, z0
    pairs = pairs[np.argsort(np.hypot(*(pts[pairs[:, 0]] - pts[pairs[:, 1]]).T), kind="stable")]
    used, chosen = np.zeros(n, bool), []
    for i, j in pairs:
        if not (used[i] or used[j]):
            used[i] = used[j] = True
            chosen.append((i, j))
    i, j = np.array(chosen).T
    all_rows = np.concatenate([rows, 0.5 * (rows[i] + rows[j])])
    all_cols = np.concatenate([cols, 0.5 * (cols[i] + cols[j])])
    mid = n + np.arange(len(i))
    boxes = Boxes.around(photoelectrons, all_rows, all_cols, half, model, which=mid)
    slots, active = (a[mid] for a in neighbour_slots(all_rows, all_cols, half))
    z_mid, _ = start_z(boxes, calibration)
    z_all = np.concatenate([z0, z_mid])
    others = active & (slots < n) & (slots != i[:, None]) & (slots != j[:, None])
    one = others.copy()
    one[:, 0] = True
    two = others | (slots == i[:, None]) | (slots == j[:, None])
    at_focus = z_all.copy()   # the pair's own boxes see both spots: their widths may mislead z
    at_focus[np.r_[i, j]] = focus(calibration)
    pair = best_fit([fit_boxes(boxes, slots, two, z, calibration) for z in (z_all, at_focus)])
    single = best_single(boxes, slots, one, z_all, mid, (mid, i, j), all_rows, all_cols, calibration)
    merged = 2 * (pair.log_likelihood - single.log_likelihood) <= MERGE_GAIN
    keep = np.setdiff1d(np.arange(n), j[merged])
    rows, cols, z0 = rows.copy(), cols.copy(), z0.copy()
    width, kept = pair.z.shape[1], ~merged
    for k in (i, j):   # a pair that stays: each emitter starts from the pair fit's z
        slot = np.argmax((slots[:, :width] == k[:, None]) & two[:, :width], axis=1)
        z0[k[kept]] = pair.z[kept, slot[kept]]
    first, (h, w) = i[merged], photoelectrons.shape
    at = lambda fitted, start, size: np.clip(np.where(np.isfinite(fitted), fitted, start), -0.5, size - 0.5)
    rows[first] = at(single.row[merged, 0] + boxes.corner[merged, 0], all_rows[mid[merged]], h)
    cols[first] = at(single.col[merged, 0] + boxes.corner[merged, 1], all_cols[mid[merged]], w)
    z0[first] = np.where(np.isfinite(single.z[merged, 0]), single.z[merged, 0], z_mid[merged])
    return keep, rows[keep], cols[keep], z0[keep]


def refine_frame_3d(photoelectrons: np.ndarray, rows: np.ndarray, cols: np.ndarray, calibration: ZCalibration,
                    model: ImagingModel) -> RefinedFrame3D:
    """Maximum-likelihood x, y, z of one frame's localizations (raw-pixel ``rows``/``cols``; ``model``: read
    variance, scalar or the frame's map, and excess noise; see the module docstring). A merged pair's
    ``parent`` is its first localization."""
    if not len(rows):
        e = np.zeros(0)
        return RefinedFrame3D(e.astype(int), e, e, e, e, e, e.astype(bool), e, e, e.astype(bool), e, e)
    n, half = len(rows), box_half_width(widest(calibration))
    z0, free = start_z(Boxes.around(photoelectrons, rows, cols, half, model), calibration)
    parent = np.arange(n)
    for _ in range(MERGE_ROUNDS):
        keep, rows, cols, z0 = merge_duplicates(photoelectrons, rows, cols, z0, calibration, model, half)
        if len(keep) == len(parent):
            break
        parent = parent[keep]
    boxes = Boxes.around(photoelectrons, rows, cols, half, model)
    if len(parent) < n:   # pairs merged: the widths of the spots at their midpoints (for the width test)
        _, free = start_z(boxes, calibration)
    slots, active = neighbour_slots(rows, cols, half)
    fit = fit_boxes(boxes, slots, active, z0, calibration)
    row, col, z = fit.row[:, 0] + boxes.corner[:, 0], fit.col[:, 0] + boxes.corner[:, 1], fit.z[:, 0]
    fisher, fisher_z = axis_bound(fit.crlb_row[:, 0], fit.crlb_col[:, 0]), fit.crlb_z[:, 0]
    ok = (np.hypot(row - rows, col - cols) <= shift_limit(z0, calibration)) & (fit.chi2 <= MAX_CHI2) \
        & np.isfinite(fisher) & (fisher > 0) & np.isfinite(fisher_z)
    alone = ~boxes.active[:, 1:].any(axis=1) & boxes.inside.all(axis=(1, 2))
    excess = np.where(alone, calibrated_width_excess(free["sigma_x"], free["sigma_y"], free.crlb[:, 3],
                                                     free.crlb[:, 4], z, calibration), 0.0)
    zeros = np.zeros(len(rows))
    return RefinedFrame3D(parent, np.where(ok, row, rows), np.where(ok, col, cols), fisher, excess, zeros,
                          crowded(rows, cols, focus_width(calibration)), fit.photons[:, 0], fit.background, ok,
                          np.where(ok, z, z0), np.where(ok, fisher_z, np.nan))


def refined_localizations_3d(fit: RefinedFrame3D, source: Localizations) -> Localizations:
    """refine.refined_localizations with ``z`` and its uncertainty (the bound scaled as the lateral one)."""
    out = refined_localizations(fit, source)
    diffusion = np.nan_to_num(DIFFUSION_WEIGHT * fit.crowded * source.uncertainty**2)   # phi alone: none
    bounded = fit.ok & (fit.fisher > 0)   # a fit kept has a bound; a rejected one may have none (0 or NaN)
    variance = np.where(bounded, fit.fisher, 1.0) ** 2
    inflation = np.sqrt(1.0 + (np.maximum(fit.excess, fit.hidden) + diffusion) / variance)
    return replace(out, z=fit.z, uncertainty_z=np.where(bounded, fit.fisher_z * inflation, np.nan))


@dataclass
class Refiner3D:
    """Refines a stack frame by frame in 3D (``__call__``) with an astigmatic ``calibration``; ``excess``: the
    camera's excess noise factor ``F^2``."""

    camera: Camera
    calibration: ZCalibration
    excess: float = 1.0

    @property
    def settled(self) -> bool:
        """Always: it learns nothing from the frames, so any frame may be refined in a pool (overlap.py)."""
        return True

    def __call__(self, locs: Localizations, frame_adu: np.ndarray) -> Localizations:
        """``locs`` of one frame refined in 3D on its camera frame ``frame_adu`` (``(H, W)`` ADU)."""
        e = self.camera.to_photoelectrons(frame_adu).astype(np.float64)
        read_variance = np.asarray(self.camera.read_noise, float) ** 2
        fit = refine_frame_3d(e, locs.row, locs.col, self.calibration, ImagingModel(1.0, read_variance, self.excess))
        return refined_localizations_3d(fit, locs.take(fit.parent))


def flat_warning(locs: Localizations, calibration: ZCalibration) -> str | None:
    """A warning when the spots show no astigmatism (a 2D stack read with a z calibration): at least
    ``FLAT_FRACTION`` of the localizations with a z uncertainty lie within ``FLAT_BOUNDS`` of it of the
    calibration's focus; None otherwise, in 2D, or with fewer than ``MIN_FLAT_TEST`` such localizations."""
    if locs.z is None:
        return None
    kept = np.isfinite(locs.uncertainty_z)
    if kept.sum() < MIN_FLAT_TEST:
        return None
    at = focus(calibration)
    near = np.mean(np.abs(locs.z[kept] - at) <= FLAT_BOUNDS * locs.uncertainty_z[kept])
    if near < FLAT_FRACTION:
        return None
    return (f"the spots show no astigmatism: {100 * near:.0f} % of z lie within {FLAT_BOUNDS:g} uncertainties of "
            f"the calibration's focus ({at:.0f} nm), so z [nm] is mostly the focus, not a depth (a 2D stack?)")
