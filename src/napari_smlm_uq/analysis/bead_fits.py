"""Beads of a z-stack: found in its maximum projection, followed from frame to frame (drift) and fitted in
every frame with an elliptical pixel-integrated Gaussian (physics/elliptical_fit.py); the per-bead input
of the z calibration (analysis/zcalibration.py, docs/3d.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy.ndimage import gaussian_filter, maximum_filter, median_filter

from ..physics.elliptical_fit import MIN_SIGMA, fit_elliptical

if TYPE_CHECKING:
    from .zcalibration import ZCalibrationSettings

SMOOTH_SIGMA = 1.0  # px: the Gaussian smoothing of frames before peak finding and tracking
TRACK_WINDOW = 11  # frames: the running median over a bead's per-frame peak positions
MAX_REL_ERROR = 0.1  # a frame's width is used when its Cramer-Rao bound is below this fraction of it
WIDTH_FLOOR = 0.01  # relative width error added to the bound: model mismatch that the bound does not see


@dataclass
class Beads:
    """The fitted beads: per bead ``row``, ``col`` (px, in the max projection); per bead and frame
    ``(J, T)`` arrays ``sigma_x``, ``sigma_y``, their ``error`` (px) and ``valid`` (a usable fit); after
    alignment ``z`` ``(J, T)`` nm on the common scale, ``kept`` ``(J,)`` and ``notes``: why beads were dropped."""

    row: np.ndarray
    col: np.ndarray
    sigma_x: np.ndarray
    sigma_y: np.ndarray
    error_x: np.ndarray
    error_y: np.ndarray
    valid: np.ndarray
    z: np.ndarray | None = None
    kept: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


def find_beads(stack: np.ndarray, settings: ZCalibrationSettings) -> tuple[np.ndarray, np.ndarray]:
    """Bead positions (rows, cols, px) in the max projection of the smoothed stack: peaks ``min_snr`` noise
    sds above its median, with no other peak within a box side and the box (plus drift) inside the frame."""
    proj = np.max([gaussian_filter(f, SMOOTH_SIGMA) for f in stack], axis=0)
    level = np.median(proj)
    noise = 1.4826 * np.median(np.abs(proj - level))
    threshold = level + settings.min_snr * max(noise, 1e-6)
    merge = 2 * int(np.ceil(settings.max_drift)) + 3  # a drifting bead's trace is one peak
    peaks = np.argwhere((proj == maximum_filter(proj, merge)) & (proj > threshold))
    if len(peaks) == 0:
        return np.empty(0), np.empty(0)
    dist = np.hypot(*(peaks[:, None, :] - peaks[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(dist, np.inf)
    isolated = dist.min(axis=1) > settings.box
    margin = settings.box // 2 + int(np.ceil(settings.max_drift))
    h, w = proj.shape
    inside = ((peaks >= margin) & (peaks < np.array([h, w]) - margin)).all(axis=1)
    keep = peaks[isolated & inside]
    return keep[:, 0].astype(float), keep[:, 1].astype(float)


def _track(stack: np.ndarray, rows: np.ndarray, cols: np.ndarray, settings: ZCalibrationSettings) -> np.ndarray:
    """Box corners ``(J, T, 2)``: each bead's peak in each smoothed frame within ``max_drift`` px of its
    projection peak, smoothed by a running median over frames."""
    r = int(np.ceil(settings.max_drift))
    half = settings.box // 2
    peaks = np.empty((len(rows), len(stack), 2))
    for t, frame in enumerate(stack):
        smooth = gaussian_filter(frame, SMOOTH_SIGMA)
        for j, (r0, c0) in enumerate(zip(rows.astype(int), cols.astype(int))):
            win = smooth[r0 - r : r0 + r + 1, c0 - r : c0 + r + 1]
            dr, dc = np.unravel_index(np.argmax(win), win.shape)
            peaks[j, t] = r0 - r + dr, c0 - r + dc
    window = min(TRACK_WINDOW, len(stack))
    peaks = median_filter(peaks, size=(1, window, 1), mode="nearest")
    return np.rint(peaks).astype(int) - half


def fit_beads(
    stack: np.ndarray, rows: np.ndarray, cols: np.ndarray, read_noise: float, settings: ZCalibrationSettings
) -> Beads:
    """Fit every bead in every frame; ``stack`` in photo-electrons."""
    corners = _track(stack, rows, cols, settings)
    s = settings.box
    n_beads, n_frames = corners.shape[:2]
    t_idx = np.broadcast_to(np.arange(n_frames), (n_beads, n_frames))
    r_idx = corners[..., 0, None] + np.arange(s)  # (J, T, S)
    c_idx = corners[..., 1, None] + np.arange(s)
    rois = stack[t_idx[..., None, None], r_idx[..., :, None], c_idx[..., None, :]].reshape(-1, s, s)
    fit = fit_elliptical(rois, read_noise)
    sx, sy = fit["sigma_x"].reshape(n_beads, n_frames), fit["sigma_y"].reshape(n_beads, n_frames)
    ex, ey = fit.crlb[:, 3].reshape(n_beads, n_frames), fit.crlb[:, 4].reshape(n_beads, n_frames)
    upper = s / 3.0 - 1e-3
    valid = (
        (sx > MIN_SIGMA + 1e-3)
        & (sx < upper)
        & (sy > MIN_SIGMA + 1e-3)
        & (sy < upper)
        & (ex < MAX_REL_ERROR * sx)
        & (ey < MAX_REL_ERROR * sy)
    )
    return Beads(rows, cols, sx, sy, np.hypot(ex, WIDTH_FLOOR * sx), np.hypot(ey, WIDTH_FLOOR * sy), valid)


def bead_focus(z: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> float | None:
    """z (nm) where a bead's widths cross (linear interpolation), the crossing of smallest spot when they
    cross more than once (noise far from focus); None when they do not cross."""
    diff = sx - sy
    cross = np.nonzero(np.sign(diff[:-1]) * np.sign(diff[1:]) < 0)[0]
    if len(cross) == 0:
        return None
    i = cross[np.argmin((sx + sy)[cross])]
    return float(z[i] + diff[i] / (diff[i] - diff[i + 1]) * (z[i + 1] - z[i]))
