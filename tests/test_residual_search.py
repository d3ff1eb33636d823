"""The refinement's search of its residual for emitters the localizations missed (inference/residual_search.py,
physics/residual.py)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from napari_smlm_uq.inference.pipeline import PredictSettings, predict
from napari_smlm_uq.inference.refine import Refiner
from napari_smlm_uq.inference.residual_search import find_missed
from napari_smlm_uq.localizations import Localizations
from napari_smlm_uq.models import registry
from napari_smlm_uq.physics.camera import Camera
from napari_smlm_uq.physics.crlb import crlb
from napari_smlm_uq.physics.fit import ImagingModel
from napari_smlm_uq.physics.psf import render_emitters
from napari_smlm_uq.physics.residual import background_map, detection_z, emitters_image
from napari_smlm_uq.physics.simulate import SimulationSettings, simulate

CAMERA = Camera(offset=100.0, gain=2.0, read_noise=1.5)


def given(rows, cols, frame: int = 3) -> Localizations:
    """Deep localizations at ``rows``/``cols`` with a diffusion spread of 0.1 px."""
    n = len(rows)
    return Localizations(np.full(n, frame), np.asarray(rows, float), np.asarray(cols, float), np.full(n, 0.1),
                         np.ones(n), np.full(n, 7.0))


def test_the_residual_images_follow_their_closed_forms():
    rng = np.random.default_rng(1)
    rows, cols, photons = rng.uniform(-2, 34, 40), rng.uniform(-2, 34, 40), rng.uniform(500, 3000, 40)
    assert np.allclose(emitters_image(rows, cols, photons, (32, 32), 1.2, 5),
                       render_emitters(rows, cols, photons, (32, 32), 1.2), atol=1e-3 * photons.max())
    noise = rng.poisson(20.0, (128, 128)).astype(float)
    assert background_map(noise).mean() == pytest.approx(20.0, abs=0.3)
    z = detection_z(noise - 20.0, np.full(noise.shape, 20.0), 1.0, 4)
    assert z[8:-8, 8:-8].mean() == pytest.approx(0.0, abs=0.1) and z[8:-8, 8:-8].std() == pytest.approx(1.0, abs=0.1)
    # a spot of N photons on background b: z = N sqrt(sum h^2 / b) (h the pixel-integrated PSF)
    spot = render_emitters(np.array([16.0]), np.array([16.0]), np.array([300.0]), (32, 32), 1.0)
    h = render_emitters(np.array([16.0]), np.array([16.0]), np.ones(1), (32, 32), 1.0)
    assert detection_z(spot, np.full(spot.shape, 20.0), 1.0, 4)[16, 16] == pytest.approx(
        300 * np.sqrt((h[12:21, 12:21] ** 2).sum() / 20.0), rel=1e-6)


def test_an_emitter_the_localizations_missed_is_added_at_its_bound():
    """Two emitters 6 px apart, only one localized: with the search the other is added, in every one of 20
    noisy frames, at its Cramer-Rao bound (error / uncertainty of unit spread), with detection 0 and the
    frame's index; without it, one localization."""
    rng = np.random.default_rng(2)
    truth_r, truth_c = np.array([12.3, 16.1]), np.array([10.2, 14.6])
    mean = render_emitters(truth_r, truth_c, np.array([2000.0, 1500.0]), (28, 28), 1.0) + 20.0
    z, unc = [], []
    for _ in range(20):
        adu = CAMERA.expose(mean, rng)
        assert len(Refiner(CAMERA, psf_sigma=1.0)(given(truth_r[:1] + 0.1, truth_c[:1]), adu)) == 1
        out = Refiner(CAMERA, psf_sigma=1.0, search=True)(given(truth_r[:1] + 0.1, truth_c[:1]), adu)
        assert len(out) == 2 and out.detection.tolist() == [1.0, 0.0] and out.frame.tolist() == [3, 3]
        z += [(out.row[1] - truth_r[1]) / out.uncertainty[1], (out.col[1] - truth_c[1]) / out.uncertainty[1]]
        unc.append(out.uncertainty[1])
    bound = crlb(1500.0, 20.0, 1.0, 1.5)[0]
    assert np.median(unc) == pytest.approx(bound, rel=0.2)   # alone in its box: the bound, no diffusion share
    assert 0.6 < np.std(z) < 1.5


def test_noise_and_isolated_emitters_add_nothing():
    """Pure noise (backgrounds of 1, 3 and 20 photons, and an EMCCD's excess noise) and single emitters of 500-
    10,000 photons, each localized: the search adds no emitter, and the refit is the one without it."""
    rng = np.random.default_rng(3)
    for background, excess in ((1.0, 1.0), (3.0, 1.0), (20.0, 1.0), (10.0, 2.0)):
        for _ in range(10):
            e = rng.poisson(background / excess, (64, 64)) + rng.normal(0, 1.5 / excess, (64, 64))
            none = np.zeros(0)
            assert not len(find_missed(e, none, none, none, ImagingModel(1.0, 1.5**2, excess), 2000.0))
    for photons in (500.0, 2000.0, 10000.0):
        rows, cols = np.array([8.0, 8.0, 24.0, 24.0]) + rng.uniform(-1, 1, 4), np.array([8.0, 24.0, 8.0, 24.0])
        adu = CAMERA.expose(render_emitters(rows, cols, np.full(4, photons), (32, 32), 1.0) + 20.0, rng)
        deep = given(rows + 0.1, cols - 0.1)
        with_search = Refiner(CAMERA, psf_sigma=1.0, search=True)(deep, adu)
        assert np.array_equal(with_search.row, Refiner(CAMERA, psf_sigma=1.0)(deep, adu).row)
        assert (with_search.detection == 1).all()


@pytest.fixture(scope="module")
def dense():
    return simulate(SimulationSettings(frames=2, size=32, density=8.0, seed=81))


def test_predict_adds_what_the_search_finds_near_true_emitters(dense):
    """phi alone on a dense stack (8 /um^2): with the search more localizations, those added (detection 0) each
    near a true emitter; without it (the default), none."""
    models = registry.load("default")
    s = PredictSettings(samples=0, camera=dense.settings.camera, pixel_size=dense.settings.pixel_size)
    off = Localizations.concat([r.localizations for r in predict(dense.adu, models, s)])
    on = Localizations.concat([r.localizations for r in predict(dense.adu, models, replace(s, residual_search=True))])
    added = on.detection == 0
    assert not (off.detection == 0).any() and added.sum() >= 2 and len(on) > len(off)
    gt = dense.emitters
    nearest = [np.hypot(gt.in_frame(t).row - r, gt.in_frame(t).col - c).min()
               for t, r, c in zip(on.frame[added], on.row[added], on.col[added])]
    assert max(nearest) < 1.0 and np.median(nearest) < 0.5   # px (100 nm); the emitters lie 1.8 px apart on average
