"""Localizations from KDEs: peaks of the mean, sub-pixel refined, with uncertainty from the samples.

Positions are in SR pixels (integer centres) internally; :class:`Localizations` holds raw-pixel rows
and columns. A localization's uncertainty is the per-axis standard deviation of the matching peaks
across the diffusion samples, times the model's calibration scale for its context (calibration.py);
its detection frequency is the fraction of samples that hold a peak within ``match_radius`` SR pixels.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import maximum_filter
from scipy.spatial import cKDTree

from ..localizations import Localizations
from ..physics.kde import UPSAMPLING, sr_to_raw
from .calibration import Calibration

DEFAULT_THRESHOLD = 0.3     # KDE units (the continuous kernel's peak is 1)
MATCH_RADIUS = 2.0          # SR pixels


def peaks_of(kdes: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> list[np.ndarray]:
    """Local maxima (3x3, zero outside the image; one per plateau) above ``threshold`` of each image of
    ``(N, H, W)`` KDEs (any float dtype), found on their device, refined by a log-parabola (exact for a
    sampled Gaussian). Returns ``(n_i, 2)`` (row, col) in SR pixels per image."""
    k = kdes[:, None].float()
    h, w = k.shape[-2:]
    low = F.pad(k, (1, 1, 1, 1), value=-float("inf"))
    before = torch.stack([low[..., dr:dr + h, dc:dc + w] for dr, dc in ((0, 0), (0, 1), (0, 2), (1, 0))]).amax(0)
    # a maximum of its 3x3 neighbourhood (zero outside the image) that exceeds its neighbours before it in
    # raster order: one peak per plateau of equal pixels (a saturated or rounded peak), not one per pixel
    is_peak = (k == F.max_pool2d(F.pad(k, (1, 1, 1, 1)), 3, stride=1)) & (k > before) & (k > threshold)
    idx = torch.nonzero(is_peak[:, 0])  # (m, 3): image, row, col
    padded = F.pad(k, (1, 1, 1, 1), mode="replicate")[:, 0]
    i, r, c = idx[:, 0], idx[:, 1] + 1, idx[:, 2] + 1
    around = torch.stack([padded[i, r + dr, c + dc] for dr, dc in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))], dim=1)
    logk = np.log(np.clip(around.cpu().numpy().astype(np.float64), 1e-4, None))
    idx = idx.cpu().numpy()
    offsets = []
    for lo, hi in ((logk[:, 1], logk[:, 2]), (logk[:, 3], logk[:, 4])):
        curv = lo - 2 * logk[:, 0] + hi
        offsets.append(np.where(curv < 0, 0.5 * (lo - hi) / np.where(curv < 0, curv, -1), 0.0).clip(-0.5, 0.5))
    peaks = idx[:, 1:] + np.stack(offsets, axis=1) if len(idx) else np.zeros((0, 2))
    return np.split(peaks, np.searchsorted(idx[:, 0], np.arange(1, len(kdes))))


def find_peaks(kde: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """:func:`peaks_of` one ``(H, W)`` KDE: ``(n, 2)`` (row, col) in SR pixels."""
    return peaks_of(torch.as_tensor(np.asarray(kde))[None], threshold)[0]


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
    kdes = torch.as_tensor(np.asarray(mean if samples is None else np.concatenate([mean[None], samples])))
    found = peaks_of(kdes.reshape(-1, *np.shape(mean)), threshold)
    return localize_peaks(found[0], found[1:] if samples is not None else None, frame, np.shape(mean),
                          calibration, snr, match_radius)


def localize_peaks(peaks: np.ndarray, sample_peaks: list[np.ndarray] | None, frame: int, shape: tuple[int, int],
                   calibration: Calibration | None = None, snr: np.ndarray | None = None,
                   match_radius: float = MATCH_RADIUS) -> Localizations:
    """:func:`localize` from the peaks (SR px) of the ``(4H, 4W)`` mean and of each sample (:func:`peaks_of`)."""
    n = len(peaks)
    unc, det = np.full(n, np.nan), np.ones(n)
    if sample_peaks is not None and len(sample_peaks) > 1 and n:
        positions = np.full((len(sample_peaks), n, 2), np.nan)
        for i, found in enumerate(sample_peaks):
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
        raw_shape = (shape[0] // UPSAMPLING, shape[1] // UPSAMPLING)
        unc = unc * calibration.factors(np.full(n, frame), rows, cols, snr_at, raw_shape)
    return Localizations(np.full(n, frame), rows, cols, unc, det, snr_at)

