"""Per-frame random streams (inference/streams.py): any chunk of frames draws the samples of the whole run."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_smlm_uq.inference import pipeline
from napari_smlm_uq.inference.streams import frame_generator, frame_seed
from napari_smlm_uq.models import registry
from napari_smlm_uq.physics.simulate import SimulationSettings, simulate


def samples_of(models, adu: np.ndarray, first: int, settings: pipeline.PredictSettings) -> list[torch.Tensor]:
    """Samples of each frame of ``adu`` (frame numbers from ``first``), as predict() draws them."""
    device = torch.device("cpu")
    with torch.inference_mode():
        x, z_phi = pipeline.run_phi(models.phi, adu, settings, device)
        return [pipeline.sample_frames(models, x[i:i + 1], z_phi[i:i + 1], settings, device,
                                       [frame_generator(settings.seed, first + i)])[0] for i in range(len(adu))]


@pytest.fixture(scope="module")
def models() -> registry.Models:
    torch.manual_seed(0)
    m = registry.build(registry.tiny_config()).to("cpu")
    with torch.no_grad():  # psi's output layer starts at zero; give it something to say
        for p in m.psi.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    return m


def test_chunks_draw_the_samples_of_the_whole_run(models):
    adu = simulate(SimulationSettings(frames=3, size=24, density=3.0, seed=5)).adu
    s = pipeline.PredictSettings(samples=3, steps=2, device="cpu", seed=11)
    whole = samples_of(models, adu, 0, s)
    chunks = samples_of(models, adu[:1], 0, s) + samples_of(models, adu[1:], 1, s)
    for a, b in zip(whole, chunks):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(whole[0], whole[1])  # frames differ
    other = samples_of(models, adu[:1], 0, pipeline.PredictSettings(samples=3, steps=2, device="cpu", seed=12))
    assert not torch.equal(whole[0], other[0])  # and so do seeds


def test_frame_seeds_are_distinct_and_fit_torch():
    seeds = {frame_seed(s, i) for s in range(3) for i in range(1000)}
    assert len(seeds) == 3000 and max(seeds) < 2**63


def test_frames_batched_in_one_psi_batch_draw_the_same_samples(models):
    adu = simulate(SimulationSettings(frames=3, size=24, density=3.0, seed=6)).adu
    s = pipeline.PredictSettings(samples=2, steps=2, device="cpu", seed=3)
    one_by_one = samples_of(models, adu, 4, s)
    with torch.inference_mode():
        x, z_phi = pipeline.run_phi(models.phi, adu, s, torch.device("cpu"))
        batched = pipeline.sample_frames(models, x, z_phi, s, torch.device("cpu"),
                                         [frame_generator(s.seed, 4 + i) for i in range(3)])
    assert batched.shape == (3, 2, 1, 96, 96)
    for a, b in zip(one_by_one, batched):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
