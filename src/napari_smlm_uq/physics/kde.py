"""Super-resolved kernel density targets on the SR grid (docs/physics.md, sections 4 and 5).

SR pixel ``m`` has its centre at ``(m + 1/2)/f - 1/2`` raw pixels (``f = 4``). Each emitter adds a
pixel-integrated Gaussian of width ``KERNEL_SIGMA`` SR pixels, scaled by ``2 pi sigma^2`` so the
continuous kernel has peak height 1 (whatever the photon count) and integral ``KERNEL_INTEGRAL`` SR
pixels^2: the number of emitters in a KDE is ``y.sum() / KERNEL_INTEGRAL``. Pixel-integration lowers
the sampled peak to between ``PEAK_CORNER`` (emitter at an SR pixel corner) and ``PEAK_CENTRE``.
Model space is ``z = 2 y - 1`` in ``[-1, 1]`` (:func:`to_model`, :func:`from_model`).
"""
from __future__ import annotations

import numpy as np
from scipy.special import erf

from .psf import render_emitters

UPSAMPLING = 4
KERNEL_SIGMA = 1.0
KERNEL_INTEGRAL = 2.0 * np.pi * KERNEL_SIGMA**2
PEAK_CENTRE = KERNEL_INTEGRAL * erf(0.5 / (np.sqrt(2) * KERNEL_SIGMA)) ** 2
PEAK_CORNER = KERNEL_INTEGRAL * (0.5 * erf(1.0 / (np.sqrt(2) * KERNEL_SIGMA))) ** 2


def raw_to_sr(coord: np.ndarray | float, f: int = UPSAMPLING) -> np.ndarray:
    """Raw-pixel coordinate -> SR-pixel coordinate (both with integer pixel centres)."""
    return (np.asarray(coord, dtype=np.float64) + 0.5) * f - 0.5


def sr_to_raw(coord: np.ndarray | float, f: int = UPSAMPLING) -> np.ndarray:
    """SR-pixel coordinate -> raw-pixel coordinate: SR centre ``m`` is at ``(m + 1/2)/f - 1/2``."""
    return (np.asarray(coord, dtype=np.float64) + 0.5) / f - 0.5


def grid_offset(ratio: float) -> float:
    """Raw pixels from the centre of raw pixel 0 to the centre of pixel 0 of a grid whose pixels are ``ratio``
    raw pixels wide, both grids starting at the frame's top-left corner (docs/physics.md, section 4):
    ``(ratio - 1) / 2``; ``-(1 - 1/f) / 2`` = -3/8 for the SR grid (``ratio = 1/f``)."""
    return (ratio - 1.0) / 2.0


def render_kde(rows: np.ndarray, cols: np.ndarray, raw_shape: tuple[int, int], f: int = UPSAMPLING) -> np.ndarray:
    """KDE (f H, f W) float32 of emitters at raw-pixel ``rows``/``cols``."""
    shape = (raw_shape[0] * f, raw_shape[1] * f)
    weights = np.full(len(rows), KERNEL_INTEGRAL)
    return render_emitters(raw_to_sr(rows, f), raw_to_sr(cols, f), weights, shape, KERNEL_SIGMA).astype(np.float32)


def to_model(y: np.ndarray) -> np.ndarray:
    """KDE -> model space ``[-1, 1]`` (values above 1, overlapping kernels, saturate at 1)."""
    return np.clip(2.0 * y - 1.0, -1.0, 1.0)


def from_model(z):
    """Model space -> KDE (works for numpy arrays and torch tensors)."""
    return (z + 1.0) * 0.5
