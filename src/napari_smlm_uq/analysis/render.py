"""The standard SMLM image: each localization drawn as a Gaussian of its own uncertainty (as Picasso Render
does), pixel-integrated, on a grid of any pixel size.

Coordinates in nm with the raw frame's convention (docs/physics.md): pixel ``(i, j)`` of the rendered image
covers ``[i p, (i + 1) p) x [j p, (j + 1) p)`` nm for pixel size ``p``, i.e. the origin is the raw frame's
top-left corner. Each Gaussian is evaluated separably on a window of ``+/- WINDOW_SIGMAS`` sigma (at least
one pixel) and normalised to its weight, so the image sums to the total weight of what falls inside.
In napari, with the raw frame at ``scale = p`` and no translation, a rendering at pixel size ``q`` goes at
``scale = q`` and ``translate = (q - p) / 2`` on both axes (:func:`napari_translate`).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.special import erf

from ..physics.kde import grid_offset

WINDOW_SIGMAS = 3.0
CHUNK_VALUES = 1 << 24  # window pixels per vectorised batch (bounds the temporary memory to ~400 MB)
MAX_WINDOW = 64  # pixels: wider Gaussians are clipped to this many pixels on each side (blur beyond is useless)


def _axis_weights(centre_px: np.ndarray, sigma_px: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """First pixel index ``(n,)`` and pixel-integrated 1D Gaussian weights ``(n, 2 radius + 1)`` float32,
    summing to 1 over the window."""
    first = np.floor(centre_px).astype(np.int64) - radius
    edges = (first[:, None] + np.arange(2 * radius + 2)[None, :] - centre_px[:, None]).astype(np.float32)
    cdf = erf(edges / (np.float32(np.sqrt(2.0)) * sigma_px[:, None].astype(np.float32)))
    weights = np.diff(cdf, axis=1)
    return first, weights / weights.sum(axis=1, keepdims=True)


def _add_windows(image: torch.Tensor, width: int, y: np.ndarray, x: np.ndarray, s: np.ndarray, w: np.ndarray,
                 radius: int) -> None:
    """Add Gaussians (padded-image pixel units) on windows of ``2 radius + 1`` pixels to the flat float32
    ``image`` of ``width`` columns, whose border of ``MAX_WINDOW + 1`` pixels takes what falls outside."""
    r0, wr = _axis_weights(y, s, radius)
    c0, wc = _axis_weights(x, s, radius)
    k = torch.arange(2 * radius + 1)
    offsets = k[:, None] * width + k[None, :]
    weighted_rows = torch.from_numpy(wr) * torch.from_numpy(w.astype(np.float32))[:, None]
    vals = weighted_rows[:, :, None] * torch.from_numpy(wc)[:, None, :]
    image.index_add_(0, (torch.from_numpy(r0 * width + c0)[:, None, None] + offsets).view(-1), vals.view(-1))


def image_shape(extent_nm: tuple[float, float], pixel_nm: float) -> tuple[int, int]:
    """``(rows, cols)`` covering ``extent_nm = (height, width)`` in nm; pixel ``(i, j)`` covers
    ``[i p, (i + 1) p)`` in y and ``[j p, (j + 1) p)`` in x."""
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


def render(x_nm: np.ndarray, y_nm: np.ndarray, sigma_nm: np.ndarray | float, extent_nm: tuple[float, float],
           pixel_nm: float, weights: np.ndarray | None = None) -> np.ndarray:
    """Image ``(ceil(height / pixel), ceil(width / pixel))`` float32 of localizations at ``x_nm`` (columns),
    ``y_nm`` (rows) with per-axis uncertainty ``sigma_nm``; ``extent_nm`` is ``(height, width)`` in nm.
    Non-finite positions or sigmas are skipped; sigmas below a tenth of a pixel are raised to it."""
    if not pixel_nm > 0:
        raise ValueError(f"pixel size must be > 0 nm (got {pixel_nm})")
    x, y = np.asarray(x_nm, np.float64).ravel(), np.asarray(y_nm, np.float64).ravel()
    sigma = np.broadcast_to(np.asarray(sigma_nm, np.float64), x.shape)
    w = np.ones_like(x) if weights is None else np.broadcast_to(np.asarray(weights, np.float64), x.shape)
    shape = image_shape(extent_nm, pixel_nm)
    pad = MAX_WINDOW + 1
    padded = (shape[0] + 2 * pad, shape[1] + 2 * pad)
    x, y = x / pixel_nm + pad, y / pixel_nm + pad
    s = np.maximum(sigma / pixel_nm, 0.1)
    radii = np.minimum(np.ceil(WINDOW_SIGMAS * np.nan_to_num(s)).astype(int), MAX_WINDOW)
    # what lies (with its window) entirely outside the image is dropped; the rest lands in the padded image
    ok = (np.isfinite(x) & np.isfinite(y) & np.isfinite(s) & np.isfinite(w) & (y + radii >= pad)
          & (y - radii < shape[0] + pad) & (x + radii >= pad) & (x - radii < shape[1] + pad))
    image = torch.zeros(padded[0] * padded[1], dtype=torch.float32)
    # grouped by window size, so the typical (small) sigma does not pay for the widest one; chunked, so the
    # per-window arrays stay near CHUNK_VALUES values
    for radius in np.unique(radii[ok]):
        idx = np.flatnonzero(ok & (radii == radius))
        step = max(1, CHUNK_VALUES // (2 * radius + 1) ** 2)
        for i in range(0, len(idx), step):
            sel = idx[i:i + step]
            _add_windows(image, padded[1], y[sel], x[sel], s[sel], w[sel], radius)
    return image.numpy().reshape(padded)[pad:pad + shape[0], pad:pad + shape[1]].copy()


def napari_translate(pixel_nm: float, raw_pixel_nm: float) -> float:
    """Translation (nm, both axes) of a rendering at ``pixel_nm`` over a raw frame of ``raw_pixel_nm`` pixels
    shown with integer pixel centres (docs/physics.md): ``-0.375 p`` for the SR grid (``q = p / 4``)."""
    return grid_offset(pixel_nm / raw_pixel_nm) * raw_pixel_nm


def z_colours(z_nm: np.ndarray, z_range: tuple[float, float]) -> np.ndarray:
    """RGB ``(n, 3)`` in [0, 1] of each z: the hue runs from red (``z_range[0]`` and below) through yellow, green
    and cyan to blue (``z_range[1]`` and above), at full brightness; a non-finite z is white."""
    from matplotlib.colors import hsv_to_rgb

    lo, hi = z_range
    z = np.asarray(z_nm, np.float64)
    t = np.nan_to_num(np.clip((z - lo) / max(hi - lo, 1e-9), 0.0, 1.0))
    rgb = hsv_to_rgb(np.stack([t * 2.0 / 3.0, np.ones_like(t), np.ones_like(t)], axis=-1))   # hue 0 red .. 2/3 blue
    return np.where(np.isfinite(z)[..., None], rgb, 1.0)


def render_z(x_nm: np.ndarray, y_nm: np.ndarray, z_nm: np.ndarray, sigma_nm: np.ndarray | float,
             extent_nm: tuple[float, float], pixel_nm: float, z_range: tuple[float, float]) -> np.ndarray:
    """The three colour channels ``(rows, cols, 3)`` float32 of :func:`render` with each localization weighted
    by its z colour (:func:`z_colours`): sums, so renderings of parts of a table add up; :func:`z_image` makes
    them an image."""
    colours = z_colours(z_nm, z_range)
    return np.stack([render(x_nm, y_nm, sigma_nm, extent_nm, pixel_nm, weights=colours[:, c]) for c in range(3)],
                    axis=-1)


def z_image(channels: np.ndarray, saturate: float = 95.0) -> np.ndarray:
    """An RGB image in [0, 1] of :func:`render_z`'s channels, as Picasso Render shows z: hue = z, brightness =
    density; the brightest channel's ``saturate`` percentile over the pixels holding signal (above 1 % of the
    brightest) is shown at full brightness."""
    top = np.max(channels, axis=-1)
    peak = float(top.max()) if top.size else 0.0
    scale = float(np.percentile(top[top > 0.01 * peak], saturate)) if peak > 0 else 1.0
    return np.clip(channels / scale, 0.0, 1.0).astype(np.float32)
