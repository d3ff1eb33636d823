"""The batched maximum-likelihood PSF fit (physics/fit.py): at the Cramer-Rao bound on simulated
spots, neighbours fitted jointly, sCMOS read-noise maps and excess noise, a free PSF width."""
from __future__ import annotations

import numpy as np
import pytest

from napari_smlm_uq.physics.crlb import crlb
from napari_smlm_uq.physics.fit import ImagingModel, fit_rois
from napari_smlm_uq.physics.psf import render_emitters

SIZE, PHOTONS, BACKGROUND, SIGMA, READ = 9, 2000.0, 20.0, 1.0, 1.5


def spots(n: int, rng, offsets=((0.0, 0.0),), sigma: float = SIGMA, photons: float = PHOTONS) -> tuple[np.ndarray, ...]:
    """Expected photon ROIs ``(n, S, S)`` with emitters at the centre plus ``offsets`` (and a random
    sub-pixel shift); returns omega, true columns and rows ``(n, K)``."""
    shift = rng.uniform(-0.5, 0.5, (n, 2))
    centre = (SIZE - 1) / 2
    cols = centre + shift[:, :1] + np.array([o[0] for o in offsets])
    rows = centre + shift[:, 1:] + np.array([o[1] for o in offsets])
    omega = np.stack([render_emitters(r, c, np.full(len(r), photons), (SIZE, SIZE), sigma) for r, c in zip(rows, cols)])
    return omega + BACKGROUND, cols, rows


def test_single_spots_reach_the_crlb_and_report_it():
    rng = np.random.default_rng(0)
    omega, cols, rows = spots(600, rng)
    e = rng.poisson(omega) + rng.normal(0, READ, omega.shape)
    start = rng.normal(0, 0.15, cols.shape)
    fit = fit_rois(e, cols + start, rows - start, np.ones((600, 1), bool), ImagingModel(SIGMA, READ**2))
    bound = crlb(PHOTONS, BACKGROUND, SIGMA, READ, SIZE)
    rmse = np.sqrt(np.mean(np.concatenate([fit.col - cols, fit.row - rows]) ** 2))
    assert rmse == pytest.approx(bound[0], rel=0.1)                  # efficient: at the bound
    assert np.median(fit.crlb_col) == pytest.approx(bound[0], rel=0.03)  # and it says so
    assert np.mean(fit.photons) == pytest.approx(PHOTONS, rel=0.01)
    assert np.mean(fit.background) == pytest.approx(BACKGROUND, rel=0.02)
    assert np.median(fit.chi2) == pytest.approx(1.0, abs=0.1)        # the model explains the boxes


def test_close_neighbours_fitted_jointly_are_unbiased():
    """Two emitters 1.5 sigma apart: fitted alone, each is pulled towards the other by a tenth of a pixel
    or more; fitted jointly, the bias vanishes and the bound widens."""
    rng = np.random.default_rng(1)
    n = 300
    omega, cols, rows = spots(n, rng, offsets=((-0.75, 0.0), (0.75, 0.0)))
    e = rng.poisson(omega) + rng.normal(0, READ, omega.shape)
    start_c, start_r = cols + rng.normal(0, 0.1, cols.shape), rows + rng.normal(0, 0.1, rows.shape)
    joint = fit_rois(e, start_c, start_r, np.ones((n, 2), bool), ImagingModel(SIGMA, READ**2))
    alone = fit_rois(e, start_c[:, :1], start_r[:, :1], np.ones((n, 1), bool), ImagingModel(SIGMA, READ**2))
    assert np.mean(alone.col[:, 0] - cols[:, 0]) > 0.1
    assert abs(np.mean(joint.col[:, 0] - cols[:, 0])) < 0.02
    rmse = np.sqrt(np.mean((joint.col - cols) ** 2))
    assert rmse == pytest.approx(np.median(joint.crlb_col), rel=0.15)
    assert np.median(joint.crlb_col) > 1.2 * crlb(PHOTONS, BACKGROUND, SIGMA, READ, SIZE)[0]


def test_excess_noise_factor_widens_the_bound_by_its_square_root():
    """Multiplication noise (variance F^2 omega, F^2 = 2): fitted with ``excess=2``, the errors and the
    reported bound are sqrt(2) times those of the noiseless-gain camera."""
    rng = np.random.default_rng(2)
    omega, cols, rows = spots(600, rng)
    e = 2.0 * rng.poisson(omega / 2.0) + rng.normal(0, READ, omega.shape)
    fit = fit_rois(e, cols, rows, np.ones((600, 1), bool), ImagingModel(SIGMA, READ**2, excess=2.0))
    bound = crlb(PHOTONS, BACKGROUND, SIGMA, READ / np.sqrt(2), SIZE)[0] * np.sqrt(2)
    assert np.median(fit.crlb_col) == pytest.approx(bound, rel=0.03)
    assert np.sqrt(np.mean((fit.col - cols) ** 2)) == pytest.approx(bound, rel=0.12)


def test_scmos_read_noise_map_down_weights_noisy_pixels():
    """Pixels with 40 e- read noise beside the spot: the per-pixel map keeps the fit near the bound,
    the scalar median read noise does not."""
    rng = np.random.default_rng(3)
    n = 400
    omega, cols, rows = spots(n, rng)
    read = np.full(omega.shape, READ)
    read[:, 3:6:2, 3:6:2] = 40.0
    e = rng.poisson(omega) + rng.normal(0, 1, omega.shape) * read
    with_map = fit_rois(e, cols, rows, np.ones((n, 1), bool), ImagingModel(SIGMA, read**2))
    scalar = fit_rois(e, cols, rows, np.ones((n, 1), bool), ImagingModel(SIGMA, READ**2))
    rmse = lambda f: np.sqrt(np.mean((f.col - cols) ** 2))
    assert rmse(with_map) < 0.6 * rmse(scalar)
    assert rmse(with_map) == pytest.approx(np.median(with_map.crlb_col), rel=0.15)


def test_free_psf_width_and_masked_pixels():
    """The width is recovered; pixels masked as outside the frame do not count."""
    rng = np.random.default_rng(4)
    omega, cols, rows = spots(300, rng, sigma=1.4)
    e = rng.poisson(omega) + rng.normal(0, READ, omega.shape)
    mask = np.ones(omega.shape, bool)
    mask[:, :, :2] = False
    e[:, :, :2] = 1e6   # would wreck the fit if used
    fit = fit_rois(e, cols, rows, np.ones((300, 1), bool), ImagingModel(1.0, READ**2), mask=mask, fit_sigma=True)
    assert np.median(fit.sigma) == pytest.approx(1.4, abs=0.03)
    assert np.sqrt(np.mean((fit.col - cols) ** 2)) < 0.06
