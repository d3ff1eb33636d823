"""What a frame's fitted emitters leave unexplained: their expected image, the background beneath them, and
where the residual holds a PSF's worth of light beyond the noise (docs/method.md, "Refinement").

Images are ``(H, W)`` in photo-electrons (camera.to_photoelectrons); pixel ``k`` covers ``[k - 1/2, k + 1/2]``.
The noise is the fit's (fit.py): ``e + r^2 / F^2`` scaled by ``1 / F^2`` is Poisson, so a pixel of mean ``m``
has variance ``F^2 m + r^2`` (``r^2`` the read variance, a scalar or an sCMOS map; ``F^2`` the excess noise).
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import correlate1d, map_coordinates

from .psf import integrated_gaussian_1d

BLOCK = 8   # raw pixels: the background is estimated per BLOCK x BLOCK tile and interpolated between them
CLIP = 3.0  # robust spreads above a tile's median: brighter pixels are emitters' light, not background


def emitters_image(rows: np.ndarray, cols: np.ndarray, photons: np.ndarray, shape: tuple[int, int], sigma: float,
                   half: int) -> np.ndarray:
    """Expected photo-electrons of emitters (pixel-integrated Gaussians of width ``sigma`` px), each drawn
    over the ``2 half + 1`` pixels square around it: the work grows with the emitters, not the frame."""
    h, w = shape
    out = np.zeros(h * w)
    if not len(rows):
        return out.reshape(shape)
    size = 2 * half + 1
    corner = np.column_stack([np.rint(rows), np.rint(cols)]).astype(int) - half
    dy = integrated_gaussian_1d(np.arange(size), rows - corner[:, 0], sigma)   # (n, S)
    dx = integrated_gaussian_1d(np.arange(size), cols - corner[:, 1], sigma)
    patch = np.asarray(photons, float)[:, None, None] * dy[:, :, None] * dx[:, None, :]
    r = (corner[:, :1] + np.arange(size))[:, :, None] + np.zeros((1, 1, size), int)
    c = (corner[:, 1:] + np.arange(size))[:, None, :] + np.zeros((1, size, 1), int)
    inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
    out += np.bincount((r * w + c)[inside], weights=patch[inside], minlength=h * w)
    return out.reshape(shape)


def background_map(image: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """A smooth background of ``image``: per ``block`` x ``block`` tile (edge tiles padded by reflection) the
    mean of its pixels up to ``CLIP`` robust spreads (1.4826 median absolute deviations) above its median (the
    light of emitters left out; a median alone is biased by up to half a count where the background is a few
    photons), bilinearly interpolated between the tiles' centres (constant beyond the outer ones)."""
    h, w = image.shape
    padded = np.pad(image, ((0, -h % block), (0, -w % block)), mode="reflect")
    th, tw = padded.shape[0] // block, padded.shape[1] // block
    tiles = padded.reshape(th, block, tw, block).transpose(0, 2, 1, 3).reshape(th, tw, -1)
    median = np.median(tiles, axis=-1, keepdims=True)
    spread = 1.4826 * np.median(np.abs(tiles - median), axis=-1, keepdims=True)
    kept = tiles <= median + CLIP * np.maximum(spread, 1e-6)
    coarse = (tiles * kept).sum(axis=-1) / kept.sum(axis=-1)
    r = (np.arange(h) + 0.5) / block - 0.5
    c = (np.arange(w) + 0.5) / block - 0.5
    return map_coordinates(coarse, np.meshgrid(r, c, indexing="ij"), order=1, mode="nearest")


def detection_z(residual: np.ndarray, variance: np.ndarray, sigma: float, half: int) -> np.ndarray:
    """Per pixel, the z-score of a PSF centred there in ``residual`` (photo-electrons, ``(H, W)``) with pixel
    ``variance`` (e^2): the weighted least-squares photons ``sum h r / v / sum h^2 / v`` over their standard
    error ``(sum h^2 / v)^(-1/2)`` (the matched filter; ``h`` the PSF over ``2 half + 1`` pixels, pixels
    outside the frame absent). About N(0, 1) where the residual is noise."""
    h1 = integrated_gaussian_1d(np.arange(-half, half + 1), np.zeros(1), sigma)[0]
    weight = 1.0 / variance
    num = correlate1d(correlate1d(residual * weight, h1, axis=0, mode="constant"), h1, axis=1, mode="constant")
    den = correlate1d(correlate1d(weight, h1**2, axis=0, mode="constant"), h1**2, axis=1, mode="constant")
    return num / np.sqrt(den)
