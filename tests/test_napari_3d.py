"""napari in 3D (docs/3d.md, section 6): a simulated astigmatic stack through the prediction widget with a z
calibration (3D points, the z-coloured rendering, the threshold widget's z filter), calibration files the widget
refuses, a 2D stack read with a calibration, and the calibration widget on a simulated bead stack."""
from __future__ import annotations

import json

import numpy as np
import pytest
from napari_helpers import PLUGIN, PREDICT, THRESHOLD, TRAIN, watch

from napari_smlm_uq._napari import _z_section, predict_widget, train_widget, zcalibration_widget
from napari_smlm_uq._napari._layers import world_to_index
from napari_smlm_uq.analysis.render import z_colours
from napari_smlm_uq.inference.refine3d import focus
from napari_smlm_uq.io.tables import read_table
from napari_smlm_uq.io.zcalibration import read_zcalibration, write_zcalibration
from napari_smlm_uq.physics.astigmatism import DefocusCurve, ZCalibration
from napari_smlm_uq.physics.beads import bead_stack
from napari_smlm_uq.physics.simulate import SimulationSettings, simulate

# sigma 1 px at focus, foci 500 nm apart (tests/test_refine3d.py)
CAL = ZCalibration(
    DefocusCurve(1.0, -250.0, 400.0, 0.1, 0.05), DefocusCurve(1.05, 250.0, 380.0, -0.1, 0.05), (-550.0, 550.0), 100.0
)
META = {"pixel_size": 100.0, "offset": 100.0, "gain": 1.0, "read_noise": 1.5}
CALIBRATE = "Calibrate z from beads"


def stack(calibration: ZCalibration | None, frames: int, size: int, density: float) -> np.ndarray:
    """Camera frames (ADU) of emitters at z uniform in +-400 nm (astigmatic), or round spots as wide as CAL's at
    its focus (2D)."""
    sim = simulate(SimulationSettings(frames=frames, size=size, density=density, photons=3000.0, pixel_size=100.0,
                                      psf_sigma=1.23, seed=5, z_calibration=calibration,
                                      z_range=None if calibration is None else (-400.0, 400.0)))
    return np.clip(np.rint(sim.adu), 0, 65535).astype(np.uint16)


def predict_widget_on(viewer, frames: np.ndarray, model_file, calibration_file, tmp_path):
    viewer.add_image(frames, name="astig", scale=(1, 100.0, 100.0), metadata=dict(META))
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, PREDICT)
    if model_file == "default":
        widget.model.select("default")
    else:
        widget.model.add_file(model_file)
    widget.samples.value, widget.device.value = 0, "cpu"
    widget.output.value = tmp_path / "out"
    widget.z_calibration.value = calibration_file
    return widget


def run(widget, qtbot) -> None:
    errors, workers = [], []
    widget.worker_started.connect(workers.append)
    widget.worker_started.connect(lambda w: watch(w, errors))
    widget.run_button.native.click()
    assert workers, "Run did not start a worker"
    qtbot.waitUntil(lambda: not widget.running and not workers[0].is_running, timeout=60_000)
    assert not errors


def test_3d_prediction_layers_and_z_filter(make_napari_viewer, qtbot, tiny_model_file, tmp_path):
    """z is the points' leading coordinate (the CSV's z, in nm), the 2D view overlays each frame's points on its
    SR mean, the 3D view shows (z, y, x) with every frame, the rendering is coloured by z, and the threshold
    widget's z slider hides the localizations whose z uncertainty is above it."""
    cal_file = tmp_path / "cal.json"
    write_zcalibration(cal_file, CAL)
    viewer = make_napari_viewer()
    widget = predict_widget_on(viewer, stack(CAL, 2, 24, 2.0), "default", cal_file, tmp_path)
    run(widget, qtbot)
    pts, mean = viewer.layers["astig localizations"], viewer.layers["astig SR mean"]
    world = pts.data * pts.scale + pts.translate
    table = read_table(widget.results.path / "localizations.csv")
    assert len(world) == len(table["z [nm]"]) >= 5
    np.testing.assert_allclose(world[:, 0], table["z [nm]"], atol=1e-3)   # the CSV keeps 4 decimals
    np.testing.assert_allclose(world[:, 3] + 50.0, table["x [nm]"], atol=1e-3)
    np.testing.assert_allclose(world[:, 1] + 1, table["frame"])
    np.testing.assert_allclose(pts.features["uncertainty z [nm]"], table["uncertainty z [nm]"], atol=1e-3)
    _, inside = world_to_index(world, mean.scale, mean.translate, mean.data.shape)
    assert inside.all()   # (frame, y, x) on the SR mean
    assert tuple(pts.face_contrast_limits) == CAL.z_range   # coloured by z over the valid range
    np.testing.assert_allclose(pts.face_color[:, :3], z_colours(world[:, 0], CAL.z_range), atol=0.03)
    assert np.ptp(world[:, 0]) > 100 and np.isfinite(table["uncertainty z [nm]"]).sum() >= 3

    # 2D: the current frame's points at every z; 3D: (z, y, x) displayed, every frame's points
    frame = int(viewer.dims.point[1])
    assert len(pts._view_data) == np.sum(world[:, 1] == frame) < len(world)
    viewer.dims.ndisplay = 3
    assert tuple(viewer.dims.axis_labels[a] for a in viewer.dims.displayed) == ("z", "y", "x")
    assert len(pts._view_data) == len(world)
    viewer.dims.ndisplay = 2
    assert len(pts._view_data) == np.sum(world[:, 1] == frame)

    # the z-coloured rendering: an RGB image over the plain one, hue = z at an isolated localization
    rgb, plain = viewer.layers["astig rendered by z"], viewer.layers["astig rendered"]
    assert rgb.rgb and rgb.data.shape == (*plain.data.shape, 3) and tuple(rgb.scale) == tuple(plain.scale)
    xy = world[:, 2:]
    gaps = np.sort(np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1)), axis=1)[:, 1]
    k = int(np.argmax(gaps))
    assert gaps[k] > 200   # nm
    colour = rgb.data[tuple(world_to_index(world[k:k + 1, 2:], plain.scale, plain.translate, plain.data.shape)[0][0])]
    np.testing.assert_allclose(colour / colour.max(), z_colours(world[k:k + 1, 0], CAL.z_range)[0], atol=0.02)

    # the threshold widget's z slider
    _, threshold = viewer.window.add_plugin_dock_widget(PLUGIN, THRESHOLD)
    assert threshold.points.value is pts and not threshold.z_slider.native.isHidden()
    qtbot.waitUntil(lambda: not threshold.points_pending and pts.metadata is not None, timeout=5000)
    assert pts.shown.all()   # at the top of both sliders nothing is hidden
    uz = np.asarray(pts.features["uncertainty z [nm]"])
    limit = float(np.nanmedian(uz))
    threshold.z_slider.value = limit
    expected = np.nan_to_num(uz, nan=np.inf) <= threshold.z_slider.value
    qtbot.waitUntil(lambda: np.array_equal(pts.shown, expected), timeout=5000)
    assert 0 < expected.sum() < len(uz) and threshold.points_fraction == pytest.approx(expected.mean())


def test_calibration_files_the_prediction_refuses(make_napari_viewer, tmp_path, monkeypatch, tiny_model_file):
    shown: list[str] = []
    monkeypatch.setattr(predict_widget, "show_error", shown.append)
    viewer = make_napari_viewer()
    not_one, other_pixels = tmp_path / "settings.json", tmp_path / "cal160.json"
    not_one.write_text(json.dumps({"format": "something else"}))
    write_zcalibration(other_pixels, ZCalibration(CAL.x, CAL.y, CAL.z_range, 160.0))
    widget = predict_widget_on(viewer, stack(CAL, 1, 16, 2.0), tiny_model_file, not_one, tmp_path)
    assert widget.run() is None and shown[-1] == f"Check the settings: {not_one}: not a z calibration (made by " \
                                                  "smlm-uq calibrate-z)"
    widget.z_calibration.value = other_pixels
    assert widget.run() is None
    assert "measured at 160 nm per pixel, the stack has 100 nm" in shown[-1]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_a_2d_stack_read_with_a_calibration_is_flagged(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    warned: list[str] = []
    monkeypatch.setattr(_z_section, "show_warning", warned.append)
    cal_file = tmp_path / "cal.json"
    write_zcalibration(cal_file, CAL)
    viewer = make_napari_viewer()
    widget = predict_widget_on(viewer, stack(None, 6, 40, 1.0), "default", cal_file, tmp_path)
    run(widget, qtbot)
    assert any(w.startswith("the spots show no astigmatism") for w in warned)
    assert "warning: the spots show no astigmatism" in widget.status.value
    assert "z colours: red -550 nm to blue 550 nm" in widget.status.value


def beads(calibration: ZCalibration) -> np.ndarray:
    """41 frames (30 nm steps from -600 nm) of four beads, ADU."""
    rows, cols = np.array([14.2, 14.8, 44.3, 43.6]), np.array([14.4, 45.1, 15.7, 44.2])
    adu = bead_stack(calibration, (60, 60), rows, cols, np.full(4, 8000.0), np.array([10.0, -20.0, 5.0, 0.0]),
                     -600.0 + 30.0 * np.arange(41), 20.0, seed=2)
    return np.clip(np.rint(adu), 0, 65535).astype(np.uint16)


def calibrate_in_widget(widget, qtbot) -> list:
    results: list = []
    widget.finished.connect(results.append)
    widget.button.native.click()
    qtbot.waitUntil(lambda: bool(results) and widget.worker is None, timeout=30_000)
    return results


def test_calibration_widget_writes_a_calibration_that_round_trips(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    errors: list[str] = []
    monkeypatch.setattr(zcalibration_widget, "show_error", errors.append)
    viewer = make_napari_viewer()
    viewer.add_image(beads(CAL), name="beads", metadata=dict(META))
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, CALIBRATE)
    out = tmp_path / "cal.json"
    widget.output.value = out
    widget.button.native.click()   # no step: refused before any work
    assert errors[-1].startswith("Calibration failed: the z step between frames (nm) is required")
    assert widget.worker is None and not out.exists()

    widget.step.value = 30.0
    (result,) = calibrate_in_widget(widget, qtbot)
    assert result is not None and out.exists() and out.with_suffix(".png").exists()
    assert read_zcalibration(out).to_dict() == result.calibration.to_dict()
    assert result.calibration.pixel_size == 100.0 and result.calibration.residuals["beads_used"] == 4
    z, cal = np.linspace(-300.0, 300.0, 7), result.calibration   # its z = 0 where the widths cross: focus(CAL)
    for mine, truth in ((cal.x, CAL.x), (cal.y, CAL.y)):
        np.testing.assert_allclose(mine.sigma(z), truth.sigma(z + focus(CAL)), atol=0.05)
    assert not widget.plot.pixmap().isNull() and "wrote cal.json and cal.png: 4 of 4 beads" in widget.status.value

    # a stack of beads without astigmatism, then of noise: the core's message, no file written
    out.unlink()
    out.with_suffix(".png").unlink()
    round_psf = ZCalibration(DefocusCurve(1.0, 0.0, 400.0), DefocusCurve(1.0, 0.0, 400.0), (-700.0, 700.0), 100.0)
    viewer.add_image(beads(round_psf), name="round", metadata=dict(META))
    widget.layer.value = viewer.layers["round"]
    assert calibrate_in_widget(widget, qtbot) == [None]
    assert "shows no astigmatism" in errors[-1] and "no astigmatism" in widget.status.value
    noise = np.random.default_rng(0).poisson(120.0, (10, 40, 40)).astype(np.uint16)
    viewer.add_image(noise, name="noise", metadata=dict(META))
    widget.layer.value = viewer.layers["noise"]
    assert calibrate_in_widget(widget, qtbot) == [None]
    assert "0 isolated bead(s) found" in errors[-1]
    assert not out.exists() and not out.with_suffix(".png").exists()


def test_training_widget_takes_a_z_calibration(make_napari_viewer, tmp_path, monkeypatch):
    shown: list[str] = []
    monkeypatch.setattr(train_widget, "show_error", shown.append)
    cal_file = tmp_path / "cal.json"
    write_zcalibration(cal_file, CAL)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, TRAIN)
    assert widget.settings().z_calibration is None
    widget.z_calibration.value, widget.pixel_size.value = cal_file, 100.0
    assert widget.settings().z_calibration.to_dict() == CAL.to_dict()
    widget.pixel_size.value = 160.0
    assert widget.run() is None and "measured with 100 nm pixels, the simulation has 160 nm" in shown[-1]
