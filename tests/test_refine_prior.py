"""The refinement knows the PSF width before its first frame (pipeline.learn_prior): isolated emitters of a
1.2-px PSF movie's first frames are localized at their Cramer-Rao bound, not with the default width; a
distributed run's chunks share the prior."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from napari_smlm_uq.inference.pipeline import (
    PredictSettings,
    learn_prior,
    predict,
    warm_up_frames,
)
from napari_smlm_uq.inference.refine import DEFAULT_PSF_SIGMA, RefinerPrior
from napari_smlm_uq.models import registry
from napari_smlm_uq.physics.crlb import crlb
from napari_smlm_uq.physics.simulate import SimulationSettings, simulate

# the held-out movies: 1.2-px PSF, 108 nm pixels, 3,000 photons (background 20, the default camera)
SIM = SimulationSettings(frames=3, size=128, density=0.3, photons=3000.0, background=20.0, psf_sigma=1.2,
                         pixel_size=108.0, seed=5)
ISOLATION = 8.0   # px to the nearest other emitter: alone in its refinement box and beyond its neighbours' reach
EDGE = 5.0        # px from the frame's edge: the whole PSF recorded


@pytest.fixture(scope="module")
def movie():
    return simulate(SIM)


@pytest.fixture(scope="module")
def models():
    return registry.load("default")


def isolated_errors(movie, results) -> np.ndarray:
    """Per-axis errors (px) of the localizations nearest (within 2 px) to the isolated true emitters."""
    errors = []
    for r in results:
        truth = movie.emitters.in_frame(r.index)
        pts = np.column_stack([truth.row, truth.col])
        inside = (pts.min(1) > EDGE) & (pts.max(1) < SIM.size - 1 - EDGE)
        alone = (cKDTree(pts).query(pts, k=2)[0][:, 1] > ISOLATION) & inside
        locs = np.column_stack([r.localizations.row, r.localizations.col])
        dist, nearest = cKDTree(locs).query(pts[alone], distance_upper_bound=2.0)
        found = np.isfinite(dist)
        errors.append((locs[nearest[found]] - pts[alone][found]).ravel())
    return np.concatenate(errors)


def test_first_frames_of_a_wide_psf_are_refined_at_their_bound(movie, models):
    bound = crlb(SIM.photons, SIM.background, SIM.psf_sigma, SIM.camera.read_noise)[0]   # px per axis
    prior = learn_prior(movie.adu, models, PredictSettings(samples=0))
    assert prior.psf_sigma == pytest.approx(1.2, abs=0.03)
    assert prior.single_photons[0] == pytest.approx(3000.0, rel=0.1)
    errors = isolated_errors(movie, predict(movie.adu, models, PredictSettings(samples=0, pixel_size=108.0)))
    assert len(errors) >= 2 * 60                                        # enough isolated emitters to tell
    assert np.sqrt(np.mean(errors**2)) < 1.25 * bound                   # the target
    # without the prior, frames 0-2 were fitted with the default width: several times the bound
    default = PredictSettings(samples=0, pixel_size=108.0, prior=RefinerPrior(DEFAULT_PSF_SIGMA, None))
    assert np.sqrt(np.mean(isolated_errors(movie, predict(movie.adu, models, default)) ** 2)) > 2 * bound


def test_warm_up_reads_the_runs_frames_first_then_the_earlier_ones():
    assert warm_up_frames(100, range(100)) == list(range(16))
    assert warm_up_frames(100, range(95, 100)) == list(range(95, 100)) + list(range(11))
    assert warm_up_frames(3, range(1, 2)) == [1, 2, 0]


def test_a_chunk_refines_its_first_frame_with_the_prior_of_the_whole_run(movie, models, tmp_path):
    from napari_smlm_uq.inference.distributed import StackJob
    from napari_smlm_uq.io.tiff import write_stack

    settings = PredictSettings(samples=0, pixel_size=108.0)
    write_stack(tmp_path / "movie.tif", movie.adu.astype("float32"), 108.0)
    job = StackJob(tmp_path / "movie.tif", range(3), movie.adu.shape[1:], settings, tmp_path).with_prior("default")
    assert job.settings.prior == learn_prior(movie.adu, models, settings, range(3))   # the driver's, once
    unlearned = StackJob(job.source, range(3), job.shape, settings, tmp_path)
    assert job.run("default") == unlearned.run("default")   # what a resume checks leaves the prior out
    whole = list(predict(movie.adu, models, job.settings))
    chunk = next(predict(movie.adu, models, job.settings, frames=range(2, 3)))
    np.testing.assert_array_equal(chunk.localizations.row, whole[2].localizations.row)
