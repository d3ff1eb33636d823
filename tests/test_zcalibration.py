"""The astigmatic z calibration from simulated bead z-stacks (docs/3d.md): the recovered width curves
against the truth, z of simulated emitters from their fitted widths against the 3D Cramer-Rao bound,
stacks that cannot be calibrated, and the command line (calibrate-z, simulate --z-calibration)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import brentq

from napari_smlm_uq import cli
from napari_smlm_uq.analysis.zcalibration import ZCalibrationSettings, calibrate
from napari_smlm_uq.io.files import InputError
from napari_smlm_uq.io.tables import read_localizations
from napari_smlm_uq.io.tiff import write_stack
from napari_smlm_uq.io.zcalibration import read_zcalibration
from napari_smlm_uq.physics.astigmatism import DefocusCurve, ZCalibration, crlb_3d, render_astigmatic, z_from_widths
from napari_smlm_uq.physics.beads import bead_stack
from napari_smlm_uq.physics.camera import Camera
from napari_smlm_uq.physics.elliptical_fit import fit_elliptical

TRUTH = ZCalibration(
    DefocusCurve(1.0, -250.0, 400.0, 0.1, 0.05), DefocusCurve(1.1, 250.0, 380.0, -0.1, 0.05), (-700.0, 700.0), 100.0
)
# the truth's z where sigma_x = sigma_y: the calibration's z = 0
Z_CROSS = brentq(lambda z: float(TRUTH.x.sigma(z) - TRUTH.y.sigma(z)), -250.0, 250.0)
STEP = 15.0
# six good beads (2,000 to 50,000 photons, heights +-30 nm) and a doublet: two beads 1.4 px apart, 200 nm apart in z
ROWS = np.array([20.2, 19.8, 60.3, 59.6, 100.1, 40.4, 100.0, 101.2])
COLS = np.array([20.4, 70.1, 39.7, 100.2, 19.9, 120.3, 100.3, 101.1])
PHOTONS = np.array([2000.0, 5000.0, 10000.0, 20000.0, 50000.0, 3000.0, 8000.0, 8000.0])
HEIGHTS = np.array([12.0, -25.0, 30.0, 4.0, -8.0, 21.0, -15.0, 185.0])


def beads(first_z: float = -500.0, frames: int = 81, rows=ROWS, cols=COLS, truth=TRUTH, seed: int = 3) -> np.ndarray:
    """Photo-electrons of a bead stack: the focus from ``first_z`` (nm, truth scale) up by STEP per frame,
    drifting 1.5 px down and 2 px left over the stack, background 20 photons/px."""
    drift = np.stack([np.linspace(0, 1.5, frames), np.linspace(0, -2.0, frames)], axis=1)
    n = len(rows)
    adu = bead_stack(
        truth,
        (128, 140),
        rows,
        cols,
        PHOTONS[:n],
        HEIGHTS[:n],
        first_z + STEP * np.arange(frames),
        20.0,
        drift,
        seed=seed,
    )
    return Camera().to_photoelectrons(adu)


@pytest.mark.parametrize(("first_z", "covered"), [(-500.0, (-450.0, 450.0)), (-250.0, (-250.0, 530.0))])
def test_calibration_recovers_the_width_curves(first_z, covered):
    """Focus in the middle or near the start of the stack, drift, a dim bead and a doublet: the doublet is
    dropped, and the recovered widths are within 0.015 px of the truth over the valid range, which covers
    ``covered`` (nm: the truth's ratio stops growing at 544 nm) and lies within the stack."""
    result = calibrate(beads(first_z), ZCalibrationSettings(step=STEP), 100.0, 1.5)
    cal = result.calibration
    assert list(result.beads.kept) == [True] * 6 + [False]  # the doublet is one spot, dropped
    assert cal.residuals["beads_found"] == 7 and cal.residuals["beads_used"] == 6
    lo, hi = cal.z_range
    assert lo <= covered[0] and hi >= covered[1]
    assert lo >= first_z - Z_CROSS - 40.0 and hi <= first_z + 80 * STEP - Z_CROSS + 40.0
    z = np.linspace(lo, hi, 200)
    for fitted, true in ((cal.x, TRUTH.x), (cal.y, TRUTH.y)):
        assert np.abs(fitted.sigma(z) - true.sigma(z + Z_CROSS)).max() < 0.015
    # the widths of one bead frame scatter by ~1-3 %: the curves' rms residual is a few hundredths of a px
    assert 0.005 < cal.residuals["huang_rms_px"] < 0.06
    assert cal.residuals["huang_heldout_rms_px"] < 1.2 * cal.residuals["huang_rms_px"]


def test_a_round_spot_is_not_taken_for_a_bead():
    """A bright round spot that does not change with focus (dirt, a saturated blob) passes the bead finder
    but never gets 1.2x longer than wide: it is dropped and the calibration is the beads'."""
    stack = beads().astype(np.float64)
    stack[:, 60:64, 60:64] += 5e4
    result = calibrate(stack, ZCalibrationSettings(step=STEP), 100.0, 1.5)
    assert result.calibration.residuals["beads_found"] == 8 and result.calibration.residuals["beads_used"] == 6
    assert any(note.startswith("bead at x 62, y 62 px: its widths do not cross") for note in result.beads.notes)
    z = np.linspace(-450.0, 450.0, 50)
    assert np.abs(np.subtract(result.calibration.sigmas(z), TRUTH.sigmas(z + Z_CROSS))).max() < 0.015


class SixthOrder:
    """Widths the Huang form cannot follow: an extra 0.04 u^6 under the root (duck-typed calibration)."""

    def sigmas(self, z):
        return tuple(
            c.sigma0 * np.sqrt((c.sigma(z) / c.sigma0) ** 2 + 0.04 * ((np.asarray(z) - c.c) / c.d) ** 6)
            for c in (TRUTH.x, TRUTH.y)
        )


def test_splines_are_written_when_the_widths_do_not_follow_the_huang_form():
    """With a sixth-order defocus term the Huang curves miss the widths by over 0.05 px at the range's ends;
    the splines predict held-out beads better, are written, and stay within 0.025 px of the truth."""
    truth = SixthOrder()
    cross = brentq(lambda z: float(np.subtract(*truth.sigmas(z))), -250.0, 250.0)
    result = calibrate(beads(truth=truth), ZCalibrationSettings(step=STEP), 100.0, 1.5)
    cal = result.calibration
    assert cal.model == "spline"
    assert cal.residuals["spline_heldout_rms_px"] < 0.9 * cal.residuals["huang_heldout_rms_px"]
    z = np.linspace(*cal.z_range, 200)
    assert cal.z_range[0] < -450.0 and cal.z_range[1] > 450.0
    assert np.abs(np.subtract(cal.sigmas(z), truth.sigmas(z + cross))).max() < 0.025
    huang = np.array([c.sigma(z) for c in result.huang])
    assert np.abs(huang - truth.sigmas(z + cross)).max() > 0.05
    np.testing.assert_allclose(z_from_widths(*truth.sigmas(z[::20] + cross), cal), z[::20], atol=15.0)


def test_z_from_fitted_widths_reaches_the_crlb():
    """Emitters of 5,000 photons at |z| <= 400 nm (calibration scale): their z from fitted widths and the
    recovered calibration has an rms error within 1.25x the mean 3D Cramer-Rao bound, and no bias."""
    cal = calibrate(beads(), ZCalibrationSettings(step=STEP), 100.0, 1.5).calibration
    rng = np.random.default_rng(7)
    n, roi = 300, 17
    z = rng.uniform(-400.0, 400.0, n)
    xy = 8.0 + rng.uniform(-0.5, 0.5, (n, 2))
    omega = np.stack(
        [20.0 + render_astigmatic([r], [c], [zz + Z_CROSS], [5000.0], (roi, roi), TRUTH) for (c, r), zz in zip(xy, z)]
    )
    data = Camera().to_photoelectrons(Camera().expose(omega, rng))
    fit = fit_elliptical(data, read_noise=1.5)
    error = z_from_widths(fit["sigma_x"], fit["sigma_y"], cal) - z
    bound = np.sqrt(np.mean([crlb_3d(5000.0, 20.0, zz + Z_CROSS, TRUTH, 1.5, roi=roi)[2] ** 2 for zz in z]))
    assert 5.0 < bound < 20.0
    assert np.sqrt(np.mean(error**2)) < 1.25 * bound
    assert abs(error.mean()) < 4 * bound / np.sqrt(n)


def test_stacks_that_cannot_be_calibrated():
    settings = ZCalibrationSettings(step=STEP)
    background = Camera().to_photoelectrons(Camera().expose(np.full((30, 64, 64), 20.0), np.random.default_rng(1)))
    with pytest.raises(InputError, match="0 isolated bead"):
        calibrate(background, settings, 100.0, 1.5)
    with pytest.raises(InputError, match="2 isolated bead"):
        calibrate(beads(rows=ROWS[:2], cols=COLS[:2]), settings, 100.0, 1.5)
    round_psf = ZCalibration(DefocusCurve(1.0, 0.0, 400.0), DefocusCurve(1.0, 0.0, 400.0), (-700.0, 700.0), 100.0)
    with pytest.raises(InputError, match="no astigmatism"):
        calibrate(beads(truth=round_psf), settings, 100.0, 1.5)
    with pytest.raises(InputError, match="step between frames"):
        calibrate(background, ZCalibrationSettings(), 100.0, 1.5)


def run_main(capsys, *args) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_calibrate_z_then_simulate_in_3d(tmp_path, capsys):
    tif, cal_path = tmp_path / "beads.tif", tmp_path / "cal.json"
    adu = np.rint(beads() * Camera().gain + Camera().offset).astype(np.uint16)
    write_stack(tif, adu, 100.0, offset=100.0, gain=1.0, read_noise=1.5)
    code, out, err = run_main(capsys, "calibrate-z", tif, "--out", cal_path)
    assert code == 2 and "--step" in err and not cal_path.exists()
    code, out, err = run_main(capsys, "calibrate-z", tif, "--step", STEP, "--out", cal_path)
    assert code == 0 and err == "" and "6 of 7 beads" in out
    assert "dropped bead at x 100, y 101 px: off the common curves" in out  # the doublet
    cal = read_zcalibration(cal_path)
    assert cal.pixel_size == 100.0 and cal.source == "beads.tif" and cal.z_range[0] < -400 < 400 < cal.z_range[1]
    assert (tmp_path / "cal.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(cal_path.read_text())["format"] == "smlm-uq z calibration"

    sim = tmp_path / "sim.tif"
    code, out, err = run_main(
        capsys,
        "simulate",
        sim,
        "--frames",
        3,
        "--size",
        24,
        "--density",
        5,
        "--z-calibration",
        cal_path,
        "--z-range",
        -400,
        300,
    )
    assert code == 0, err
    truth = read_localizations(tmp_path / "sim.csv")
    assert truth["z [nm]"].min() >= -400 and truth["z [nm]"].max() <= 300 and len(truth["z [nm]"]) > 5
    code, out, err = run_main(
        capsys, "simulate", tmp_path / "bad.tif", "--z-calibration", cal_path, "--z-range", -2000, 0
    )
    assert code == 2 and "not within the calibration" in err
    code, out, err = run_main(
        capsys, "simulate", tmp_path / "bad.tif", "--z-calibration", cal_path, "--pixel-size", 160
    )
    assert code == 2 and "100 nm pixels" in err and "160 nm" in err
    assert not (tmp_path / "bad.tif").exists()


def test_calibrate_z_refuses_a_stack_without_beads_and_writes_nothing(tmp_path, capsys):
    tif, cal_path = tmp_path / "empty.tif", tmp_path / "cal.json"
    frames = Camera().expose(np.full((20, 48, 48), 20.0), np.random.default_rng(2))
    write_stack(tif, np.rint(frames).astype(np.uint16), 100.0)
    code, _out, err = run_main(capsys, "calibrate-z", tif, "--step", 20, "--out", cal_path)
    assert code == 2 and "0 isolated bead(s) found" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.tif"]
