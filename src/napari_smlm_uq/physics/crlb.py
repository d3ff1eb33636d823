"""Fisher information and Cramer-Rao lower bound (paper eq. 3; docs/physics.md, section 6).

theta = (u0, v0, N0, b): column and row position (pixels), photons, background (photons/pixel).
Exact pixelated Gaussian model with the Poisson-Normal read-noise term: ``omega'_k = omega_k + r^2``.
Derivatives are analytic (erf differences and their Gaussian derivatives).
"""
from __future__ import annotations

import numpy as np

from ..io.files import InputError
from .psf import integrated_gaussian_1d, integrated_gaussian_1d_dmu


def fisher_information(photons: float | np.ndarray, background: float, psf_sigma: float, read_noise: float = 0.0,
                       roi: int = 11, position: tuple[float, float] | np.ndarray | None = None,
                       mask: np.ndarray | None = None) -> np.ndarray:
    """Fisher matrix for one emitter in a ``roi`` x ``roi`` pixel box (4x4: u0, v0, N0, b; emitter at its
    centre by default; ``position = (u0, v0)`` in box pixels otherwise), or for ``n`` emitters fitted jointly
    (``photons`` ``(n,)``, ``position`` ``(n, 2)``; ``3n + 1`` square: u, v, N of each, then b); ``mask``
    ``(roi, roi)``: the pixels that exist (a box over the frame's edge), the others carry no information."""
    centres = np.arange(roi, dtype=np.float64)
    n = np.atleast_1d(np.asarray(photons, np.float64))
    if position is None:
        uv = np.full((len(n), 2), (roi - 1) / 2)
    else:
        uv = np.asarray(position, np.float64).reshape(len(n), 2)
    dx, dy = integrated_gaussian_1d(centres, uv[:, 0], psf_sigma), integrated_gaussian_1d(centres, uv[:, 1], psf_sigma)
    ddx = integrated_gaussian_1d_dmu(centres, uv[:, 0], psf_sigma)
    ddy = integrated_gaussian_1d_dmu(centres, uv[:, 1], psf_sigma)
    psf = dy[:, :, None] * dx[:, None, :]                                   # (n, roi, roi)
    grads = np.stack([
        n[:, None, None] * dy[:, :, None] * ddx[:, None, :],   # d omega / d u (columns)
        n[:, None, None] * ddy[:, :, None] * dx[:, None, :],   # d omega / d v (rows)
        psf,                                                   # d omega / d N
    ], axis=1).reshape(3 * len(n), -1)
    grads = np.concatenate([grads, np.ones((1, roi * roi))])   # d omega / d b
    omega_prime = (background + np.einsum("k,kij->ij", n, psf) + read_noise**2).ravel()
    if mask is not None:
        grads = grads * np.asarray(mask, bool).ravel()
    return (grads / omega_prime) @ grads.T


def crlb(photons: float, background: float, psf_sigma: float, read_noise: float = 0.0, roi: int = 11,
         position: tuple[float, float] | None = None, mask: np.ndarray | None = None) -> np.ndarray:
    """Standard-deviation bounds ``sqrt(diag(I^-1))`` for (x [px], y [px], photons, background); ``position``
    and ``mask`` as for :func:`fisher_information`."""
    if photons <= 0:
        raise InputError(f"photons must be > 0 (got {photons})")
    if background < 0 or psf_sigma <= 0 or read_noise < 0:
        raise InputError("background and read noise must be >= 0 and psf sigma > 0")
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


def pair_lateral_crlb(separation: float, photons: float, background: float, psf_sigma: float,
                      read_noise: float = 0.0, roi: int = 15) -> float:
    """Lateral bound (px, ``sqrt(crlb_x^2 + crlb_y^2)``) of each of two emitters of ``photons`` each,
    ``separation`` px apart and fitted jointly: it grows without limit as they merge."""
    half = (roi - 1) / 2
    position = np.array([[half - separation / 2, half], [half + separation / 2, half]])
    info = fisher_information(np.full(2, photons), background, psf_sigma, read_noise, roi, position)
    bounds = np.sqrt(np.diag(np.linalg.inv(info)))
    return float(np.hypot(bounds[0], bounds[1]))
