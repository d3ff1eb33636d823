"""The uncertainty threshold widget on the layers of a real (tiny-model) prediction."""
from __future__ import annotations

import numpy as np
import pytest
from napari_helpers import CAMERA, PLUGIN, THRESHOLD, tiny_stack

from napari_smlm_uq._napari._layers import PredictionResults
from napari_smlm_uq.inference import pipeline
from napari_smlm_uq.physics.camera import Camera


def add_prediction(viewer, models, folder, name="raw"):
    frames = tiny_stack(3, 16)
    p = CAMERA["pixel_size"]
    viewer.add_image(frames, name=name, scale=(1, p, p), metadata=dict(CAMERA))
    settings = pipeline.PredictSettings(samples=3, steps=2, camera=Camera(100.0, 1.0, 1.5), pixel_size=p, device="cpu")
    results = PredictionResults.create(folder / name, 3, (16, 16), p)
    for r in pipeline.predict(frames, models, settings):
        results.add(r)
    for array, kwargs, kind in results.layer_data(name).values():
        (viewer.add_points if kind == "points" else viewer.add_image)(array, **kwargs)
    return results


def test_slider_filters_mean_and_hides_localizations(make_napari_viewer, qtbot, tiny_models, tmp_path):
    viewer = make_napari_viewer()
    add_prediction(viewer, tiny_models, tmp_path)
    viewer.add_image(np.zeros((8, 8)), name="unrelated")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, THRESHOLD)
    # the latest prediction's layers are picked by default
    assert widget.mean.value.name == "raw SR mean"
    assert widget.std.value.name == "raw SR std"
    assert widget.points.value.name == "raw localizations"

    qtbot.waitUntil(lambda: "raw SR mean filtered" in viewer.layers, timeout=5000)
    filtered, uncertain = viewer.layers["raw SR mean filtered"], viewer.layers["raw SR mean uncertain"]
    mean, std, points = (viewer.layers[n] for n in ("raw SR mean", "raw SR std", "raw localizations"))
    assert filtered.data.shape == mean.data.shape == uncertain.data.shape
    # added just above the mean, so the localizations stay on top
    assert viewer.layers.index(mean) < viewer.layers.index(filtered) < viewer.layers.index(points)
    assert tuple(filtered.scale) == tuple(mean.scale) and tuple(filtered.translate) == tuple(mean.translate)
    # at the top of the slider nothing is removed
    assert widget.signal_fraction == 1.0 and widget.points_fraction == 1.0 and points.shown.all()
    np.testing.assert_array_equal(filtered.data, mean.data)

    fractions = []
    top = widget.slider.max
    for fraction in (0.5, 0.2, 0.05):
        threshold = fraction * top
        widget.slider.value = threshold
        qtbot.waitUntil(lambda: filtered.metadata.get("threshold") == widget.threshold(), timeout=5000)
        assert filtered.metadata["threshold"] == widget.threshold()
        cut = np.asarray(std.data) > widget.threshold()  # the stack is read lazily from the store
        np.testing.assert_array_equal(uncertain.data.astype(bool), cut)
        np.testing.assert_array_equal(filtered.data, np.where(cut, 0, mean.data))
        kept = np.clip(filtered.data, 0, None).sum() / np.clip(mean.data, 0, None).sum()
        assert widget.signal_fraction == pytest.approx(kept)
        assert widget.points_fraction == pytest.approx(points.shown.mean())
        assert f"{100 * widget.signal_fraction:.1f} %" in widget.kept.value
        fractions.append((widget.signal_fraction, widget.points_fraction))
    signal, located = zip(*fractions)
    assert signal[0] > signal[1] > signal[2] and located[0] >= located[1] >= located[2] and located[0] > located[2]
    # hidden localizations are exactly those on uncertain SR pixels
    sr = (points.data[:, 1:] - np.asarray(mean.translate)[1:]) / np.asarray(mean.scale)[1:]
    r, c = np.clip(np.floor(sr + 0.5), 0, 63).astype(int).T
    np.testing.assert_array_equal(~points.shown, cut[points.data[:, 0].astype(int), r, c])

    # relative mode: std / (mean + eps), the slider range is reset and nothing is removed at the top
    widget.mode.value = "relative"
    qtbot.waitUntil(lambda: filtered.metadata.get("mode") == "relative", timeout=5000)
    assert widget.signal_fraction == 1.0 and points.shown.all()
    widget.slider.value = 0.1 * widget.slider.max
    qtbot.waitUntil(lambda: widget.signal_fraction < 1.0, timeout=5000)

    # choosing no localizations layer shows them all again
    widget.points.value = None
    qtbot.waitUntil(lambda: points.shown.all(), timeout=5000)
    assert "localizations kept" not in widget.kept.value


def test_mismatched_layers_are_explained(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(np.ones((4, 8, 8), np.float32), name="a", metadata={"smlm_uq": "mean", "source": "x"})
    viewer.add_image(np.ones((4, 8, 9), np.float32), name="b", metadata={"smlm_uq": "std", "source": "x"})
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, THRESHOLD)
    assert (widget.mean.value.name, widget.std.value.name) == ("a", "b")
    widget.apply()
    assert "differ in shape" in widget.kept.value
    assert "a filtered" not in viewer.layers


def test_nothing_happens_before_there_are_results(make_napari_viewer, qtbot, tiny_models, tmp_path):
    """Beside raw camera frames (and any other image) the widget offers nothing and adds no layer."""
    viewer = make_napari_viewer()
    viewer.add_image(tiny_stack(3, 16), name="camera", metadata=dict(CAMERA))
    viewer.add_image(np.random.default_rng(0).random((3, 64, 64)).astype(np.float32), name="some float image")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, THRESHOLD)
    assert widget.mean.choices == () and widget.std.choices == () and widget.points.choices == (None,)
    widget.slider.value = 0.5 * widget.slider.max
    qtbot.wait(100)
    widget.apply()
    assert len(viewer.layers) == 2 and "No results yet" in widget.kept.value
    assert widget.kept.native.wordWrap()
    # a prediction appears: its layers are offered and picked together
    add_prediction(viewer, tiny_models, tmp_path, name="later")
    assert (widget.mean.value.name, widget.std.value.name, widget.points.value.name) == (
        "later SR mean", "later SR std", "later localizations")
    qtbot.waitUntil(lambda: "later SR mean filtered" in viewer.layers, timeout=5000)
