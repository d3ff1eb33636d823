"""Faults during and after ``smlm-uq predict`` into results.zarr, through ``cli.main`` (inference/resumable.py):
a disk that fills (at a frame's chunks, at the checkpoint, at the outputs), a folder that vanishes, Ctrl-C, a
process killed with SIGKILL (a real subprocess), chunk files deleted or truncated afterwards, a damaged
checkpoint or store metadata. Each case asserts the one line the user reads, the exit status, what is on disk
(never a store that looks complete but is not), and that ``--resume`` keeps every frame it reported kept and
ends with the numbers of an uninterrupted run."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import simulated_inputs
from zarr.storage import LocalStore

from napari_smlm_uq import cli
from napari_smlm_uq.inference import resumable
from napari_smlm_uq.io import files, tables, tiff
from napari_smlm_uq.io.store import ResultStore
from napari_smlm_uq.io.tables import read_localizations

FRAMES, SIZE = 6, 16
KDES = ("mean", "std", "sample")
OUTPUTS = ["checkpoint", "localizations.csv", "results.zarr", "sum.tif", "summary.json"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    return simulated_inputs(tmp_path_factory.mktemp("inputs"), FRAMES, SIZE)


def predict_args(inputs, out, *extra) -> list[str]:
    """A lossless store, so a resumed run is compared with an uninterrupted one number for number."""
    return [str(a) for a in ("predict", inputs["stack"], "--out", out, "--model", inputs["model"], "--samples", "2",
                             "--steps", "2", "--device", "cpu", "--store-encoding", "float32", *extra)]


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> Path:
    """The uninterrupted run every resumed run must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert cli.main(predict_args(inputs, out)) == 0
    return out


@pytest.fixture(autouse=True)
def keep_every_frame(monkeypatch):
    """A checkpoint after every frame (runs of milliseconds would otherwise keep only at the end)."""
    monkeypatch.setattr(resumable, "KEEP_EVERY_S", 0.0)


def run(capsys, args) -> tuple[int, str, str]:
    code = cli.main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("smlm-uq")]
    assert len(lines) == 1, err
    return lines[0]


def assert_same_results(out: Path, reference: Path) -> None:
    """A complete store and outputs holding the uninterrupted run's numbers; no checkpoint, no leftovers."""
    store = ResultStore.open(out)
    assert store.complete and store.done_ranges() == [[0, FRAMES]] and store.meta["accumulated_frames"] == FRAMES
    want = ResultStore.open(reference)
    for k in (*KDES, "sum", "sum_std"):
        np.testing.assert_allclose(store.group[k][:], want.group[k][:], rtol=1e-5, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(tifffile.imread(out / "sum.tif"), tifffile.imread(reference / "sum.tif"), rtol=1e-5,
                               atol=1e-5)
    got, expected = read_localizations(out / "localizations.csv"), read_localizations(reference / "localizations.csv")
    assert len(expected["frame"]) > FRAMES   # several per frame: the comparison means something
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-3, err_msg=key)
    assert sorted(p.name for p in out.iterdir()) == sorted(set(OUTPUTS) - {"checkpoint"})
    assert not list(out.rglob("*.partial"))


def assert_partial(out: Path, kept: int) -> None:
    """An interrupted run: a partial store, its first ``kept`` frames kept, no outputs that look complete."""
    store = ResultStore.open(out)
    assert not store.complete
    assert not (out / "summary.json").exists() and not (out / "localizations.csv").exists()
    assert resumable.kept_frames(out) == (kept, FRAMES)


def resume(capsys, inputs, out, reference, kept: int, damaged: int = 0) -> None:
    """``--resume`` says what it keeps and redoes, and ends with the uninterrupted run's results."""
    code, stdout, err = run(capsys, predict_args(inputs, out, "--resume"))
    assert code == 0, err
    hurt = f" ({damaged} damaged on disk)" if damaged else ""
    assert f"{out}: resuming: {kept} of {FRAMES} frames kept, {FRAMES - kept} to predict{hurt}" in stdout
    assert_same_results(out, reference)


class Disk:
    """The output disk fills from the moment ``fills(what)`` first says so (``what``: a zarr key written into
    the store, ``"checkpoint"`` or ``"outputs"``); from then on every write there fails with ENOSPC, as on a
    full disk, until :meth:`free` (patched at the io boundary: zarr's LocalStore and the atomic file writes)."""

    def __init__(self, monkeypatch, fills):
        self.fills, self.full = fills, False
        real_set, real_atomic = LocalStore.set, files.atomic_path

        async def store_set(store, key, value):
            self.check(key)
            return await real_set(store, key, value)

        def atomic(path):
            self.check("checkpoint" if "checkpoint" in str(path) else "outputs")
            return real_atomic(path)

        monkeypatch.setattr(LocalStore, "set", store_set)
        for module in (resumable, tables, tiff):
            monkeypatch.setattr(module, "atomic_path", atomic)
        monkeypatch.setattr(files, "atomic_path", atomic)

    def check(self, what: str) -> None:
        self.full = self.full or self.fills(what)
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def free(self) -> None:
        self.full, self.fills = False, lambda what: False


# --- a full disk ------------------------------------------------------------------------------------------

def test_disk_full_at_a_frames_chunk_keeps_the_frames_before(inputs, reference, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    disk = Disk(monkeypatch, lambda key: key == "mean/c/3/0/0")   # frame 3's mean does not fit
    code, _, err = run(capsys, predict_args(inputs, out))
    line = one_line(err)
    assert code == 1 and line == (f"smlm-uq predict: error: cannot write to {out}: No space left on device; "
                                  f"3 of {FRAMES} "
                                  f"frames are kept there: free space or restore the folder, then the same command "
                                  f"with --resume completes the run")
    assert_partial(out, 3)
    disk.free()
    resume(capsys, inputs, out, reference, kept=3)


def test_disk_full_at_the_checkpoint_keeps_the_last_checkpoint(inputs, reference, tmp_path, capsys, monkeypatch):
    """The store's chunks of frame 2 fit, its checkpoint does not: frame 2 is not reported kept, and redone."""
    out, checkpoints = tmp_path / "out", []

    def fills(what):
        checkpoints.append(what == "checkpoint")
        return sum(checkpoints) == 5   # locs + sums of frames 0 and 1, then frame 2's locs fail
    disk = Disk(monkeypatch, fills)
    code, _, err = run(capsys, predict_args(inputs, out))
    assert code == 1 and f"No space left on device; 2 of {FRAMES} frames are kept there" in one_line(err)
    assert ResultStore.open(out).done()[:3].all()   # frame 2 is in the store, its localizations are not
    assert_partial(out, 2)
    disk.free()
    resume(capsys, inputs, out, reference, kept=2)


def test_disk_full_at_the_outputs_keeps_every_frame(inputs, reference, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    disk = Disk(monkeypatch, lambda what: what == "outputs")
    code, _, err = run(capsys, predict_args(inputs, out))
    assert code == 1 and f"No space left on device; {FRAMES} of {FRAMES} frames are kept there" in one_line(err)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "results.zarr"]
    assert_partial(out, FRAMES)
    disk.free()
    resume(capsys, inputs, out, reference, kept=FRAMES)   # nothing predicted: the outputs written


def test_disk_full_in_a_tiff_run_is_one_line(inputs, tmp_path, capsys, monkeypatch):
    """``--format tif`` (no store, no resume): the failing file named in one line, exit 1, no stack left that
    looks complete."""
    out, written = tmp_path / "out", []
    real = tiff.StackWriter.write

    def write(writer, frames):
        written.append(writer.path.name)
        if len(written) > 4:   # frame 1's std does not fit
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(writer._tmp))
        real(writer, frames)
    monkeypatch.setattr(tiff.StackWriter, "write", write)
    code, _, err = run(capsys, predict_args(inputs, out, "--format", "tif"))
    assert code == 1 and one_line(err) == f"smlm-uq predict: error: {out / 'std.tif.partial'}: No space left on device"
    assert list(out.iterdir()) == []


def test_output_folder_removed_mid_run(inputs, reference, tmp_path, capsys, monkeypatch):
    """A network folder that vanishes during frame 2's writes: one line saying the run is gone with it, exit 1,
    never a store that looks complete; predicting again with --overwrite works."""
    import shutil

    out = tmp_path / "out"
    real = LocalStore.set

    async def vanish(store, key, value):
        if key == "mean/c/2/0/0":
            shutil.rmtree(out)
        return await real(store, key, value)
    monkeypatch.setattr(LocalStore, "set", vanish)
    code, _, err = run(capsys, predict_args(inputs, out))
    assert code == 1 and one_line(err) == (f"smlm-uq predict: error: cannot write to {out}: No such file or "
                                           f"directory; the "
                                           f"folder or its results.zarr is gone, and the run with it: predict again "
                                           f"(with --overwrite if anything is left there)")
    assert not (out / "results.zarr" / "zarr.json").exists() and not (out / "summary.json").exists()
    monkeypatch.setattr(LocalStore, "set", real)
    assert run(capsys, predict_args(inputs, out, "--overwrite"))[0] == 0
    assert_same_results(out, reference)


# --- interrupted and killed runs ------------------------------------------------------------------------------

def test_ctrl_c_keeps_the_frames_done(inputs, reference, tmp_path, capsys, monkeypatch):
    from napari_smlm_uq.inference import pipeline

    out, real = tmp_path / "out", pipeline.predict

    def predict(*args, **kwargs):
        for r in real(*args, **kwargs):
            yield r
            if r.index == 3:
                raise KeyboardInterrupt
    monkeypatch.setattr(pipeline, "predict", predict)
    code, _, err = run(capsys, predict_args(inputs, out))
    assert code == 130 and f"interrupted; 4 of {FRAMES} frames are kept in {out}: --resume completes the run" in err
    assert_partial(out, 4)
    monkeypatch.setattr(pipeline, "predict", real)
    resume(capsys, inputs, out, reference, kept=4)


def test_a_plain_rerun_names_the_interrupted_run_and_changes_nothing(inputs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    Disk(monkeypatch, lambda key: key == "mean/c/2/0/0")
    assert run(capsys, predict_args(inputs, out))[0] == 1
    monkeypatch.undo()
    before = tree(out)
    code, _, err = run(capsys, predict_args(inputs, out))
    assert code == 2 and one_line(err) == (f"smlm-uq predict: error: {out} holds an interrupted run "
                                           f"(2 of {FRAMES} frames "
                                           f"kept): --resume completes it, --overwrite starts again")
    code, _, err = run(capsys, predict_args(inputs, out, "--resume", "--samples", "3"))
    assert code == 2 and "holds a run of other input or settings" in one_line(err)
    assert tree(out) == before


KILLED = """import sys, time
from napari_smlm_uq import cli
from napari_smlm_uq.inference import resumable
resumable.KEEP_EVERY_S = 0.0   # a checkpoint after every frame
add = resumable.StoreRun.add
def slow_add(run, result):   # at least 0.3 s a frame, however fast the machine: killed mid-run
    add(run, result)
    time.sleep(0.3)
resumable.StoreRun.add = slow_add
sys.exit(cli.main(sys.argv[1:]))
"""


def test_sigkill_during_the_run_keeps_every_frame_kept(inputs, tmp_path, capsys):
    """A real ``smlm-uq predict`` killed with SIGKILL once the checkpoint holds 3 frames (polled): the resume
    keeps at least those (each reported kept), predicts the rest, and ends where an uninterrupted run does."""
    stack, out, reference = tmp_path / "long.tif", tmp_path / "out", tmp_path / "reference"
    frames = 2 * FRAMES
    data = np.concatenate([tifffile.imread(inputs["stack"])] * 2)
    tiff.write_stack(stack, data, 120.0)
    args = lambda folder, *extra: predict_args({**inputs, "stack": stack}, folder, *extra)
    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", KILLED, *args(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    try:
        seen, t0 = 0, time.monotonic()
        while proc.poll() is None and seen < 3 and time.monotonic() - t0 < 300:
            time.sleep(0.05)
            seen = (resumable.kept_frames(out) or (0, 0))[0]
        assert proc.poll() is None, "the run ended before it was killed: make it longer"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    kept, total = resumable.kept_frames(out)
    assert total == frames and 3 <= kept < frames and not ResultStore.open(out).complete
    assert not (out / "summary.json").exists()
    code, stdout, err = run(capsys, args(out, "--resume"))
    assert code == 0 and f"{out}: resuming: {kept} of {frames} frames kept" in stdout, err
    assert run(capsys, args(reference))[0] == 0
    got, want = ResultStore.open(out), ResultStore.open(reference)
    assert got.complete and not list(out.rglob("*.partial")) and not (out / "checkpoint").exists()
    for k in (*KDES, "sum"):
        np.testing.assert_allclose(got.group[k][:], want.group[k][:], rtol=1e-5, atol=1e-6, err_msg=k)
    a, b = read_localizations(out / "localizations.csv"), read_localizations(reference / "localizations.csv")
    np.testing.assert_array_equal(a["frame"], b["frame"])   # every frame's localizations exactly once
    np.testing.assert_allclose(a["x [nm]"], b["x [nm]"], rtol=1e-5, atol=1e-3)


# --- stores damaged on disk afterwards ----------------------------------------------------------------------------

@pytest.fixture
def finished(inputs, reference, tmp_path) -> Path:
    """A copy of the uninterrupted run, to damage."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(reference, out)
    return out


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_damaged_frame_chunks_of_a_finished_run_are_predicted_again(damage, inputs, reference, finished, capsys):
    chunks = [finished / "results.zarr" / "mean" / "c" / "1" / "0" / "0",
              finished / "results.zarr" / "sample" / "c" / "4" / "0" / "0"]
    for chunk in chunks:
        chunk.unlink() if damage == "delete" else truncate(chunk)
    code, _, err = run(capsys, predict_args(inputs, finished))   # without --resume: refused, nothing changed
    assert code == 2 and "already holds results" in one_line(err)
    csv = (finished / "localizations.csv").read_bytes()
    code, stdout, err = run(capsys, predict_args(inputs, finished, "--resume"))
    assert code == 0, err
    assert (f"{finished}: the complete run has 2 of {FRAMES} frames damaged on disk: predicting them again "
            f"(its localizations and accumulated image are kept)") in stdout
    assert (finished / "localizations.csv").read_bytes() == csv
    assert_same_results(finished, reference)


def test_a_damaged_accumulated_image_redoes_the_run(inputs, reference, finished, capsys):
    (finished / "results.zarr" / "sum" / "c" / "0" / "0").unlink()
    resume(capsys, inputs, finished, reference, kept=0)


def test_resume_of_an_intact_finished_run_changes_nothing(inputs, finished, capsys):
    before = tree(finished)
    code, stdout, _ = run(capsys, predict_args(inputs, finished, "--resume"))
    assert code == 0
    assert f"{finished} holds the complete results of this run ({FRAMES} frames): nothing to predict" in stdout
    assert tree(finished) == before


def test_a_truncated_done_chunk_and_a_damaged_checkpoint(inputs, reference, tmp_path, capsys, monkeypatch):
    """An interrupted run whose ``done`` chunk of frame 1 and whose checkpoint were truncated afterwards: the
    checkpoint is unusable, so nothing is kept and every frame is predicted again, correctly."""
    out = tmp_path / "out"
    Disk(monkeypatch, lambda key: key == "mean/c/4/0/0")
    assert run(capsys, predict_args(inputs, out))[0] == 1
    monkeypatch.undo()
    monkeypatch.setattr(resumable, "KEEP_EVERY_S", 0.0)
    truncate(out / "results.zarr" / "done" / "c" / "1")
    truncate(out / "checkpoint" / "sums.npz")
    resume(capsys, inputs, out, reference, kept=0, damaged=1)


def test_a_truncated_store_metadata_is_refused(inputs, finished, capsys):
    truncate(finished / "results.zarr" / "zarr.json")
    before = tree(finished)
    code, _, err = run(capsys, predict_args(inputs, finished, "--resume"))
    assert code == 2 and one_line(err) == (f"smlm-uq predict: error: {finished / 'results.zarr'}: "
                                           f"not a readable zarr group "
                                           f"(JSONDecodeError)")
    assert tree(finished) == before
