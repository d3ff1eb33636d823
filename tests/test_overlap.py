"""The network running ahead of the host work and of the caller (inference/overlap.py): the same frames,
localizations and KDE sums as the sequential path; the timeline of where the wall time went; a stopped or
failing run leaves no thread behind."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_smlm_uq.inference import overlap, pipeline, refine
from napari_smlm_uq.inference.overlap import Timeline
from napari_smlm_uq.inference.pipeline import PredictSettings, StackSum
from napari_smlm_uq.localizations import FIELDS, Localizations
from napari_smlm_uq.models import registry
from napari_smlm_uq.physics.simulate import SimulationSettings, simulate

pytestmark = pytest.mark.slow   # every test predicts a few frames several times


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return simulate(SimulationSettings(frames=5, size=16, density=3.0, seed=4)).adu


def run(models, frames, depth: int, monkeypatch, **kw) -> tuple[list, Localizations, StackSum, Timeline]:
    monkeypatch.setattr(overlap, "DEPTH", depth)
    s = PredictSettings(**({"samples": 2, "steps": 2, "device": "cpu", "precision": "fp32", "frame_batch": 2} | kw))
    total, timeline = StackSum(), Timeline()
    results = list(pipeline.predict(frames, models, s, timeline=timeline))
    for r in results:
        total.add(r)
    return results, Localizations.concat([r.localizations for r in results]), total, timeline


@pytest.mark.parametrize("samples", [2, 0])
def test_overlapped_run_gives_the_sequential_results(tiny_models, frames, monkeypatch, samples):
    seq, seq_locs, seq_sum, _ = run(tiny_models, frames, 0, monkeypatch, samples=samples)
    ahead, locs, total, _ = run(tiny_models, frames, 2, monkeypatch, samples=samples)
    assert [r.index for r in ahead] == [r.index for r in seq] == [0, 1, 2, 3, 4]
    assert len(seq_locs) > 10   # refined localizations to compare
    for k in FIELDS:
        np.testing.assert_array_equal(getattr(locs, k), getattr(seq_locs, k), err_msg=k)
    np.testing.assert_array_equal(total.total, seq_sum.total)
    np.testing.assert_array_equal(total.variance, seq_sum.variance)
    for a, b in zip(ahead, seq):
        assert np.array_equal(a.sample, b.sample)


def test_timeline_accounts_for_the_wall_time(tiny_models, frames, monkeypatch):
    for depth in (0, 2):
        _, _, _, t = run(tiny_models, frames, depth, monkeypatch)
        report = t.as_dict()
        assert report["network_s"] > 0 and report["read_s"] >= 0 and report["host_s"] >= 0
        assert 0 < report["network_s"] <= report["wall_s"]
        assert report["network_waiting"] == pytest.approx(1 - report["network_s"] / report["wall_s"])
        if depth == 0:   # one thread: its stages cannot add up to more than the wall time
            assert sum(report[f"{k}_s"] for k in ("read", "network", "host", "caller")) <= report["wall_s"]


@pytest.mark.parametrize("depth", [0, 2])
def test_network_runs_ahead_while_the_caller_holds_a_frame(tiny_models, frames, monkeypatch, depth):
    """While the caller still holds frame 0, the network passes of the next frames run (``depth`` batches
    queued plus the one in hand); the sequential path has done only frame 0's."""
    monkeypatch.setattr(overlap, "DEPTH", depth)
    passes, enough = [], threading.Event()
    statistics = pipeline.kde_statistics

    def counted(*args, **kwargs):
        passes.append(1)
        if len(passes) >= depth + 2:
            enough.set()
        return statistics(*args, **kwargs)

    monkeypatch.setattr(pipeline, "kde_statistics", counted)
    s = PredictSettings(samples=2, device="cpu", precision="fp32", frame_batch=1, refine=False)  # no prior to learn
    gen = pipeline.predict(frames, tiny_models, s)
    assert next(gen).index == 0
    if depth:
        assert enough.wait(60) and len(passes) == depth + 2   # then blocked: the queue is full
    else:
        assert len(passes) == 1
    assert [r.index for r in gen] == [1, 2, 3, 4] and len(passes) == 5


def test_stopping_early_leaves_no_thread(tiny_models, frames, monkeypatch):
    monkeypatch.setattr(overlap, "DEPTH", 2)
    before = threading.active_count()
    s = PredictSettings(samples=2, device="cpu", precision="fp32", frame_batch=1, refine=False)  # no prior to learn
    gen = pipeline.predict(frames, tiny_models, s)
    first = next(gen)
    gen.close()
    assert first.index == 0 and threading.active_count() == before


def test_an_error_in_the_network_thread_is_raised_to_the_caller(tiny_models, frames, monkeypatch):
    monkeypatch.setattr(overlap, "DEPTH", 2)
    before = threading.active_count()

    def broken(*args, **kwargs):
        raise RuntimeError("psi broke")

    monkeypatch.setattr(pipeline, "sample_frames", broken)
    with pytest.raises(RuntimeError, match="psi broke"):
        list(pipeline.predict(frames, tiny_models, PredictSettings(samples=2, device="cpu", precision="fp32")))
    assert threading.active_count() == before


@pytest.mark.parametrize("prior", [True, False])
def test_host_pool_after_the_refiner_settles_gives_the_sequential_results(monkeypatch, prior):
    """With the prior learned before the first frame the refiner never changes: every frame is refined in the
    pool of 3 threads. Without one (learned frame by frame, settled after a few spots: MAX_LEARNED 5; the
    bundled phi, whose spots are isolated enough to learn from), the first frames are refined in order, the
    later ones in the pool. The same localizations as one frame after the other."""
    monkeypatch.setattr(refine, "MAX_LEARNED", 5)
    if not prior:
        monkeypatch.setattr(pipeline, "learn_prior", lambda *args, **kwargs: None)
    bundled = registry.load("default")
    stack = simulate(SimulationSettings(frames=8, size=32, density=1.0, seed=6)).adu
    monkeypatch.setattr(overlap, "HOST_THREADS", 1)
    _, seq_locs, seq_sum, _ = run(bundled, stack, 0, monkeypatch, samples=0)
    pooled, submit = [], overlap.HostWork.submit

    def spy(self, settled, fn, *args):
        pooled.append(settled)
        return submit(self, settled, fn, *args)

    monkeypatch.setattr(overlap.HostWork, "submit", spy)
    monkeypatch.setattr(overlap, "HOST_THREADS", 3)
    _, locs, total, _ = run(bundled, stack, 2, monkeypatch, samples=0)
    if prior:
        assert pooled == [True] * 8
    else:
        # the refiner settles with frame 1; frame k is submitted once the caller has taken frame k - 3 (a queue
        # of DEPTH = 2 and one in hand), that is once frame k - 4 is done: frames 5 on go to the pool
        assert len(pooled) == 8 and not pooled[0] and all(pooled[5:])
    assert len(seq_locs) > 40
    for k in FIELDS:
        np.testing.assert_array_equal(getattr(locs, k), getattr(seq_locs, k), err_msg=k)
    np.testing.assert_array_equal(total.total, seq_sum.total)
