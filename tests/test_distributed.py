"""Predictions on a dask cluster (2 local worker processes of 1 thread, tiny model, 16x16 frames).

The distributed run gives the single-process numbers whatever the chunking; a worker killed mid-run
still leaves every frame exactly once; an interrupted run resumes; one broken stack among several is
reported and the others complete; an unreachable scheduler is one line and exit status 2."""
from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import simulated_inputs

import napari_smlm_uq
from napari_smlm_uq import cli
from napari_smlm_uq.cli import predict
from napari_smlm_uq.inference import distributed as dist
from napari_smlm_uq.inference import pipeline
from napari_smlm_uq.io.files import InputError
from napari_smlm_uq.io.store import ResultStore
from napari_smlm_uq.io.tables import read_localizations
from napari_smlm_uq.models import registry

FRAMES, SIZE = 6, 16
KDES = ("mean", "std", "sample")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A simulated stack and a tiny model file."""
    return simulated_inputs(tmp_path_factory.mktemp("inputs"), FRAMES, SIZE)


@pytest.fixture(scope="module")
def client():
    client = dist.connect(workers=2)
    yield client
    dist.close(client)


@pytest.fixture(scope="module")
def single(inputs, tmp_path_factory) -> Path:
    """The single-process CLI run every distributed run is compared with (TIFF stacks)."""
    out = tmp_path_factory.mktemp("single")
    assert cli.main(predict_args(inputs, out, "--format", "tif")) == 0
    return out


def predict_args(inputs, out, *extra) -> list[str]:
    """Lossless stores: the cluster's numbers are compared with the single process's."""
    return [str(a) for a in ("predict", inputs["stack"], "--out", out, "--model", inputs["model"], "--samples", "2",
                             "--steps", "2", "--device", "cpu", "--store-encoding", "float32", *extra)]


def assert_same_results(out: Path, reference: Path) -> None:
    """The cluster run's store and tables hold the single-process run's numbers."""
    store = ResultStore.open(out)
    assert store.complete and store.done_ranges() == [[0, FRAMES]]
    for k in KDES:
        np.testing.assert_allclose(store.group[k][:], tifffile.imread(reference / f"{k}.tif"), rtol=1e-5, atol=1e-6)
    for image in (tifffile.imread(out / "sum.tif"), store.group["sum"][:]):
        np.testing.assert_allclose(image, tifffile.imread(reference / "sum.tif"), rtol=1e-5, atol=1e-5)
    got, want = read_localizations(out / "localizations.csv"), read_localizations(reference / "localizations.csv")
    assert len(want["frame"]) > FRAMES   # several localizations per frame: the comparison means something
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-3, err_msg=key)
    assert not (out / dist.PARTS).exists()


@pytest.mark.slow
def test_any_chunk_of_frames_draws_the_same_samples(inputs):
    stack, models = tifffile.imread(inputs["stack"]), registry.load(inputs["model"])
    s = pipeline.PredictSettings(samples=2, steps=2, device="cpu", frame_batch=4)
    whole = list(pipeline.predict(stack, models, s))
    part = list(pipeline.predict(stack, models, s, frames=range(3, 5)))
    assert [r.index for r in part] == [3, 4]
    for r in part:
        assert whole[r.index].std.max() > 0
        np.testing.assert_array_equal(r.sample, whole[r.index].sample)
        np.testing.assert_array_equal(r.std, whole[r.index].std)


@pytest.mark.parametrize("chunk", [1, 4])
@pytest.mark.slow
def test_cluster_gives_single_process_results(inputs, single, client, tmp_path, capsys, chunk):
    out = tmp_path / "cluster"
    code = cli.main(predict_args(inputs, out, "--scheduler", client.scheduler.address, "--chunk-frames", chunk))
    assert code == 0, capsys.readouterr().err
    assert_same_results(out, single)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == [0, FRAMES] and summary["cluster"]["chunk_frames"] == chunk


@pytest.mark.slow
def test_killed_worker_leaves_every_frame_once(inputs, client, tmp_path):
    out = tmp_path / "killed"
    stack, frames, settings, *_ = predict.prepare_stack(cli.parser().parse_args(predict_args(inputs, out)),
                                                     inputs["stack"], out, registry.load(inputs["model"]))
    settings = replace(settings, samples=4, steps=6)   # slow enough that chunks are still running after the first
    job = dist.StackJob(inputs["stack"], frames, stack.shape[1:], settings, out, encoding="float32")
    pids = client.run(os.getpid)
    killed, items = None, []
    for item in dist.predict_on_cluster(client, [job], str(inputs["model"]), chunk_frames=1):
        items.append(item)
        busy = [w for w, tasks in client.processing().items() if tasks and w in pids]
        if killed is None and busy:
            killed = busy[0]
            os.kill(pids[killed], signal.SIGKILL)
    assert killed is not None   # a worker died while it held a chunk
    done = [i for i in items if isinstance(i, dist.StackDone)]
    assert len(done) == 1 and not [i for i in items if isinstance(i, dist.StackFailed)]
    assert sorted(i.frames.start for i in items if isinstance(i, dist.ChunkDone)) == list(range(FRAMES))
    want = list(pipeline.predict(tifffile.imread(inputs["stack"]), registry.load(inputs["model"]), settings))
    np.testing.assert_allclose(ResultStore.open(out).group["std"][:], np.stack([r.std for r in want]),
                               rtol=1e-5, atol=1e-6)
    frames_of = np.concatenate([r.localizations.frame for r in want])
    assert len(np.unique(frames_of)) >= 2   # localizations in several frames: their order is checked
    np.testing.assert_array_equal(done[0].localizations.frame, frames_of)   # each frame's once, in frame order
    np.testing.assert_allclose(done[0].sums.total, np.sum([r.mean for r in want], axis=0), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_interrupted_run_resumes_with_only_the_missing_chunks(inputs, single, client, tmp_path, capsys, monkeypatch):
    out, args = tmp_path / "resumed", predict_args(inputs, tmp_path / "resumed", "--scheduler",
                                                   client.scheduler.address, "--chunk-frames", "2")
    real_keep, kept = dist.keep_chunk, []

    def keep_then_interrupt(folder, chunk):
        if kept:
            raise KeyboardInterrupt   # Ctrl-C after the first chunk was kept
        kept.append(chunk.frames)
        real_keep(folder, chunk)

    monkeypatch.setattr(dist, "keep_chunk", keep_then_interrupt)
    assert cli.main(args) == 130
    assert "--resume" in capsys.readouterr().err
    assert dist.finished(out) == kept and not (out / "localizations.csv").exists()   # nothing looks complete
    store = ResultStore.open(out)
    assert not store.complete   # partial, listing the frames stored (the kept chunk among them)
    assert any(a <= kept[0].start and kept[0].stop <= b for a, b in store.meta["done_ranges"])

    monkeypatch.setattr(dist, "keep_chunk", real_keep)
    assert cli.main(args) == 2
    assert "interrupted run" in capsys.readouterr().err
    assert cli.main([*args, "--resume"]) == 0, capsys.readouterr().err
    assert "4/4" in capsys.readouterr().err   # progress counts only the frames still missing
    assert_same_results(out, single)


@pytest.mark.parametrize("where", [(), ("--workers", "1")], ids=["in-process", "local-cluster"])
@pytest.mark.slow
def test_many_stacks_one_broken(inputs, tmp_path, capsys, where):
    folder = tmp_path / "stacks"
    folder.mkdir()
    good = folder / "good.tif"
    good.write_bytes(inputs["stack"].read_bytes())
    (folder / "broken.tif").write_bytes(b"not a TIFF")
    out = tmp_path / "out"
    code = cli.main(["predict", str(folder / "*.tif"), "--out", str(out), "--model", str(inputs["model"]),
                     "--samples", "0", "--device", "cpu", *where])
    err = capsys.readouterr().err
    assert code == 2
    failures = [line for line in err.splitlines() if "error" in line]
    assert len(failures) == 1 and "broken.tif" in failures[0] and "Traceback" not in err
    assert sorted(p.name for p in (out / "good").iterdir()) == ["localizations.csv", "results.zarr", "sum.tif",
                                                                "summary.json"]
    assert len(read_localizations(out / "good" / "localizations.csv")["frame"]) > 0
    assert not (out / "broken" / "localizations.csv").exists()


@pytest.mark.slow
def test_unreachable_scheduler_is_one_line(inputs, tmp_path, capsys):
    t0 = time.perf_counter()
    code = cli.main(predict_args(inputs, tmp_path / "out", "--scheduler", "tcp://127.0.0.1:9"))
    err = capsys.readouterr().err
    assert code == 2 and time.perf_counter() - t0 < dist.CONNECT_TIMEOUT_S + 5
    assert len(err.strip().splitlines()) == 1 and "tcp://127.0.0.1:9" in err
    assert not (tmp_path / "out" / "localizations.csv").exists()


def test_workers_with_another_version_are_named(client, monkeypatch):
    dist.check_workers(client)   # the same package everywhere: no complaint
    monkeypatch.setattr(napari_smlm_uq, "__version__", "9.9")
    with pytest.raises(InputError, match=r"napari-smlm-uq 0\.1\.0 \(here: 9\.9\)"):
        dist.check_workers(client)
    assert dist.version_mismatches({"tcp://a": "9.9", "tcp://b": ImportError("no module")}, "9.9") == [
        "worker tcp://b: napari-smlm-uq not installed (here: 9.9)"]


@pytest.mark.parametrize("extra, message", [
    (("--resume", "--format", "tif"), "--format tif runs start again"),
    (("--workers", "1", "--scheduler", "tcp://127.0.0.1:9"), "either --workers"),
    (("--workers", "1", "--chunk-frames", "0"), "chunk frames must be >= 1"),
    (("--workers", "1", "--format", "tif"), "--format tif is for runs in one process"),
])
def test_bad_cluster_options_are_one_line(inputs, tmp_path, capsys, extra, message):
    assert cli.main(predict_args(inputs, tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_glob_that_matches_nothing_is_refused(inputs, tmp_path, capsys):
    assert cli.main(["predict", str(tmp_path / "*.tif"), "--out", str(tmp_path / "out")]) == 2
    assert "no file matches" in capsys.readouterr().err
