"""Rendering localizations as images: a histogram, or a sum of Gaussians of each localization's own
uncertainty (nm). Pixel ``(i, j)`` covers ``[i p, (i + 1) p)`` in y and ``[j p, (j + 1) p)`` in x."""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

SIGMA_GROUPS = 16  # uncertainty quantiles rendered with their own blur


def image_shape(extent_nm: tuple[float, float], pixel_nm: float) -> tuple[int, int]:
    """``(rows, cols)`` covering ``extent_nm = (height, width)`` in nm."""
    return int(np.ceil(extent_nm[0] / pixel_nm)), int(np.ceil(extent_nm[1] / pixel_nm))


def histogram(x_nm: np.ndarray, y_nm: np.ndarray, extent_nm: tuple[float, float], pixel_nm: float,
              weights: np.ndarray | None = None) -> np.ndarray:
    """Localizations per pixel (float64 image); those outside the extent are dropped."""
    rows, cols = image_shape(extent_nm, pixel_nm)
    i = np.floor(np.asarray(y_nm) / pixel_nm).astype(np.int64)
    j = np.floor(np.asarray(x_nm) / pixel_nm).astype(np.int64)
    inside = (i >= 0) & (i < rows) & (j >= 0) & (j < cols)
    w = None if weights is None else np.asarray(weights, float)[inside]
    counts = np.bincount(i[inside] * cols + j[inside], weights=w, minlength=rows * cols)
    return counts.reshape(rows, cols).astype(np.float64)


def render(x_nm: np.ndarray, y_nm: np.ndarray, sigma_nm: np.ndarray | float | None,
           extent_nm: tuple[float, float], pixel_nm: float) -> np.ndarray:
    """Gaussian rendering: each localization a normalised Gaussian of standard deviation ``sigma_nm``
    (per localization or one value; None: a plain histogram). The image sums to the number of
    localizations inside the extent. Localizations are grouped by uncertainty quantile and each group
    is blurred with its median sigma (at most ``SIGMA_GROUPS`` blurs)."""
    if sigma_nm is None:
        return histogram(x_nm, y_nm, extent_nm, pixel_nm)
    sigma = np.broadcast_to(np.asarray(sigma_nm, float), np.shape(x_nm))
    finite = np.isfinite(sigma)
    image = histogram(x_nm[~finite], y_nm[~finite], extent_nm, pixel_nm)
    if not finite.any():
        return image
    edges = np.unique(np.quantile(sigma[finite], np.linspace(0, 1, SIGMA_GROUPS + 1)))
    group = np.clip(np.searchsorted(edges, sigma, side="right") - 1, 0, max(len(edges) - 2, 0))
    for g in np.unique(group[finite]):
        pick = finite & (group == g)
        blur = float(np.median(sigma[pick])) / pixel_nm
        image += gaussian_filter(histogram(x_nm[pick], y_nm[pick], extent_nm, pixel_nm), blur, mode="constant")
    return image
