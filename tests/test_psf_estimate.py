"""The PSF width, photons and background measured on a stack's isolated spots (analysis/psf_estimate.py)."""
from __future__ import annotations

import numpy as np
import pytest

from napari_smlm_uq.analysis.psf_estimate import TRAINING_RANGE, estimate_psf
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
