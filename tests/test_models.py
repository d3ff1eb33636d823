"""The model layer: phi and psi shapes, tiling, the diffusion schedule and sampler, the model registry
and training. Tiny random networks only (``registry.tiny_config()``); every check is numeric."""
from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch

from napari_smlm_uq import training, training_data
from napari_smlm_uq.inference import tiling
from napari_smlm_uq.io.files import InputError
from napari_smlm_uq.models import registry
from napari_smlm_uq.models.diffusion import Schedule, ancestral_sampler
from napari_smlm_uq.models.unet import ResBlock, noise_level_embedding


def tiny(seed: int = 0, randomise: bool = True) -> registry.Models:
    """A tiny model in eval mode. ``randomise`` perturbs every parameter and BatchNorm statistic, so
    zero-initialised layers (psi's output, residual branches) do not hide anything."""
    torch.manual_seed(seed)
    models = registry.build(registry.tiny_config(), name="tiny")
    if randomise:
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for net in (models.phi, models.psi):
                for p in net.parameters():
                    p.add_(0.2 * torch.randn(p.shape, generator=gen))
            for m in models.phi.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=gen))
                    m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return models.to("cpu")


def drain(gen):
    """Run a generator to its end: (yielded items, returned value)."""
    items = []
    while True:
        try:
            items.append(next(gen))
        except StopIteration as done:
            return items, done.value


# ================================================================================================
# Shapes
# ================================================================================================

@pytest.mark.parametrize("hw", [(8, 8), (16, 16), (12, 20), (9, 13), (24, 10)])
def test_phi_upsamples_by_four_into_model_range(hw):
    models = tiny()
    phi = models.phi
    x = torch.randn(2, 1, *hw, generator=torch.Generator().manual_seed(1))
    before_clip = lambda: phi.predict[:-1](phi.upsample(phi.context(x)))
    with torch.no_grad():  # rescale the last conv so its output straddles [-1, 1] (mean 0, std 2)
        last, pre = phi.predict[-2], before_clip()
        k = 2.0 / pre.std()
        last.weight.mul_(k)
        last.bias.copy_(-k * (pre.mean() - last.bias))
        pre, y = before_clip(), phi(x)
    assert y.shape == (2, 1, 4 * hw[0], 4 * hw[1])
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    assert y.min() >= -1.0 and y.max() <= 1.0
    assert (pre.abs() > 1).float().mean() > 0.2 and (pre.abs() < 1).float().mean() > 0.2
    torch.testing.assert_close(y, pre.clamp(-1, 1), rtol=0, atol=0)  # HardTanh(-1, 1) on the prediction


@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (1, 1, 64, 48), (3, 1, 16, 40)])
def test_psi_predicts_noise_of_the_input_shape(shape):
    models = tiny()
    gen = torch.Generator().manual_seed(2)
    y_t = torch.randn(shape, generator=gen)
    cond = torch.randn(shape[0], 2, *shape[2:], generator=gen)
    with torch.no_grad():
        eps = models.psi(y_t, cond, torch.rand(shape[0], generator=gen))
    assert eps.shape == y_t.shape and torch.isfinite(eps).all() and eps.abs().max() > 0


def test_psi_output_starts_at_zero():
    """The output convolution is zero-initialised (Ho 2020): a fresh psi predicts eps = 0."""
    models = tiny(randomise=False)
    with torch.no_grad():
        eps = models.psi(torch.randn(2, 1, 32, 32), torch.randn(2, 2, 32, 32), torch.tensor([0.3, 0.9]))
    assert torch.count_nonzero(eps) == 0


def test_noise_level_embedding_distinguishes_gamma():
    sg = torch.sqrt(torch.tensor([0.2, 0.5, 0.51, 0.99]))
    emb = noise_level_embedding(sg, 32)
    assert emb.shape == (4, 32) and emb.abs().max() <= 1.0
    assert torch.allclose(emb[:, :16] ** 2 + emb[:, 16:] ** 2, torch.ones(4, 16))  # sin^2 + cos^2
    dist = torch.cdist(emb, emb)
    assert dist[~torch.eye(4, dtype=torch.bool)].min() > 0.1   # even gamma 0.50 vs 0.51 differ
    # and the network's prediction depends on it (same y_t and condition, two noise levels)
    models = tiny()
    gen = torch.Generator().manual_seed(3)
    y_t, cond = torch.randn(1, 1, 32, 32, generator=gen), torch.randn(1, 2, 32, 32, generator=gen)
    with torch.no_grad():
        a = models.psi(y_t, cond, torch.tensor([0.5]).sqrt())
        b = models.psi(y_t, cond, torch.tensor([0.9]).sqrt())
        a2 = models.psi(y_t, cond, torch.tensor([0.5]).sqrt())
    assert torch.equal(a, a2)
    assert (a - b).abs().max() > 1e-3



def test_shared_noise_level_folds_the_modulation_into_the_norms():
    """Sampling gives the whole batch one noise level: the modulation then rides on the GroupNorm's affine
    parameters (one embedding row); per item, as in training, it is applied to the activations. Same
    function, and the same gradients."""
    models = tiny()
    block = next(m for m in models.psi.modules() if isinstance(m, ResBlock))
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, block.conv1.in_channels, 16, 16, generator=gen)
    emb = models.psi.embed(noise_level_embedding(torch.tensor([0.6]), models.psi.emb_dim)).detach()
    outputs, grads = [], []
    for e in (emb, emb.expand(3, -1)):   # one row for the batch (folded), or one per item
        block.zero_grad()
        out = block(x, e)
        out.square().sum().backward()
        outputs.append(out.detach())
        grads.append(block.norm2.weight.grad.clone())
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5) and (outputs[0] - x).abs().max() > 1e-3
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6) and grads[0].abs().max() > 0
    with torch.no_grad():   # the network: one noise level for the batch, or one per item
        y_t, cond = torch.randn(3, 1, 32, 32, generator=gen), torch.randn(3, 2, 32, 32, generator=gen)
        shared = models.psi(y_t, cond, torch.full((1,), 0.6))
        per_item = models.psi(y_t, cond, torch.full((3,), 0.6))
    assert torch.allclose(shared, per_item, atol=1e-5)


# ================================================================================================
@pytest.mark.parametrize("hw", [(16, 16), (9, 13)])
def test_fused_phi_computes_the_same_function(hw):
    """Folded BatchNorm and transposed convolutions: same output, and really a different network."""
    phi = tiny(seed=3).phi
    fused = phi.fused()
    x = torch.randn(2, 1, *hw, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y, y_fused = phi(x), fused(x)
    assert y.abs().mean() > 0.05  # a non-trivial output to compare
    assert (y_fused - y).abs().max() < 1e-5
    kinds = {type(m).__name__ for m in fused.modules()}
    assert "BatchNorm2d" not in kinds and "Upsample" not in kinds and "ConvTranspose2d" in kinds
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in phi.modules())  # the original is untouched
    assert fused.receptive_radius == phi.receptive_radius


# Tiling
# ================================================================================================

def test_phi_tiled_equals_untiled():
    models = tiny()
    x = torch.randn(2, 1, 40, 56, generator=torch.Generator().manual_seed(4))
    radius = models.phi.receptive_radius
    with torch.no_grad():
        whole = models.phi(x)
        tiled = tiling.phi_tiled(models.phi, x, 16, radius)
        seamy = tiling.phi_tiled(models.phi, x, 16, 0)
    assert tiled.shape == whole.shape == (2, 1, 160, 224)
    assert (tiled - whole).abs().max() < 1e-5
    assert (seamy - whole).abs().max() > 1e-3  # without a margin the tiles would show: the check bites
    with torch.no_grad():  # a frame no larger than the tile goes through in one piece
        small = torch.randn(1, 1, 12, 16)
        assert torch.equal(tiling.phi_tiled(models.phi, small, 16, radius), models.phi(small))


@pytest.mark.parametrize("size, tile, overlap", [(64, 64, 16), (65, 64, 16), (100, 64, 16), (200, 64, 16),
                                                 (257, 64, 16), (130, 32, 8), (33, 16, 3), (1000, 64, 16)])
def test_tile_starts_cover_with_overlap(size, tile, overlap):
    starts = tiling.tile_starts(size, tile, overlap)
    assert starts == sorted(set(starts)) and starts[0] == 0
    if size <= tile:
        assert starts == [0]
        return
    assert starts[-1] == size - tile
    gaps = np.diff(starts)
    assert gaps.max() <= tile - overlap  # neighbours overlap by at least `overlap`
    covered = np.zeros(size, int)
    for s in starts:
        covered[s:s + tile] += 1
    assert covered.min() >= 1
    # and no more tiles than needed
    assert len(starts) == max(1, math.ceil((size - overlap) / (tile - overlap)))


@pytest.mark.parametrize("shape", [(64, 64), (100, 150), (64, 200), (40, 40), (130, 70)])
def test_tile_grid_split_merge_round_trip(shape):
    grid = tiling.TileGrid(shape, 64, 16)
    rr, cc = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    smooth = torch.from_numpy(np.stack([np.sin(rr / 9.0) * np.cos(cc / 13.0), np.full(shape, 0.7)])).float()
    x = torch.stack([smooth, -2 * smooth])  # (B=2, C=2, H, W)
    tiles = grid.split(x)
    th, tw = grid.size
    assert th <= min(64, shape[0]) and tw <= min(64, shape[1])
    assert tiles.shape == (2 * len(grid.slices), 2, th, tw)
    # tiles of one image are consecutive
    assert torch.equal(tiles[0], x[0][:, grid.slices[0][0], grid.slices[0][1]])
    assert torch.equal(tiles[len(grid.slices)], x[1][:, grid.slices[0][0], grid.slices[0][1]])
    merged = grid.merge(tiles, 2)
    assert merged.shape == x.shape
    torch.testing.assert_close(merged, x, rtol=0, atol=1e-6)
    # a per-tile pointwise function (psi-like, no cross-tile context) commutes with tiling: no seams
    merged = grid.merge(torch.tanh(3 * tiles), 2)
    torch.testing.assert_close(merged, torch.tanh(3 * x), rtol=0, atol=1e-6)


def test_tile_blending_is_smooth_across_tiles():
    """Tiles that disagree (each adds its own constant) blend linearly over the overlap: the largest
    step between neighbouring pixels is the disagreement spread over the overlap, not a seam."""
    shape, tile, overlap = (150, 200), 64, 16
    grid = tiling.TileGrid(shape, tile, overlap)
    n = len(grid.slices)
    assert n > 4
    offsets = torch.arange(n, dtype=torch.float32)
    tiles = torch.zeros(n, 1, *grid.size) + offsets[:, None, None, None]
    out = grid.merge(tiles, 1)[0, 0]
    step = max(out.diff(dim=0).abs().max().item(), out.diff(dim=1).abs().max().item())
    spread = offsets.max().item()
    assert step <= spread / overlap * 1.05
    naive = torch.zeros(shape)
    for i, (r, c) in enumerate(grid.slices):
        naive[r, c] = offsets[i]
    assert max(naive.diff(dim=0).abs().max().item(), naive.diff(dim=1).abs().max().item()) >= 1.0
    assert torch.isfinite(grid.norm).all() and grid.weight.min() > 0


# ================================================================================================
# Diffusion schedule and sampler
# ================================================================================================

def test_named_schedules():
    paper, default = Schedule.named("paper"), Schedule.named("default")
    assert paper.gammas[-1] == pytest.approx(0.6025, abs=5e-4)     # docs/method.md (terminal noise level): not ~0
    assert default.gammas[-1] < 1e-4
    for s in (paper, default):
        g = s.gammas
        assert len(g) == s.steps + 1 and g[0] == 1.0
        assert np.all(np.diff(g) < 0)
        np.testing.assert_allclose(g[1:], np.cumprod(1 - np.linspace(s.beta_start, s.beta_end, s.steps)))
        assert Schedule(**s.config()) == s
    with pytest.raises(ValueError, match="unknown schedule"):
        Schedule.named("cosine-ish")


def test_training_gamma_is_uniform_over_steps():
    s = Schedule.named("paper")
    n = 200_000
    gam = s.sample_training_gamma(n, torch.Generator().manual_seed(5)).double().numpy()
    g = s.gammas
    assert gam.min() >= np.float32(g[-1]) and gam.max() <= 1.0
    # bin t holds gamma in [gamma_t, gamma_{t-1}); gammas decrease, so search the reversed array
    t = s.steps - np.searchsorted(g[::-1], gam, side="right") + 1
    t = np.clip(t, 1, s.steps)
    counts = np.bincount(t, minlength=s.steps + 1)[1:]
    expected = n / s.steps
    chi2 = ((counts - expected) ** 2 / expected).sum()
    dof = s.steps - 1
    assert chi2 < dof + 5 * math.sqrt(2 * dof)  # ~99 +- 14 for a uniform t
    # gamma uniform within a bin: its position inside [gamma_t, gamma_{t-1}] has mean 1/2
    frac = (gam - g[t]) / (g[t - 1] - g[t])
    assert abs(frac.mean() - 0.5) < 0.01 and frac.min() > -1e-3 and frac.max() < 1 + 1e-3
    # reproducible with a generator
    a = s.sample_training_gamma(10, torch.Generator().manual_seed(9))
    b = s.sample_training_gamma(10, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["paper", "default"])
@pytest.mark.parametrize("steps", [1, 2, 10, 50])
def test_inference_gammas(name, steps):
    s = Schedule.named(name)
    g = s.inference_gammas(steps, 1.0)
    assert len(g) == steps + 1 and g[-1] == 1.0
    assert np.all(np.diff(g) > 0)
    assert g[0] == pytest.approx(s.gammas[-1], rel=1e-12)
    half = s.inference_gammas(steps, 0.5)
    assert half[0] == pytest.approx(s.gammas[s.steps // 2], rel=1e-12) and half[-1] == 1.0
    assert len(half) == steps + 1 and np.all(np.diff(half) > 0)
    for bad in [dict(steps=0), dict(steps=5, start=0.0), dict(steps=5, start=1.5)]:
        with pytest.raises(ValueError):
            s.inference_gammas(**bad)


def _y0(shape=(3, 1, 16, 16), seed=6) -> torch.Tensor:
    return torch.empty(shape).uniform_(-0.95, 0.95, generator=torch.Generator().manual_seed(seed))


def test_sampler_calls_each_step_and_returns_model_range():
    s = Schedule.named("default")
    calls = []

    def eps_fn(y, sg):
        calls.append(sg.clone())
        assert sg.shape == (y.shape[0],)
        return torch.randn(y.shape, generator=torch.Generator().manual_seed(len(calls)))

    gammas = s.inference_gammas(7, 1.0)
    y0 = ancestral_sampler(eps_fn, torch.zeros(2, 1, 8, 8), gammas, torch.Generator().manual_seed(0))
    assert len(calls) == 7
    np.testing.assert_allclose([c[0].item() for c in calls], np.sqrt(gammas[:-1]), rtol=1e-6)
    assert y0.shape == (2, 1, 8, 8) and y0.min() >= -1 and y0.max() <= 1


def test_sampler_stops_itself_between_steps():
    calls = []

    def eps_fn(y, sg):
        calls.append(1)
        return torch.zeros_like(y)

    gammas = Schedule.named("default").inference_gammas(10, 1.0)
    assert ancestral_sampler(eps_fn, torch.zeros(1, 1, 8, 8), gammas, should_stop=lambda: len(calls) == 3) is None
    assert len(calls) == 3
    assert ancestral_sampler(eps_fn, torch.zeros(1, 1, 8, 8), gammas, should_stop=lambda: True) is None
    assert len(calls) == 3
    assert ancestral_sampler(eps_fn, torch.zeros(1, 1, 8, 8), gammas).shape == (1, 1, 8, 8)
    assert len(calls) == 13


def oracle(y0: torch.Tensor):
    """The noise that exactly explains ``y_t`` given the true ``y0``: eps = (y - sqrt(g) y0) / sqrt(1 - g)."""
    def eps_fn(y, sqrt_gamma):
        g = sqrt_gamma[:, None, None, None].double() ** 2
        return ((y.double() - g.sqrt() * y0.double()) / (1 - g).sqrt()).float()
    return eps_fn


@pytest.mark.parametrize("name", ["paper", "default"])
@pytest.mark.parametrize("start, steps", [(1.0, 10), (1.0, 3), (0.5, 10), (0.3, 1)])
def test_sampler_with_oracle_noise_returns_y0(name, start, steps):
    """docs/method.md (the update rule): the noise-prediction ancestral step. Given the exact noise it lands
    on y0, from pure noise (start 1) or from the preconditioned start q(y_K | phi(x)) (start < 1)."""
    y0 = _y0()
    gen = torch.Generator().manual_seed(7)
    if start == 1.0:
        start_mean = torch.zeros_like(y0)
    else:
        start_mean = (y0 + 0.2 * torch.randn(y0.shape, generator=gen)).clamp(-1, 1)
    gammas = Schedule.named(name).inference_gammas(steps, start)
    out = ancestral_sampler(oracle(y0), start_mean, gammas, gen)
    assert (out - y0).abs().max() < 1e-4


def test_sampler_intermediate_states_follow_the_forward_marginals():
    """With oracle noise, each state y_k is distributed as q(y_k | y0) = N(sqrt(g_k) y0, (1 - g_k) I)."""
    y0 = _y0((64, 1, 16, 16), seed=8)
    gammas = Schedule.named("default").inference_gammas(4, 1.0)
    seen = []

    def eps_fn(y, sg):
        seen.append(y.clone())
        return oracle(y0)(y, sg)

    ancestral_sampler(eps_fn, torch.zeros_like(y0), gammas, torch.Generator().manual_seed(8))
    for y, g in zip(seen, gammas[:-1]):
        resid = (y - math.sqrt(g) * y0) / math.sqrt(1 - g)
        assert abs(resid.mean().item()) < 0.02 and resid.std().item() == pytest.approx(1.0, abs=0.02)


def test_paper_eq8_as_printed_misses_y0():
    """Control for the oracle test: eq. 8 of the paper, written for a score but fed the network's
    noise prediction, does not recover y0 (the corrected rule above does)."""
    y0 = _y0()
    gammas = Schedule.named("paper").inference_gammas(100, 1.0)
    eps_fn, gen = oracle(y0), torch.Generator().manual_seed(9)
    y = math.sqrt(gammas[0]) * torch.zeros_like(y0) + math.sqrt(1 - gammas[0]) * torch.randn(y0.shape, generator=gen)
    for k in range(len(gammas) - 1):
        beta = 1 - gammas[k] / gammas[k + 1]
        y = (y + beta * eps_fn(y, torch.full((y.shape[0],), math.sqrt(gammas[k])))) / math.sqrt(1 - beta)
        if k < len(gammas) - 2:
            y = y + math.sqrt(beta) * torch.randn(y.shape, generator=gen)
    assert (y.clamp(-1, 1) - y0).abs().mean() > 0.1


# ================================================================================================
# Registry: model files
# ================================================================================================

def outputs(models: registry.Models) -> tuple[torch.Tensor, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(2, 1, 16, 16, generator=gen)
    with torch.no_grad():
        z = models.phi(x)
        eps = None
        if models.psi is not None:
            eps = models.psi(torch.randn(2, 1, 64, 64, generator=gen), torch.randn(2, 2, 64, 64, generator=gen),
                             torch.tensor([0.3, 0.8]))
    return z, eps


def test_save_load_round_trip(tmp_path):
    models = tiny(11)
    models.calibration = {"uncertainty_scale": 1.7}
    models.info = {"note": "test"}
    models.schedule = Schedule.named("paper")
    path = tmp_path / "tiny.pt"
    digest = registry.save(models, path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest() == registry.sha256(path)
    assert not list(tmp_path.glob("*.partial"))
    loaded = registry.load(path)
    assert not loaded.phi.training and not loaded.psi.training
    assert loaded.name == "tiny" and loaded.calibration == {"uncertainty_scale": 1.7}
    assert loaded.info == {"note": "test"} and loaded.schedule == Schedule.named("paper")
    a, b = outputs(models), outputs(loaded)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[1].abs().max() > 0
    # a differently initialised model gives different outputs: the comparison is not vacuous
    assert not torch.equal(outputs(tiny(12))[0], a[0])


def test_save_load_phi_only(tmp_path):
    models = tiny(13)
    models.psi = None
    registry.save(models, tmp_path / "phi.pt")
    loaded = registry.load(str(tmp_path / "phi.pt"))
    assert loaded.psi is None
    assert torch.equal(outputs(loaded)[0], outputs(models)[0])


@pytest.fixture
def bundled(tmp_path, monkeypatch):
    """A stand-in for the bundled weights folder holding one registered model."""
    weights = tmp_path / "weights"
    weights.mkdir()
    models = tiny(14)
    digest = registry.save(models, weights / "tiny.pt")
    (weights / "registry.json").write_text(json.dumps(
        {"tiny": {"file": "tiny.pt", "sha256": digest}}))
    monkeypatch.setattr(registry, "WEIGHTS_DIR", weights)
    monkeypatch.setattr(registry, "REGISTRY", weights / "registry.json")
    return weights, models


def test_bundled_model_loads_by_name(bundled):
    weights, models = bundled
    assert registry.bundled_names() == ["tiny"]
    assert registry.resolve("tiny") == (weights / "tiny.pt", registry.sha256(weights / "tiny.pt"))
    assert torch.equal(outputs(registry.load("tiny"))[1], outputs(models)[1])


def test_registry_names_file_and_hash_only_and_the_config_comes_from_the_file():
    entries = json.loads(registry.REGISTRY.read_text())
    assert entries and all(set(entry) == {"file", "sha256"} for entry in entries.values())
    models = registry.load(registry.DEFAULT_MODEL)
    assert models.phi.config == registry.default_config()["phi"]
    assert np.shape(models.calibration["scales"]) == (3, 3, 3)  # the per-context table, read from default.pt


def test_corrupted_bundled_file_is_refused(bundled):
    weights, _ = bundled
    path = weights / "tiny.pt"
    raw = bytearray(path.read_bytes())
    i = len(raw) // 2
    raw[i:i + 4] = bytes(b ^ 0xFF for b in raw[i:i + 4])
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="corrupted") as info:
        registry.load("tiny")
    assert "sha256" in str(info.value)


def test_unknown_and_non_model_files_are_refused(tmp_path, bundled):
    with pytest.raises(InputError, match=r"unknown model 'nope'.*tiny"):
        registry.load("nope")
    with pytest.raises(InputError, match="unknown model"):
        registry.load(tmp_path / "missing.pt")
    text = tmp_path / "notes.pt"
    text.write_text("not a model\n")
    with pytest.raises(InputError, match="not a napari-smlm-uq model file"):
        registry.load(text)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(InputError, match="not a napari-smlm-uq model file"):
        registry.load(other)
    wrong = tmp_path / "wrong.pt"
    models = tiny(15)
    registry.save(models, wrong)
    state = torch.load(wrong, weights_only=True)
    state["config"]["phi"]["channels"] = 12
    torch.save(state, wrong)
    with pytest.raises(InputError, match="do not match"):
        registry.load(wrong)


class _Payload:
    """Unpickling this runs ``open(marker, 'w')``: a stand-in for arbitrary code in a model file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_is_never_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": registry.FORMAT, "config": registry.tiny_config(), "payload": _Payload(str(marker))}, evil)
    assert not marker.exists()
    with pytest.raises(InputError, match="not a napari-smlm-uq model file"):
        registry.load(evil)
    assert not marker.exists()  # weights_only=True refused the pickled call


# ================================================================================================
# Training
# ================================================================================================

def settings(out, **kw) -> training.TrainSettings:
    base = dict(iterations=4, batch_size=2, checkpoint_every=2, val_size=4, out_dir=str(out),
                config=registry.tiny_config(), precision="fp32")
    return training.TrainSettings(**(base | kw))


@pytest.mark.slow
def test_train_phi_then_psi_and_writes_loadable_model(tmp_path):
    out = tmp_path / "run"
    models = registry.build(registry.tiny_config())
    before = [p.detach().clone() for p in models.phi.parameters()]
    progress, path = drain(training.train(settings(out), models=models))
    expected = [("phi", i) for i in (1, 2, 3, 4)] + [("psi", i) for i in (1, 2, 3, 4)]
    assert [(p.stage, p.iteration) for p in progress] == expected
    assert all(p.iterations == 4 and math.isfinite(p.loss) for p in progress)
    assert [p.val_loss is not None for p in progress] == [False, True, False, True] * 2
    assert progress[0].model_path is None and all(p.model_path == out / "model.pt" for p in progress[1:])
    assert path == out / "model.pt" and path.is_file()
    assert sorted(f.name for f in out.iterdir()) == ["model.pt", "train_state_phi.pt", "train_state_psi.pt"]
    assert any(not torch.equal(a, b) for a, b in zip(before, models.phi.parameters()))  # it learned something
    loaded = registry.load(path)
    assert loaded.name == "run" and loaded.psi is not None
    a, b = outputs(loaded), outputs(models.to("cpu"))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert loaded.info["trained_on"]["iterations"] == 4


def test_training_psi_drops_the_one_step_sampler_and_training_phi_keeps_it(tmp_path):
    """A psi distilled to one step (the bundled default's) trained again by noise prediction is a two-step
    psi; a phi fine-tune leaves psi, and its sampler, as they were."""
    for target, steps in (("phi", 1), ("psi", 2)):
        models = registry.build(registry.tiny_config())
        models.info["sampler"] = {"steps": 1, "start": 0.5}
        _, path = drain(training.train(settings(tmp_path / target, iterations=2, target=target, init="tiny"),
                                       models=models))
        assert registry.load(path).sampler_steps == steps


def test_training_psi_alone_keeps_phis_training_ranges(tmp_path):
    """phi's ranges (``trained_on``, what the preflight warnings compare a stack with) survive a psi fine-tune,
    whose own ranges go to ``psi_trained_on``; training both networks replaces both."""
    models = registry.build(registry.tiny_config())
    models.info["trained_on"] = {"density": [0.0, 6.0]}
    _, path = drain(training.train(settings(tmp_path / "psi", iterations=2, target="psi", init="tiny",
                                            density=(0.5, 12.0)), models=models))
    info = registry.load(path).info
    assert list(info["trained_on"]["density"]) == [0.0, 6.0]
    assert list(info["psi_trained_on"]["density"]) == [0.5, 12.0]
    _, path = drain(training.train(settings(tmp_path / "both", iterations=2, psi_iterations=2, density=(0.1, 3.0),
                                            init=str(path))))
    info = registry.load(path).info
    assert list(info["trained_on"]["density"]) == [0.1, 3.0] and "psi_trained_on" not in info


def test_train_is_reproducible_for_a_seed(tmp_path):
    runs = []
    for name, unrelated in (("a", 1), ("b", 2)):
        torch.manual_seed(unrelated)  # whatever ran before must not matter
        progress, path = drain(training.train(settings(tmp_path / name, iterations=2, target="phi")))
        runs.append(([p.loss for p in progress], outputs(registry.load(path))[0]))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])


def test_train_stop_keeps_last_good_model_and_resumes(tmp_path):
    out = tmp_path / "run"
    seen = []
    gen = training.train(settings(out), should_stop=lambda: len(seen) >= 3)
    for p in gen:
        seen.append(p)
    # the generator returned once should_stop turned true; the last good model is the checkpoint
    assert [(p.stage, p.iteration) for p in seen] == [("phi", 1), ("phi", 2), ("phi", 3)]
    assert (out / "model.pt").is_file() and not list(out.glob("*.partial"))
    state = torch.load(out / "train_state_phi.pt", weights_only=False)
    assert state["iteration"] == 2
    checkpoint = registry.load(out / "model.pt")
    for k, v in checkpoint.phi.state_dict().items():
        assert torch.equal(v, state["net"][k])
    _, path = drain(training.train(settings(out), should_stop=lambda: True))
    assert path == out / "model.pt"  # stopping at once still reports the existing good model

    resumed, path = drain(training.train(settings(out)))
    assert (resumed[0].stage, resumed[0].iteration) == ("phi", 3)
    assert [(p.stage, p.iteration) for p in resumed] == [("phi", 3), ("phi", 4)] + [("psi", i) for i in (1, 2, 3, 4)]
    assert path == out / "model.pt"
    assert torch.load(out / "train_state_phi.pt", weights_only=False)["iteration"] == 4
    # resuming psi keeps the finished phi: a third run has nothing left to do
    again, _ = drain(training.train(settings(out)))
    assert again == []


def test_train_with_data_workers(tmp_path):
    """Patches simulated by a worker process: fresh batches every iteration, a loadable model."""
    progress, path = drain(training.train(settings(tmp_path / "w", iterations=3, target="phi", data_workers=1)))
    losses = [p.loss for p in progress]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses) and len(set(losses)) == 3
    assert registry.load(path).phi is not None


def test_time_budget_cuts_the_iteration_count():
    assert training.fit_budget(10000, 50, 5.0, 60.0) == 600      # 10 it/s for 60 s
    assert training.fit_budget(400, 50, 5.0, 60.0) == 400        # never more than asked
    assert training.fit_budget(10000, 50, 50.0, 10.0) == 100     # never fewer than already run


def test_time_budget_applies_to_a_fresh_run_and_spares_a_run_resumed_inside_the_pace_window(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "PACE_ITERATIONS", 2)   # iterations 2-4 are timed
    budget = dict(iterations=8, checkpoint_every=3, target="phi", stage_seconds=1e-9)
    fresh, _ = drain(training.train(settings(tmp_path / "fresh", **budget)))
    assert [p.iteration for p in fresh] == [1, 2, 3, 4]   # a budget of ~0 s: cut to the 2 x 2 already run
    out = tmp_path / "resumed"
    drain(training.train(settings(out, iterations=3, checkpoint_every=3, target="phi")))
    resumed, path = drain(training.train(settings(out, **budget)))   # from iteration 3, inside the window
    assert [p.iteration for p in resumed] == [4, 5, 6, 7, 8] and path == out / "model.pt"


def test_train_device_is_checked(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        settings(tmp_path, device="cuda").validate()
    with pytest.raises(ValueError, match="data workers"):
        settings(tmp_path, data_workers=-1).validate()


def test_train_stop_before_first_checkpoint_leaves_no_model(tmp_path):
    out = tmp_path / "run"
    seen = []
    gen = training.train(settings(out), should_stop=lambda: len(seen) >= 1)
    for p in gen:
        seen.append(p)
    assert len(seen) == 1 and seen[0].model_path is None
    assert not (out / "model.pt").exists()


def test_calibration_stacks_span_the_training_ranges(tmp_path):
    s = settings(tmp_path, photons=(500.0, 2000.0), background=(10.0, 40.0), psf_sigma=(1.6, 2.0),
                 density=(0.0, 4.0), read_noise=(1.0, 3.0), pixel_size=110.0, calibration_frames=5)
    stacks = training.calibration_stacks(s)
    assert sorted({st.photons for st in stacks}) == pytest.approx([500.0, 1000.0, 2000.0])
    assert sorted({st.density for st in stacks}) == pytest.approx([0.4, 2.0])
    for st in stacks:
        assert (st.background, st.psf_sigma, st.camera.read_noise) == pytest.approx((20.0, 1.8, 2.0))
        assert (st.frames, st.pixel_size) == (5, 110.0)
    assert len({st.seed for st in stacks}) == 6


@pytest.mark.slow
def test_training_refits_the_calibration_when_asked(tmp_path):
    """A short run with ``calibration_frames``: the model file gets a per-context table fitted on the
    stacks, and the last progress item reports the raw and calibrated spreads."""
    s = settings(tmp_path / "out", init=None, calibration_frames=2, density=(2.0, 4.0))
    items, path = drain(training.train(s))
    assert items[-1].stage == "calibration" and items[-1].model_path == path
    loaded = registry.load(path)
    assert np.array(loaded.calibration["scales"]).shape == (3, 3, 3)
    report = loaded.info["calibration"]
    assert len(report["stacks"]) == 6 and sum(st["n"] for st in report["stacks"]) > 0
    assert items[-1].loss == pytest.approx(report["calibrated_spread"])
    assert items[-1].val_loss == pytest.approx(report["raw_spread"])
    assert report["calibrated_spread"] == pytest.approx(1.0, abs=0.1)  # fitted on these stacks: unit spread


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_training_patches_put_that_fraction_of_emitters_up_to_the_edge(tmp_path, fraction):
    """Disc patches (paper 4) hold no emitter in the corners; edge patches do, as a frame's edge does."""
    s = settings(tmp_path, density=(20.0, 20.0), edge_patches=fraction, structured=0.0)   # uniform patches only
    _, kde = training_data.simulate_patches(np.random.default_rng(2), 40, s)
    y = (kde[:, 0].numpy() + 1) / 2  # KDE units
    r = np.hypot(*np.meshgrid(np.arange(64) - 31.5, np.arange(64) - 31.5, indexing="ij"))
    corner_mass = (y * (r > 4 * (training_data.DISC_RADIUS + 1.5))).sum(axis=(1, 2))  # beyond the disc and its kernels
    n_disc = 40 - int(round(40 * fraction))
    assert not (corner_mass[:n_disc] > 0.5).any()
    assert np.all(corner_mass[n_disc:] > 0.5)  # 20/um^2: about 9 emitters per patch corner area


@pytest.mark.parametrize("change, word", [
    (dict(target="all"), "target"),
    (dict(iterations=0), "iterations"),
    (dict(batch_size=0), "batch size"),
    (dict(checkpoint_every=0), "save every"),
    (dict(val_size=0), "validation patches"),
    (dict(psi_iterations=0), "psi iterations"),
    (dict(lr=0.0), "learning rate"),
    (dict(lr=1.5), "learning rate"),
    (dict(photons=(0.0, 100.0)), "photons"),
    (dict(photons=(500.0, 100.0)), "photons"),
    (dict(background=(-1.0, 10.0)), "background"),
    (dict(psf_sigma=(0.0, 1.0)), "PSF sigma"),
    (dict(density=(1.0, float("inf"))), "density"),
    (dict(read_noise=(-0.5, 1.0)), "read noise"),
    (dict(target="psi"), "init"),
    (dict(edge_patches=1.5), "edge patches"),
    (dict(calibration_frames=-1), "calibration frames"),
    (dict(precision="half"), "precision"),
])
def test_train_settings_rejects_bad_values(tmp_path, change, word):
    with pytest.raises(ValueError, match=word):
        settings(tmp_path / "out", **change).validate()
    assert not (tmp_path / "out").exists()


def test_train_settings_refuses_the_bundled_weights_folder(tmp_path):
    for out in (registry.WEIGHTS_DIR, registry.WEIGHTS_DIR / "mine", registry.WEIGHTS_DIR / "a" / ".." / "b"):
        with pytest.raises(ValueError, match="bundled weights"):
            settings(out).validate()
    assert settings(tmp_path / "fine").validate().out_dir == str(tmp_path / "fine")
    assert settings(tmp_path / "fine", background=(0.0, 5.0), density=(0.0, 0.0), read_noise=(0.0, 0.0)).validate()


@pytest.mark.parametrize("size, tile, overlap",
                         [(512, 256, 32), (1024, 256, 32), (400, 256, 32), (70, 64, 16), (256, 256, 32)])
def test_fitted_tiles_are_as_few_and_no_larger_than_needed(size, tile, overlap):
    fitted = tiling.fitted_tile(size, tile, overlap)
    assert fitted <= tile and (fitted % 16 == 0 or fitted == size)
    starts = tiling.tile_starts(size, fitted, overlap)
    assert len(starts) == len(tiling.tile_starts(size, tile, overlap))  # as few tiles as the largest allows
    assert np.all(np.diff(starts) <= fitted - overlap) and starts[-1] + fitted == size
    if size > tile:  # and 16 px less would need another tile or break the overlap
        assert len(starts) * (fitted - 16) - (len(starts) - 1) * overlap < size
