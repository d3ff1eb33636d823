"""Per-frame random streams (inference/streams.py): any chunk of frames draws the samples of the whole run."""
from __future__ import annotations

import numpy as np
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
        return [pipeline.sample_frame(models, x[i:i + 1], z_phi[i:i + 1], settings, device,
                                      frame_generator(settings.seed, first + i), lambda: False) for i in range(len(adu))]


def test_chunks_draw_the_samples_of_the_whole_run():
    torch.manual_seed(0)
    models = registry.build(registry.tiny_config()).to("cpu")
    with torch.no_grad():
        for p in models.psi.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    adu = simulate(SimulationSettings(frames=3, size=24, density=3.0, seed=5)).adu
    for shift in (False, True):
        s = pipeline.PredictSettings(samples=3, steps=2, device="cpu", seed=11, tile_shift=shift)
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
