"""Batched maximum-likelihood fit of astigmatic emitters (astigmatism.AstigmaticModel) in pixel boxes: up
to ``K`` emitters per box fitted jointly (column, row, z, photons each) on one flat background.

The noise model, the Levenberg-Marquardt iteration on Fisher scoring, the masks of pixels outside the frame
and the fixed empty slots are those of fit.py; the widths follow the calibration at each emitter's z.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .astigmatism import AstigmaticModel, ZCalibration
from .fit import MIN_PHOTONS, ImagingModel, _start, damped_scoring

ITERATIONS = 12   # from the free elliptical fit's z: the bound is reached (tests/test_refine3d.py)


@dataclass
class RoiFit3D:
    """Per ROI ``background`` (photons/px), and per emitter slot ``(B, K)``: ``col``, ``row`` (ROI px), ``z``
    (nm), ``photons``, the Cramer-Rao bounds ``crlb_col``, ``crlb_row`` (px), ``crlb_z`` (nm); per ROI
    ``log_likelihood`` (up to a constant) and ``chi2`` (Pearson's chi-square per degree of freedom)."""

    col: np.ndarray
    row: np.ndarray
    z: np.ndarray
    photons: np.ndarray
    background: np.ndarray
    crlb_col: np.ndarray
    crlb_row: np.ndarray
    crlb_z: np.ndarray
    log_likelihood: np.ndarray
    chi2: np.ndarray


def fit_rois_3d(rois: np.ndarray, cols: np.ndarray, rows: np.ndarray, z: np.ndarray, active: np.ndarray,
                calibration: ZCalibration, model: ImagingModel, mask: np.ndarray | None = None,
                iterations: int = ITERATIONS) -> RoiFit3D:
    """Fit ROIs ``(B, S, S)`` of photo-electrons from starting positions ``cols``/``rows`` (ROI px) and ``z``
    (nm), all ``(B, K)``, of the ``active`` slots; ``model``: read variance (scalar or ``(B, S, S)``) and
    excess noise (its ``psf_sigma`` is not used); ``mask`` the pixels that exist."""
    rois = np.asarray(rois, np.float64)
    n_roi, size = rois.shape[0], rois.shape[-1]
    active = np.asarray(active, bool)
    weight = np.ones_like(rois) if mask is None else np.asarray(mask, np.float64)
    excess = model.excess
    r2 = np.broadcast_to(np.asarray(model.read_variance, np.float64), rois.shape) / excess
    data = np.clip(rois + r2, 0.0, None) / excess * weight
    z = np.clip(np.where(active, z, 0.0), *calibration.z_range)
    width = np.sqrt(np.prod(calibration.sigmas(z[:, 0]), axis=0))     # the start's photons (fit._start)
    flat = _start(rois, weight, np.asarray(cols, float), np.asarray(rows, float), active, width)
    theta = np.empty((n_roi, 1 + 4 * active.shape[1]))
    theta[:, 0], theta[:, 1::4], theta[:, 2::4] = flat[:, 0], flat[:, 2::3], flat[:, 3::3]
    theta[:, 3::4], theta[:, 4::4] = z, flat[:, 4::3]
    free = np.concatenate([np.ones((n_roi, 1), bool), np.repeat(active, 4, axis=1)], axis=1)
    astig = AstigmaticModel(size, active.shape[1], calibration)

    def expected(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, jac = astig(t)
        return (mu + r2) / excess, jac / excess

    def clip(t: np.ndarray) -> np.ndarray:
        t = t.copy()
        t[:, 0] = np.clip(t[:, 0], 1e-3, None)
        t[:, 1::4] = np.clip(t[:, 1::4], -3.0, size + 2.0)
        t[:, 2::4] = np.clip(t[:, 2::4], -3.0, size + 2.0)
        t[:, 3::4] = np.clip(t[:, 3::4], *calibration.z_range)
        t[:, 4::4] = np.where(free[:, 4::4], np.clip(t[:, 4::4], MIN_PHOTONS, None), 0.0)
        return t

    theta, ll, bounds, chi2 = damped_scoring(data, weight, free, clip(theta), expected, clip, iterations)
    return RoiFit3D(theta[:, 1::4], theta[:, 2::4], theta[:, 3::4], theta[:, 4::4], theta[:, 0],
                    bounds[:, 1::4], bounds[:, 2::4], bounds[:, 3::4], ll, chi2)
