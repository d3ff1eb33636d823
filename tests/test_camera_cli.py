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
    assert {"offset", "gain", "read_noise", "excess_noise", "source", "offset_se", "gain_se", "read_noise_se"} <= set(result)
    assert result["gain"] == pytest.approx(3.0, rel=0.1) and abs(result["offset"] - 200) < 3.0
    code, out, _ = run_main(capsys, "camera", inputs["bare"], "--camera-kind", "emccd", "--json")
    emccd = json.loads(out)   # the same slope read as an EMCCD's F^2 g
    assert code == 0 and emccd["excess_noise"] == 2.0 and emccd["gain"] == pytest.approx(result["gain"] / 2)


def test_camera_command_too_few_frames(inputs, tmp_path, capsys):
    short = tmp_path / "short.tif"
    tifffile.imwrite(short, tifffile.imread(inputs["stack"])[:6])
    code, out, err = run_main(capsys, "camera", short)
    assert code == 2 and out == "" and "6 frames are too few" in err and len(err.strip().splitlines()) == 1


def test_predict_without_camera_options(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_main(capsys, "predict", inputs["bare"], "--out", out, "--model", inputs["model"],
                                 "--samples", "0", "--device", "cpu")
    assert code == 0, err
    assert "read noise 1.5 e- rms (assumed)" in stdout and "precision check" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["camera"]["sources"]["gain"] == "estimated from the data"
    assert summary["camera"]["gain"] == pytest.approx(3.0, rel=0.1)
    assert set(summary["precision"]) == {"pairs", "nena_nm", "nena_se_nm", "z_std_x", "z_std_y"}


def test_predict_warns_when_the_camera_disagrees(inputs, tmp_path, capsys):
    code, stdout, err = run_main(capsys, "predict", inputs["stack"], "--out", tmp_path / "out", "--model", inputs["model"],
                                 "--samples", "0", "--device", "cpu", "--gain", "0.5")
    assert code == 0, err
    warning = [line for line in stdout.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "gain 0.5 ADU/e- (command line)" in warning[0]
    assert float(warning[0].split("--gain ")[1].split()[0]) == pytest.approx(3.0, rel=0.1)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["camera"]["warning"] == warning[0]


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


def test_predict_with_a_camera_map(inputs, tmp_path, capsys):
    path = camera_map(tmp_path / "map.npy", (32, 32))
    code, stdout, err = run_main(capsys, "predict", inputs["stack"], "--out", tmp_path / "out", "--model", inputs["model"],
                                 "--samples", "0", "--device", "cpu", "--camera-map", path)
    assert code == 0, err
    assert f"gain 3 ADU/e- (camera map {path})" in stdout
    camera = json.loads((tmp_path / "out" / "summary.json").read_text())["camera"]
    assert camera["kind"] == "scmos" and camera["read_noise"] == pytest.approx(np.sqrt(20.0) / 3.0)
    assert set(camera["sources"].values()) == {f"camera map {path}"} and camera["warning"] is None
