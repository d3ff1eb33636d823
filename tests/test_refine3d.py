"""3D localization with an astigmatic z calibration: the joint fit (physics/fit3d.py), the 3D refinement
(inference/refine3d.py) against the truth of simulated movies, and z downstream (CSV, Picasso, evaluate)."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from scipy.spatial import cKDTree

from napari_smlm_uq import cli
from napari_smlm_uq.analysis.metrics import AXIAL_ALPHA, efficiency, match, score_3d
from napari_smlm_uq.inference.pipeline import PredictSettings, predict
from napari_smlm_uq.inference.refine3d import Refiner3D, flat_warning, refine_frame_3d
from napari_smlm_uq.io.picasso import read_locs, write_locs
from napari_smlm_uq.io.tables import localizations_table, read_localizations, table_localizations, write_localizations
from napari_smlm_uq.localizations import Localizations
from napari_smlm_uq.models import registry
from napari_smlm_uq.physics.astigmatism import DefocusCurve, ZCalibration, crlb_3d, render_astigmatic
from napari_smlm_uq.physics.fit import ImagingModel
from napari_smlm_uq.physics.fit3d import fit_rois_3d
from napari_smlm_uq.physics.simulate import SimulationSettings, simulate

# sigma 1 px at focus, foci 500 nm apart (tests/test_astigmatism.py)
CAL = ZCalibration(
    DefocusCurve(1.0, -250.0, 400.0, 0.1, 0.05), DefocusCurve(1.05, 250.0, 380.0, -0.1, 0.05), (-550.0, 550.0), 100.0
)


def locs_at(frame: int, rows, cols) -> Localizations:
    n = len(rows)
    return Localizations(np.full(n, frame), np.asarray(rows, float), np.asarray(cols, float), np.full(n, 0.1),
                         np.ones(n), np.ones(n))


def test_noise_free_boxes_give_back_the_truth_with_a_neighbour():
    """Noise-free data: the maximum-likelihood estimate is the truth (x, y, z of both emitters of a box)."""
    size, truth = 17, np.array([[8.3, 7.6, -310.0, 2000.0], [11.9, 10.2, 240.0, 1500.0]])   # col, row, z, N
    omega = 20.0 + render_astigmatic(truth[:, 1], truth[:, 0], truth[:, 2], truth[:, 3], (size, size), CAL)
    starts = truth + np.array([[0.4, -0.3, 120.0, 0.0], [-0.3, 0.4, -150.0, 0.0]])
    fit = fit_rois_3d(omega[None], starts[None, :, 0], starts[None, :, 1], starts[None, :, 2], np.ones((1, 2), bool),
                      CAL, ImagingModel(1.0), iterations=40)
    np.testing.assert_allclose(fit.col[0], truth[:, 0], atol=1e-4)
    np.testing.assert_allclose(fit.row[0], truth[:, 1], atol=1e-4)
    np.testing.assert_allclose(fit.z[0], truth[:, 2], atol=0.05)
    np.testing.assert_allclose(fit.photons[0], truth[:, 3], rtol=1e-4)
    assert fit.background[0] == pytest.approx(20.0, rel=1e-5) and fit.chi2[0] < 1e-6
    alone = crlb_3d(2000.0, 20.0, -310.0, CAL)   # the bound of one emitter alone, centred in its box
    assert alone[2] < fit.crlb_z[0, 0] < 1.5 * alone[2]


def test_an_elongated_spot_seen_twice_is_one_localization_and_a_pair_stays_two():
    """A defocused spot localized twice 1.5 px apart along its long axis gives one localization near the
    truth; two emitters 4 px apart stay two, each with its own z."""
    rng = np.random.default_rng(2)
    shape = (32, 32)
    one = 20.0 + render_astigmatic(np.array([15.2]), np.array([15.7]), np.array([380.0]), np.array([2e3]), shape, CAL)
    fit = refine_frame_3d(rng.poisson(one).astype(float), np.array([15.2, 15.2]), np.array([15.0, 16.5]), CAL,
                          ImagingModel(1.0))
    assert len(fit.row) == 1 and fit.ok[0]
    assert np.hypot(fit.row[0] - 15.2, fit.col[0] - 15.7) < 0.2 and abs(fit.z[0] - 380.0) < 4 * fit.fisher_z[0]
    rows, cols, z = np.array([12.0, 16.0]), np.array([14.0, 14.0]), np.array([-200.0, 150.0])
    two = 20.0 + render_astigmatic(rows, cols, z, np.full(2, 2000.0), shape, CAL)
    fit = refine_frame_3d(rng.poisson(two).astype(float), rows + 0.3, cols - 0.3, CAL, ImagingModel(1.0))
    assert len(fit.row) == 2 and fit.ok.all()
    np.testing.assert_array_less(np.abs(fit.z - z), 4 * fit.fisher_z)


def test_a_flat_stack_read_with_a_calibration_is_flagged():
    """Round spots (a 2D stack) fitted with an astigmatic calibration lie at its focus: warned; the same
    emitters spread over +-400 nm are not."""
    messages = []
    for calibration in (None, CAL):
        movie = simulate(SimulationSettings(frames=12, size=32, density=1.0, seed=4, z_calibration=calibration,
                                            z_range=None if calibration is None else (-400.0, 400.0)))
        refiner, e = Refiner3D(movie.settings.camera, CAL), movie.emitters
        locs = Localizations.concat([refiner(locs_at(t, e.row[e.frame == t], e.col[e.frame == t]), movie.adu[t])
                                     for t in range(12)])
        assert np.isfinite(locs.uncertainty_z).sum() >= 60
        messages.append(flat_warning(locs, CAL))
    assert "no astigmatism" in messages[0] and messages[1] is None
    assert flat_warning(locs_at(0, [1.0], [1.0]), CAL) is None   # 2D localizations: nothing to say


def test_a_calibration_of_another_pixel_size_or_without_the_refinement_is_refused():
    with pytest.raises(ValueError, match="100 nm per pixel, the stack has 160 nm"):
        PredictSettings(pixel_size=160.0, z_calibration=CAL).validate()
    with pytest.raises(ValueError, match="needs the refinement"):
        PredictSettings(refine=False, z_calibration=CAL).validate()
    PredictSettings(pixel_size=100.0, z_calibration=CAL).validate()


@pytest.mark.slow
def test_3d_refinement_reaches_the_bounds_on_a_simulated_movie(tmp_path):
    """phi alone on an astigmatic movie (sigma 1 px at focus, +-400 nm, 2,000 photons, background 20,
    0.5 emitters/um^2) then the 3D refinement: on isolated emitters (no other within 6 px, 3 px from the
    edges, and detected once: phi, trained on round spots, may see a defocused spot twice) the z and
    lateral RMSE are within 1.25x the bounds and z / its uncertainty has a standard deviation in 0.8-1.25
    (measured: 0.99x, 1.04x, 0.96; docs/3d.md). The CSV keeps z and its uncertainty."""
    size, frames = 32, 40
    movie = simulate(SimulationSettings(frames=frames, size=size, density=0.5, z_calibration=CAL,
                                        z_range=(-400.0, 400.0), seed=7))
    settings = PredictSettings(samples=0, z_calibration=CAL, camera=movie.settings.camera)
    locs = Localizations.concat([r.localizations for r in predict(movie.adu, registry.load("default"), settings)])
    e = movie.emitters
    m = match(locs.frame, np.c_[locs.col, locs.row] * 100, e.frame, np.c_[e.col, e.row] * 100, 250.0)
    li, gi = m.loc_idx, m.gt_idx
    assert len(gi) >= 0.9 * len(e)
    nearest_truth, nearest_loc = np.full(len(e), np.inf), np.full(len(locs), np.inf)
    for t in range(frames):
        for points, out in ((e, nearest_truth), (locs, nearest_loc)):
            k = np.flatnonzero(points.frame == t)
            if len(k) > 1:
                xy = np.c_[points.row[k], points.col[k]]
                out[k] = cKDTree(xy).query(xy, k=2)[0][:, 1]
    inner = np.minimum.reduce([e.row, e.col, size - 1 - e.row, size - 1 - e.col]) >= 3
    isolated = (nearest_truth[gi] > 6) & inner[gi] & (nearest_loc[li] > 3) & np.isfinite(locs.uncertainty_z[li])
    li, gi = li[isolated], gi[isolated]
    assert len(li) >= 60
    bounds = np.array([crlb_3d(n, 20.0, z, CAL, read_noise=movie.settings.camera.read_noise)
                       for n, z in zip(e.photons[gi], e.z[gi])])
    rms = lambda a: np.sqrt(np.mean(np.square(a)))
    dz = locs.z[li] - e.z[gi]
    assert rms(dz) <= 1.25 * rms(bounds[:, 2])
    lateral = np.r_[locs.row[li] - e.row[gi], locs.col[li] - e.col[gi]]
    assert rms(lateral) <= 1.25 * rms(np.r_[bounds[:, 1], bounds[:, 0]])
    assert 0.8 <= np.std(dz / locs.uncertainty_z[li]) <= 1.25
    path = tmp_path / "locs.csv"
    write_localizations(path, localizations_table(locs, 100.0))
    back = table_localizations(read_localizations(path), 100.0)
    np.testing.assert_allclose(back.z, locs.z, atol=1e-4)
    np.testing.assert_allclose(back.uncertainty_z, locs.uncertainty_z, atol=1e-4, equal_nan=True)


def three_d_locs() -> Localizations:
    locs = locs_at(0, [1.0, 2.0, 3.5], [4.0, 5.0, 6.0])
    locs.z, locs.uncertainty_z = np.array([-120.5, 0.0, 333.25]), np.array([15.0, np.nan, 22.5])
    return locs


def test_csv_has_z_columns_in_3d_only(tmp_path):
    table = localizations_table(three_d_locs(), 100.0)
    assert list(table)[-2:] == ["z [nm]", "uncertainty z [nm]"]
    flat = locs_at(0, [1.0], [2.0])
    assert "z [nm]" not in localizations_table(flat, 100.0) and table_localizations(
        localizations_table(flat, 100.0), 100.0).z is None
    both = Localizations.concat([flat, three_d_locs()])   # a 2D part in a 3D run: NaN z
    assert both.z.shape == (4,) and np.isnan(both.z[0]) and both.z[3] == 333.25
    np.testing.assert_array_equal(both.take(np.array([3, 1])).uncertainty_z, [22.5, 15.0])


def test_picasso_keeps_z_and_lpz_in_nm(tmp_path):
    table = localizations_table(three_d_locs(), 100.0)
    write_locs(tmp_path / "locs.hdf5", table, 100.0)
    with h5py.File(tmp_path / "locs.hdf5") as fh:
        locs = fh["locs"][()]
    np.testing.assert_allclose(locs["z"], [-120.5, 0.0, 333.25])   # nm, as Picasso's z fit writes it
    np.testing.assert_allclose(locs["lpz"], [15.0, np.nan, 22.5])
    back = read_locs(tmp_path / "locs.hdf5")
    np.testing.assert_allclose(back["z [nm]"], table["z [nm]"], rtol=1e-6)
    np.testing.assert_allclose(back["uncertainty z [nm]"], table["uncertainty z [nm]"], rtol=1e-6)
    assert not any(k.startswith("z_") or k == "lpz" for k in back)


def test_evaluate_scores_3d_when_both_tables_have_z(tmp_path, capsys):
    """Every z 30 nm off, one truth missed: RMSE z 30 nm, E axial 100 - sqrt((100 - JAC)^2 + (0.5 * 30)^2),
    E 3D their mean with the lateral E."""
    xy = np.array([[1000.0, 1000.0], [2000.0, 500.0], [3000.0, 3000.0]])
    z = np.array([-200.0, 100.0, 300.0])
    gt, found = tmp_path / "gt.csv", tmp_path / "locs.csv"
    write_localizations(gt, {"frame": np.array([1, 1, 2]), "x [nm]": xy[:, 0], "y [nm]": xy[:, 1], "z [nm]": z})
    write_localizations(found, {"frame": np.array([1, 1]), "x [nm]": xy[:2, 0] + 3, "y [nm]": xy[:2, 1] + 4,
                                "z [nm]": z[:2] + 30})
    assert cli.main(["evaluate", str(found), str(gt), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    axial = 100 - np.hypot(100 / 3, AXIAL_ALPHA * 30)
    assert s["rmse_z"] == pytest.approx(30.0) and s["efficiency_axial"] == pytest.approx(axial)
    assert s["efficiency_3d"] == pytest.approx(0.5 * (axial + efficiency(200 / 3, 5.0)))
    lateral, _ = score_3d([0], [[0.0, 0.0]], [0.0], [0], [[0.0, 0.0]], [0.0])
    assert lateral.rmse == 0.0
    write_localizations(found, {"frame": np.array([1, 1]), "x [nm]": xy[:2, 0], "y [nm]": xy[:2, 1]})
    assert cli.main(["evaluate", str(found), str(gt), "--json"]) == 0
    assert "rmse_z" not in json.loads(capsys.readouterr().out)   # 2D localizations: 2D scores


def test_predict_cli_refuses_a_calibration_of_another_pixel_size(tmp_path, capsys):
    from napari_smlm_uq.io.tiff import write_stack
    from napari_smlm_uq.io.zcalibration import write_zcalibration

    write_stack(tmp_path / "s.tif", np.full((2, 16, 16), 120, np.uint16), 160.0)
    write_zcalibration(tmp_path / "cal.json", CAL)
    code = cli.main(["predict", str(tmp_path / "s.tif"), "--out", str(tmp_path / "out"), "--samples", "0",
                     "--z-calibration", str(tmp_path / "cal.json"), "--offset", "100", "--gain", "1",
                     "--read-noise", "1.5"])
    err = capsys.readouterr().err
    assert code == 2 and "100 nm per pixel, the stack has 160 nm" in err
    assert not (tmp_path / "out" / "localizations.csv").exists()


@pytest.mark.slow
def test_predict_cli_writes_z_and_warns_on_a_2d_stack(tmp_path, capsys):
    """A 3D stack through ``smlm-uq predict --z-calibration``: the CSV has z and its uncertainty; the 2D
    stack of the same seed: a warning that the spots show no astigmatism."""
    from napari_smlm_uq.io.tiff import write_stack
    from napari_smlm_uq.io.zcalibration import write_zcalibration

    write_zcalibration(tmp_path / "cal.json", CAL)
    outputs = []
    for name, calibration in (("flat", None), ("astig", CAL)):
        movie = simulate(SimulationSettings(frames=12, size=32, density=1.0, seed=4, z_calibration=calibration))
        write_stack(tmp_path / f"{name}.tif", movie.adu.astype(np.uint16), 100.0)
        code = cli.main(["predict", str(tmp_path / f"{name}.tif"), "--out", str(tmp_path / name), "--samples", "0",
                         "--z-calibration", str(tmp_path / "cal.json"), "--offset", "100", "--gain", "1",
                         "--read-noise", "1.5", "--format", "tif"])
        assert code == 0
        outputs.append(capsys.readouterr().out)
        table = read_localizations(tmp_path / name / "localizations.csv")
        assert {"z [nm]", "uncertainty z [nm]"} <= set(table) and len(table["frame"]) > 60
    assert "no astigmatism" in outputs[0] and "no astigmatism" not in outputs[1]
