"""The ``smlm-uq`` command line (simulate, evaluate, crlb) and the TIFF reader's handling of bad files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_smlm_uq import cli
from napari_smlm_uq.io.files import InputError
from napari_smlm_uq.io.tables import read_localizations
from napari_smlm_uq.io.tiff import open_stack, write_stack


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def console_command() -> list[str]:
    """The installed ``smlm-uq`` script beside this interpreter, else ``python -m napari_smlm_uq.cli``."""
    script = Path(sys.executable).parent / ("smlm-uq.exe" if os.name == "nt" else "smlm-uq")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "napari_smlm_uq.cli"]


def run_process(*args: str, cwd: Path, module: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "napari_smlm_uq.cli"] if module else console_command()
    return subprocess.run(cmd + [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=120)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".tif", ".tiff", ".csv", ".partial"))


# --- simulate + evaluate ------------------------------------------------------------------------

def test_simulate_then_evaluate_ground_truth_against_itself(tmp_path, capsys):
    tif = tmp_path / "sim.tif"
    code, out, err = run_main(capsys, "simulate", tif, "--frames", 6, "--size", 20, "--density", 4, "--seed", 3)
    assert code == 0 and err == ""
    csv = tmp_path / "sim.csv"
    assert tif.is_file() and csv.is_file() and str(tif) in out
    assert not list(tmp_path.glob("*.partial"))

    data = tifffile.imread(tif)
    assert data.dtype == np.uint16 and data.shape == (6, 20, 20)
    stack = open_stack(tif)
    assert stack.shape == (6, 20, 20)
    assert stack.metadata["pixel_size"] == pytest.approx(100.0)
    assert stack.metadata["offset"] == pytest.approx(100.0)
    assert stack.metadata["gain"] == pytest.approx(1.0)
    assert stack.metadata["read_noise"] == pytest.approx(1.5)
    np.testing.assert_array_equal(np.asarray(stack.data), data)
    assert 80 < data.mean() < 300  # offset 100 ADU + background 20 photons + emitters

    table = read_localizations(csv)
    n = len(table["frame"])
    assert n > 0 and f"({n} emitters)" in out
    assert table["frame"].min() >= 1 and table["frame"].max() <= 6  # 1-based frames
    for key in ("x [nm]", "y [nm]"):
        assert table[key].min() >= 0.0 and table[key].max() <= 20 * 100.0

    code, out, err = run_main(capsys, "evaluate", csv, csv, "--json")
    assert code == 0 and err == ""
    scores = json.loads(out)
    assert scores["jaccard"] == 100.0 and scores["rmse"] == 0.0 and scores["efficiency"] == 100.0
    assert scores["tp"] == n and scores["fp"] == 0 and scores["fn"] == 0

    code, out, _ = run_main(capsys, "evaluate", csv, csv)
    assert code == 0 and "JAC 100.00 %" in out and "RMSE 0.00 nm" in out


def test_simulate_pixel_size_and_camera_metadata(tmp_path, capsys):
    tif = tmp_path / "cam.tiff"
    code, _, err = run_main(capsys, "simulate", tif, "--frames", 2, "--size", 12, "--pixel-size", 160,
                            "--offset", 400, "--gain", 2.5, "--read-noise", 0.8, "--background", 10)
    assert code == 0, err
    stack = open_stack(tif)
    assert stack.shape == (2, 12, 12)
    assert stack.metadata["pixel_size"] == pytest.approx(160.0)
    assert stack.metadata["offset"] == pytest.approx(400.0) and stack.metadata["gain"] == pytest.approx(2.5)
    assert stack.metadata["read_noise"] == pytest.approx(0.8)
    assert np.median(np.asarray(stack.data)) == pytest.approx(400 + 2.5 * 10, abs=15)
    assert (tmp_path / "cam.csv").is_file()


def test_evaluate_shifted_localizations(tmp_path, capsys):
    from napari_smlm_uq.io.tables import write_localizations

    gt, locs = tmp_path / "gt.csv", tmp_path / "locs.csv"
    xy = np.array([[1000.0, 1000.0], [2000.0, 500.0], [3000.0, 3000.0]])
    write_localizations(gt, {"frame": np.array([1, 1, 2]), "x [nm]": xy[:, 0], "y [nm]": xy[:, 1]})
    write_localizations(locs, {"frame": np.array([1, 1]), "x [nm]": xy[:2, 0] + 3, "y [nm]": xy[:2, 1] + 4})
    code, out, _ = run_main(capsys, "evaluate", locs, gt, "--json")
    s = json.loads(out)
    assert code == 0
    assert s["jaccard"] == pytest.approx(200 / 3) and s["rmse"] == pytest.approx(5.0)
    assert (s["tp"], s["fp"], s["fn"]) == (2, 0, 1)
    assert s["efficiency"] == pytest.approx(100 - np.hypot(100 / 3, 5.0))


# --- crlb ---------------------------------------------------------------------------------------

def test_crlb_command(capsys):
    code, out, err = run_main(capsys, "crlb", "--json")
    assert code == 0 and err == ""
    result = json.loads(out)
    assert result["crlb_x_nm"] == pytest.approx(2.935, abs=0.001)
    assert result["crlb_y_nm"] == pytest.approx(result["crlb_x_nm"])
    code, out, _ = run_main(capsys, "crlb", "--photons", 2000, "--background", 20, "--psf-sigma", 1,
                            "--pixel-size", 100, "--read-noise", 1.5)
    assert code == 0 and "2.935 nm" in out
    _, out, _ = run_main(capsys, "crlb", "--json", "--pixel-size", 160)
    assert json.loads(out)["crlb_x_nm"] == pytest.approx(2.935110706670777 * 1.6, rel=1e-9)
    _, out, _ = run_main(capsys, "crlb", "--json", "--background", 100)
    assert json.loads(out)["crlb_x_nm"] > 2.935


# --- bad input: exit 2, one line on stderr, nothing written ----------------------------------

BAD_SIMULATE = [
    (["--density", "-1"], "density"),
    (["--frames", "0"], "frames"),
    (["--photons", "0"], "photons"),
    (["--size", "4"], "size"),
    (["--gain", "0"], "gain"),
    (["--frames", "many"], "frames"),
]


@pytest.mark.parametrize("args, word", BAD_SIMULATE, ids=[w + "-" + a[1] for a, w in BAD_SIMULATE])
def test_simulate_bad_input(tmp_path, capsys, args, word):
    code, out, err = run_main(capsys, "simulate", tmp_path / "out.tif", "--frames", 2, "--size", 16, *args)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and word in lines[0] and "error" in lines[0]
    assert "Traceback" not in err
    assert leftovers(tmp_path) == []


def test_simulate_bad_output_name(tmp_path, capsys):
    code, _, err = run_main(capsys, "simulate", tmp_path / "out.png", "--frames", 2, "--size", 16)
    assert code == 2 and len(err.strip().splitlines()) == 1 and ".tif" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("photons", ["0", "-5"])
def test_crlb_bad_photons(capsys, photons):
    code, out, err = run_main(capsys, "crlb", "--photons", photons)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "photons must be > 0" in lines[0] and "Traceback" not in err


def test_evaluate_bad_csv(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    bad = inputs / "bad.csv"
    bad.write_text('"id","frame","x"\n1,1,100.0\n')
    good = inputs / "good.csv"
    good.write_text('"id","frame","x [nm]","y [nm]"\n1,1,100.0,200.0\n')
    for locs, gt, word in [(bad, good, "y [nm]"), (good, bad, "missing column"),
                           (inputs / "absent.csv", good, "no such file")]:
        code, out, err = run_main(capsys, "evaluate", locs, gt, "--json")
        assert code == 2 and out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1 and word in lines[0] and "Traceback" not in err
    assert sorted(p.name for p in inputs.iterdir()) == ["bad.csv", "good.csv"]
    assert leftovers(tmp_path) == []


def test_usage_errors_are_one_line(capsys):
    for args in ([], ["nonsense"], ["crlb", "--photons"], ["crlb", "--psf-sigma", "-1"]):
        code, _, err = run_main(capsys, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


# --- real processes -----------------------------------------------------------------------------

@pytest.mark.slow
def test_console_script_end_to_end(tmp_path):
    tif = tmp_path / "p.tif"
    proc = run_process("simulate", tif, "--frames", "3", "--size", "16", "--density", "5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = run_process("evaluate", tmp_path / "p.csv", tmp_path / "p.csv", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    scores = json.loads(proc.stdout)
    assert scores["jaccard"] == 100.0 and scores["rmse"] == 0.0

    proc = run_process("crlb", cwd=tmp_path, module=True)
    assert proc.returncode == 0 and "2.935 nm" in proc.stdout


@pytest.mark.slow
def test_console_script_bad_input(tmp_path):
    proc = run_process("simulate", tmp_path / "x.tif", "--density", "-2", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "density" in lines[0] and "Traceback" not in proc.stderr
    assert leftovers(tmp_path) == []


# --- io: files that are not usable stacks -----------------------------------------------------

def test_open_stack_not_a_tiff(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("these are not the pixels you are looking for\n")
    with pytest.raises(InputError, match="not a readable TIFF"):
        open_stack(path)
    with pytest.raises(InputError, match="no such file"):
        open_stack(tmp_path / "missing.tif")


@pytest.mark.parametrize("keep", [0.5, 0.02, 8])
def test_open_stack_truncated(tmp_path, keep):
    full = tmp_path / "full.tif"
    write_stack(full, np.arange(10 * 32 * 32, dtype=np.uint16).reshape(10, 32, 32), 100.0)
    raw = full.read_bytes()
    n = keep if isinstance(keep, int) else int(len(raw) * keep)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(raw[:n])
    with pytest.raises(InputError, match=r"truncated|corrupt|not a readable TIFF") as info:
        open_stack(cut)
    assert str(cut) in str(info.value)


def test_open_stack_truncated_compressed(tmp_path):
    full = tmp_path / "z.tif"
    tifffile.imwrite(full, np.random.default_rng(0).integers(0, 999, (6, 32, 32), dtype=np.uint16),
                     compression="zlib")
    assert open_stack(full).shape == (6, 32, 32)  # a readable compressed stack opens (page reader)
    cut = tmp_path / "zcut.tif"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(InputError, match=r"truncated|corrupt"):
        open_stack(cut)


def test_open_stack_rgb(tmp_path):
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    with pytest.raises(InputError, match="RGB"):
        open_stack(path)


def test_open_stack_too_small(tmp_path):
    path = tmp_path / "tiny.tif"
    tifffile.imwrite(path, np.zeros((3, 5, 6), np.uint16), photometric="minisblack")
    with pytest.raises(InputError, match="8x8"):
        open_stack(path)


def test_cli_reports_io_errors_in_one_line(tmp_path, capsys):
    path = tmp_path / "in.csv"
    path.write_bytes(b"\xff\xfe\x00garbage\x00")
    code, _, err = run_main(capsys, "evaluate", path, path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_bug_keeps_its_traceback_and_asks_for_a_report(capsys, monkeypatch):
    """A plain ValueError from the core is ours, not the user's: traceback, a request to report it, exit 1."""
    from napari_smlm_uq.physics import crlb

    def broken(*args, **kwargs):
        raise ValueError("an internal inconsistency")

    monkeypatch.setattr(crlb, "crlb", broken)
    code, out, err = run_main(capsys, "crlb")
    assert code == 1 and out == ""
    assert "Traceback" in err and "ValueError: an internal inconsistency" in err and "please report it" in err


def test_ctrl_c_exits_130(capsys, monkeypatch):
    from napari_smlm_uq.physics import crlb

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(crlb, "crlb", interrupted)
    code, _, err = run_main(capsys, "crlb")
    assert code == 130 and err.strip() == "smlm-uq crlb: interrupted"
