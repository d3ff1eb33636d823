"""The astigmatic PSF (docs/3d.md): an elliptical pixel-integrated Gaussian whose widths follow the
defocus model of Huang et al. 2008 (or a cubic spline of z), its Jacobian, the Cramer-Rao bound of
(x, y, z, photons, background) and z from fitted widths.

Coordinates as in psf.py (pixel ``k`` covers ``[k - 1/2, k + 1/2]``); ``x`` is the column, ``y`` the row;
z in nm; widths in raw pixels. The noise model is that of crlb.py: Poisson with read noise folded in as
``omega'_k = omega_k + r^2``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.interpolate import BSpline

from ..io.files import InputError
from .fit import _profile
from .psf import integrated_gaussian_1d

Z_GRID_STEP = 1.0       # nm: the lookup grid of :func:`z_from_widths`
Z_LOOKUP_CHUNK = 4096   # fits per step of :func:`z_from_widths` (a few tens of MB for a +-600 nm range)


@dataclass(frozen=True)
class DefocusCurve:
    """One axis's width ``sigma(z) = sigma0 sqrt(1 + u^2 + a u^3 + b u^4)``, ``u = (z - c) / d``."""

    sigma0: float   # px, the width in this axis's focus
    c: float        # nm, this axis's focal plane
    d: float        # nm, its depth of focus (the width grows by sqrt(2) at |z - c| = d when a = b = 0)
    a: float = 0.0  # third-order coefficient (dimensionless)
    b: float = 0.0  # fourth-order coefficient (dimensionless)

    def _terms(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u = (np.asarray(z, np.float64) - self.c) / self.d
        return u, np.clip(1.0 + u**2 + self.a * u**3 + self.b * u**4, 1e-6, None)

    def sigma(self, z: np.ndarray | float) -> np.ndarray:
        """Width (px) at ``z`` (nm)."""
        return self.sigma0 * np.sqrt(self._terms(z)[1])

    def slope(self, z: np.ndarray | float) -> np.ndarray:
        """``d sigma / d z`` (px per nm)."""
        u, q = self._terms(z)
        return self.sigma0 * (2 * u + 3 * self.a * u**2 + 4 * self.b * u**3) / (2 * self.d * np.sqrt(q))


@dataclass(frozen=True)
class SplineCurve:
    """One axis's width as a cubic B-spline of z: ``knots`` (nm, the full knot vector) and ``coefficients``
    (px); for PSFs whose widths do not follow the Huang form."""

    knots: tuple[float, ...]
    coefficients: tuple[float, ...]

    def _spline(self) -> BSpline:
        return BSpline(np.asarray(self.knots, np.float64), np.asarray(self.coefficients, np.float64), 3)

    def sigma(self, z: np.ndarray | float) -> np.ndarray:
        return np.clip(self._spline()(np.asarray(z, np.float64)), 1e-3, None)

    def slope(self, z: np.ndarray | float) -> np.ndarray:
        return self._spline().derivative()(np.asarray(z, np.float64))


Curve = DefocusCurve | SplineCurve


def _curve_from_dict(d: dict) -> Curve:
    if "knots" in d:
        return SplineCurve(tuple(map(float, d["knots"])), tuple(map(float, d["coefficients"])))
    return DefocusCurve(**d)


@dataclass(frozen=True)
class ZCalibration:
    """An astigmatic calibration: the widths along x (columns) and y (rows) as functions of z, where
    they hold (``z_range``, nm: the width ratio is monotone there), the camera pixel size (nm) it was
    measured with, its fit residuals and the stack it came from."""

    x: Curve
    y: Curve
    z_range: tuple[float, float]               # nm
    pixel_size: float                          # nm per raw pixel
    residuals: dict = field(default_factory=dict)
    source: str = ""

    def sigmas(self, z: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """(sigma_x, sigma_y) in px at ``z`` (nm)."""
        return self.x.sigma(z), self.y.sigma(z)

    def slopes(self, z: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """(d sigma_x / dz, d sigma_y / dz) in px per nm."""
        return self.x.slope(z), self.y.slope(z)

    def validate(self) -> ZCalibration:
        lo, hi = self.z_range
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise InputError(f"z calibration: z range must be two increasing numbers, nm (got {self.z_range})")
        if not self.pixel_size > 0:
            raise InputError(f"z calibration: pixel size must be > 0 nm (got {self.pixel_size})")
        for name, curve in (("x", self.x), ("y", self.y)):
            if isinstance(curve, DefocusCurve) and not (curve.sigma0 > 0 and curve.d > 0):
                raise InputError(f"z calibration: axis {name} needs sigma0 > 0 px and d > 0 nm (got {curve})")
            widths = curve.sigma(np.linspace(lo, hi, 101))
            if not np.all(np.isfinite(widths) & (widths > 0.05)):
                raise InputError(f"z calibration: axis {name}'s widths are not positive over its z range")
        return self

    @property
    def model(self) -> str:
        return "huang2008" if isinstance(self.x, DefocusCurve) else "spline"

    def to_dict(self) -> dict:
        return {"model": self.model, "x": asdict(self.x), "y": asdict(self.y), "z_range_nm": list(self.z_range),
                "pixel_size_nm": self.pixel_size, "residuals": self.residuals, "source": self.source}

    @classmethod
    def from_dict(cls, d: dict) -> ZCalibration:
        return cls(_curve_from_dict(d["x"]), _curve_from_dict(d["y"]), tuple(map(float, d["z_range_nm"])),
                   float(d["pixel_size_nm"]), dict(d.get("residuals", {})), str(d.get("source", ""))).validate()


def render_astigmatic(rows: np.ndarray, cols: np.ndarray, z: np.ndarray, weights: np.ndarray,
                      shape: tuple[int, int], calibration: ZCalibration) -> np.ndarray:
    """Sum of elliptical pixel-integrated Gaussians ``sum_j w_j D(r; row_j, sy(z_j)) D(c; col_j, sx(z_j))``."""
    sx, sy = calibration.sigmas(z)
    dy = integrated_gaussian_1d(np.arange(shape[0]), rows, np.atleast_1d(sy))
    dx = integrated_gaussian_1d(np.arange(shape[1]), cols, np.atleast_1d(sx))
    return (dy * np.asarray(weights, dtype=np.float64)[:, None]).T @ dx


def _profiles(centres: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, ...]:
    """fit._profile with one width per emitter: ``mu``, ``sigma`` ``(B, K)`` -> three ``(B, K, S)``."""
    out = _profile(centres, mu.reshape(-1, 1), sigma.ravel())
    return tuple(o.reshape(*mu.shape, len(centres)) for o in out)


class AstigmaticModel:
    """Expected photons of ROIs ``(B, S, S)`` with up to ``K`` astigmatic emitters on a flat background,
    and the Jacobian ``(B, P, S*S)``. Parameters per ROI: ``[b, col_1, row_1, z_1, N_1, ..., N_K]`` (px, px,
    nm, photons; ``b`` photons/px)."""

    def __init__(self, size: int, k: int, calibration: ZCalibration):
        self.centres = np.arange(size, dtype=np.float64)
        self.k = k
        self.calibration = calibration

    def __call__(self, theta: np.ndarray, jacobian: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        b, col, row, z, n = theta[:, 0], theta[:, 1::4], theta[:, 2::4], theta[:, 3::4], theta[:, 4::4]
        sx, sy = self.calibration.sigmas(z)
        dx, dx_mu, dx_s = _profiles(self.centres, col, sx)
        dy, dy_mu, dy_s = _profiles(self.centres, row, sy)
        psf = dy[..., :, None] * dx[..., None, :]                    # (B, K, S, S)
        mu = b[:, None, None] + np.einsum("bk,bkij->bij", n, psf)
        if not jacobian:
            return mu, None
        gx, gy = self.calibration.slopes(z)
        nb = n[..., None, None]
        d_col = nb * dy[..., :, None] * dx_mu[..., None, :]
        d_row = nb * dy_mu[..., :, None] * dx[..., None, :]
        d_z = nb * ((gy[..., None] * dy_s)[..., :, None] * dx[..., None, :]
                    + dy[..., :, None] * (gx[..., None] * dx_s)[..., None, :])
        per_emitter = np.stack([d_col, d_row, d_z, psf], axis=2).reshape(len(theta), 4 * self.k, *mu.shape[1:])
        jac = np.concatenate([np.ones_like(mu)[:, None], per_emitter], axis=1)
        return mu, jac.reshape(len(theta), jac.shape[1], -1)


def default_roi(calibration: ZCalibration) -> int:
    """An odd box side (px) holding +-4 widths of the widest spot of the calibration's z range, at least 11
    (crlb.py's default): one box for every z, so bounds vary smoothly with z."""
    widths = calibration.sigmas(np.linspace(*calibration.z_range, 201))
    return max(11, 2 * int(np.ceil(4 * max(w.max() for w in widths))) + 1)


def fisher_information_3d(photons: float, background: float, z: float, calibration: ZCalibration,
                          read_noise: float = 0.0, roi: int | None = None,
                          position: tuple[float, float] | None = None) -> np.ndarray:
    """5x5 Fisher matrix of (x [px], y [px], z [nm], photons, background [photons/px]) of one emitter at
    ``z`` in a ``roi`` box (default :func:`default_roi`; centred, or at ``position = (x, y)`` box px)."""
    roi = roi or default_roi(calibration)
    x, y = ((roi - 1) / 2,) * 2 if position is None else position
    mu, jac = AstigmaticModel(roi, 1, calibration)(np.array([[background, x, y, z, photons]]))
    jac = jac[0][[1, 2, 3, 4, 0]]                     # (x, y, z, N, b)
    return (jac / (mu[0].ravel() + read_noise**2)) @ jac.T


def crlb_3d(photons: float, background: float, z: float, calibration: ZCalibration, read_noise: float = 0.0,
            roi: int | None = None, position: tuple[float, float] | None = None) -> np.ndarray:
    """Bounds ``sqrt(diag(I^-1))`` of (x [px], y [px], z [nm], photons, background) at ``z`` (nm)."""
    if photons <= 0:
        raise ValueError(f"photons must be > 0 (got {photons})")
    if background < 0 or read_noise < 0:
        raise ValueError("background and read noise must be >= 0")
    info = fisher_information_3d(photons, background, z, calibration, read_noise, roi, position)
    return np.sqrt(np.diag(np.linalg.inv(info)))


def z_from_widths(sigma_x: np.ndarray, sigma_y: np.ndarray, calibration: ZCalibration) -> np.ndarray:
    """z (nm) whose calibrated widths are nearest to fitted ones, in Huang et al.'s distance
    ``(sqrt sx - sqrt sx(z))^2 + (sqrt sy - sqrt sy(z))^2``, searched over the calibration's z range
    (1 nm grid, then a parabola through the best three points; :data:`Z_LOOKUP_CHUNK` fits at a time)."""
    grid = np.arange(calibration.z_range[0], calibration.z_range[1] + Z_GRID_STEP / 2, Z_GRID_STEP)
    gx, gy = (np.sqrt(s) for s in calibration.sigmas(grid))
    sx, sy = np.sqrt(np.atleast_1d(sigma_x)), np.sqrt(np.atleast_1d(sigma_y))
    out = np.empty(len(sx))
    for i in range(0, len(sx), Z_LOOKUP_CHUNK):
        dist = (sx[i:i + Z_LOOKUP_CHUNK, None] - gx) ** 2 + (sy[i:i + Z_LOOKUP_CHUNK, None] - gy) ** 2   # (n, G)
        best = np.clip(np.argmin(dist, axis=1), 1, len(grid) - 2)
        rows = np.arange(len(best))
        lo, mid, hi = dist[rows, best - 1], dist[rows, best], dist[rows, best + 1]
        curvature = lo - 2 * mid + hi
        shift = np.where(curvature > 0, 0.5 * (lo - hi) / np.where(curvature > 0, curvature, 1.0), 0.0)
        out[i:i + Z_LOOKUP_CHUNK] = grid[best] + np.clip(shift, -1.0, 1.0) * Z_GRID_STEP
    return out
