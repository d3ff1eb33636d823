"""The training widget: a few tiny iterations, Stop, and the new model used for prediction."""
from __future__ import annotations

import numpy as np
import pytest
from napari_helpers import PLUGIN, PREDICT, TRAIN, add_raw, watch

from napari_smlm_uq._napari import _models
from napari_smlm_uq._napari._sample_data import simulated_stack


def open_train(viewer):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, TRAIN)
    return widget


def tiny_settings(widget, out_dir, iterations=3, save_every=3, target="both"):
    widget.start_model.select(_models.SCRATCH)
    widget.architecture.value = "tiny"
    widget.target.value = target
    widget.iterations.value = iterations
    widget.batch_size.value = 2
    widget.checkpoint_every.value = save_every
    widget.val_size.value = 2
    widget.out_dir.value = out_dir


def start(widget, button, errors):
    workers = []
    widget.worker_started.connect(workers.append)
    widget.worker_started.connect(lambda w: watch(w, errors))
    button.native.click()
    assert workers, "no worker started"
    return workers[0]


@pytest.mark.slow
def test_train_then_predict_with_the_new_model(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    for data, kwargs, kind in simulated_stack():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    train = open_train(viewer)
    _, predict = viewer.window.add_plugin_dock_widget(PLUGIN, PREDICT)
    # prefilled from the simulated layer's metadata
    assert [getattr(layer, "name", None) for layer in train.layer.choices] == [None, "simulated stack"]
    train.layer.value = viewer.layers["simulated stack"]
    assert train.pixel_size.value == 100.0
    assert train.photons.value == (1000.0, 5000.0)
    assert train.psf_sigma.value == (1.0, 1.0)
    assert train.read_noise.value == (1.2, 1.8)
    tiny_settings(train, tmp_path / "run")
    errors: list = []
    worker = start(train, train.train_button, errors)
    qtbot.waitUntil(lambda: not train.running and not worker.is_running, timeout=60_000)
    assert not errors
    model = (tmp_path / "run" / "model.pt").resolve()
    assert model.is_file() and train.model_path == model
    assert train.progress.value == train.progress.max == 6
    assert set(train.plot.history) == {"phi", "psi"} and len(train.plot.history["psi"]["loss"]) == 3
    assert train.metrics is not None and "JAC" in train.results.value and "Cramér-Rao" in train.results.value
    assert train.metrics["crlb"] > 0
    assert str(tmp_path / "run") not in str(train.out_dir.value)  # the next run gets a fresh folder

    # the prediction widget lists the new model and runs with it
    assert str(model) in predict.model.choice.choices
    predict.model.select(str(model))
    add_raw(viewer)
    predict.layer.value = viewer.layers["raw"]
    predict.samples.value = 2
    predict.steps.value = 2
    pworkers = []
    predict.worker_started.connect(pworkers.append)
    predict.worker_started.connect(lambda w: watch(w, errors))
    predict.run_button.native.click()
    qtbot.waitUntil(lambda: not predict.running and not pworkers[0].is_running, timeout=60_000)
    assert not errors
    mean = viewer.layers["raw SR mean"]
    assert mean.data.shape == (3, 64, 64) and mean.metadata["model"] == "model.pt"


@pytest.mark.slow
def test_stop_keeps_the_last_checkpoint(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    train = open_train(viewer)
    tiny_settings(train, tmp_path / "stopped", iterations=100_000, save_every=2, target="phi")
    errors: list = []
    worker = start(train, train.train_button, errors)
    qtbot.waitUntil(lambda: train.progress.value >= 5, timeout=60_000)
    train.stop_button.native.click()
    qtbot.waitUntil(lambda: not train.running and not worker.is_running, timeout=60_000)
    assert not errors
    assert train.progress.value < 100_000
    model = tmp_path / "stopped" / "model.pt"
    assert model.is_file() and train.model_path == model.resolve()
    assert "stopped; kept the last checkpoint" in train.status.value
    assert train.metrics is not None  # the kept model was validated


@pytest.mark.slow
def test_bad_settings_are_explained(make_napari_viewer, monkeypatch, tmp_path):
    from napari_smlm_uq._napari import train_widget
    from napari_smlm_uq.models import registry

    shown: list[str] = []
    monkeypatch.setattr(train_widget, "show_error", shown.append)
    viewer = make_napari_viewer()
    train = open_train(viewer)
    tiny_settings(train, tmp_path / "x", target="psi")  # psi alone needs a starting model
    train.train_button.native.click()
    assert "needs a model to start from" in shown[-1] and not train.running
    tiny_settings(train, registry.WEIGHTS_DIR)
    train.train_button.native.click()
    assert "bundled weights folder" in shown[-1] and not train.running
    train.photons.value = (5000, 100)
    tiny_settings(train, tmp_path / "x")
    train.train_button.native.click()
    assert "photons" in shown[-1] and not train.running
    assert not np.any([p.exists() for p in (tmp_path / "x").glob("*")])


@pytest.mark.slow
def test_estimate_from_a_layer_sets_ranges_around_the_truth(make_napari_viewer, qtbot):
    """A stack of PSF sigma 1.3 px, 3000 photons, 20 photons/px on a camera of gain 2 ADU/e- (not in the
    metadata: estimated): each range set from the fitted spots contains the truth."""
    from napari_smlm_uq.physics.camera import Camera
    from napari_smlm_uq.physics.simulate import SimulationSettings, simulate

    sim = simulate(SimulationSettings(frames=20, size=48, density=0.3, photons=3000.0, background=20.0, psf_sigma=1.3,
                                      camera=Camera(offset=100.0, gain=2.0, read_noise=1.5), seed=5))
    viewer = make_napari_viewer()
    viewer.add_image(np.clip(np.rint(sim.adu), 0, 65535).astype(np.uint16), name="spots",
                     metadata={"offset": 100.0, "read_noise": 1.5})
    train = open_train(viewer)
    train.layer.value = viewer.layers["spots"]
    errors: list = []
    worker = start(train, train.estimate_button, errors)
    assert not train.estimate_button.enabled   # the UI is not blocked: the fit runs in the worker
    qtbot.waitUntil(lambda: train.estimate_worker is None and not worker.is_running, timeout=30_000)
    assert not errors and train.estimate_button.enabled
    expected = ((train.psf_sigma, 1.3), (train.photons, 3000.0), (train.background, 20.0), (train.read_noise, 1.5))
    for box, truth in expected:
        low, high = box.value
        assert low < truth < high and high / low < 3, (box.label, box.value)
    note = train.estimate_note.value
    assert float(note.split("PSF sigma ")[1].split()[0]) == pytest.approx(1.3, abs=0.05)
    assert "(estimated from the data)" in note and note.endswith("inside the bundled model's training range")


@pytest.mark.slow
def test_estimate_without_spots_is_explained(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    flat = np.random.default_rng(0).poisson(20.0, (12, 24, 24)).astype(np.uint16) + 100
    viewer.add_image(flat, name="flat", metadata={"offset": 100.0, "gain": 1.0, "read_noise": 1.5})
    train = open_train(viewer)
    before = train.psf_sigma.value
    train.estimate_button.native.click()
    assert "choose a layer" in train.estimate_note.value
    train.layer.value = viewer.layers["flat"]
    worker = start(train, train.estimate_button, [])
    qtbot.waitUntil(lambda: train.estimate_worker is None and not worker.is_running, timeout=30_000)
    assert "no estimate from flat: only 0 isolated bright spots" in train.estimate_note.value
    assert train.psf_sigma.value == before
