"""The uncertainty threshold widget on the layers of a real (tiny-model) prediction."""
from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from napari_helpers import CAMERA, PLUGIN, THRESHOLD, tiny_stack

from napari_smlm_uq._napari import threshold_widget
from napari_smlm_uq._napari._layers import PredictionResults
from napari_smlm_uq.inference import pipeline
from napari_smlm_uq.physics.camera import Camera


def add_prediction(viewer, models, folder, name="raw", n=3, kinds=None):
    """A tiny-model prediction of ``n`` frames in a result store, its layers (``kinds``: all) added."""
    frames = tiny_stack(n, 16)
    p = CAMERA["pixel_size"]
    viewer.add_image(frames, name=name, scale=(1, p, p), metadata=dict(CAMERA))
    settings = pipeline.PredictSettings(samples=3, steps=2, camera=Camera(100.0, 1.0, 1.5), pixel_size=p, device="cpu")
    results = PredictionResults.create(folder / name, n, (16, 16), p)
    for r in pipeline.predict(frames, models, settings):
        results.add(r)
    for kind, (array, kwargs, layer_type) in results.layer_data(name).items():
        if kinds is None or kind in kinds:
            (viewer.add_points if layer_type == "points" else viewer.add_image)(array, **kwargs)
    return results


@pytest.mark.slow
def test_slider_filters_mean_and_hides_localizations(make_napari_viewer, qtbot, tiny_models, tmp_path):
    viewer = make_napari_viewer()
    add_prediction(viewer, tiny_models, tmp_path)
    viewer.add_image(np.zeros((8, 8)), name="unrelated")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, THRESHOLD)
    # the latest prediction's layers are picked by default
    assert widget.mean.value.name == "raw SR mean"
    assert widget.std.value.name == "raw SR std"
    assert widget.points.value.name == "raw localizations"

    qtbot.waitUntil(lambda: "raw SR mean filtered" in viewer.layers and not widget.points_pending, timeout=5000)
    filtered, uncertain = viewer.layers["raw SR mean filtered"], viewer.layers["raw SR mean uncertain"]
    mean, std, points = (viewer.layers[n] for n in ("raw SR mean", "raw SR std", "raw localizations"))
    assert filtered.data.shape == mean.data.shape == uncertain.data.shape
    assert isinstance(filtered.data, da.Array) and isinstance(uncertain.data, da.Array)   # computed per frame shown
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
        kept = np.clip(np.asarray(filtered.data, np.float64), 0, None).sum() / np.clip(
            np.asarray(mean.data, np.float64), 0, None).sum()
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
    qtbot.waitUntil(lambda: filtered.metadata.get("mode") == "relative" and not widget.points_pending, timeout=5000)
    assert widget.signal_fraction == 1.0 and points.shown.all()
    widget.slider.value = 0.1 * widget.slider.max
    qtbot.waitUntil(lambda: widget.signal_fraction < 1.0, timeout=5000)

    # choosing no localizations layer shows them all again
    widget.points.value = None
    qtbot.waitUntil(lambda: points.shown.all(), timeout=5000)
    assert "localizations kept" not in widget.kept.value


@pytest.mark.slow
def test_a_stored_stack_is_never_read_whole(make_napari_viewer, qtbot, tiny_models, tmp_path):
    """The filtered and uncertain layers of a store-backed stack are dask expressions that napari computes for
    the frame on screen; the slider's range and the signal kept read the sampled frames only. Proof: the
    chunks of every other frame are corrupted on disk, and thresholding and stepping through the sampled
    frames still work (reading the whole filtered stack fails)."""
    viewer = make_napari_viewer()
    results = add_prediction(viewer, tiny_models, tmp_path, n=12, kinds=("mean", "std"))
    sampled = threshold_widget.sample_frames(12)
    assert list(sampled) == [0, 2, 3, 5, 6, 8, 9, 11]
    for t in sorted(set(range(12)) - set(sampled)):
        for name in ("mean", "std"):
            (results.store.path / name / "c" / str(t) / "0" / "0").write_bytes(b"not a zstd frame")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, THRESHOLD)
    assert widget.points.value is None
    qtbot.waitUntil(lambda: "raw SR mean filtered" in viewer.layers, timeout=5000)
    filtered, uncertain = viewer.layers["raw SR mean filtered"], viewer.layers["raw SR mean uncertain"]
    assert isinstance(filtered.data, da.Array) and isinstance(uncertain.data, da.Array)
    mean, std = (results.store.group[k] for k in ("mean", "std"))
    widget.slider.value = 0.3 * widget.slider.max
    qtbot.waitUntil(lambda: filtered.metadata.get("threshold") == widget.threshold(), timeout=5000)
    kept, total = 0.0, 0.0
    for t in sampled:
        viewer.dims.set_current_step(0, t)
        cut = std[t].astype(np.float32) > widget.threshold()
        np.testing.assert_array_equal(filtered.data[t].compute(), np.where(cut, 0, mean[t]))
        np.testing.assert_array_equal(uncertain.data[t].compute(), cut)
        kept += np.clip(mean[t][~cut].astype(np.float64), 0, None).sum()
        total += np.clip(mean[t].astype(np.float64), 0, None).sum()
    assert widget.signal_fraction == pytest.approx(kept / total) and 0 < widget.signal_fraction < 1
    assert "(in 8 of 12 frames)" in widget.kept.value
    with pytest.raises(Exception, match=r"(?i)zstd|decompress|frame"):
        filtered.data.compute()   # what a whole-stack threshold would have done


@pytest.mark.slow
def test_mismatched_layers_are_explained(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(np.ones((4, 8, 8), np.float32), name="a", metadata={"smlm_uq": "mean", "source": "x"})
    viewer.add_image(np.ones((4, 8, 9), np.float32), name="b", metadata={"smlm_uq": "std", "source": "x"})
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, THRESHOLD)
    assert (widget.mean.value.name, widget.std.value.name) == ("a", "b")
    widget.apply()
    assert "differ in shape" in widget.kept.value
    assert "a filtered" not in viewer.layers


@pytest.mark.slow
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
