"""Training patches for real acquisitions: backgrounds that vary across the patch, the local background
normalisation, EMCCD shot noise."""
from __future__ import annotations

import numpy as np
import pytest

from napari_smlm_uq.inference import pipeline
from napari_smlm_uq.models import registry
from napari_smlm_uq.training import TrainSettings
from napari_smlm_uq.training_data import PATCH, simulate_patches, varying_backgrounds


def test_varying_backgrounds_fraction_and_range():
    shapes = varying_backgrounds(np.random.default_rng(0), 400, 0.5)
    flat = np.all(shapes == 1.0, axis=(1, 2))
    assert shapes.shape == (400, PATCH, PATCH) and flat.mean() == pytest.approx(0.5, abs=0.08)
    assert np.all(shapes.max(axis=(1, 2)) / shapes.min(axis=(1, 2)) <= 6.0 + 1e-9)


def test_local_normalisation_flattens_varying_backgrounds():
    """Empty patches (density 0) with 1-6x backgrounds: around the local estimate the input's 4x4-pixel
    block means stay near 0; around the frame median they follow the background's shape."""
    kwargs = dict(density=(0.0, 0.0), background=(50.0, 50.0), read_noise=(0.0, 0.0), background_maps=1.0,
                  structured=0.0)
    x_local, _ = simulate_patches(np.random.default_rng(1), 64, TrainSettings(background_estimate="local", **kwargs))
    x_frame, _ = simulate_patches(np.random.default_rng(1), 64, TrainSettings(**kwargs))
    blocks = lambda x: x.reshape(64, 4, 4, 4, 4).mean(dim=(2, 4)).flatten(1).std(dim=1).mean()
    assert float(blocks(x_local)) < 0.15 and float(blocks(x_frame)) > 2 * float(blocks(x_local))


def test_emccd_patches_are_in_effective_photoelectrons():
    kwargs = dict(density=(0.0, 0.0), background=(40.0, 40.0), read_noise=(0.0, 0.0), background_estimate="local")
    rng = np.random.default_rng(2)
    x, _ = simulate_patches(rng, 64, TrainSettings(camera_kind="emccd", **kwargs))
    # background 40 photons -> 20 effective photo-electrons with variance 20: the input's noise is as for Poisson
    assert float(np.sinh(x.numpy()).std() * 3.0) == pytest.approx(1.0, rel=0.1)
    with pytest.raises(ValueError, match="camera kind"):
        TrainSettings(camera_kind="cmos").validate()


def test_inference_uses_the_background_estimate_the_model_was_trained_with():
    models = registry.build(registry.tiny_config(), name="tiny")
    assert pipeline.background_estimate(models, pipeline.PredictSettings()) == "frame"
    models.info["trained_on"] = {"background_estimate": "local"}
    assert pipeline.background_estimate(models, pipeline.PredictSettings()) == "local"
    assert pipeline.background_estimate(models, pipeline.PredictSettings(background="frame")) == "frame"
    with pytest.raises(ValueError, match="background must be one of frame, local"):
        pipeline.PredictSettings(background="temporal").validate()
