"""The training widget: a few tiny iterations, Stop, and the new model used for prediction."""
from __future__ import annotations

import numpy as np
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


def test_train_then_predict_with_the_new_model(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    for data, kwargs, kind in simulated_stack():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    train = open_train(viewer)
    predict_dock, predict = viewer.window.add_plugin_dock_widget(PLUGIN, PREDICT)
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
