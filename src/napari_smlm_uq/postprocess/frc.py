"""Fourier ring correlation (FRC, Nieuwenhuizen et al. 2013): the correlation, ring by ring in
frequency, of the histogram images of two halves of the localizations; the resolution is the inverse
of the spatial frequency where the (lightly smoothed) curve first falls below 1/7."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter1d

from ..analysis.render import histogram, image_shape
from ..io.files import InputError

THRESHOLD = 1.0 / 7.0
SMOOTH_RINGS = 5  # moving average of the curve over this many rings before the threshold crossing
MARGIN_NM = 200.0
MIN_LOCALIZATIONS = 100


@dataclass
class FRC:
    """Ring frequencies ``frequency`` (1/nm), the ``curve``, and ``resolution_nm`` (NaN: never below 1/7)."""

    frequency: np.ndarray
    curve: np.ndarray
    resolution_nm: float
    localizations: int

    def as_dict(self) -> dict:
        return {"resolution_nm": self.resolution_nm, "localizations": self.localizations,
                "threshold": THRESHOLD, "frequency_per_nm": self.frequency.tolist(), "frc": self.curve.tolist()}


def halves(frame: np.ndarray, split: str = "blocks", block_frames: int = 100, seed: int = 0) -> np.ndarray:
    """True for the first half: alternate blocks of ``block_frames`` frames (``blocks``, so the
    localizations of one blink stay together) or a coin flip per localization (``random``)."""
    if split == "blocks":
        return (np.asarray(frame, int) // block_frames) % 2 == 0
    if split == "random":
        return np.random.default_rng(seed).random(len(frame)) < 0.5
    raise InputError(f"FRC split must be 'blocks' or 'random' (got {split!r})")


def frequency_squared(shape: tuple[int, int], pixel_nm: float) -> np.ndarray:
    """|q|^2 (1/nm^2) of every frequency of an ``rfft2`` of an image of ``shape``."""
    return np.fft.fftfreq(shape[0], pixel_nm)[:, None] ** 2 + np.fft.rfftfreq(shape[1], pixel_nm)[None, :] ** 2


def ring_index(shape: tuple[int, int], pixel_nm: float) -> tuple[np.ndarray, np.ndarray]:
    """Ring of every frequency of an ``rfft2`` of ``shape`` (width 1/(max side * pixel)) and ring centres
    (1/nm) up to Nyquist."""
    dq = 1.0 / (max(shape) * pixel_nm)
    ring = np.rint(np.sqrt(frequency_squared(shape, pixel_nm)) / dq).astype(np.int64)
    n_rings = int(0.5 / pixel_nm / dq)
    return ring, np.arange(n_rings) * dq


def correlation(f1: np.ndarray, f2: np.ndarray, ring: np.ndarray, n_rings: int,
                noise1: np.ndarray | float = 0.0, noise2: np.ndarray | float = 0.0) -> np.ndarray:
    """Ring sums Re(F1 F2*) / sqrt(sum (|F1|^2 + noise1) sum (|F2|^2 + noise2)), ``n_rings`` rings."""
    sums = [np.bincount(ring.ravel(), weights=np.broadcast_to(v, ring.shape).ravel(), minlength=n_rings)[:n_rings]
            for v in ((f1 * np.conj(f2)).real, np.abs(f1) ** 2 + noise1, np.abs(f2) ** 2 + noise2)]
    return sums[0] / np.sqrt(np.maximum(sums[1] * sums[2], 1e-300))


def crossing(frequency: np.ndarray, curve: np.ndarray) -> float:
    """Resolution (nm): 1/frequency where the smoothed curve first falls below 1/7 (linear interpolation)."""
    smooth = uniform_filter1d(curve, SMOOTH_RINGS, mode="nearest")
    below = np.flatnonzero((smooth < THRESHOLD) & (np.arange(len(smooth)) > 0))
    if len(below) == 0:
        return float("nan")
    k = below[0]
    a, b = smooth[k - 1], smooth[k]
    q = frequency[k - 1] + (a - THRESHOLD) / (a - b) * (frequency[k] - frequency[k - 1])
    return float(1.0 / q)


def frame_extent(x: np.ndarray, y: np.ndarray) -> tuple[float, float, tuple[float, float]]:
    """Origin (x0, y0) and extent (height, width) nm around the localizations, with a margin."""
    x0, y0 = float(np.min(x)) - MARGIN_NM, float(np.min(y)) - MARGIN_NM
    return x0, y0, (float(np.max(y)) - y0 + MARGIN_NM, float(np.max(x)) - x0 + MARGIN_NM)


def frc(x: np.ndarray, y: np.ndarray, first_half: np.ndarray, pixel_nm: float = 5.0) -> FRC:
    """FRC of the histogram images (``pixel_nm``) of the localizations with ``first_half`` and without."""
    if len(x) < MIN_LOCALIZATIONS or first_half.all() or not first_half.any():
        raise InputError(f"FRC needs at least {MIN_LOCALIZATIONS} localizations in two non-empty halves "
                         f"(got {len(x)}, {int(np.sum(first_half))} in the first half)")
    x0, y0, extent = frame_extent(x, y)
    f1, f2 = (np.fft.rfft2(histogram(x[h] - x0, y[h] - y0, extent, pixel_nm)) for h in (first_half, ~first_half))
    ring, q = ring_index(image_shape(extent, pixel_nm), pixel_nm)
    curve = correlation(f1, f2, ring, len(q))
    return FRC(q, curve, crossing(q, curve), len(x))


def expected(x_true: np.ndarray, y_true: np.ndarray, sigma: np.ndarray, first_half: np.ndarray,
             pixel_nm: float = 5.0, groups: int = 8) -> FRC:
    """The FRC expected when each localization scatters around its true position (nm) by a Gaussian of its
    own ``sigma`` (nm): E[F](q) = sum_l H_l(q) exp(-2 pi i q.r_l) with H_l = exp(-2 pi^2 sigma_l^2 q^2), and
    E|F|^2 = |E[F]|^2 + sum_l (1 - H_l^2). Sigmas are grouped in ``groups`` quantiles."""
    x0, y0, extent = frame_extent(x_true, y_true)
    shape = image_shape(extent, pixel_nm)
    q2 = frequency_squared(shape, pixel_nm)
    edges = np.quantile(sigma, np.linspace(0, 1, groups + 1))
    group = np.clip(np.searchsorted(edges, sigma, side="right") - 1, 0, groups - 1)
    spectra, noise = [], []
    for half in (first_half, ~first_half):
        f, n = np.zeros(q2.shape, complex), np.zeros(q2.shape)
        for g in range(groups):
            pick = half & (group == g)
            h = np.exp(-2 * np.pi ** 2 * np.mean(sigma[pick] ** 2) * q2) if pick.any() else 0.0
            f += h * np.fft.rfft2(histogram(x_true[pick] - x0, y_true[pick] - y0, extent, pixel_nm))
            n += pick.sum() * (1 - h ** 2)
        spectra.append(f)
        noise.append(n)
    ring, q = ring_index(shape, pixel_nm)
    curve = correlation(spectra[0], spectra[1], ring, len(q), noise[0], noise[1])
    return FRC(q, curve, crossing(q, curve), len(x_true))
