"""Stacks napari-smlm-uq's reader is handed that are not plain camera stacks, opened in a real viewer: a float
stack with a few NaN or infinite pixels (napari's contrast controls once raised an uncaught ValueError on
it), one of NaN only, one of zeros, an 8-bit RGB TIFF, a file that is not a TIFF, a 1-frame stack. Each
gives a clear message (a warning, or an error naming the file), napari stays usable, and a prediction of a
stack with NaN is refused with a clear message before any work."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from napari_helpers import CAMERA, PLUGIN, PREDICT

from napari_smlm_uq._napari import _reader


@pytest.fixture
def warnings(monkeypatch) -> list[str]:
    """The warnings the reader shows (napari's notifications)."""
    import napari.utils.notifications

    shown: list[str] = []
    monkeypatch.setattr(napari.utils.notifications, "show_warning", shown.append)
    return shown


def write(path, data, **kwargs):
    tifffile.imwrite(path, data, photometric=kwargs.pop("photometric", "minisblack"), **kwargs)
    return str(path)


def alive(viewer, tmp_path, qtbot) -> None:
    """napari still opens and shows a good stack after whatever came before."""
    good = write(tmp_path / "good.tif", np.random.default_rng(0).integers(90, 200, (4, 16, 16), np.uint16))
    viewer.open(good, plugin=PLUGIN)
    qtbot.wait(20)   # the layer controls are built and drawn
    assert viewer.layers[-1].name == "good" and viewer.layers[-1].contrast_limits[1] > 90


def test_a_few_nan_pixels_open_with_finite_contrast_and_a_warning(make_napari_viewer, qtbot, tmp_path, warnings):
    data = np.random.default_rng(1).normal(200.0, 10.0, (4, 32, 32)).astype(np.float32)
    data[0, 3, 4] = data[0, 9, 9] = np.nan   # in the first frame: the one the contrast limits come from
    data[2, 5, 5] = np.inf
    viewer = make_napari_viewer()
    viewer.open(write(tmp_path / "corrected.tif", data), plugin=PLUGIN)
    qtbot.wait(20)   # napari's contrast slider takes the limits (it raised on NaN limits)
    layer = viewer.layers["corrected"]
    finite = data[0][np.isfinite(data[0])].astype(np.float64)
    np.testing.assert_allclose(layer.contrast_limits, np.percentile(finite, (0.5, 99.95)), rtol=1e-6)
    note = "3 NaN or infinite pixels in its 4 frames (the first in frame 0): left out of the contrast limits; " \
           "a prediction refuses them"
    assert warnings == [f"corrected.tif: {note}."] and layer.metadata["note"] == note
    alive(viewer, tmp_path, qtbot)


def test_a_prediction_of_a_stack_with_nan_is_refused(make_napari_viewer, qtbot, tmp_path, warnings, monkeypatch,
                                                     tiny_model_file):
    from napari_smlm_uq._napari import predict_widget

    errors: list[str] = []
    monkeypatch.setattr(predict_widget, "show_error", errors.append)
    data = np.random.default_rng(2).normal(200.0, 10.0, (12, 16, 16)).astype(np.float32)
    data[7, 2, 2] = np.nan
    viewer = make_napari_viewer()
    viewer.open(write(tmp_path / "nan.tif", data), plugin=PLUGIN)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, PREDICT)   # its camera estimate once raised here
    assert "no camera estimate: the frames hold 1 NaN or infinite pixel" in widget.camera_note.value
    assert "1 NaN or infinite pixel in its 12 frames (the first in frame 7)" in widget.camera_note.value
    widget.model.add_file(tiny_model_file)
    for key in ("offset", "gain", "read_noise"):
        getattr(widget, key).value = CAMERA[key]
    started: list = []
    widget.worker_started.connect(started.append)
    widget.run_button.native.click()
    assert not started and not widget.running
    assert errors == ["Check the settings: the stack holds 1 NaN or infinite pixel (the first in frame 7); "
                      "predicting needs finite camera counts (ADU): replace them, e.g. by the frame's median, or "
                      "choose frames without them"]
    widget.start_frame.value, widget.stop_frame.value = 0, 7   # frames without NaN: accepted
    assert _reader.nonfinite_pixels(viewer.layers["nan"].data, range(0, 7)) == (0, None)


def test_a_stack_of_nan_only_is_refused(make_napari_viewer, qtbot, tmp_path):
    path = write(tmp_path / "nan.tif", np.full((3, 16, 16), np.nan, np.float32))
    viewer = make_napari_viewer()
    with pytest.raises(Exception) as info:
        viewer.open(path, plugin=PLUGIN)
    assert f"every pixel of {path} is NaN or infinite" in str(info.value) + str(info.value.__cause__)
    assert len(viewer.layers) == 0
    alive(viewer, tmp_path, qtbot)


def test_a_stack_of_zeros_opens_with_a_warning(make_napari_viewer, qtbot, tmp_path, warnings):
    viewer = make_napari_viewer()
    viewer.open(write(tmp_path / "zeros.tif", np.zeros((5, 16, 16), np.uint16)), plugin=PLUGIN)
    qtbot.wait(20)
    assert tuple(viewer.layers["zeros"].contrast_limits) == (0.0, 1.0)
    assert warnings == ["zeros.tif: the first frame is constant (0 everywhere): camera frames carry noise."]
    alive(viewer, tmp_path, qtbot)


@pytest.mark.parametrize("case, message", [
    ("rgb", "colour (RGB) image; a stack of grayscale camera frames is needed"),
    ("text", "not a readable TIFF file"),
])
def test_a_file_that_is_no_camera_stack_is_named(case, message, make_napari_viewer, qtbot, tmp_path):
    path = tmp_path / f"{case}.tif"
    if case == "rgb":
        write(path, np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    else:
        path.write_text("frame,x,y\n1,2,3\n")
    viewer = make_napari_viewer()
    with pytest.raises(Exception) as info:
        viewer.open(str(path), plugin=PLUGIN)
    assert message in str(info.value) + str(info.value.__cause__)
    assert len(viewer.layers) == 0
    alive(viewer, tmp_path, qtbot)


def test_a_csv_is_not_offered_to_our_reader(make_napari_viewer, qtbot, tmp_path):
    path = tmp_path / "locs.csv"
    path.write_text("frame,x,y\n1,2,3\n")
    assert _reader.napari_get_reader(str(path)) is None   # napari says it has no reader for it
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match=r"locs\.csv"):
        viewer.open(str(path), plugin=PLUGIN)
    assert len(viewer.layers) == 0
    alive(viewer, tmp_path, qtbot)


@pytest.mark.parametrize("shape", [(1, 16, 16), (16, 16)])
def test_a_one_frame_stack_opens(shape, make_napari_viewer, qtbot, tmp_path, warnings):
    data = np.random.default_rng(3).integers(90, 300, shape, np.uint16)
    viewer = make_napari_viewer()
    viewer.open(write(tmp_path / "one.tif", data), plugin=PLUGIN)
    qtbot.wait(20)
    layer = viewer.layers["one"]
    assert layer.data.shape == (1, 16, 16) and warnings == []
    assert 90 <= layer.contrast_limits[0] < layer.contrast_limits[1] <= 300
    alive(viewer, tmp_path, qtbot)
