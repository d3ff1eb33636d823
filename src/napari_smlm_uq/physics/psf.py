"""The pixel-integrated isotropic Gaussian PSF (paper eq. 10) and its derivative.

Coordinates are in pixels of whatever grid is passed: pixel ``k`` covers ``[k - 1/2, k + 1/2]``.
"""
from __future__ import annotations

import numpy as np
from scipy.special import erf

SQRT2 = np.sqrt(2.0)


def integrated_gaussian_1d(centres: np.ndarray, mu: np.ndarray, sigma: float | np.ndarray) -> np.ndarray:
    """Fraction of a 1D Gaussian (mean ``mu``, std ``sigma``) falling into each pixel.

    ``centres`` has shape ``(P,)``, ``mu`` shape ``(n,)``; ``sigma`` is a scalar or shape ``(n,)``.
    Returns ``(n, P)`` with ``D[j, k] = 1/2 [erf((c_k + 1/2 - mu_j)/(sqrt2 s)) - erf((c_k - 1/2 - mu_j)/(sqrt2 s))]``.
    """
    mu = np.asarray(mu, dtype=np.float64)[:, None]
    s = np.asarray(sigma, dtype=np.float64)
    s = s[:, None] if s.ndim else s
    c = np.asarray(centres, dtype=np.float64)[None, :]
    return 0.5 * (erf((c + 0.5 - mu) / (SQRT2 * s)) - erf((c - 0.5 - mu) / (SQRT2 * s)))


def integrated_gaussian_1d_dmu(centres: np.ndarray, mu: np.ndarray, sigma: float) -> np.ndarray:
    """Analytic derivative of :func:`integrated_gaussian_1d` with respect to ``mu``, shape ``(n, P)``."""
    mu = np.asarray(mu, dtype=np.float64)[:, None]
    c = np.asarray(centres, dtype=np.float64)[None, :]
    norm = 1.0 / (np.sqrt(2.0 * np.pi) * sigma)
    lo = np.exp(-((c - 0.5 - mu) ** 2) / (2.0 * sigma**2))
    hi = np.exp(-((c + 0.5 - mu) ** 2) / (2.0 * sigma**2))
    return norm * (lo - hi)


def render_emitters(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, shape: tuple[int, int],
                    sigma: float) -> np.ndarray:
    """Sum of pixel-integrated Gaussians ``sum_j w_j D(r; row_j) D(c; col_j)`` on a ``shape`` grid."""
    h, w = shape
    dy = integrated_gaussian_1d(np.arange(h), rows, sigma)  # (n, H)
    dx = integrated_gaussian_1d(np.arange(w), cols, sigma)  # (n, W)
    return (dy * np.asarray(weights, dtype=np.float64)[:, None]).T @ dx
