"""Localizations from KDEs: peaks of the mean, sub-pixel refined, with uncertainty from the samples.

Positions are in SR pixels (integer centres) internally; :class:`Localizations` holds raw-pixel rows
and columns. A localization's uncertainty is the per-axis standard deviation of the matching peaks
across the diffusion samples (times the model's calibration scale); its detection frequency is the
fraction of samples that hold a peak within ``match_radius`` SR pixels.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import maximum_filter
from scipy.spatial import cKDTree

from .kde import sr_to_raw

DEFAULT_THRESHOLD = 0.3     # KDE units (the continuous kernel's peak is 1)
MATCH_RADIUS = 2.0          # SR pixels


@dataclass
class Localizations:
    """Raw-pixel ``row``/``col``, ``uncertainty`` (raw px, per axis; NaN without samples),
    ``detection`` (fraction of samples), ``frame`` (0-based)."""

    frame: np.ndarray
    row: np.ndarray
    col: np.ndarray
    uncertainty: np.ndarray
    detection: np.ndarray

    @classmethod
    def empty(cls) -> "Localizations":
        z = np.zeros(0)
        return cls(z.astype(int), z, z, z, z)

    @classmethod
    def concat(cls, parts: list["Localizations"]) -> "Localizations":
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in
                     ("frame", "row", "col", "uncertainty", "detection")))

    def __len__(self) -> int:
        return len(self.row)


def find_peaks(kde: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Local maxima (3x3) above ``threshold``, refined by a log-parabola (exact for a sampled Gaussian).
    Returns ``(n, 2)`` (row, col) in SR pixels."""
    kde = np.asarray(kde, dtype=np.float64)
    peaks = np.argwhere((kde == maximum_filter(kde, size=3, mode="constant")) & (kde > threshold))
    if len(peaks) == 0:
        return np.zeros((0, 2))
    logk = np.log(np.clip(np.pad(kde, 1, mode="edge"), 1e-4, None))
    r, c = peaks[:, 0] + 1, peaks[:, 1] + 1
    offsets = []
    for (dr, dc) in ((1, 0), (0, 1)):
        lo, mid, hi = logk[r - dr, c - dc], logk[r, c], logk[r + dr, c + dc]
        curv = lo - 2 * mid + hi
        offsets.append(np.where(curv < 0, 0.5 * (lo - hi) / np.where(curv < 0, curv, -1), 0.0).clip(-0.5, 0.5))
    return peaks + np.stack(offsets, axis=1)


def localize(mean: np.ndarray, samples: np.ndarray | None, frame: int, threshold: float = DEFAULT_THRESHOLD,
             scale: float = 1.0, match_radius: float = MATCH_RADIUS) -> Localizations:
    """Localizations of one frame from its mean KDE and its ``(n, 4H, 4W)`` samples (or None)."""
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
        unc = scale * np.sqrt(var) / 4.0
        unc[held.sum(axis=0) < 2] = np.nan
    rows, cols = sr_to_raw(peaks[:, 0]), sr_to_raw(peaks[:, 1])
    return Localizations(np.full(n, frame), rows, cols, unc, det)

