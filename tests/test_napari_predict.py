"""The prediction dock widget, end to end with a tiny random model on a tiny stack."""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
from napari_helpers import CAMERA, PLUGIN, PREDICT, add_raw, tiny_stack, watch

from napari_smlm_uq._napari import _layers, _models
from napari_smlm_uq._napari._layers import PredictionResults, world_to_data, world_to_index
from napari_smlm_uq.inference import pipeline
from napari_smlm_uq.inference.localize import DEFAULT_THRESHOLD, find_peaks
from napari_smlm_uq.inference.pipeline import FrameResult
from napari_smlm_uq.localizations import Localizations
from napari_smlm_uq.physics.kde import sr_to_raw

SUFFIXES = tuple(_layers.SUFFIXES.values())


@pytest.fixture
def model_file(tiny_model_file):
    return tiny_model_file


def open_widget(viewer):
    """The prediction widget, storing lossless float32 (the layers are compared with the pipeline's numbers)."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, PREDICT)
    widget.store_encoding.value = "float32"
    return widget


def run_and_wait(widget, qtbot, errors, timeout=60_000):
    workers = []
    widget.worker_started.connect(workers.append)
    widget.worker_started.connect(lambda w: watch(w, errors))
    widget.run_button.native.click()
    assert workers, "Run did not start a worker"
    qtbot.waitUntil(lambda: not widget.running and not workers[0].is_running, timeout=timeout)
    return workers[0]


def unrefined(monkeypatch) -> None:
    """Localizations at the mean KDE's peaks (no refit on the raw pixels), to check the layers' alignment."""
    monkeypatch.setattr(pipeline, "Refiner", lambda camera, **options: None)   # predict then refines nothing
    monkeypatch.setattr(pipeline, "learn_prior", lambda *args, **options: None)   # no refiner to learn a prior for


@pytest.mark.slow
def test_predict_makes_five_aligned_layers(make_napari_viewer, qtbot, model_file, monkeypatch):
    unrefined(monkeypatch)
    viewer = make_napari_viewer()
    raw = add_raw(viewer)
    widget = open_widget(viewer)
    # camera settings come from the layer's metadata
    assert widget.layer.value.name == "raw"
    assert widget.pixel_size.value == CAMERA["pixel_size"]
    assert widget.read_noise.value == CAMERA["read_noise"]
    assert (widget.start_frame.value, widget.stop_frame.value) == (0, 3)
    widget.model.file.value = model_file  # the file field registers and selects it
    assert widget.model.model == str(model_file.resolve())
    widget.samples.value = 2
    widget.steps.value = 2
    widget.device.value = "cpu"
    errors: list = []
    run_and_wait(widget, qtbot, errors)
    assert not errors

    p = CAMERA["pixel_size"]
    layers = {s: viewer.layers["raw" + s] for s in SUFFIXES}
    for s in (" SR mean", " SR sample", " SR std"):
        assert layers[s].data.shape == (3, 64, 64)
        assert layers[s].metadata["partial"] is False
    assert layers[" SR sum"].data.shape == (64, 64)
    np.testing.assert_allclose(layers[" SR sum"].data, layers[" SR mean"].data.sum(0), rtol=1e-5, atol=1e-5)
    assert float(layers[" SR std"].data.max()) > 0  # two samples differ

    # SR pixel centres in world coordinates sit where docs/physics.md (section 4) puts them on the raw grid
    m = np.array([0, 1, 5, 63])
    for s in (" SR mean", " SR sample", " SR std"):
        for t in (0, 2):
            sr = np.array([layers[s].data_to_world((t, mi, mi)) for mi in m])
            rw = np.array([raw.data_to_world((t, ri, ri)) for ri in sr_to_raw(m)])
            np.testing.assert_allclose(sr, rw, atol=1e-9)
    sr2 = np.array([layers[" SR sum"].data_to_world((mi, mi)) for mi in m])
    np.testing.assert_allclose(sr2, np.array([raw.data_to_world((0, ri, ri)) for ri in sr_to_raw(m)])[:, 1:], atol=1e-9)

    # localizations: world coordinates (frame, row nm, col nm), each on a peak of its frame's mean KDE
    pts = layers[" localizations"]
    assert len(pts.data) > 0 and pts.data.shape[1] == 3
    for col in ("frame", "x [nm]", "y [nm]", "uncertainty [nm]", "detection"):
        assert col in pts.features.columns
    np.testing.assert_allclose(pts.features["x [nm]"], pts.data[:, 2] + p / 2)
    np.testing.assert_array_equal(pts.features["frame"], pts.data[:, 0] + 1)
    mean = layers[" SR mean"]
    _, inside = world_to_index(pts.data, mean.scale, mean.translate, mean.data.shape)
    assert inside.all()
    sr = world_to_data(pts.data, mean.scale, mean.translate)
    for t in range(3):
        peaks = find_peaks(mean.data[t], DEFAULT_THRESHOLD)
        here = sr[sr[:, 0] == t][:, 1:]
        np.testing.assert_allclose(np.sort(here, axis=0), np.sort(peaks, axis=0), atol=1e-9)


@pytest.mark.slow
def test_predict_cancel_keeps_partial_results(make_napari_viewer, qtbot, model_file, monkeypatch):
    viewer = make_napari_viewer()
    add_raw(viewer, frames=6)
    widget = open_widget(viewer)
    widget.model.add_file(model_file)
    widget.samples.value = 2
    widget.steps.value = 50
    widget.device.value = "cpu"
    errors: list = []
    workers = []
    widget.worker_started.connect(workers.append)
    widget.worker_started.connect(lambda w: watch(w, errors))
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: widget.results.done >= 1, timeout=60_000)
    widget.cancel_button.native.click()
    qtbot.waitUntil(lambda: not widget.running and not workers[0].is_running, timeout=30_000)
    assert not errors
    done = widget.results.done
    assert 1 <= done < 6
    mean = viewer.layers["raw SR mean (partial)"]
    assert mean.data.shape == (done, 64, 64)
    assert mean.metadata["partial"] is True and mean.metadata["frames"] == (0, done)
    for s in (" SR sample", " SR std", " SR sum", " localizations"):
        assert "raw" + s + " (partial)" in viewer.layers
    assert "raw SR mean" not in viewer.layers
    assert "stopped" in widget.status.value
    assert widget.run_button.enabled and not widget.cancel_button.enabled


@pytest.mark.slow
def test_predict_follows_the_layer_placement_and_frame_range(make_napari_viewer, qtbot, model_file, monkeypatch):
    """A layer placed otherwise (another reader: scale 1 px; a translate) still gets aligned results."""
    unrefined(monkeypatch)
    viewer = make_napari_viewer()
    raw = viewer.add_image(tiny_stack(4, 16), name="moved", scale=(2.0, 1.0, 1.0), translate=(10.0, 5.0, -3.0))
    widget = open_widget(viewer)
    assert "pixel size: default 100 nm" in widget.camera_note.value and "(default)" in widget.camera_note.value
    widget.model.add_file(model_file)
    widget.samples.value = 0  # DeepSTORM alone
    widget.start_frame.value = 2
    widget.stop_frame.value = 4
    errors: list = []
    run_and_wait(widget, qtbot, errors)
    assert not errors
    mean = viewer.layers["moved SR mean"]
    assert mean.data.shape == (2, 64, 64)
    for t, m in ((0, 0), (1, 37), (1, 63)):
        np.testing.assert_allclose(mean.data_to_world((t, m, m)), raw.data_to_world((t + 2, *sr_to_raw([m, m]))))
    pts = viewer.layers["moved localizations"]
    assert len(pts.data) > 0
    frames = np.array([raw.world_to_data(x)[0] for x in pts.data])
    np.testing.assert_allclose(frames, np.rint(frames), atol=1e-9)
    assert set(np.rint(frames).astype(int)) <= {2, 3}  # only the chosen frames
    assert np.isnan(pts.features["uncertainty [nm]"]).all()  # no samples, no uncertainty
    sr = world_to_data(pts.data, mean.scale, mean.translate)
    peaks = find_peaks(mean.data[0], DEFAULT_THRESHOLD)
    np.testing.assert_allclose(np.sort(sr[sr[:, 0] == 0][:, 1:], axis=0), np.sort(peaks, axis=0), atol=1e-9)


@pytest.mark.slow
def test_predict_errors_are_notifications(make_napari_viewer, qtbot, model_file, monkeypatch, tmp_path):
    from napari_smlm_uq._napari import predict_widget

    shown: list[str] = []
    monkeypatch.setattr(predict_widget, "show_error", shown.append)
    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    widget.run_button.native.click()  # no layer at all
    assert "No image layer" in shown[-1] and not widget.running
    viewer.add_image(np.zeros((2, 2, 16, 16), np.uint16), name="4d")
    widget.layer.value = viewer.layers["4d"]
    widget.model.add_file(model_file)
    widget.run_button.native.click()
    assert "4-dimensional" in shown[-1] and not widget.running
    # a model file that is not one: reported from the worker as a notification, not a traceback
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    add_raw(viewer)
    widget.layer.value = viewer.layers["raw"]
    widget.model.add_file(bad)
    errors: list = []
    run_and_wait(widget, qtbot, errors)
    assert len(errors) == 1 and "not a napari-smlm-uq model file" in shown[-1]
    assert widget.status.value.startswith("failed after 0 of 3 frames")
    assert "raw SR mean" not in viewer.layers


@pytest.mark.slow
def test_model_list_follows_registrations_and_closing_is_clean(make_napari_viewer, qtbot, tmp_path, model_file):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, PREDICT)
    other = tmp_path / "trained" / "model.pt"
    other.parent.mkdir()
    other.write_bytes(model_file.read_bytes())
    _models.register(other)
    assert str(other.resolve()) in widget.model.choice.choices  # listed at once
    add_raw(viewer, name="first")
    assert widget.layer.value.name == "first"
    viewer.layers["first"].name = "renamed"
    assert widget.layer.choices == (viewer.layers["renamed"],)
    # after the dock widget is removed nothing holds it: napari's layer events and the model list drop it
    listeners = len(_models._listeners)
    gone = weakref.ref(widget)
    viewer.window.remove_dock_widget(dock)
    del widget, dock
    qtbot.wait(50)
    gc.collect()
    assert gone() is None
    add_raw(viewer, name="second")
    viewer.layers["renamed"].name = "first again"
    viewer.layers.remove("second")
    assert [layer.name for layer in viewer.layers] == ["first again"]
    _models.register(model_file)
    assert len(_models._listeners) < listeners  # the deleted widget's listener is dropped


@pytest.mark.slow
def test_choosers_offer_only_layers_of_the_right_kind(make_napari_viewer, qtbot, tiny_models, tmp_path):
    """Camera frames: tagged raw, or untagged integer grayscale; never RGB, float of unknown meaning or
    our results."""
    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    viewer.add_image(np.zeros((16, 16, 3), np.uint8), name="rgb", rgb=True)
    viewer.add_image(np.zeros((3, 16, 16), np.float32), name="float")
    viewer.add_image(np.zeros((3, 16, 16), np.float32), name="float raw", metadata={"smlm_uq": "raw"})
    add_raw(viewer, name="counts", frames=2)
    results = PredictionResults.create(tmp_path, 2, (16, 16), 80.0)
    for i in range(2):
        zeros = np.zeros((64, 64), np.float32)
        results.add(FrameResult(i, zeros, zeros, zeros, Localizations.empty(), 0.0))
    for array, kwargs, kind in results.layer_data("counts").values():
        (viewer.add_points if kind == "points" else viewer.add_image)(array, **kwargs)
    assert sorted(layer.name for layer in widget.layer.choices) == ["counts", "float raw"]
    widget.layer.value = viewer.layers["counts"]
    assert (widget.start_frame.value, widget.stop_frame.value) == (0, 2)
    assert "pixel size" in widget.camera_note.value and widget.camera_note.native.wordWrap()


@pytest.mark.slow
def test_result_layers_can_be_removed_and_the_next_run_recreates_them(make_napari_viewer, qtbot, model_file):
    """An empty run (flat frames, bundled model: no localizations) and a full one; the user removes the
    result layers one by one (all at once: tests/test_napari_remove_layers.py), then runs again."""
    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    widget.samples.value, widget.steps.value, widget.device.value = 0, 1, "cpu"
    viewer.add_image(np.full((2, 16, 16), 100, np.uint16), name="flat", metadata=dict(CAMERA))
    for name, model in (("flat", "default"), ("full", str(model_file)), ("flat", "default")):
        if name not in viewer.layers:
            add_raw(viewer, frames=2, name=name)
        widget.layer.value = viewer.layers[name]
        widget.model.select(model) if model == "default" else widget.model.add_file(model)
        errors: list = []
        run_and_wait(widget, qtbot, errors)
        assert not errors
        results = [viewer.layers[name + s] for s in SUFFIXES]
        assert results[0].data.shape == (2, 64, 64)
        assert (len(results[-1].data) == 0) == (name == "flat")
        for layer in results:
            viewer.layers.remove(layer)
            qtbot.wait(10)
        assert [layer.name for layer in viewer.layers] == ["flat", "full"][: len(viewer.layers)]


@pytest.mark.slow
def test_precision_choice_reaches_the_settings(make_napari_viewer):
    viewer = make_napari_viewer()
    add_raw(viewer)
    widget = open_widget(viewer)
    native = pipeline.native_bf16(pipeline.PredictSettings(device="auto").torch_device())
    assert widget.precision.value == "auto" and widget.settings().precision == "auto"
    assert widget.precision.native.currentText() == f"auto ({'bf16' if native else 'fp32'})"
    widget.precision.value = "fp32"
    assert widget.settings().precision == "fp32" and not widget.settings().bf16(widget.settings().torch_device())
