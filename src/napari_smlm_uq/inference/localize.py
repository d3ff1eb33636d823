"""Localizations from KDEs: peaks of the mean, sub-pixel refined, with uncertainty from the samples.

Positions are in SR pixels (integer centres) internally; :class:`Localizations` holds raw-pixel rows
and columns. A localization's uncertainty is the per-axis standard deviation of the matching peaks
across the diffusion samples, times the model's calibration scale for its context (calibration.py);
its detection frequency is the fraction of samples that hold a peak within ``match_radius`` SR pixels.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy.ndimage import maximum_filter
from scipy.spatial import cKDTree

from ..localizations import Localizations
from ..physics.kde import UPSAMPLING, sr_to_raw
from .calibration import Calibration

DEFAULT_THRESHOLD = 0.3     # KDE units (the continuous kernel's peak is 1)
MATCH_RADIUS = 2.0          # SR pixels


def local_maxima(kde: np.ndarray) -> np.ndarray:
    """Boolean mask of the 3x3 local maxima of ``kde``, one per plateau of equal neighbours: a pixel equal to
    its 3x3 maximum counts only if it exceeds its neighbours before it in raster order (up-left, up, up-right,
    left), so two equal adjacent pixels (a rounded or saturated peak) give one maximum, not two."""
    kde = np.asarray(kde)
    padded = np.pad(kde, 1, mode="constant", constant_values=-np.inf)
    h, w = kde.shape
    before = np.maximum.reduce([padded[dr:dr + h, dc:dc + w] for dr, dc in ((0, 0), (0, 1), (0, 2), (1, 0))])
    return (kde == maximum_filter(kde, size=3, mode="constant")) & (kde > before)


def find_peaks(kde: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Local maxima (3x3, :func:`local_maxima`) above ``threshold``, refined by a log-parabola (exact for a
    sampled Gaussian). Returns ``(n, 2)`` (row, col) in SR pixels; float16 KDEs (a compact result store) too."""
    kde = np.asarray(kde)
    kde = kde.astype(np.promote_types(kde.dtype, np.float32), copy=False)
    peaks = np.argwhere(local_maxima(kde) & (kde > threshold))
    if len(peaks) == 0:
        return np.zeros((0, 2))
    padded = np.pad(kde, 1, mode="edge")
    r, c = peaks[:, 0] + 1, peaks[:, 1] + 1

    def logk(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:  # log KDE at the peaks' neighbours only
        return np.log(np.clip(padded[rows, cols].astype(np.float64), 1e-4, None))

    mid, offsets = logk(r, c), []
    for (dr, dc) in ((1, 0), (0, 1)):
        lo, hi = logk(r - dr, c - dc), logk(r + dr, c + dc)
        curv = lo - 2 * mid + hi
        offsets.append(np.where(curv < 0, 0.5 * (lo - hi) / np.where(curv < 0, curv, -1), 0.0).clip(-0.5, 0.5))
    return peaks + np.stack(offsets, axis=1)


def peak_snr(snr: np.ndarray | None, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Highest pixel SNR in the 3x3 raw pixels around each localization (NaN without an SNR map)."""
    if snr is None:
        return np.full(len(rows), np.nan)
    h, w = snr.shape
    r, c = np.clip(np.rint(rows).astype(int), 0, h - 1), np.clip(np.rint(cols).astype(int), 0, w - 1)
    return maximum_filter(np.asarray(snr, float), size=3, mode="nearest")[r, c]


def localize(mean: np.ndarray, samples: np.ndarray | None, frame: int, threshold: float = DEFAULT_THRESHOLD,
             calibration: Calibration | None = None, snr: np.ndarray | None = None,
             match_radius: float = MATCH_RADIUS) -> Localizations:
    """Localizations of one frame from its mean KDE and its ``(n, 4H, 4W)`` samples (or None);
    uncertainties calibrated by ``calibration`` (None: raw) using the raw frame's pixel ``snr`` map
    ``(H, W)`` (None: the highest SNR bin)."""
    peaks = find_peaks(mean, threshold)
    n = len(peaks)
    unc, det = np.full(n, np.nan), np.ones(n)
    if samples is not None and len(samples) > 1 and n:
        positions = np.full((len(samples), n, 2), np.nan)
        for i, sample in enumerate(samples):
            found = find_peaks(sample, threshold)
            if len(found):
                dist, idx = cKDTree(found).query(peaks, distance_upper_bound=match_radius)
                ok = np.isfinite(dist)
                positions[i, ok] = found[idx[ok]]
        held = np.isfinite(positions[..., 0])
        det = held.mean(axis=0)
        with warnings.catch_warnings():  # peaks held by fewer than two samples: NaN, set below
            warnings.simplefilter("ignore", RuntimeWarning)
            var = np.nanvar(positions, axis=0, ddof=1).mean(axis=1)  # per-axis variance, SR px^2
        unc = np.sqrt(var) / UPSAMPLING
        unc[held.sum(axis=0) < 2] = np.nan
    rows, cols = sr_to_raw(peaks[:, 0]), sr_to_raw(peaks[:, 1])
    snr_at = peak_snr(snr, rows, cols)
    if calibration is not None and n:
        shape = (mean.shape[0] // UPSAMPLING, mean.shape[1] // UPSAMPLING)
        unc = unc * calibration.factors(np.full(n, frame), rows, cols, snr_at, shape)
    return Localizations(np.full(n, frame), rows, cols, unc, det, snr_at)

