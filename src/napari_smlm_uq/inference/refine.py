"""Refinement of the deep localizations on the raw pixels (docs/method.md, "Refinement at the CRLB").

Each localization is refitted by maximum likelihood (physics/fit.py) in a box of ``2 ceil(3 sigma) + 1``
raw pixels around it, together with up to ``NEIGHBOURS - 1`` other localizations whose light reaches
the box (centres within ``REACH`` px of it), starting from the deep positions. The PSF width is fitted on the stack's isolated spots (a
running median over the frames seen) unless given. The reported uncertainty combines the fit's
Cramer-Rao bound (what the photons allow), the spot's width beyond the PSF's (two emitters closer than
the PSF width, localized as one at their centre), and, where other localizations share the box, the
diffusion samples' calibrated spread (overlapping spots: where the scene is ambiguous):
``sigma^2 = sigma_fisher^2 + excess + DIFFUSION_WEIGHT * sigma_diffusion^2 * crowded`` with
``excess = s^2 - sigma_psf^2`` where the box's fitted width ``s`` exceeds the PSF's by more than
``WIDTH_NOISE`` of its Cramer-Rao bound (else 0). An isolated spot's position is limited by its photons
alone, which the bound states (the diffusion spread there only restates it). A fit that
moves a localization by more than ``MAX_SHIFT`` raw pixels, or leaves its box unexplained (chi-square per
degree of freedom above ``MAX_CHI2``: an emitter the deep model missed), keeps the deep position and
uncertainty.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy.spatial import cKDTree

from ..localizations import Localizations
from ..physics.camera import Camera
from ..physics.fit import RoiFit, fit_rois

REACH = 2.0               # raw pixels beyond the box: neighbours whose light reaches it are fitted too
NEIGHBOURS = 6            # emitters fitted jointly per box (the localization and its nearest neighbours)
MAX_SHIFT = 1.0           # raw pixels: a refined position further than this from the deep one is rejected
MAX_CHI2 = 3.0            # a box the fit does not explain (a missed emitter: chi-square/dof above this) is rejected
DIFFUSION_WEIGHT = 0.14   # c in sigma^2 = sigma_fisher^2 + excess + c sigma_diffusion^2 crowded (benchmarks.md)
WIDTH_NOISE = 2.0         # a box's fitted width counts as wider than the PSF beyond this many of its bounds
DEFAULT_PSF_SIGMA = 1.0   # raw pixels: until the stack's isolated spots have given a width
MIN_WIDTH_FITS = 20       # isolated-spot fits before their median replaces the default width
MAX_WIDTH_CRLB = 0.25     # px: isolated-spot widths known better than this enter the median (dim spots too)


@dataclass
class RefinedFrame:
    """One frame's refit: raw-pixel ``row``/``col``, ``fisher`` (per-axis Cramer-Rao bound, px),
    ``excess`` (px^2: the variance of the spot's width beyond the PSF's), ``crowded`` (other localizations
    share the box), ``photons``, ``background`` (photons/px), and ``ok`` (the fit was kept)."""

    row: np.ndarray
    col: np.ndarray
    fisher: np.ndarray
    excess: np.ndarray
    crowded: np.ndarray
    photons: np.ndarray
    background: np.ndarray
    ok: np.ndarray


def box_half_width(psf_sigma: float) -> int:
    return max(3, int(np.ceil(3.0 * psf_sigma)))


def extract_boxes(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, half: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes ``(n, S, S)`` of ``image`` (``(H, W)``, or ``(H, W)`` maps) centred on the pixels nearest to
    ``rows``/``cols``; pixels outside the frame are zero and masked. Returns boxes, mask, corners ``(n, 2)``."""
    h, w = image.shape
    corner = np.column_stack([np.rint(rows), np.rint(cols)]).astype(int) - half
    idx = np.arange(2 * half + 1)
    r, c = corner[:, :1] + idx, corner[:, 1:] + idx               # (n, S)
    inside = ((r >= 0) & (r < h))[:, :, None] & ((c >= 0) & (c < w))[:, None, :]
    boxes = image[np.clip(r, 0, h - 1)[:, :, None], np.clip(c, 0, w - 1)[:, None, :]]
    return np.where(inside, boxes, 0.0), inside, corner


def neighbour_slots(rows: np.ndarray, cols: np.ndarray, half: int, k: int = NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """For each localization, the indices ``(n, k)`` of itself (slot 0) and its nearest others whose
    light reaches its box (Chebyshev distance <= half + 1/2 + ``REACH``), and which slots are filled."""
    n = len(rows)
    if n == 0:
        return np.zeros((0, k), int), np.zeros((0, k), bool)
    pts = np.column_stack([rows, cols])
    dist, idx = cKDTree(pts).query(pts, k=min(k, n), p=np.inf, distance_upper_bound=half + 0.5 + REACH)
    dist, idx = dist.reshape(n, -1), idx.reshape(n, -1)
    filled = np.isfinite(dist)
    slots = np.zeros((n, k), int)
    active = np.zeros((n, k), bool)
    slots[:, :idx.shape[1]] = np.where(filled, idx, 0)
    active[:, :idx.shape[1]] = filled
    slots[:, 0], active[:, 0] = np.arange(n), True   # a duplicate position could sort another first
    return slots, active


def fit_frame(photoelectrons: np.ndarray, rows: np.ndarray, cols: np.ndarray, psf_sigma: float,
              read_variance: float | np.ndarray = 0.0, excess: float = 1.0, fit_sigma: bool = False,
              k: int = NEIGHBOURS) -> tuple[RoiFit, np.ndarray, np.ndarray]:
    """Fit every localization of one frame with its neighbours (``photoelectrons`` ``(H, W)``, e; raw-pixel
    ``rows``/``cols``). Returns the fit (slot 0 is each localization), box corners and the slots' activity."""
    half = box_half_width(psf_sigma)
    boxes, inside, corner = extract_boxes(photoelectrons, rows, cols, half)
    r2 = read_variance if np.ndim(read_variance) == 0 else extract_boxes(np.asarray(read_variance, float), rows, cols, half)[0]
    slots, active = neighbour_slots(rows, cols, half, k)
    fit = fit_rois(boxes, cols[slots] - corner[:, 1:], rows[slots] - corner[:, :1], active, psf_sigma, r2, excess,
                   inside, fit_sigma)
    return fit, corner, active


def refine_frame(photoelectrons: np.ndarray, rows: np.ndarray, cols: np.ndarray, psf_sigma: float,
                 read_variance: float | np.ndarray = 0.0, excess: float = 1.0) -> RefinedFrame:
    """Maximum-likelihood positions of one frame's localizations, the PSF width fitted per box from
    ``psf_sigma`` on (see the module docstring)."""
    if not len(rows):
        z = np.zeros(0)
        return RefinedFrame(z, z, z, z, z.astype(bool), z, z, z.astype(bool))
    fit, corner, active = fit_frame(photoelectrons, rows, cols, psf_sigma, read_variance, excess)
    row, col = fit.row[:, 0] + corner[:, 0], fit.col[:, 0] + corner[:, 1]
    fisher = np.sqrt(0.5 * (fit.crlb_row[:, 0] ** 2 + fit.crlb_col[:, 0] ** 2))
    ok = (np.hypot(row - rows, col - cols) <= MAX_SHIFT) & (fit.chi2 <= MAX_CHI2) & np.isfinite(fisher) & (fisher > 0)
    row, col = np.where(ok, row, rows), np.where(ok, col, cols)
    # the width from a second fit: with a free width, positions scatter more in crowded boxes (benchmarks.md)
    wide, _, _ = fit_frame(photoelectrons, row, col, psf_sigma, read_variance, excess, fit_sigma=True)
    return RefinedFrame(row, col, fisher, width_excess(wide.sigma, wide.crlb_sigma, psf_sigma),
                        active[:, 1:].any(axis=1), fit.photons[:, 0], fit.background, ok)


def width_excess(sigma: np.ndarray, crlb_sigma: np.ndarray, psf_sigma: float) -> np.ndarray:
    """``sigma^2 - psf_sigma^2`` (px^2) where a spot's fitted width ``sigma`` exceeds the PSF's by more than
    ``WIDTH_NOISE`` of its bound, else 0: two emitters ``d`` apart fitted as one widen the spot by about
    ``d^2 / 8`` (per axis, on average), and their centre is ``d / 2`` from each, along one axis: a position
    variance of ``d^2 / 8`` per axis on average."""
    wider = sigma - psf_sigma > WIDTH_NOISE * crlb_sigma   # False where the fit gave no bound (NaN)
    return np.where(wider, sigma**2 - psf_sigma**2, 0.0)


def isolated_widths(photoelectrons: np.ndarray, rows: np.ndarray, cols: np.ndarray, psf_sigma: float,
                    read_variance: float | np.ndarray = 0.0, excess: float = 1.0) -> tuple[RoiFit | None, np.ndarray]:
    """Free-width fits of the localizations alone in their box; returns the fit (None without any) and
    which were isolated."""
    half = box_half_width(psf_sigma)
    _, active = neighbour_slots(rows, cols, half)
    alone = ~active[:, 1:].any(axis=1)
    if not alone.any():
        return None, alone
    fit, _, _ = fit_frame(photoelectrons, rows[alone], cols[alone], psf_sigma, read_variance, excess, fit_sigma=True, k=1)
    return fit, alone


@dataclass
class Refiner:
    """Refines a stack frame by frame (``__call__``), keeping the PSF width estimated from the isolated
    spots seen so far when ``psf_sigma`` is None. ``excess``: the camera's excess noise factor ``F^2``."""

    camera: Camera
    psf_sigma: float | None = None
    excess: float = 1.0
    widths: list = field(default_factory=list)

    def width(self) -> float:
        if self.psf_sigma is not None:
            return self.psf_sigma
        return float(np.median(self.widths)) if len(self.widths) >= MIN_WIDTH_FITS else DEFAULT_PSF_SIGMA

    def learn_width(self, e: np.ndarray, locs: Localizations, read_variance) -> None:
        if self.psf_sigma is not None or len(self.widths) >= 1000 or not len(locs):
            return
        fit, _ = isolated_widths(e, locs.row, locs.col, self.width(), read_variance, self.excess)
        if fit is None:
            return
        good = np.isfinite(fit.crlb_sigma) & (fit.crlb_sigma < MAX_WIDTH_CRLB) & (fit.sigma > 0.45) & (fit.sigma < 3.9)
        self.widths.extend(fit.sigma[good].tolist())

    def __call__(self, locs: Localizations, frame_adu: np.ndarray) -> Localizations:
        """``locs`` of one frame refined on its camera frame ``frame_adu`` (``(H, W)`` ADU)."""
        e = self.camera.to_photoelectrons(frame_adu).astype(np.float64)
        read_variance = np.asarray(self.camera.read_noise, float) ** 2
        self.learn_width(e, locs, read_variance)
        fit = refine_frame(e, locs.row, locs.col, self.width(), read_variance, self.excess)
        diffusion = DIFFUSION_WEIGHT * fit.crowded * locs.uncertainty**2   # NaN stays NaN (phi alone)
        combined = np.sqrt(fit.fisher**2 + fit.excess + diffusion)
        return replace(locs, row=fit.row, col=fit.col, uncertainty=np.where(fit.ok, combined, locs.uncertainty))
