"""Inference (frames -> mean, std, sample, localizations) with tiny random models, and localization
from KDEs: peak positions, per-localization uncertainty and detection frequency."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import OutOfMemoryOnce, build_tiny

from napari_smlm_uq.inference import localize, pipeline
from napari_smlm_uq.inference.calibration import Calibration
from napari_smlm_uq.inference.pipeline import FrameResult, PredictSettings, StackSum
from napari_smlm_uq.inference.preprocessing import normalise, shifted_photoelectrons
from napari_smlm_uq.io.tiff import open_stack, write_stack
from napari_smlm_uq.models import registry
from napari_smlm_uq.physics import kde
from napari_smlm_uq.physics.camera import Camera
from napari_smlm_uq.physics.simulate import SimulationSettings, simulate


@pytest.fixture(scope="module")
def models(tiny_models) -> registry.Models:
    return tiny_models


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return simulate(SimulationSettings(frames=3, size=16, density=3.0, seed=2)).adu


def cpu(**kw) -> PredictSettings:
    return PredictSettings(**({"samples": 2, "steps": 2, "device": "cpu", "precision": "fp32"} | kw))


# ================================================================================================
# predict
# ================================================================================================

@pytest.mark.slow
def test_predict_one_result_per_frame(models, frames):
    results = list(pipeline.predict(frames, models, cpu(samples=3)))
    assert [r.index for r in results] == [0, 1, 2]
    for r in results:
        assert isinstance(r, FrameResult)
        for a in (r.mean, r.std, r.sample):
            assert a.shape == (64, 64) and a.dtype == np.float32 and np.isfinite(a).all()
        assert r.mean.min() >= 0 and r.mean.max() <= 1 and r.sample.min() >= 0 and r.sample.max() <= 1
        assert r.std.min() >= 0 and r.std.mean() > 1e-3 and (r.std[r.mean > 0.05] > 0).mean() > 0.5   # where signal is
        assert not np.array_equal(r.sample, r.mean)
        assert np.all(r.localizations.frame == r.index) and r.seconds > 0
    assert not np.array_equal(results[0].mean, results[1].mean)


@pytest.mark.slow
def test_frames_larger_than_psis_tile_go_in_blended_tiles(models, frames, monkeypatch):
    """With psi's tile below the frame (64 SR px in tiles of 48 blended over 16), the frame is predicted in
    tiles whose GroupNorm statistics are pooled: the mean and std stay close to the whole frame's."""
    whole = list(pipeline.predict(frames, models, cpu(samples=4)))
    monkeypatch.setattr(pipeline, "PSI_TILE", 48)
    monkeypatch.setattr(pipeline, "PSI_OVERLAP", 16)
    tiled = list(pipeline.predict(frames, models, cpu(samples=4)))
    for a, b in zip(whole, tiled):
        assert b.mean.shape == a.mean.shape and np.isfinite(b.std).all()
        assert not np.array_equal(a.std, b.std)       # the tiled path ran
        assert np.abs(b.mean - a.mean).mean() < 0.01 and abs(b.std.mean() - a.std.mean()) < 0.2 * a.std.mean()


@pytest.mark.slow
def test_predict_a_range_of_frames(models, frames):
    full = list(pipeline.predict(frames, models, cpu(samples=0)))
    part = list(pipeline.predict(frames, models, cpu(samples=0), range(1, 3)))
    assert [r.index for r in part] == [1, 2]
    for a, b in zip(part, full[1:]):
        assert np.array_equal(a.mean, b.mean) and np.all(a.localizations.frame == a.index)
    for bad in (range(2, 5), range(0, 3, 2), range(-1, 2)):
        with pytest.raises(ValueError, match="contiguous range"):
            next(pipeline.predict(frames, models, cpu(), bad))


@pytest.mark.slow
def test_out_of_memory_retries_with_smaller_batches_from_the_failed_frame(models, frames):
    flaky = registry.Models(models.phi, OutOfMemoryOnce(models.psi, limit=1), models.schedule, "flaky",
                            models.calibration)
    results = list(pipeline.predict(frames, flaky, cpu(samples=2, tile_batch=4, frame_batch=2)))
    assert [r.index for r in results] == [0, 1, 2] and flaky.psi.raised == 1
    assert results[0].notes == ("Out of GPU memory: retrying with tile batch 2, frame batch 1.",)
    assert results[1].notes == results[2].notes == ()
    assert all(np.isfinite(r.mean).all() and r.std.max() > 0 for r in results)


def test_out_of_memory_at_batch_one_is_raised(models, frames):
    flaky = registry.Models(models.phi, OutOfMemoryOnce(models.psi, limit=0), models.schedule, "flaky")
    with pytest.raises(torch.cuda.OutOfMemoryError):
        next(pipeline.predict(frames, flaky, cpu(samples=2, tile_batch=1, frame_batch=1)))


@pytest.mark.slow
def test_two_samples_mean_std_sample_are_consistent(models, frames):
    """With two samples a, b: mean = (a + b) / 2, std (ddof 1) = |a - b| / sqrt 2, sample = a,
    so |sample - mean| = std / sqrt 2 in every pixel."""
    for r in pipeline.predict(frames[:2], models, cpu(samples=2)):
        np.testing.assert_allclose(np.abs(r.sample - r.mean), r.std / np.sqrt(2), atol=1e-6)


@pytest.mark.slow
def test_samples_zero_is_phi_alone(models, frames):
    s = cpu(samples=0)
    results = list(pipeline.predict(frames, models, s))
    assert len(results) == 3
    with torch.no_grad():
        z = models.phi(normalise(shifted_photoelectrons(frames, s.camera)))
    for r, expected in zip(results, kde.from_model(z[:, 0]).numpy()):
        assert np.count_nonzero(r.std) == 0 and np.array_equal(r.sample, r.mean)
        np.testing.assert_allclose(r.mean, expected, atol=1e-6)
        # detection 1: no samples to count; 0: an emitter the refinement's residual search added
        assert np.all(np.isnan(r.localizations.uncertainty)) and set(r.localizations.detection) <= {0.0, 1.0}


@pytest.mark.slow
def test_seeded_runs_are_reproducible(models, frames):
    a = [r.mean for r in pipeline.predict(frames[:2], models, cpu(seed=3))]
    b = [r.mean for r in pipeline.predict(frames[:2], models, cpu(seed=3))]
    c = [r.mean for r in pipeline.predict(frames[:2], models, cpu(seed=4))]
    for x, y, z in zip(a, b, c):
        assert np.array_equal(x, y)
        assert np.abs(x - z).max() > 1e-3


@pytest.mark.parametrize("samples", [2, 0])
@pytest.mark.slow
def test_should_stop_after_first_frame(models, frames, samples):
    seen: list[FrameResult] = []
    for r in pipeline.predict(frames, models, cpu(samples=samples), should_stop=lambda: len(seen) >= 1):
        seen.append(r)
    assert [r.index for r in seen] == [0]


def test_should_stop_mid_frame_yields_nothing_partial(models, frames):
    calls = []

    def stop() -> bool:  # true from the second check on: during the first frame's diffusion
        calls.append(1)
        return len(calls) >= 2

    assert list(pipeline.predict(frames, models, cpu(steps=5), should_stop=stop)) == []
    assert list(pipeline.predict(frames, models, cpu(), should_stop=lambda: True)) == []


@pytest.mark.slow
def test_memory_mapped_stack(models, frames, tmp_path):
    path = tmp_path / "stack.tif"
    write_stack(path, np.rint(frames).astype(np.uint16), 100.0)
    stack = open_stack(path)
    assert isinstance(stack.data, np.memmap)
    from_file = list(pipeline.predict(stack.data, models, cpu(frame_batch=2)))
    in_memory = list(pipeline.predict(np.rint(frames), models, cpu(frame_batch=2)))
    assert len(from_file) == 3
    for a, b in zip(from_file, in_memory):
        assert np.array_equal(a.mean, b.mean) and np.array_equal(a.std, b.std)


def test_stack_sum():
    rng = np.random.default_rng(5)
    means = rng.random((4, 8, 8)).astype(np.float32)
    stds = rng.random((4, 8, 8)).astype(np.float32)
    total = StackSum()
    assert total.std is None and total.frames == 0
    for i in range(4):
        total.add(FrameResult(i, means[i], stds[i], means[i], localize.Localizations.empty(), 0.0))
    assert total.frames == 4
    np.testing.assert_allclose(total.total, means.sum(0, dtype=np.float64), rtol=1e-12)
    np.testing.assert_allclose(total.std, np.sqrt(np.square(stds, dtype=np.float64).sum(0)), rtol=1e-12)


@pytest.mark.slow
def test_stack_sum_of_predictions(models, frames):
    total = StackSum()
    results = list(pipeline.predict(frames, models, cpu()))
    for r in results:
        total.add(r)
    np.testing.assert_allclose(total.total, sum(r.mean.astype(np.float64) for r in results), rtol=1e-12)
    np.testing.assert_allclose(total.std, np.sqrt(sum(r.std.astype(np.float64) ** 2 for r in results)), rtol=1e-12)


@pytest.mark.parametrize("change, word", [
    (dict(samples=-1), "samples"), (dict(samples=1), "samples"), (dict(steps=0), "steps"),
    (dict(start=0.0), "start"), (dict(start=1.2), "start"), (dict(pixel_size=0.0), "pixel size"),
    (dict(pixel_size=float("nan")), "pixel size"), (dict(device="gpu"), "device"), (dict(device="tpu:0"), "device"),
    (dict(frame_batch=0), "batch"), (dict(tile_batch=0), "batch"), (dict(camera=Camera(gain=0.0)), "gain"),
    (dict(precision="fp16"), "precision"),
])
def test_predict_settings_validate(change, word, models, frames):
    with pytest.raises(ValueError, match=word):
        cpu(**change).validate()
    with pytest.raises(ValueError, match=word):
        next(pipeline.predict(frames, models, cpu(**change)))


def test_predict_settings_accepts_good_values():
    for kw in (dict(samples=0), dict(samples=2, steps=1, start=1.0), dict(device="auto"), dict(device="cpu")):
        settings = cpu(**kw)
        assert settings.validate() is settings and settings == cpu(**kw)  # chains, changes nothing
    assert str(cpu(device="cpu").torch_device()) == "cpu"


def test_steps_default_to_the_models_own(frames):
    """A psi distilled to one step (``info["sampler"]``) runs one pass per sample unless steps are set;
    a model without it, two."""
    models = build_tiny()
    levels = []
    models.psi.register_forward_hook(lambda net, args, out: levels.append(float(args[2][0])))
    for sampler, steps, passes in (({}, None, 2), ({"steps": 1}, None, 1), ({"steps": 1}, 3, 3)):
        models.info = {"sampler": sampler} if sampler else {}
        levels.clear()
        next(pipeline.predict(frames[:1], models, cpu(steps=steps, refine=False)))
        assert len(levels) == passes and PredictSettings(steps=steps).for_model(models).steps == passes
    assert levels[0] < levels[-1] < 1.0   # from the preconditioned start towards the data


def test_precision_auto_follows_the_hardware():
    cpu_device = torch.device("cpu")
    assert cpu(precision="bf16").bf16(cpu_device) and not cpu(precision="fp32").bf16(cpu_device)
    assert cpu(precision="auto").bf16(cpu_device) is pipeline.native_bf16(cpu_device)
    assert [pipeline.bf16_autocast(p, cpu_device) for p in pipeline.PRECISIONS] == \
        [pipeline.native_bf16(cpu_device), False, True]   # the rule training uses too
    assert PredictSettings().precision == "auto"


@pytest.mark.slow
def test_phi_only_model_needs_samples_zero(models, frames):
    phi_only = registry.Models(models.phi, None, models.schedule, "phi-only")
    with pytest.raises(ValueError, match="samples = 0"):
        next(pipeline.predict(frames, phi_only, cpu(samples=2)))
    assert len(list(pipeline.predict(frames, phi_only, cpu(samples=0)))) == 3


# ================================================================================================
# Localization from KDEs
# ================================================================================================

def emitters(rng, n_side: int = 3, spacing: float = 10.0, margin: float = 5.0):
    """Well-separated emitters on a jittered grid (raw px) with random sub-pixel positions."""
    base = margin + spacing * np.arange(n_side)
    rows, cols = np.meshgrid(base, base, indexing="ij")
    rows = rows.ravel() + rng.uniform(-2, 2, rows.size)
    cols = cols.ravel() + rng.uniform(-2, 2, cols.size)
    shape = (int(2 * margin + spacing * (n_side - 1)) + 1,) * 2
    return rows, cols, shape


def test_find_peaks_recovers_positions():
    rng = np.random.default_rng(6)
    errors = []
    for _ in range(10):
        rows, cols, shape = emitters(rng)
        y = kde.render_kde(rows, cols, shape)
        peaks = localize.find_peaks(y)
        assert len(peaks) == len(rows)
        truth = np.stack([kde.raw_to_sr(rows), kde.raw_to_sr(cols)], axis=1)
        d = np.linalg.norm(peaks[:, None] - truth[None], axis=2)
        errors.append(peaks[d.argmin(0)] - truth)
    rms = np.sqrt(np.mean(np.concatenate(errors) ** 2))
    assert rms < 0.1  # SR pixels; measured ~1e-4
    # nothing above threshold in an empty KDE, and the threshold applies
    assert localize.find_peaks(np.zeros((32, 32))).shape == (0, 2)
    assert len(localize.find_peaks(0.2 * kde.render_kde([5.0], [5.0], (12, 12)))) == 0


def test_find_peaks_gives_one_peak_per_plateau():
    """Equal adjacent maxima are one emitter: an emitter on a raw pixel centre (4 equal SR pixels around it),
    a peak rounded in the result store, a sample saturated at 1."""
    np.testing.assert_allclose(localize.find_peaks(kde.render_kde([5.0], [5.0], (12, 12))), [[21.5, 21.5]], atol=1e-6)
    y = kde.render_kde([5.125], [5.125], (12, 12))  # on SR pixel (22, 22)
    flat = y.copy()
    flat[22, 23] = flat[22, 22]                     # two equal pixels: one peak, half-way between them
    np.testing.assert_allclose(localize.find_peaks(flat), [[22, 22.5]], atol=1e-6)
    flat[23, 22:24] = flat[22, 22]                  # a 2x2 plateau: still one
    assert len(localize.find_peaks(flat)) == 1
    assert len(localize.find_peaks(np.round(y / 2**-4) * 2**-4)) == 1   # coarse steps
    assert len(localize.find_peaks(np.clip(3 * y, 0, 1))) == 1          # saturated
    np.testing.assert_allclose(localize.find_peaks(y.astype(np.float16)), localize.find_peaks(y), atol=0.01)


def test_localize_positions_in_raw_pixels_without_samples():
    rng = np.random.default_rng(7)
    rows, cols, shape = emitters(rng)
    locs = localize.localize(kde.render_kde(rows, cols, shape), None, frame=4)
    assert len(locs) == len(rows) and np.all(locs.frame == 4)
    d = np.hypot(locs.row[:, None] - rows[None], locs.col[:, None] - cols[None])
    assert d.min(axis=0).max() < 0.1 / 4
    assert np.all(np.isnan(locs.uncertainty)) and np.all(locs.detection == 1)


def test_uncertainty_small_for_identical_samples():
    rng = np.random.default_rng(8)
    rows, cols, shape = emitters(rng)
    mean = kde.render_kde(rows, cols, shape)
    samples = mean[None] + rng.normal(0, 1e-4, (20, *mean.shape)).astype(np.float32)
    locs = localize.localize(mean, samples, 0)
    assert len(locs) == len(rows)
    assert np.all(locs.detection == 1)
    assert np.all(locs.uncertainty < 1e-3)  # raw px


def test_uncertainty_matches_sample_spread():
    """Samples: the true KDE of each emitter shifted by N(0, s^2) per axis (s in SR px). The reported
    uncertainty (raw px, per axis) should be s / 4, and scale with the calibration factor."""
    rng = np.random.default_rng(9)
    rows, cols, shape = emitters(rng)
    s_sr, n = 0.5, 300
    mean = kde.render_kde(rows, cols, shape)
    shifts = rng.normal(0, s_sr / 4, (n, len(rows), 2))  # raw px
    samples = np.stack([kde.render_kde(rows + d[:, 0], cols + d[:, 1], shape) for d in shifts])
    locs = localize.localize(mean, samples, 0)
    # a shift beyond the 2 SR px match radius (p ~ 3e-4 per sample) counts as a miss
    assert len(locs) == len(rows) and np.all(locs.detection > 0.99)
    np.testing.assert_allclose(locs.uncertainty, s_sr / 4, rtol=0.15)
    assert abs(np.mean(locs.uncertainty) / (s_sr / 4) - 1) < 0.06
    doubled = localize.localize(mean, samples, 0, calibration=Calibration.uniform(2.0))
    np.testing.assert_allclose(doubled.uncertainty, 2 * locs.uncertainty)


def test_detection_is_fraction_of_samples_holding_the_peak():
    rows, cols, shape = np.array([6.3, 6.1, 16.7]), np.array([5.2, 16.4, 11.6]), (23, 23)
    mean = kde.render_kde(rows, cols, shape)
    present = np.ones((10, 3), bool)
    present[:3, 1] = False       # emitter 1 missing from 3 of 10 samples
    present[:9, 2] = False       # emitter 2 held by a single sample
    samples = np.stack([kde.render_kde(rows[p], cols[p], shape) for p in present])
    locs = localize.localize(mean, samples, 0)
    d = np.hypot(locs.row[:, None] - rows[None], locs.col[:, None] - cols[None])
    idx = d.argmin(axis=1)
    assert sorted(idx) == [0, 1, 2]
    det = np.empty(3)
    unc = np.empty(3)
    det[idx], unc[idx] = locs.detection, locs.uncertainty
    np.testing.assert_allclose(det, [1.0, 0.7, 0.1])
    assert unc[0] < 1e-6 and unc[1] < 1e-6 and np.isnan(unc[2])  # one sample cannot give a spread
