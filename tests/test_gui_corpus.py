"""The GUI's bad-input and fault corpus (issue 27): what users do, in a real viewer, headless.

Each case asserts the message the user sees (napari notifications, captured), that napari is still alive, and
that nothing is lost or half-written while looking complete (a stopped run's store and layers say 'partial').
Stacks are tiny (2-6 frames of 16 px) and the model is the tiny random one, with DeepSTORM alone or 2 samples.
"""
from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
from napari_helpers import CAMERA, PLUGIN, PREDICT, TRAIN, add_raw, watch

from napari_smlm_uq._napari import _camera_section, _layers, postprocess_widget, predict_widget, train_widget
from napari_smlm_uq.io.store import ResultStore

pytestmark = pytest.mark.gui   # slow: the cases over 5 s on the 2-core dev CPU
SUFFIXES = tuple(_layers.SUFFIXES.values())


@pytest.fixture
def shown(monkeypatch) -> list[tuple[str, str]]:
    """The notifications the widgets show, as ``(level, text)``."""
    out: list[tuple[str, str]] = []
    for module in (predict_widget, _camera_section, train_widget, postprocess_widget):
        for level in ("show_error", "show_warning", "show_info"):
            if hasattr(module, level):
                monkeypatch.setattr(module, level, lambda text, level=level: out.append((level[5:], str(text))))
    return out


def errors_shown(shown) -> list[str]:
    return [text for level, text in shown if level == "error"]


def assert_alive(viewer, qtbot) -> None:
    """napari still draws and answers."""
    qtbot.wait(20)
    viewer.reset_view()
    assert viewer.window._qt_window is not None and viewer.layers is not None


def predict_dock(viewer, model_file, samples: int = 0, steps: int = 1):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, PREDICT)
    widget.model.add_file(model_file)
    widget.samples.value, widget.steps.value, widget.device.value = samples, steps, "cpu"
    return widget


def start(widget, errors: list):
    workers: list = []
    widget.worker_started.connect(workers.append)
    widget.worker_started.connect(lambda w: watch(w, errors))
    widget.run_button.native.click()
    return workers[0] if workers else None


def wait(widget, worker, qtbot, timeout: int = 60_000) -> None:
    qtbot.waitUntil(lambda: not widget.running and not worker.is_running, timeout=timeout)


def run_and_wait(widget, qtbot) -> list:
    errors: list = []
    worker = start(widget, errors)
    assert worker is not None, "Run did not start"
    wait(widget, worker, qtbot)
    return errors


def assert_partial_is_marked(widget, viewer, name: str) -> None:
    """A stopped run: the store is not complete, and its layers (if any) say 'partial'."""
    results = widget.results
    store = ResultStore.open(results.path)
    assert not store.complete and int(store.done().sum()) == results.done < results.n_frames
    for s in SUFFIXES:
        assert name + s not in viewer.layers  # no complete-looking layer
        if results.done:
            assert viewer.layers[name + s + " (partial)"].metadata["partial"] is True


# --- choosing the input ---------------------------------------------------------------------------


@pytest.mark.slow
def test_wrong_layers_are_not_offered_and_are_explained(make_napari_viewer, qtbot, tiny_model_file, shown):
    """Cases: no layer; an 8-bit RGB image; a result layer (SR mean) as camera frames; a 4D stack; a
    float stack of NaNs; the estimate button without a layer; a cluster run without a file."""
    viewer = make_napari_viewer()
    widget = predict_dock(viewer, tiny_model_file)
    widget.run_button.native.click()
    assert "No image layer to super-resolve" in errors_shown(shown)[-1]
    widget.estimate_button.native.click()
    assert errors_shown(shown)[-1] == "No image layer to estimate the camera from."
    viewer.add_image(np.zeros((16, 16, 3), np.uint8), name="rgb", rgb=True)
    assert widget.layer.choices == () and "Open a camera stack" in widget.camera_note.value
    add_raw(viewer, frames=2, name="cells")
    assert widget.layer.value.name == "cells"
    assert run_and_wait(widget, qtbot) == []
    names = {layer.name for layer in viewer.layers}
    assert {"cells" + s for s in SUFFIXES} <= names
    assert [layer.name for layer in widget.layer.choices] == ["cells"]   # neither the RGB nor any result layer
    viewer.add_image(np.zeros((2, 2, 16, 16), np.uint16), name="4d")
    widget.layer.value = viewer.layers["4d"]
    widget.run_button.native.click()
    assert "is 4-dimensional; a stack of grayscale camera frames" in errors_shown(shown)[-1] and not widget.running
    nan = np.full((3, 16, 16), 100.0, np.float32)
    nan[1, 4, 4] = np.nan
    viewer.add_image(nan, name="nan", metadata={"smlm_uq": "raw", **CAMERA})
    widget.layer.value = viewer.layers["nan"]
    widget.run_button.native.click()
    assert "1 NaN or infinite pixel (the first in frame 1)" in errors_shown(shown)[-1] and not widget.running
    widget.layer.value = viewer.layers["cells"]
    widget.scheduler.value = "tcp://localhost:1"
    widget.run_button.native.click()
    assert "A cluster run reads the stack from its file" in errors_shown(shown)[-1] and not widget.running
    assert_alive(viewer, qtbot)


@pytest.mark.slow
def test_one_frame_zeros_and_a_two_d_image_run(make_napari_viewer, qtbot, tiny_model_file, shown):
    """Cases: a 1-frame stack, a stack of zeros (the camera estimate fails: defaults, said so), a 2D image."""
    viewer = make_napari_viewer()
    widget = predict_dock(viewer, tiny_model_file)
    for name, data in (("one", np.full((1, 16, 16), 100, np.uint16)), ("zeros", np.zeros((3, 16, 16), np.uint16)),
                       ("flat2d", np.full((16, 16), 100, np.uint16))):
        viewer.add_image(data, name=name)
        widget.layer.value = viewer.layers[name]
        frames = 1 if data.ndim == 2 else len(data)
        assert widget.progress.max == frames and (widget.start_frame.value, widget.stop_frame.value) == (0, frames)
        if name == "zeros":
            assert "no camera estimate" in widget.camera_note.value
        assert run_and_wait(widget, qtbot) == []
        assert widget.status.value.startswith(f"done: {frames} frames")
        assert viewer.layers[name + " SR mean"].data.shape == (frames, 64, 64)
        assert ResultStore.open(widget.results.path).complete
    assert not errors_shown(shown)
    assert_alive(viewer, qtbot)


def test_progress_total_before_a_run_and_the_camera_map_path_once(make_napari_viewer, qtbot, tiny_model_file,
                                                                  shown, tmp_path):
    """Cases: the progress bar shows the stack's frame count once a layer is chosen; an sCMOS map of the wrong
    shape is refused; a right one is named once in the camera note."""
    viewer = make_napari_viewer()
    widget = predict_dock(viewer, tiny_model_file)
    add_raw(viewer, frames=5)
    assert widget.progress.max == 5 and widget.progress.native.text() == "0 / 5 frames"
    widget.start_frame.value = 2
    assert widget.progress.max == 3
    wrong = tmp_path / ("long-folder-name-" * 4) / "map.npy"
    wrong.parent.mkdir()
    np.save(wrong, np.ones((3, 8, 8), np.float32))
    widget.camera_map.value = wrong
    widget.run_button.native.click()
    assert errors_shown(shown)[-1].startswith("Check the settings:") and not widget.running
    right = wrong.parent / "right.npy"
    np.save(right, np.stack([np.full((16, 16), 100.0), np.full((16, 16), 2.25), np.ones((16, 16))]).astype(np.float32))
    widget.camera_map.value = right
    assert run_and_wait(widget, qtbot) == []
    assert widget.camera_note.value.count(str(wrong.parent)) == 1
    assert all(text.count(str(wrong.parent)) <= 1 for _, text in shown)
    assert_alive(viewer, qtbot)


# --- running, cancelling, closing -----------------------------------------------------------------


def test_run_twice_and_cancel_during_the_first_frame(make_napari_viewer, qtbot, tiny_model_file, shown):
    """Cases: Run pressed again while running (ignored: one worker); Cancel before the first frame is done
    (nothing kept, said so, the store partial)."""
    viewer = make_napari_viewer()
    widget = predict_dock(viewer, tiny_model_file, samples=2, steps=20)
    add_raw(viewer, frames=4)
    errors: list = []
    worker = start(widget, errors)
    assert not widget.run_button.enabled and widget.run() is None   # the second press starts nothing
    widget.cancel_button.native.click()
    wait(widget, worker, qtbot)
    assert not errors and widget.status.value.startswith("stopped: ")
    assert "of 4 frames kept (layers and store marked 'partial')" in widget.status.value
    assert_partial_is_marked(widget, viewer, "raw")
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    assert_alive(viewer, qtbot)


def held_at_first_frame(monkeypatch) -> threading.Event:
    """The run's worker, once it has written the first frame, waits until the returned event is set: what the
    test does then happens mid-run, not after a run that was faster."""
    write, go_on = _layers.PredictionResults.add, threading.Event()

    def add_then_hold(results, result):
        write(results, result)
        if results.done == 1:
            go_on.wait(timeout=60)
    monkeypatch.setattr(_layers.PredictionResults, "add", add_then_hold)
    return go_on


@pytest.mark.slow
def test_cancel_during_psi_and_during_writing(make_napari_viewer, qtbot, tiny_model_file, shown, monkeypatch):
    """Cases: Cancel pressed while the run is under way, the first frame kept (the worker held there until
    the click, so that the run cannot end first: partial); Cancel while the worker writes the last frame
    (every frame was done: the run completes, nothing marked partial)."""
    viewer = make_napari_viewer()
    widget = predict_dock(viewer, tiny_model_file, samples=2, steps=2)
    add_raw(viewer, frames=4)
    write = _layers.PredictionResults.add
    clicked = held_at_first_frame(monkeypatch)
    errors: list = []
    worker = start(widget, errors)
    qtbot.waitUntil(lambda: widget.results.done >= 1, timeout=60_000)
    widget.cancel_button.native.click()
    clicked.set()
    wait(widget, worker, qtbot)
    assert not errors and "stopped: " in widget.status.value
    assert_partial_is_marked(widget, viewer, "raw")

    def add_then_cancel(results, result):   # in the worker, as the last frame is written
        write(results, result)
        if results.done == results.n_frames:
            widget._stop.set()
    monkeypatch.setattr(_layers.PredictionResults, "add", add_then_cancel)
    assert run_and_wait(widget, qtbot) == []
    assert widget.status.value.startswith("done: 4 frames")
    assert ResultStore.open(widget.results.path).complete and "raw SR mean" in viewer.layers
    assert_alive(viewer, qtbot)


@pytest.mark.slow
def test_closing_the_dock_or_the_viewer_during_a_run_stops_the_worker(make_napari_viewer, qtbot, tiny_model_file,
                                                                       shown):
    """Cases: the dock removed during a run; the viewer closed during a run: the worker stops, no exception."""
    viewer = make_napari_viewer()
    add_raw(viewer, frames=6)
    for close in ("dock", "viewer"):
        widget = predict_dock(viewer, tiny_model_file, samples=2, steps=20)
        errors: list = []
        worker = start(widget, errors)
        qtbot.waitUntil(lambda w=widget: w.results.done >= 1, timeout=60_000)
        if close == "dock":
            viewer.window.remove_dock_widget(widget.native.parent())
        else:
            viewer.close()
        qtbot.waitUntil(lambda w=worker: not w.is_running, timeout=60_000)
        assert not errors
        store = ResultStore.open(widget.results.path)
        assert not store.complete and int(store.done().sum()) < 6   # stopped early, marked partial


# --- output folders -------------------------------------------------------------------------------


@pytest.mark.slow
def test_output_folder_unwritable_or_removed_mid_run(make_napari_viewer, qtbot, tiny_model_file, shown, tmp_path,
                                                    monkeypatch):
    """Cases: an output folder inside a file (cannot be made); one that is read-only; the run's folder removed
    mid-run (the run stops with a message; nothing looks complete)."""
    viewer = make_napari_viewer()
    widget = predict_dock(viewer, tiny_model_file, samples=2, steps=2)
    add_raw(viewer, frames=4)
    blocker = tmp_path / "a file"
    blocker.write_text("")
    widget.output.value = blocker / "out"
    widget.run_button.native.click()
    assert errors_shown(shown)[-1].startswith("Check the settings:") and not widget.running
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    widget.output.value = locked
    try:
        widget.run_button.native.click()
        if widget.running:   # root writes anyway
            wait(widget, widget.worker, qtbot)
        else:
            assert errors_shown(shown)[-1].startswith("Check the settings:")
    finally:
        locked.chmod(0o755)
    widget.output.value = tmp_path / "out"
    removed = held_at_first_frame(monkeypatch)
    errors: list = []
    worker = start(widget, errors)
    qtbot.waitUntil(lambda: widget.results.done >= 1, timeout=60_000)
    shutil.rmtree(widget.results.path)
    removed.set()
    wait(widget, worker, qtbot)
    assert errors and errors_shown(shown)[-1].startswith("Prediction stopped:")
    assert "internal error" not in errors_shown(shown)[-1]
    assert widget.status.value.startswith("failed after")
    assert not any(n.name.startswith("raw SR") and not n.name.endswith("(partial)") for n in viewer.layers)
    assert all(layer.metadata["partial"] for layer in viewer.layers if layer.name.endswith("(partial)"))
    assert_alive(viewer, qtbot)


# --- models ---------------------------------------------------------------------------------------


def test_model_files_not_ours_or_truncated(make_napari_viewer, qtbot, tiny_model_file, shown, tmp_path):
    """Cases: a model file that is not ours; a truncated one: each a one-line message, no result layers."""
    viewer = make_napari_viewer()
    widget = predict_dock(viewer, tiny_model_file)
    add_raw(viewer, frames=2)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(tiny_model_file.read_bytes()[:2000])
    other = tmp_path / "other.pt"
    other.write_bytes(b"PK\x03\x04 someone else's archive")
    for path in (other, truncated):
        widget.model.file.value = path
        assert widget.model.model == str(path.resolve())
        errors = run_and_wait(widget, qtbot)
        assert len(errors) == 1
        assert errors_shown(shown)[-1].startswith("Prediction stopped: ")
        assert f"{path.name}: not a napari-smlm-uq model file" in errors_shown(shown)[-1]
        assert "internal error" not in errors_shown(shown)[-1]
        assert widget.status.value.startswith("failed after 0 of 2 frames")
        assert "raw SR mean" not in viewer.layers
    assert_alive(viewer, qtbot)


# --- results layers ---------------------------------------------------------------------------------


def select_and_delete(viewer, names) -> None:
    """Select the layers named and delete them in one go, as the layer list's delete button does."""
    viewer.layers.selection.clear()
    viewer.layers.selection.update({viewer.layers[n] for n in names if n in viewer.layers})
    viewer.layers.remove_selected()


@pytest.mark.slow
def test_remove_result_layers_one_by_one_and_all_at_once_then_run_again(make_napari_viewer, qtbot,
                                                                         tiny_model_file, shown):
    """Cases: removing the result layers one by one, then all at once (selected, deleted in one go), after
    an empty run (pure noise: no localizations) and a full one, then running again, repeated (issue 27's
    crash: 1 in 11 before)."""
    viewer = make_napari_viewer()
    widget = predict_dock(viewer, tiny_model_file)
    noise = np.random.default_rng(0).poisson(20, (2, 16, 16)).astype(np.uint16) + 100
    viewer.add_image(noise, name="noise", metadata=dict(CAMERA))
    add_raw(viewer, frames=2, name="full")
    for repeat in range(2):   # one by one, then all at once (repeated: test_napari_remove_layers.py)
        for name in ("noise", "full"):
            widget.layer.value = viewer.layers[name]
            assert run_and_wait(widget, qtbot) == []
            names = [name + s for s in SUFFIXES]
            assert all(n in viewer.layers for n in names)
            if repeat == 0:
                for n in names:
                    viewer.layers.remove(n)
                    qtbot.wait(5)
            else:
                select_and_delete(viewer, names)
            qtbot.wait(20)
            assert [layer.name for layer in viewer.layers] == ["noise", "full"]
    assert not errors_shown(shown)
    assert_alive(viewer, qtbot)


@pytest.mark.slow
def test_frame_slider_moves_and_layers_vanish_while_results_stream_in(make_napari_viewer, qtbot, tiny_model_file,
                                                                      shown):
    """Cases: the frame slider moved while frames arrive; result layers removed during the run (they come
    back, complete, at the end)."""
    viewer = make_napari_viewer()
    widget = predict_dock(viewer, tiny_model_file, samples=2, steps=2)
    add_raw(viewer, frames=5)
    errors: list = []
    worker = start(widget, errors)
    qtbot.waitUntil(lambda: "raw SR mean" in viewer.layers, timeout=60_000)
    removed = False
    while worker.is_running:
        viewer.dims.set_current_step(0, np.random.default_rng().integers(0, 5))
        if not removed and widget.results.done >= 2:
            select_and_delete(viewer, ["raw" + s for s in SUFFIXES])
            removed = True
        qtbot.wait(30)
    wait(widget, worker, qtbot)
    assert not errors and widget.status.value.startswith("done: 5 frames")
    assert viewer.layers["raw SR mean"].data.shape == (5, 64, 64)
    assert not errors_shown(shown)
    assert_alive(viewer, qtbot)


# --- training and post-processing -------------------------------------------------------------------


def test_training_with_nonsense_ranges_and_cancelled(make_napari_viewer, qtbot, shown, tmp_path):
    """Cases: a range low > high; a negative range; Stop pressed at once (nothing kept: said so)."""
    from napari_smlm_uq._napari import _models

    viewer = make_napari_viewer()
    _, train = viewer.window.add_plugin_dock_widget(PLUGIN, TRAIN)
    train.start_model.select(_models.SCRATCH)
    train.architecture.value, train.iterations.value, train.batch_size.value = "tiny", 50, 2
    train.checkpoint_every.value, train.val_size.value = 50, 2
    train.out_dir.value = tmp_path / "model"
    train.photons.value = (5000, 100)
    train.train_button.native.click()
    assert "photons" in errors_shown(shown)[-1] and not train.running
    train.photons.value = (100, 5000)
    assert all(box.min >= 0 for box in (*train.background, *train.photons, *train.psf_sigma))  # no negative input
    train.psf_sigma.value = (1.5, 0.8)
    train.train_button.native.click()
    assert "PSF sigma" in errors_shown(shown)[-1] and not train.running
    assert not (tmp_path / "model").exists() or not any((tmp_path / "model").iterdir())
    train.psf_sigma.value = (1.0, 1.4)
    errors: list = []
    workers: list = []
    train.worker_started.connect(workers.append)
    train.worker_started.connect(lambda w: watch(w, errors))
    train.train_button.native.click()
    assert workers and train.running
    train.stop_button.native.click()
    qtbot.waitUntil(lambda: not train.running and not workers[0].is_running, timeout=60_000)
    assert not errors   # stopped within the first 50 iterations: before the first checkpoint, nothing saved
    assert train.status.value == "stopped before the first checkpoint: no model saved"
    assert shown[-1] == ("warning", "Training stopped before the first checkpoint; lower 'save every' to keep one "
                                    "sooner.")
    assert not list((tmp_path / "model").glob("*.pt"))
    assert_alive(viewer, qtbot)


def test_postprocess_tables_without_frames_or_nothing_chosen(make_napari_viewer, qtbot, shown, tmp_path):
    """Cases: Run with neither a layer nor a file; a table without a frame column; Save before a run."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Post-process")
    widget.run_button.clicked.emit()
    assert errors_shown(shown)[-1] == "choose a localizations layer or a table file"
    table = tmp_path / "no frames.csv"
    table.write_text("x [nm],y [nm],uncertainty [nm]\n100,200,10\n150,250,12\n")
    widget.table_file.value = table
    widget.run_button.clicked.emit()
    assert "frame" in errors_shown(shown)[-1] and widget.result is None
    assert widget.summary.value == errors_shown(shown)[-1]
    widget.save_button.clicked.emit()
    assert errors_shown(shown)[-1] == "run the post-processing first"
    assert_alive(viewer, qtbot)


# --- docks that fit a laptop ------------------------------------------------------------------------


@pytest.mark.parametrize("name", [PREDICT, TRAIN, "Post-process", "Filter by uncertainty"])
def test_docks_fit_a_laptop_screen(make_napari_viewer, name):
    """Each dock's minimum height fits a 1366x768 screen beside napari's menus (<= 700 px)."""
    from qtpy.QtWidgets import QScrollArea

    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    assert widget.native.minimumSizeHint().height() <= 700
    assert dock.minimumSizeHint().height() <= 700
    area = widget.native.findChild(QScrollArea)
    if area is not None:   # the form scrolls, never cut on the right
        assert area.widget().minimumSizeHint().height() > 500
        assert widget.native.minimumSizeHint().width() >= area.widget().minimumSizeHint().width()
    else:
        assert name == "Filter by uncertainty"   # short enough as it is
