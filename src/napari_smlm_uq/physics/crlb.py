"""Fisher information and Cramer-Rao lower bound (paper eq. 3; docs/physics.md, section 6).

theta = (u0, v0, N0, b): column and row position (pixels), photons, background (photons/pixel).
Exact pixelated Gaussian model with the Poisson-Normal read-noise term: ``omega'_k = omega_k + r^2``.
Derivatives are analytic (erf differences and their Gaussian derivatives).
"""
from __future__ import annotations

import numpy as np

from .psf import integrated_gaussian_1d, integrated_gaussian_1d_dmu


def fisher_information(photons: float, background: float, psf_sigma: float, read_noise: float = 0.0,
                       roi: int = 11, position: tuple[float, float] | None = None,
                       mask: np.ndarray | None = None) -> np.ndarray:
    """4x4 Fisher matrix for one emitter in a ``roi`` x ``roi`` pixel box (emitter at its centre by
    default; ``position = (u0, v0)`` in box pixels otherwise); ``mask`` ``(roi, roi)``: the pixels that
    exist (a box over the frame's edge), the others carry no information."""
    centres = np.arange(roi, dtype=np.float64)
    u0, v0 = position if position is not None else ((roi - 1) / 2, (roi - 1) / 2)
    dx = integrated_gaussian_1d(centres, [u0], psf_sigma)[0]
    dy = integrated_gaussian_1d(centres, [v0], psf_sigma)[0]
    ddx = integrated_gaussian_1d_dmu(centres, [u0], psf_sigma)[0]
    ddy = integrated_gaussian_1d_dmu(centres, [v0], psf_sigma)[0]
    grads = np.stack([
        photons * np.outer(dy, ddx),  # d omega / d u0 (columns)
        photons * np.outer(ddy, dx),  # d omega / d v0 (rows)
        np.outer(dy, dx),             # d omega / d N0
        np.ones((roi, roi)),          # d omega / d b
    ]).reshape(4, -1)
    omega_prime = (background + photons * np.outer(dy, dx) + read_noise**2).ravel()
    if mask is not None:
        grads = grads * np.asarray(mask, bool).ravel()
    return (grads / omega_prime) @ grads.T


def crlb(photons: float, background: float, psf_sigma: float, read_noise: float = 0.0, roi: int = 11,
         position: tuple[float, float] | None = None, mask: np.ndarray | None = None) -> np.ndarray:
    """Standard-deviation bounds ``sqrt(diag(I^-1))`` for (x [px], y [px], photons, background); ``position``
    and ``mask`` as for :func:`fisher_information`."""
    if photons <= 0:
        raise ValueError(f"photons must be > 0 (got {photons})")
    if background < 0 or psf_sigma <= 0 or read_noise < 0:
        raise ValueError("background and read noise must be >= 0 and psf sigma > 0")
    info = fisher_information(photons, background, psf_sigma, read_noise, roi, position, mask)
    return np.sqrt(np.diag(np.linalg.inv(info)))


def crlb_nm(photons: float, background: float, psf_sigma: float, pixel_size: float, read_noise: float = 0.0,
            roi: int = 11) -> float:
    """Per-axis localization bound in nm (the x and y bounds are equal for a centred emitter)."""
    return float(crlb(photons, background, psf_sigma, read_noise, roi)[0] * pixel_size)


def crlb_in_frame(photons: float, background: float, psf_sigma: float, row: float, col: float,
                  shape: tuple[int, int], read_noise: float = 0.0, roi: int = 11) -> np.ndarray:
    """Bounds (x [px], y [px], photons, background) of an emitter at ``row``/``col`` (frame pixels) of a
    frame of ``shape``, from the pixels of the ``roi`` box around it that lie in the frame: near an edge
    part of its light is never recorded, and the bound grows."""
    half = roi // 2
    r0, c0 = int(np.rint(row)) - half, int(np.rint(col)) - half
    rows, cols = np.arange(r0, r0 + roi), np.arange(c0, c0 + roi)
    mask = ((rows >= 0) & (rows < shape[0]))[:, None] & ((cols >= 0) & (cols < shape[1]))[None, :]
    return crlb(photons, background, psf_sigma, read_noise, roi, (col - c0, row - r0), mask)
