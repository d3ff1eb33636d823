"""``smlm-uq predict`` and ``smlm-uq train`` through ``cli.main``, with a tiny random model file.

Good runs: every output file, its shape, dtype and pixel size, and agreement with the pipeline.
Bad input: exit status 2, one line on stderr, no traceback, nothing written. Interrupted runs leave
no result that looks complete."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import OutOfMemoryOnce

from napari_smlm_uq import cli
from napari_smlm_uq.inference import pipeline
from napari_smlm_uq.io.tables import read_localizations
from napari_smlm_uq.io.tiff import open_stack, write_stack
from napari_smlm_uq.models import registry

FRAMES, SIZE = 3, 16
PREDICTED = ("mean.tif", "std.tif", "sample.tif", "sum.tif", "localizations.csv", "summary.json")


def run_main(capsys, *args) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_file) -> dict[str, Path]:
    """A simulated stack (through the CLI) and a tiny model file with a non-trivial psi."""
    folder = tmp_path_factory.mktemp("inputs")
    stack = folder / "sim.tif"
    assert cli.main(["simulate", str(stack), "--frames", str(FRAMES), "--size", str(SIZE), "--density", "3",
                     "--pixel-size", "120", "--seed", "4"]) == 0
    return {"folder": folder, "stack": stack, "model": tiny_model_file}


def predict_args(inputs, out, *extra) -> list:
    """A TIFF run (the tests below read the stacks; test_predict_zarr the default store)."""
    return ["predict", inputs["stack"], "--out", out, "--model", inputs["model"], "--samples", "2", "--steps", "2",
            "--device", "cpu", "--format", "tif", *extra]


@pytest.mark.slow
def test_predict_writes_all_outputs(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_main(capsys, *predict_args(inputs, out))
    assert code == 0, err
    assert "Traceback" not in err and f"{FRAMES} frames" in stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(PREDICTED)

    pixel, sr = 120.0, 30.0  # from the stack's metadata; SR = pixel / 4
    images = {}
    for name in ("mean", "std", "sample"):
        stack = open_stack(out / f"{name}.tif")
        assert stack.shape == (FRAMES, 4 * SIZE, 4 * SIZE)
        assert np.asarray(stack.data).dtype == np.float32
        assert stack.metadata["pixel_size"] == pytest.approx(sr)
        images[name] = np.asarray(stack.data)
    assert images["std"].min() >= 0 and images["std"].mean() > 1e-3
    # two samples: |sample - mean| = std / sqrt(2)
    np.testing.assert_allclose(np.abs(images["sample"] - images["mean"]), images["std"] / np.sqrt(2), atol=1e-6)

    total = open_stack(out / "sum.tif")
    assert total.metadata["pixel_size"] == pytest.approx(sr)
    np.testing.assert_allclose(np.asarray(total.data)[0], images["mean"].sum(0), rtol=1e-5, atol=1e-5)

    # the same numbers as the pipeline itself with the same settings (the background estimate chosen from the data)
    background = json.loads((out / "summary.json").read_text())["background"]["estimate"]
    expected = list(pipeline.predict(tifffile.imread(inputs["stack"]), registry.load(inputs["model"]),
                                     pipeline.PredictSettings(samples=2, steps=2, device="cpu",
                                                              pixel_size=pixel, background=background)))
    np.testing.assert_array_equal(images["mean"], np.stack([r.mean for r in expected]))
    np.testing.assert_array_equal(images["std"], np.stack([r.std for r in expected]))

    table = read_localizations(out / "localizations.csv")
    assert list(table) == ["id", "frame", "x [nm]", "y [nm]", "uncertainty [nm]", "detection", "peak snr"]
    n = sum(len(r.localizations) for r in expected)
    assert n > 0 and len(table["id"]) == n
    np.testing.assert_array_equal(table["id"], np.arange(1, n + 1))
    assert set(np.unique(table["frame"])) <= {1, 2, 3}
    for key in ("x [nm]", "y [nm]"):
        assert table[key].min() >= 0 and table[key].max() <= SIZE * pixel
    assert np.all((table["detection"] >= 0) & (table["detection"] <= 1))
    locs = pipeline.Localizations.concat([r.localizations for r in expected])
    np.testing.assert_allclose(table["x [nm]"], (locs.col + 0.5) * pixel, atol=1e-3)
    finite = np.isfinite(locs.uncertainty)
    np.testing.assert_allclose(table["uncertainty [nm]"][finite], locs.uncertainty[finite] * pixel, atol=1e-3)
    np.testing.assert_allclose(table["peak snr"], locs.snr, atol=1e-4)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["localizations"] == n and summary["frames"] == [0, FRAMES]
    assert summary["sr_pixel_size_nm"] == pytest.approx(sr) and summary["model"] == "tiny"
    assert summary["settings"]["samples"] == 2 and summary["settings"]["steps"] == 2
    assert summary["settings"]["pixel_size_nm"] == pixel and summary["settings"]["precision"] == "auto"
    assert summary["settings"]["bf16"] is pipeline.native_bf16(torch.device("cpu"))
    assert summary["timing"]["seconds"] > 0
    assert not list(out.glob("*.partial"))


@pytest.mark.slow
def test_predict_zarr_is_the_default_and_compact(inputs, tmp_path, capsys):
    """``--format zarr`` (the default): results.zarr in the compact encoding, within its documented bound of the
    pipeline's numbers, complete, with sum.tif, localizations.csv and summary.json beside it."""
    from napari_smlm_uq.io.store import ENCODINGS, ResultStore

    out = tmp_path / "out"
    args = [a for a in predict_args(inputs, out, "--frames", "1:3") if a not in ("--format", "tif")]
    code, _, err = run_main(capsys, *args)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["localizations.csv", "results.zarr", "sum.tif", "summary.json"]
    store = ResultStore.open(out)
    assert store.complete and store.meta["encoding"]["name"] == "compact" and store.meta["accumulated_frames"] == 2
    assert store.meta["settings"]["frames"] == [1, 3] and store.group["mean"].dtype == np.float16
    chosen = json.loads((out / "summary.json").read_text())["settings"]["background"]  # --background auto's choice
    expected = list(pipeline.predict(tifffile.imread(inputs["stack"]), registry.load(inputs["model"]),
                                     pipeline.PredictSettings(samples=2, steps=2, device="cpu", pixel_size=120.0,
                                                              background=chosen),
                                     frames=range(1, 3)))
    mean, std = np.stack([r.mean for r in expected]), np.stack([r.std for r in expected])
    stored_mean, stored_std = (store.group[k][:].astype(np.float32) for k in ("mean", "std"))
    floor = ENCODINGS["compact"].floor
    low = mean < floor
    assert np.all(stored_mean[low] == 0) and low.any() and (~low).any()
    np.testing.assert_allclose(stored_mean[~low], mean[~low], rtol=2.0**-11, atol=2.0**-24)
    step = floor / 2
    np.testing.assert_allclose(stored_std, np.where(low, np.ceil((std + mean / 2) / step) * step, std), rtol=2.0**-11,
                               atol=2.0**-24)  # float16 subnormals (< 6e-5) are spaced 2^-24
    np.testing.assert_allclose(store.group["sum"][:], mean.sum(0), rtol=1e-5, atol=1e-5)  # from the exact means
    assert json.loads((out / "summary.json").read_text())["frames"] == [1, 3]
    code, _, err = run_main(capsys, *args)
    assert code == 2 and "results.zarr" in err and "--overwrite" in err   # never mixed with an earlier run


def test_predict_samples_zero_and_frame_range(inputs, tmp_path, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    code, _, err = run_main(capsys, *predict_args(inputs, full, "--samples", "0"))
    assert code == 0, err
    mean, std, sample = (tifffile.imread(full / f"{k}.tif") for k in ("mean", "std", "sample"))
    assert mean.shape == (FRAMES, 4 * SIZE, 4 * SIZE) and mean.dtype == np.float32
    assert np.count_nonzero(std) == 0 and np.array_equal(sample, mean)
    table = read_localizations(full / "localizations.csv")
    # detection 1: no samples to count; 0: an emitter the refinement's residual search added
    assert np.all(np.isnan(table["uncertainty [nm]"])) and np.isin(table["detection"], (0.0, 1.0)).all()

    code, _, err = run_main(capsys, *predict_args(inputs, part, "--samples", "0", "--frames", "1:3"))
    assert code == 0, err
    part_mean = open_stack(part / "mean.tif")
    assert part_mean.shape == (2, 4 * SIZE, 4 * SIZE)
    np.testing.assert_array_equal(np.asarray(part_mean.data), mean[1:3])  # phi is per frame
    part_table = read_localizations(part / "localizations.csv")
    assert set(np.unique(part_table["frame"])) <= {2, 3}  # 1-based frame numbers of the original stack
    assert len(part_table["frame"]) == int(np.isin(table["frame"], [2, 3]).sum())
    assert json.loads((part / "summary.json").read_text())["frames"] == [1, 3]


@pytest.mark.slow
def test_predict_retries_on_gpu_out_of_memory(inputs, tmp_path, capsys, monkeypatch):
    """A CUDA out-of-memory error (simulated by a psi that raises it once) is retried with smaller batches."""
    real_load = registry.load

    def load(name):
        models = real_load(name)
        models.psi = OutOfMemoryOnce(models.psi, limit=1)
        return models

    monkeypatch.setattr(registry, "load", load)
    code, _, err = run_main(capsys, *predict_args(inputs, tmp_path / "out"))
    assert code == 0, err
    assert "Traceback" not in err, err
    assert "Out of GPU memory: retrying with tile batch 8, frame batch 4." in err, err
    assert open_stack(tmp_path / "out" / "mean.tif").shape[0] == FRAMES


def test_predict_overwrite(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_main(capsys, *predict_args(inputs, out, "--samples", "0"))[0] == 0
    before = tree(out)
    code, _, err = run_main(capsys, *predict_args(inputs, out, "--samples", "0"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--overwrite" in err
    assert tree(out) == before
    code, _, err = run_main(capsys, *predict_args(inputs, out, "--samples", "0", "--overwrite", "--frames", "0:1"))
    assert code == 0, err
    assert open_stack(out / "mean.tif").shape == (1, 4 * SIZE, 4 * SIZE)
    assert json.loads((out / "summary.json").read_text())["frames"] == [0, 1]


# --- bad input ----------------------------------------------------------------------------------

def _not_tiff(d: Path) -> Path:
    p = d / "notes.tif"
    p.write_text("just text\n")
    return p


def _truncated(d: Path) -> Path:
    full = d / "full.tif"
    write_stack(full, np.full((4, 32, 32), 150, np.uint16), 100.0)
    p = d / "cut.tif"
    p.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    full.unlink()
    return p


def _rgb(d: Path) -> Path:
    p = d / "rgb.tif"
    tifffile.imwrite(p, np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    return p


def _nan(d: Path) -> Path:
    data = np.full((3, 16, 16), 120.0, np.float32)
    data[2, 5, 7] = np.nan
    p = d / "nan.tif"
    tifffile.imwrite(p, data, photometric="minisblack")
    return p


def _small(d: Path) -> Path:
    p = d / "small.tif"
    tifffile.imwrite(p, np.full((3, 6, 12), 120, np.uint16), photometric="minisblack")
    return p


BAD = {
    "not-a-tiff": (_not_tiff, [], "not a readable TIFF"),
    "truncated": (_truncated, [], "truncated"),
    "rgb": (_rgb, [], "RGB"),
    "nan": (_nan, [], "NaN"),
    "too-small": (_small, [], "8x8"),
    "missing": (lambda d: d / "absent.tif", [], "no such file"),
    "frames-outside": (None, ["--frames", "2:9"], "outside"),
    "frames-empty": (None, ["--frames", "2:2"], "outside"),
    "frames-garbage": (None, ["--frames", "one:two"], "a:b"),
    "samples-negative": (None, ["--samples", "-3"], "samples"),
    "samples-one": (None, ["--samples", "1"], "samples"),
    "steps-zero": (None, ["--steps", "0"], "steps"),
    "pixel-size-zero": (None, ["--pixel-size", "0"], "pixel-size"),
    "gain-negative": (None, ["--gain", "-1"], "gain"),
    "start-zero": (None, ["--start", "0"], "start"),
    "device": (None, ["--device", "tpu"], "device"),
    "unknown-model": (None, ["--model", "no-such-model"], "unknown model"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_predict_bad_input(case, inputs, tmp_path, capsys):
    make, extra, word = BAD[case]
    src = tmp_path / "in"
    src.mkdir()
    stack = make(src) if make else inputs["stack"]
    before, before_inputs = tree(src), tree(inputs["folder"])
    out = tmp_path / "out"
    args = ["predict", stack, "--out", out, "--model", inputs["model"], "--samples", "2", "--steps", "2",
            "--device", "cpu", *extra]
    code, stdout, err = run_main(capsys, *args)
    assert code == 2
    assert stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "error" in lines[0] and word in lines[0]
    assert "Traceback" not in err
    assert not out.exists()
    assert tree(src) == before and tree(inputs["folder"]) == before_inputs


def test_predict_refuses_folder_with_results(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "std.tif").write_bytes(b"earlier result")
    (out / "notes.txt").write_text("mine")
    code, stdout, err = run_main(capsys, *predict_args(inputs, out))
    assert code == 2 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "already holds results" in lines[0] and "std.tif" in lines[0]
    assert "Traceback" not in err
    assert tree(out) == {"notes.txt": b"mine", "std.tif": b"earlier result"}


def test_predict_out_is_a_file(inputs, tmp_path, capsys):
    out = tmp_path / "out.txt"
    out.write_text("x")
    code, _, err = run_main(capsys, *predict_args(inputs, out))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not a folder" in err
    assert out.read_text() == "x"


# --- interruption -------------------------------------------------------------------------------

def _interrupt_after_first_frame(monkeypatch):
    real = pipeline.predict

    def predict(*args, **kwargs):
        gen = real(*args, **kwargs)
        yield next(gen)
        gen.close()
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "predict", predict)


def _interrupt_in_sampler(monkeypatch):
    """Ctrl-C inside the second frame's diffusion, at its second network call (in the real pipeline code)."""
    real, frames_started = pipeline.ancestral_sampler, []

    def sampler(eps_fn, *args, **kwargs):
        frames_started.append(1)
        calls = []

        def interrupted(y, sqrt_gamma):
            calls.append(1)
            if len(frames_started) >= 2 and len(calls) >= 2:
                raise KeyboardInterrupt
            return eps_fn(y, sqrt_gamma)
        return real(interrupted, *args, **kwargs)

    monkeypatch.setattr(pipeline, "ancestral_sampler", sampler)


@pytest.mark.parametrize("interrupt", [_interrupt_after_first_frame, _interrupt_in_sampler])
@pytest.mark.parametrize("existing", [False, True])
@pytest.mark.slow
def test_interrupted_predict_leaves_nothing_complete(interrupt, existing, inputs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    if existing:  # an earlier complete run in the folder, replaced with --overwrite
        assert run_main(capsys, *predict_args(inputs, out, "--samples", "0"))[0] == 0
    interrupt(monkeypatch)
    code, _, err = run_main(capsys, *predict_args(inputs, out, *(["--overwrite"] if existing else [])))
    assert code == 130
    assert "interrupted" in err and "Traceback" not in err
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert left == [], left  # no result that looks complete, no .partial files left behind


@pytest.mark.slow
def test_interrupted_zarr_run_keeps_a_partial_store(inputs, tmp_path, capsys, monkeypatch):
    from napari_smlm_uq.io.store import ResultStore

    out = tmp_path / "out"
    _interrupt_after_first_frame(monkeypatch)
    args = [a for a in predict_args(inputs, out) if a not in ("--format", "tif")]
    code, _, err = run_main(capsys, *args)
    assert code == 130 and f"1 of {FRAMES} frames are kept in {out}" in err
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "results.zarr"]   # no tables, no summary
    store = ResultStore.open(out)
    assert not store.complete and store.meta["done_ranges"] == [[0, 1]] and store.meta["accumulated_frames"] == 0
    assert store.group["mean"][0].max() > 0 and store.group["mean"][1].max() == 0


# --- train --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_train_then_predict(inputs, tmp_path, capsys):
    out = tmp_path / "trained"
    code, stdout, err = run_main(capsys, "train", "--out", out, "--tiny", "--iterations", "2", "--batch-size", "2",
                                 "--seed", "3")
    assert code == 0, err
    assert "model written to" in stdout and "phi 2/2" in stdout and "psi 2/2" in stdout
    model = out / "model.pt"
    assert model.is_file() and not list(out.glob("*.partial"))
    loaded = registry.load(model)
    assert loaded.psi is not None and loaded.phi.config == registry.tiny_config()["phi"]
    assert loaded.info["trained_on"]["iterations"] == 2 and loaded.info["trained_on"]["seed"] == 3

    pred = tmp_path / "pred"
    code, _, err = run_main(capsys, "predict", inputs["stack"], "--out", pred, "--model", model, "--samples", "2",
                            "--steps", "2", "--device", "cpu")
    assert code == 0, err
    from napari_smlm_uq.io.store import ResultStore

    assert ResultStore.open(pred).group["mean"].shape == (FRAMES, 4 * SIZE, 4 * SIZE)
    assert json.loads((pred / "summary.json").read_text())["model"] == "trained"


@pytest.mark.parametrize("args, word", [
    (["--iterations", "0"], "iterations"),
    (["--photons", "500", "100"], "photons"),
    (["--lr", "0"], "learning rate"),
    (["--init", "no-such-model"], "unknown model"),
])
def test_train_bad_input(args, word, tmp_path, capsys):
    out = tmp_path / "t"
    code, _, err = run_main(capsys, "train", "--out", out, "--tiny", "--iterations", "2", *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and word in lines[0] and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_train_refuses_bundled_weights_folder(tmp_path, capsys, monkeypatch):
    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setattr(registry, "WEIGHTS_DIR", weights)
    code, _, err = run_main(capsys, "train", "--out", weights / "sub", "--tiny", "--iterations", "2")
    assert code == 2 and "bundled weights" in err and len(err.strip().splitlines()) == 1
    assert list(weights.iterdir()) == []

