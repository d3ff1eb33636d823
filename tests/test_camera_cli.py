"""``smlm-uq camera`` and the camera of ``smlm-uq predict``: sources printed and recorded, camera maps,
bad maps refused before any work (exit status 2, nothing written)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from napari_smlm_uq import cli
from napari_smlm_uq.models import registry


def run_main(capsys, *args) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("camera")
    stack = folder / "blink.tif"
    assert cli.main(["simulate", str(stack), "--frames", "40", "--size", "32", "--density", "0.5", "--on-time", "3",
                     "--background-map", "gradient", "--gain", "3", "--offset", "200", "--seed", "1"]) == 0
    bare = folder / "bare.tif"   # the same frames without camera metadata
    tifffile.imwrite(bare, tifffile.imread(stack))
    torch.manual_seed(0)
    registry.save(registry.build(registry.tiny_config(), name="tiny"), folder / "tiny.pt")
    return {"stack": stack, "bare": bare, "model": folder / "tiny.pt", "folder": folder}


def test_camera_command_json(inputs, capsys):
    code, out, err = run_main(capsys, "camera", inputs["bare"], "--json")
    assert code == 0, err
    result = json.loads(out)
    fields = {"offset", "gain", "read_noise", "excess_noise", "source", "offset_se", "gain_se", "read_noise_se"}
    assert fields <= set(result)
    assert result["gain"] == pytest.approx(3.0, rel=0.1) and abs(result["offset"] - 200) < 3.0
    code, out, _ = run_main(capsys, "camera", inputs["bare"], "--camera-kind", "emccd", "--json")
    emccd = json.loads(out)   # the same slope read as an EMCCD's F^2 g
    assert code == 0 and emccd["excess_noise"] == 2.0 and emccd["gain"] == pytest.approx(result["gain"] / 2)


@pytest.fixture(scope="module")
def wide_psf(tmp_path_factory):
    """Known PSF sigma 1.3 px, 3000 photons, 20 photons/px on a camera of gain 3 ADU/e-, offset 200 ADU (the
    file's offset and read noise are used, the gain is estimated: the spots are fitted with the estimate)."""
    stack = tmp_path_factory.mktemp("psf") / "wide.tif"
    assert cli.main(["simulate", str(stack), "--frames", "30", "--size", "48", "--density", "0.3", "--psf-sigma", "1.3",
                     "--photons", "3000", "--background", "20", "--gain", "3", "--offset", "200", "--seed", "2"]) == 0
    return stack


def test_camera_command_reports_the_psf(wide_psf, capsys):
    code, out, err = run_main(capsys, "camera", wide_psf, "--json")
    assert code == 0, err
    result = json.loads(out)
    psf = result["psf"]
    assert result["gain"] == pytest.approx(3.0, rel=0.1) and result["psf_camera"] == "estimated"
    assert psf["sigma_px"] == pytest.approx(1.3, abs=0.05) and psf["photons"] == pytest.approx(3000, rel=0.1)
    assert psf["background"] == pytest.approx(20, rel=0.1) and psf["spots"] >= 30
    assert 0 < psf["sigma_spread_px"] < 0.15 and psf["outside_training"] == []
    code, out, _ = run_main(capsys, "camera", wide_psf)
    lines = out.splitlines()
    assert code == 0 and lines[-1].startswith("spots (estimated camera): PSF sigma 1.")
    assert float(lines[-1].split("PSF sigma ")[1].split()[0]) == pytest.approx(psf["sigma_px"], abs=0.01)


def test_camera_command_warns_outside_the_training_range(tmp_path, capsys):
    dim = tmp_path / "dim.tif"
    assert cli.main(["simulate", str(dim), "--frames", "30", "--size", "48", "--density", "0.3", "--psf-sigma", "1.9",
                     "--photons", "2000", "--seed", "4"]) == 0
    code, out, err = run_main(capsys, "camera", dim)
    assert code == 0, err
    warning = out.splitlines()[-1]
    assert warning.startswith("warning: ") and "psf sigma 1.9" in warning and "fine-tune" in warning
    assert "photons" not in warning.split(";")[0]


def test_camera_command_without_isolated_spots(tmp_path, capsys):
    flat = tmp_path / "flat.tif"
    noise = np.random.default_rng(0).poisson(20.0, (12, 32, 32)) * 2 + 100
    tifffile.imwrite(flat, noise.astype(np.uint16))
    code, out, _ = run_main(capsys, "camera", flat, "--offset", "100", "--json")
    result = json.loads(out)
    assert code == 0 and result["psf"] is None and "isolated bright spots" in result["psf_error"]
    code, out, _ = run_main(capsys, "camera", flat, "--offset", "100")
    assert code == 0 and out.splitlines()[-1].startswith("spots (estimated camera): no estimate: only 0 isolated")


def test_camera_command_too_few_frames(inputs, tmp_path, capsys):
    short = tmp_path / "short.tif"
    tifffile.imwrite(short, tifffile.imread(inputs["stack"])[:6])
    code, out, err = run_main(capsys, "camera", short)
    assert code == 2 and out == "" and "6 frames are too few" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_predict_without_camera_options(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_main(capsys, "predict", inputs["bare"], "--out", out, "--model", inputs["model"],
                                 "--samples", "0", "--device", "cpu")
    assert code == 0, err
    assert "read noise 1.5 e- rms (assumed)" in stdout and "precision check" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["camera"]["sources"]["gain"] == "estimated from the data"
    assert summary["camera"]["gain"] == pytest.approx(3.0, rel=0.1)
    assert set(summary["precision"]) == {"pairs", "nena_nm", "nena_se_nm", "z_std_x", "z_std_y",
                                          "z_robust_x", "z_robust_y"}


@pytest.mark.slow
def test_predict_chooses_the_background_from_the_data(inputs, tmp_path, capsys):
    """The 6x gradient of ``inputs`` -> local; a flat field -> the model's own (frame); --background wins."""
    flat = tmp_path / "flat.tif"
    assert cli.main(["simulate", str(flat), "--frames", "20", "--size", "32", "--density", "0.5", "--on-time", "3",
                     "--seed", "1"]) == 0
    for stack, extra, want, source in ((inputs["stack"], [], "local", "from the data"),
                                       (flat, [], "frame", "from the data"),
                                       (inputs["stack"], ["--background", "frame"], "frame", "given")):
        out = tmp_path / f"out-{want}-{source}"
        code, stdout, err = run_main(capsys, "predict", stack, "--out", out, "--model", inputs["model"],
                                     "--samples", "0", "--device", "cpu", *extra)
        assert code == 0, err
        line = next(x for x in stdout.splitlines() if x.startswith("background estimate:"))
        summary = json.loads((out / "summary.json").read_text())
        assert line.startswith(f"background estimate: {want} (") and summary["settings"]["background"] == want
        assert summary["background"]["estimate"] == want and summary["background"]["source"] == source
        variation = summary["background"]["variation"]
        assert (variation > 3.0 if stack == inputs["stack"] else variation < 1.15) and f"{variation:.2f}x" in line


@pytest.mark.slow
def test_predict_warns_when_the_camera_disagrees(inputs, tmp_path, capsys):
    code, stdout, err = run_main(capsys, "predict", inputs["stack"], "--out", tmp_path / "out",
                                 "--model", inputs["model"], "--samples", "0", "--device", "cpu", "--gain", "0.5")
    assert code == 0, err
    warning = [line for line in stdout.splitlines() if line.startswith("warning:")]
    assert len(warning) == 2 and "gain 0.5 ADU/e- (command line)" in warning[0]
    assert float(warning[0].split("--gain ")[1].split()[0]) == pytest.approx(3.0, rel=0.1)
    # 6x the gain: 6x the photons and background, outside the training range, said before the run too
    assert "outside the model's training range: photons" in warning[1] and "background" in warning[1]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["camera"]["warning"] == warning[0]
    assert summary["warnings"] == [line.removeprefix("warning: ") for line in warning]


def camera_map(path, shape, plane=None, value=None):
    planes = np.stack([np.full(shape, 200.0), np.full(shape, 20.0), np.full(shape, 3.0)])
    if plane is not None:
        planes[plane, 1, 1] = value
    np.save(path, planes)
    return path


@pytest.mark.parametrize("shape, plane, value, word", [((20, 32), None, None, "shape"), ((32, 32), 2, -1.0, "gain"),
                                                      ((32, 32), 1, 0.0, "variance"), ((32, 32), 0, np.nan, "NaN")])
def test_predict_refuses_a_bad_camera_map(inputs, tmp_path, capsys, shape, plane, value, word):
    path = camera_map(tmp_path / "map.npy", shape, plane, value)
    out = tmp_path / "out"
    code, stdout, err = run_main(capsys, "predict", inputs["stack"], "--out", out, "--model", inputs["model"],
                                 "--samples", "0", "--device", "cpu", "--camera-map", path)
    assert code == 2 and stdout == "" and word in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_predict_with_a_camera_map(inputs, tmp_path, capsys):
    path = camera_map(tmp_path / "map.npy", (32, 32))
    code, stdout, err = run_main(capsys, "predict", inputs["stack"], "--out", tmp_path / "out",
                                 "--model", inputs["model"], "--samples", "0", "--device", "cpu", "--camera-map", path)
    assert code == 0, err
    assert f"gain 3 ADU/e- (camera map {path})" in stdout
    camera = json.loads((tmp_path / "out" / "summary.json").read_text())["camera"]
    assert camera["kind"] == "scmos" and camera["read_noise"] == pytest.approx(np.sqrt(20.0) / 3.0)
    assert set(camera["sources"].values()) == {f"camera map {path}"} and camera["warning"] is None
