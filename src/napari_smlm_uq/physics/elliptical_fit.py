"""Batched maximum-likelihood fit of one elliptical pixel-integrated Gaussian per ROI (the bead fits of
the z calibration, docs/3d.md): column, row, sigma_x, sigma_y, photons and a flat background.

Noise model of fit.py for a CCD-like camera: ``e + r^2`` is Poisson with mean ``omega + r^2`` (``e``
photo-electrons, ``r`` read noise in e- rms). Levenberg-Marquardt on Fisher scoring, all ROIs at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .fit import _profile, damped_scoring

#: px: the widths a bead fit may take (a spot wider than a third of its box is not measured)
MIN_SIGMA = 0.4
PARAMS = ("background", "col", "row", "sigma_x", "sigma_y", "photons")


@dataclass
class EllipticalFit:
    """Per ROI: ``params`` ``(B, 6)`` in the order of :data:`PARAMS` (photons/px, px, px, px, px,
    photons), their Cramer-Rao bounds ``crlb`` ``(B, 6)`` and Pearson's chi-square per degree of freedom."""

    params: np.ndarray
    crlb: np.ndarray
    chi2: np.ndarray

    def __getitem__(self, name: str) -> np.ndarray:
        return self.params[:, PARAMS.index(name)]


def elliptical_model(theta: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Expected photons ``(B, S, S)`` and Jacobian ``(B, 6, S*S)`` for parameters ``(B, 6)``."""
    centres = np.arange(size, dtype=np.float64)
    b, col, row, sx, sy, n = theta.T
    dx, dx_mu, dx_s = (p[:, 0] for p in _profile(centres, col[:, None], sx))
    dy, dy_mu, dy_s = (p[:, 0] for p in _profile(centres, row[:, None], sy))
    psf = dy[:, :, None] * dx[:, None, :]
    nb = n[:, None, None]
    jac = np.stack([np.ones_like(psf), nb * dy[:, :, None] * dx_mu[:, None, :], nb * dy_mu[:, :, None] * dx[:, None, :],
                    nb * dy[:, :, None] * dx_s[:, None, :], nb * dy_s[:, :, None] * dx[:, None, :], psf], axis=1)
    return b[:, None, None] + nb * psf, jac.reshape(len(theta), 6, -1)


def fit_elliptical(rois: np.ndarray, read_noise: float = 0.0, iterations: int = 30,
                   start: np.ndarray | None = None) -> EllipticalFit:
    """Fit ROIs ``(B, S, S)`` of photo-electrons (offset removed, divided by the gain), one spot each,
    started from ``start`` (``(B, 6)``, :data:`PARAMS`) or else the ROI's moments."""
    rois = np.asarray(rois, np.float64)
    n, size = rois.shape[0], rois.shape[-1]
    r2 = read_noise**2
    data = np.clip(rois + r2, 0.0, None)
    theta = _start(rois) if start is None else np.array(start, np.float64)
    max_sigma = size / 3.0

    def clip(t: np.ndarray) -> np.ndarray:
        t = t.copy()
        t[:, 0] = np.clip(t[:, 0], 1e-3, None)
        t[:, 1:3] = np.clip(t[:, 1:3], 0.0, size - 1.0)
        t[:, 3:5] = np.clip(t[:, 3:5], MIN_SIGMA, max_sigma)
        t[:, 5] = np.clip(t[:, 5], 1.0, None)
        return t

    def expected(t: np.ndarray):
        mu, jac = elliptical_model(t, size)
        return mu + r2, jac

    theta, _, bounds, chi2 = damped_scoring(data, np.ones_like(data), np.ones((n, len(PARAMS)), bool), clip(theta),
                                            expected, clip, iterations)
    return EllipticalFit(theta, bounds, chi2)


def _start(rois: np.ndarray) -> np.ndarray:
    """Background the lower quartile of each ROI, position and widths from the moments of the excess."""
    n, size = rois.shape[0], rois.shape[-1]
    b = np.clip(np.quantile(rois.reshape(n, -1), 0.25, axis=1), 0.1, None)
    excess = np.clip(rois - b[:, None, None], 0.0, None)
    total = np.clip(excess.sum(axis=(1, 2)), 1.0, None)
    k = np.arange(size, dtype=np.float64)
    col = (excess.sum(axis=1) * k).sum(axis=1) / total
    row = (excess.sum(axis=2) * k).sum(axis=1) / total
    sx = np.sqrt((excess.sum(axis=1) * (k - col[:, None]) ** 2).sum(axis=1) / total)
    sy = np.sqrt((excess.sum(axis=2) * (k - row[:, None]) ** 2).sum(axis=1) / total)
    return np.stack([b, col, row, sx, sy, total], axis=1)
