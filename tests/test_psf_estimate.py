"""The PSF width, photons and background measured on a stack's isolated spots (analysis/psf_estimate.py)."""
from __future__ import annotations

import numpy as np
import pytest

from napari_smlm_uq.analysis.psf_estimate import TRAINING_RANGE, PSFEstimate, estimate_psf
from napari_smlm_uq.physics.camera import Camera
from napari_smlm_uq.physics.simulate import SimulationSettings, simulate

CAMERA = Camera(offset=100.0, gain=2.0, read_noise=1.5)


def stack(psf_sigma: float, photons: float, background: float, frames: int = 20, density: float = 0.3):
    return simulate(SimulationSettings(frames=frames, size=48, density=density, photons=photons, background=background,
                                       psf_sigma=psf_sigma, camera=CAMERA, seed=3)).adu


def test_estimate_inside_the_training_range():
    est = estimate_psf(stack(1.2, 2000.0, 20.0), CAMERA)
    assert est.sigma == pytest.approx(1.2, abs=0.03)
    assert est.photons == pytest.approx(2000.0, rel=0.05)
    assert est.background == pytest.approx(20.0, rel=0.05)
    assert 0 < est.sigma_spread < 0.1 and est.spots >= 40
    assert est.outside_training() == [] and est.warning() is None


def test_wide_psf_warns_and_suggests_fine_tuning():
    est = estimate_psf(stack(1.9, 1500.0, 20.0), CAMERA)
    assert est.sigma == pytest.approx(1.9, abs=0.06)
    assert est.outside_training() == ["psf_sigma"]
    assert "psf sigma 1.9" in est.warning() and "fine-tune" in est.warning()
    assert est.sigma > TRAINING_RANGE["psf_sigma"][1]


def test_wrong_gain_shows_as_photons_and_an_empty_stack_is_refused():
    """A camera gain 4x too high divides everything by 4: photons and background drop, the width stays."""
    est = estimate_psf(stack(1.2, 2000.0, 20.0), Camera(offset=100.0, gain=8.0, read_noise=1.5))
    assert est.photons == pytest.approx(500.0, rel=0.1) and est.sigma == pytest.approx(1.2, abs=0.05)
    with pytest.raises(ValueError, match="isolated bright spots"):
        estimate_psf(np.full((3, 32, 32), 120.0) + np.random.default_rng(0).normal(0, 2, (3, 32, 32)), CAMERA)


def test_training_ranges_widen_the_spread_and_stay_valid():
    est = PSFEstimate(sigma=1.3, sigma_spread=0.05, photons=3000.0, photons_spread=500.0, background=20.0,
                      background_spread=1.0, spots=100)
    ranges = est.training_ranges()   # +/- 2 spreads, at least +/- 10 % of the median
    assert ranges["photons"] == pytest.approx((2000.0, 4000.0))
    assert ranges["psf_sigma"] == pytest.approx((1.17, 1.43)) and ranges["background"] == pytest.approx((18.0, 22.0))
    narrow = PSFEstimate(0.35, 0.1, 50.0, 40.0, 1.0, 2.0, 10).training_ranges()
    expected = {"psf_sigma": (0.3, 0.55), "photons": (1.0, 130.0), "background": (0.0, 5.0)}   # clipped below
    assert all(narrow[k] == pytest.approx(v) for k, v in expected.items())
