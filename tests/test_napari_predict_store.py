"""The prediction widget's result store: lazy layers read from OUT/results.zarr, the rendered localizations,
partial stores after a cancel, reopening an output folder, the camera fields and the precision check."""
from __future__ import annotations

import shutil

import dask.array as da
import numpy as np
import pytest
from napari_helpers import CAMERA, PLUGIN, PREDICT, add_raw, watch

from napari_smlm_uq._napari import _camera_section, _temporary, predict_widget
from napari_smlm_uq._napari._layers import PredictionResults, world_to_index
from napari_smlm_uq._napari._reader import napari_get_results_reader
from napari_smlm_uq.inference import pipeline
from napari_smlm_uq.io.store import ResultStore
from napari_smlm_uq.physics.camera import Camera
from napari_smlm_uq.physics.simulate import SimulationSettings, simulate


def napari_dask_cache():
    """The cache napari keeps for the dask-backed layers that allow it."""
    from napari.utils import resize_dask_cache

    return resize_dask_cache().cache


def open_widget(viewer, model_file, samples=2, steps=2, encoding="float32"):
    """The prediction widget; lossless stores (``encoding``) unless a test checks the default's bounds."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, PREDICT)
    widget.model.add_file(model_file)
    assert widget.store_encoding.value == "compact"   # the default
    widget.samples.value, widget.steps.value, widget.device.value = samples, steps, "cpu"
    widget.store_encoding.value = encoding
    return widget


def run_and_wait(widget, qtbot, cancel_after: int | None = None) -> None:
    errors, workers = [], []
    widget.worker_started.connect(workers.append)
    widget.worker_started.connect(lambda w: watch(w, errors))
    widget.run_button.native.click()
    if cancel_after is not None:
        qtbot.waitUntil(lambda: widget.results.done >= cancel_after, timeout=60_000)
        widget.cancel_button.native.click()
    qtbot.waitUntil(lambda: not widget.running and not workers[0].is_running, timeout=60_000)
    assert not errors


@pytest.mark.slow
def test_layers_read_the_store_lazily_and_the_rendering_holds_every_localization(
        make_napari_viewer, qtbot, tiny_model_file, tmp_path):
    viewer = make_napari_viewer()
    add_raw(viewer, frames=3)
    widget = open_widget(viewer, tiny_model_file, encoding="compact")
    widget.output.value = tmp_path
    widget.render_pixel.value = 20.0
    run_and_wait(widget, qtbot)
    results = widget.results
    assert results.path == tmp_path / "raw"   # a new folder per run, named after the layer
    store = ResultStore.open(results.path)
    assert store.complete and store.done().all()
    for kind in ("mean", "sample", "std"):
        layer = viewer.layers["raw SR " + kind]
        assert isinstance(layer.data, da.Array) and layer.data.shape == (3, 64, 64)
        np.testing.assert_array_equal(np.asarray(layer.data), store.group[kind][...])
    assert float(np.asarray(viewer.layers["raw SR std"].data).max()) > 0
    # frames shown are read again when shown again, not kept in napari's dask cache (it would grow to 1/4 of
    # the RAM over a long run)
    cache = napari_dask_cache()
    before = cache.total_bytes
    for t in range(3):
        viewer.dims.set_current_step(0, t)
        qtbot.wait(10)
    assert cache.total_bytes == before
    # memory holds only 2D images and the localizations: no (T, 4H, 4W) stack
    arrays = [v for v in vars(results).values() if isinstance(v, np.ndarray)]
    arrays += [v for v in vars(results.total).values() if isinstance(v, np.ndarray)]
    assert arrays and all(a.ndim == 2 for a in arrays)
    # the sums are of the exact per-frame results; the compact store holds them within its bounds: means
    # below the floor as 0, the std there raised by <= the floor (|mean| / 2, then up to a half-floor step),
    # float16 otherwise
    assert store.meta["encoding"]["name"] == "compact" and store.group["mean"].dtype == np.float16
    floor = store.meta["encoding"]["floor"]
    total = viewer.layers["raw SR sum"].data
    np.testing.assert_allclose(total, np.asarray(viewer.layers["raw SR mean"].data, np.float64).sum(0),
                               rtol=2.0**-10, atol=3 * floor)
    np.testing.assert_allclose(store.group["sum"][...], total)
    stored_std = np.sqrt(np.square(np.asarray(viewer.layers["raw SR std"].data, np.float64)).sum(0))
    sum_std = viewer.layers["raw SR sum std"].data
    assert np.all(stored_std >= sum_std * (1 - 2.0**-10) - 1e-6)
    assert np.all(stored_std <= (sum_std + np.sqrt(3) * floor) * (1 + 2.0**-10) + 1e-6)

    # the rendering: 20 nm pixels over the 16 x 80 nm field, one unit per localization inside it, each
    # localization's pixel lit
    rendered, pts = viewer.layers["raw rendered"], viewer.layers["raw localizations"]
    assert rendered.data.shape == (64, 64) and tuple(rendered.scale) == (20.0, 20.0)
    assert len(pts.data) > 0
    x, y = pts.features["x [nm]"].to_numpy(), pts.features["y [nm]"].to_numpy()
    sigma = pts.features["uncertainty [nm]"].to_numpy()
    inner = (np.minimum(x, y) > 3 * sigma) & (np.maximum(x, y) < 16 * 80 - 3 * sigma)
    assert rendered.data.sum() == pytest.approx(len(pts.data), abs=len(pts.data) - inner.sum() + 1e-3)
    idx, inside = world_to_index(pts.data[:, 1:], rendered.scale, rendered.translate, rendered.data.shape)
    field = (y >= 0) & (y < 16 * 80) & (x >= 0) & (x < 16 * 80)
    assert field.any() and inside[field].all() and (rendered.data[tuple(idx[field].T)] > 0).all()
    np.testing.assert_allclose(np.floor(y[field] / 20.0), idx[field, 0])   # pixel k covers [20 k, 20 (k + 1)) nm
    # the consecutive-frame precision check is shown after the run
    assert widget.precision_check.value.startswith("precision check")


@pytest.mark.slow
def test_cancel_leaves_a_partial_store_that_the_reader_reopens(make_napari_viewer, qtbot, tiny_model_file, tmp_path):
    viewer = make_napari_viewer()
    add_raw(viewer, frames=6)
    widget = open_widget(viewer, tiny_model_file, steps=50)
    widget.output.value = tmp_path
    run_and_wait(widget, qtbot, cancel_after=1)
    done = widget.results.done
    assert 1 <= done < 6
    store = ResultStore.open(tmp_path / "raw")
    assert not store.complete and store.done_ranges() == [[0, done]]
    assert store.meta["accumulated_frames"] == done
    assert (tmp_path / "raw" / "localizations.csv").exists()
    # a second run goes into a new folder beside the first
    widget.steps.value = 1
    run_and_wait(widget, qtbot)
    assert widget.results.path == tmp_path / "raw 2" and ResultStore.open(tmp_path / "raw 2").complete

    # reopening: the folder (or its results.zarr) gives the layers back, partial ones named so
    assert napari_get_results_reader(str(tmp_path)) is None
    assert napari_get_results_reader(str(tmp_path / "raw" / "results.zarr")) is not None
    before = len(viewer.layers)
    viewer.open(str(tmp_path / "raw"), plugin=PLUGIN)
    assert len(viewer.layers) == before + 7
    mean = viewer.layers["raw SR mean (partial)"]
    assert isinstance(mean.data, da.Array) and mean.data.shape == (done, 64, 64)
    assert mean.metadata["partial"] is True
    np.testing.assert_array_equal(np.asarray(mean.data), store.group["mean"][:done])
    np.testing.assert_allclose(viewer.layers["raw SR sum (partial)"].data, np.asarray(mean.data).sum(0),
                               rtol=1e-5, atol=1e-5)
    reopened = viewer.layers["raw localizations (partial)"]
    widget_locs = PredictionResults.open(tmp_path / "raw").localizations()
    assert len(reopened.data) == len(widget_locs)
    np.testing.assert_allclose(reopened.data[:, 0], widget_locs.frame)


def camera_movie(camera: Camera, frames: int = 20, size: int = 32) -> np.ndarray:
    sim = simulate(SimulationSettings(frames=frames, size=size, density=1.0, photons=2000.0, background=20.0,
                                      camera=camera, pixel_size=80.0, background_map="gradient", on_time=3.0, seed=1))
    return np.clip(np.rint(sim.adu), 0, 65535).astype(np.uint16)


@pytest.mark.slow
def test_camera_from_the_estimate_the_button_and_the_disagreement_warning(
        make_napari_viewer, qtbot, tiny_model_file, monkeypatch, tmp_path):
    warnings: list[str] = []
    for module in (predict_widget, _camera_section):
        monkeypatch.setattr(module, "show_warning", warnings.append)
    viewer = make_napari_viewer()
    true = Camera(100.0, 4.0, 1.5)
    viewer.add_image(camera_movie(true), name="no camera", metadata={"pixel_size": 80.0})
    widget = open_widget(viewer, tiny_model_file, samples=0)
    # nothing in the metadata: the fields come from the estimate, and the label says so
    assert widget.gain.value == pytest.approx(4.0, rel=0.15)
    assert f"gain {widget.gain.value:.4g} ADU/e- (estimated from the data)" in widget.camera_note.value
    assert "photon transfer" in widget.camera_note.value and "+/-" in widget.camera_note.value
    assert widget.camera_note.native.wordWrap()
    # the 6x gradient: the background estimate is chosen local, and the label says why
    assert widget.background_note.value.startswith(
        "background estimate: local (chosen from the data: the background varies")
    assert widget.settings().background == "local" and widget.background_choice.variation > 2
    # metadata with a wrong gain wins over the estimate ...
    viewer.add_image(camera_movie(true), name="wrong gain", metadata=dict(CAMERA))
    widget.layer.value = viewer.layers["wrong gain"]
    assert widget.gain.value == 1.0 and "gain 1 ADU/e- (file metadata)" in widget.camera_note.value
    # ... and the run warns before it starts
    widget.output.value = tmp_path
    widget.stop_frame.value = 1
    run_and_wait(widget, qtbot)
    assert len(warnings) == 1 and "background noise" in warnings[0] and "the widget" in warnings[0]
    # the button replaces the fields by the estimate; a run then does not warn
    widget.estimate_button.native.click()
    assert widget.gain.value == pytest.approx(4.0, rel=0.15)
    note = widget.camera_note.value
    assert note.startswith("camera: offset") and "estimated from the data" in note
    widget.output.value = None   # a temporary folder, removed when Python exits unless "keep" is ticked
    run_and_wait(widget, qtbot)
    assert len(warnings) == 1
    folder = widget.results.path
    assert folder in _temporary.TEMPORARY and str(folder) in widget.status.value
    widget.keep.value = True
    assert folder not in _temporary.TEMPORARY and ResultStore.open(folder).complete
    shutil.rmtree(folder)


@pytest.mark.slow
def test_reader_opens_a_store_written_without_the_widget(make_napari_viewer, tiny_models, tmp_path):
    viewer = make_napari_viewer()
    frames = camera_movie(Camera(), frames=2, size=16)
    settings = pipeline.PredictSettings(samples=2, steps=1, pixel_size=80.0, device="cpu")
    results = PredictionResults.create(tmp_path / "run", 2, (16, 16), 80.0, info={"source": "movie"})
    for r in pipeline.predict(frames, tiny_models, settings):
        results.add(r)
    assert results.finish()
    layers = viewer.open(str(tmp_path / "run" / "results.zarr"), plugin=PLUGIN)
    assert sorted(layer.name for layer in layers) == sorted(
        "movie" + s
        for s in (" SR mean", " SR sample", " SR std", " SR sum", " SR sum std", " rendered", " localizations"))
    assert viewer.layers["movie SR mean"].metadata["partial"] is False


@pytest.mark.slow
def test_cluster_field_runs_the_job_on_a_dask_scheduler(make_napari_viewer, qtbot, tiny_model_file, tmp_path,
                                                        monkeypatch):
    """The widget sends the job to a scheduler (an in-process LocalCluster here); its worker writes the store the
    layers read, and the localizations and sums come back."""
    import tifffile
    from distributed import LocalCluster

    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, camera_movie(Camera(), frames=3, size=16), photometric="minisblack")
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin=PLUGIN)
    widget = open_widget(viewer, tiny_model_file)
    widget.output.value = tmp_path / "out"
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1, dashboard_address=None) as cluster:
        widget.scheduler.value = cluster.scheduler_address
        run_and_wait(widget, qtbot)
    assert widget.results.done == 3 and "done: 3 frames" in widget.status.value
    store = ResultStore.open(tmp_path / "out" / "movie")
    assert store.complete
    mean = viewer.layers["movie SR mean"]
    assert isinstance(mean.data, da.Array) and mean.data.shape == (3, 64, 64)
    np.testing.assert_array_equal(np.asarray(mean.data), store.group["mean"][...])
    np.testing.assert_allclose(viewer.layers["movie SR sum"].data, np.asarray(mean.data).sum(0), rtol=1e-5, atol=1e-5)
    assert len(viewer.layers["movie localizations"].data) > 0
    # a layer that was not opened from a file cannot go to the cluster
    shown: list[str] = []
    monkeypatch.setattr(predict_widget, "show_error", shown.append)
    add_raw(viewer, name="in memory")
    widget.layer.value = viewer.layers["in memory"]
    widget.run_button.native.click()
    assert "from a TIFF" in shown[-1] and not widget.running
