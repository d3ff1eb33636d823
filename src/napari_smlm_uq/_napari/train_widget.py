"""Dock widget "Train on simulated data": fit or fine-tune the models to your microscope.

Simulation ranges (prefilled from an image layer's metadata, or, with "Estimate from the layer", from
the camera and the PSF sigma, photons and background of the layer's isolated spots, measured in a thread
worker: analysis/psf_estimate.py), which network to train and from which
model, optimisation settings and an output folder. :func:`training.train` runs in a napari thread
worker; a progress bar and a loss plot follow it; Stop keeps the last good checkpoint. Afterwards the
model is scored on a fresh simulated stack (DeepSTORM alone, fast) beside the Cramér-Rao bound, and the
model file appears in the prediction widget's list.
"""
from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, ProgressBar, PushButton
from napari.utils.notifications import show_error, show_info, show_warning
from psygnal import Signal
from qtpy.QtWidgets import QLabel, QSizePolicy, QVBoxLayout, QWidget

from ..io.files import InputError
from ..models import registry
from ..training import Progress, TrainSettings
from . import _models
from ._fields import SettingsForm
from ._layers import camera_settings
from ._widgets import (
    ModelChooser,
    describe_error,
    device_choices,
    layer_chooser,
    more_settings,
    note,
    precision_choices,
    scrolling,
)
from ._workers import Notice, as_frames, eta, inspect_job, start_worker, train_and_validate_job
from ._z_section import read_z_field, z_calibration_field

TARGETS = {"both": "both (DeepSTORM, then diffusion)", "phi": "DeepSTORM (phi) only", "psi": "diffusion (psi) only"}
ARCHITECTURES = {"full": registry.default_config, "tiny": registry.tiny_config}
PLOT_SECONDS = 0.5


def default_out_dir() -> str:
    return str(Path.home() / "smlm-uq-models" / datetime.now().strftime("model-%Y%m%d-%H%M%S"))


class LossPlot(QWidget):
    """Training and validation loss per stage on a log scale; matplotlib if installed, else text."""

    def __init__(self):
        super().__init__()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.history: dict[str, dict[str, list]] = {}
        self.canvas = self.axes = None
        try:
            from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
            from matplotlib.figure import Figure
        except ImportError:  # matplotlib is optional
            self.text = QLabel("loss: (install matplotlib for a plot)")
            layout.addWidget(self.text)
            return
        figure = Figure(figsize=(3.6, 2.0), dpi=90, facecolor="#262930", layout="constrained")
        self.axes = figure.add_subplot()
        self.canvas = FigureCanvasQTAgg(figure)
        self.canvas.setMinimumHeight(150)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        layout.addWidget(self.canvas)
        self.text = None
        self.clear()

    def clear(self) -> None:
        self.history = {}
        if self.axes is not None:
            self._style()
            self.canvas.draw_idle()

    def _style(self) -> None:
        ax = self.axes
        ax.clear()
        ax.set_facecolor("#262930")
        ax.tick_params(colors="#d0d0d0", labelsize=7)
        for spine in ax.spines.values():
            spine.set_color("#808080")
        ax.set_xlabel("iteration", color="#d0d0d0", fontsize=8)
        ax.set_ylabel("loss", color="#d0d0d0", fontsize=8)

    def add(self, p: Progress) -> None:
        h = self.history.setdefault(p.stage, {"it": [], "loss": [], "val_it": [], "val": []})
        h["it"].append(p.iteration)
        h["loss"].append(p.loss)
        if p.val_loss is not None:
            h["val_it"].append(p.iteration)
            h["val"].append(p.val_loss)

    def draw(self) -> None:
        if self.axes is None:
            self.text.setText("   ".join(f"{stage}: loss {h['loss'][-1]:.4g}" + (f", validation {h['val'][-1]:.4g}"
                                                                                   if h["val"] else "")
                                         for stage, h in self.history.items()))
            return
        self._style()
        colours = {"phi": "#4fc3f7", "psi": "#ffb74d"}
        for stage, h in self.history.items():
            c = colours.get(stage, "white")
            self.axes.plot(h["it"], h["loss"], color=c, lw=0.8, alpha=0.7, label=f"{stage} train")
            if h["val"]:
                self.axes.plot(h["val_it"], h["val"], "o-", color=c, ms=3, lw=1.2, label=f"{stage} validation")
        if self.history:
            self.axes.set_yscale("log")
            legend = self.axes.legend(fontsize=7, facecolor="#262930", edgecolor="#808080")
            for text in legend.get_texts():
                text.set_color("#d0d0d0")
        self.canvas.draw_idle()


READ_NOISE_WIDTH = 0.2   # read noise range: +/- 20 % around the camera's (e- rms)


def read_noise_range(read_noise: float) -> tuple[float, float]:
    """The training range of the read noise (e- rms) around a camera's."""
    return ((1 - READ_NOISE_WIDTH) * read_noise, (1 + READ_NOISE_WIDTH) * read_noise)


class TrainWidget(Container):
    """Simulation and training settings; Train / Stop; progress, loss plot, validation metrics."""

    worker_started = Signal(object)   # the worker, before it starts (tests connect errored here)

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        self.viewer = napari_viewer
        self.worker = None
        self.model_path: Path | None = None
        self.metrics: dict | None = None
        self._stop = threading.Event()
        self._t0 = self._last_plot = 0.0
        self._stages: list[str] = []

        self.fields = SettingsForm(TrainSettings, choices={
            "target": [(text, key) for key, text in TARGETS.items()], "device": device_choices(),
            "precision": precision_choices()})
        self.fields.attach(self)
        self.layer = layer_chooser(napari_viewer, ("raw",), "prefill from", nullable=True)
        self.estimate_button = PushButton(text="Estimate from the layer",
                                          tooltip="fit isolated spots of the chosen layer for the PSF sigma, photons "
                                                  "and background; set the ranges around them")
        self.estimate_note = note()
        self.estimate_worker = None
        self.start_model = ModelChooser(scratch=True, label="start from")
        if registry.DEFAULT_MODEL in _models.bundled():
            self.start_model.select(registry.DEFAULT_MODEL)
        self.architecture = ComboBox(choices=[("full size", "full"), ("tiny (quick trials)", "tiny")],
                                     label="new network size")
        self.out_dir = FileEdit(mode="d", value=default_out_dir(), label="output folder")
        self.z_calibration = z_calibration_field(purpose="astigmatic training data (z uniform over its valid range; "
                                                         "PSF sigma not used)")
        self.train_button = PushButton(text="Train")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = note()
        self.results = note()
        f = self.fields
        run_row = Container(widgets=[self.train_button, self.stop_button], layout="horizontal", label="")
        super().__init__(widgets=[
            self.layer, self.estimate_button, self.estimate_note,
            *f.take("psf_sigma", "photons", "background", "density", "read_noise", "pixel_size"), self.z_calibration,
            *f.take("target"),
            self.start_model, self.architecture,
            *f.take("iterations", "batch_size", "lr", "checkpoint_every", "val_size"), self.out_dir, run_row,
            self.progress, self.status])
        self.native.layout().insertWidget(self.index(run_row), more_settings(f.rest()))
        self.plot = LossPlot()  # plain Qt: magicgui has no plot widget
        self.native.layout().addWidget(self.plot)
        scrolling(self)   # fits a laptop screen
        self.append(self.results)

        self.layer.changed.connect(self._prefill)
        self.start_model.choice.changed.connect(lambda _: self._start_changed())
        self.estimate_button.changed.connect(lambda: self.estimate())
        self.train_button.changed.connect(lambda: self.run())
        self.stop_button.changed.connect(lambda: self.stop())
        self.native.destroyed.connect(lambda *_: self._stop.set())  # closing the dock stops training
        self._start_changed()

    # --- controls ------------------------------------------------------------------------------

    def _prefill(self, layer) -> None:
        if layer is None:
            return
        meta = layer.metadata
        cam = camera_settings(meta)
        if "pixel_size" in cam["found"]:
            self.pixel_size.value = cam["pixel_size"]
        if "read_noise" in cam["found"]:
            self.read_noise.value = read_noise_range(cam["read_noise"])
        sim = meta.get("simulation") or {}
        for key, box in (("psf_sigma (px)", self.psf_sigma), ("photons", self.photons),
                         ("background (photons/px)", self.background), ("density (/um^2)", self.density)):
            value = sim.get(key, meta.get(key.split(" ")[0]))
            if value is None:
                continue
            lo, hi = (value, value) if not isinstance(value, (tuple, list)) else value
            box.value = (float(lo), float(hi))

    def estimate(self):
        """Measure the chosen layer's camera and spots in a worker (returned; None without a layer or while
        one runs); the ranges are set when it returns."""
        layer = self.layer.value
        if self.estimate_worker is not None:
            return None
        if layer is None:
            self.estimate_note.value = "choose a layer of camera frames to estimate from"
            return None
        worker = start_worker(inspect_job, as_frames(layer.data), dict(layer.metadata))
        worker.returned.connect(self._on_estimated)
        worker.errored.connect(lambda exc: self._on_estimate_failed(layer.name, exc))
        worker.finished.connect(self._estimate_finished)
        self.estimate_worker = worker
        self.estimate_button.enabled = False
        self.estimate_note.value = f"fitting isolated spots of {layer.name}…"
        self.worker_started.emit(worker)
        worker.start()
        return worker

    def _on_estimated(self, result) -> None:
        choice, psf = result
        ranges = psf.training_ranges()
        self.psf_sigma.value, self.photons.value = ranges["psf_sigma"], ranges["photons"]
        self.background.value = ranges["background"]
        self.read_noise.value = read_noise_range(float(np.median(choice.camera.read_noise)))
        lines = [choice.messages[0], choice.warning, psf.describe(), psf.warning() or
                 "inside the bundled model's training range"]
        self.estimate_note.value = "\n".join(line for line in lines if line)

    def _on_estimate_failed(self, name: str, exc: BaseException) -> None:
        self.estimate_note.value = f"no estimate from {name}: {describe_error(exc)}"

    def _estimate_finished(self) -> None:
        self.estimate_worker = None
        self.estimate_button.enabled = True

    def _start_changed(self) -> None:
        self.architecture.enabled = self.start_model.model == _models.SCRATCH

    def settings(self) -> TrainSettings:
        """The settings of the inputs, the start model and the output folder."""
        start = self.start_model.model
        if start is None:
            raise InputError("choose a model to start from, or 'from scratch'")
        init = None if start == _models.SCRATCH else start
        return self.fields.build(TrainSettings, out_dir=str(self.out_dir.value), init=init,
                                 config=ARCHITECTURES[self.architecture.value](),
                                 z_calibration=read_z_field(self.z_calibration)).validate()

    # --- running -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.worker is not None

    def run(self):
        """Start training; returns the worker (None if the settings are refused)."""
        if self.worker is not None:
            return None
        try:
            s = self.settings()
        except InputError as exc:
            show_error(f"Check the training settings: {exc}")
            return None
        resumes = any(Path(s.out_dir).glob("train_state_*.pt"))
        self._stages = ["phi", "psi"] if s.target == "both" else [s.target]
        self._stop = threading.Event()
        self.model_path, self.metrics = None, None
        self.plot.clear()
        self.results.value = ""
        worker = start_worker(train_and_validate_job, s, self._stop.is_set)
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.progress.max, self.progress.value = s.iterations * len(self._stages), 0
        self.train_button.enabled, self.stop_button.enabled = False, True
        self._say(("continuing the run saved in " if resumes else "training into ") + s.out_dir)
        self._t0 = self._last_plot = time.perf_counter()
        self._settings = s
        self.worker_started.emit(worker)
        worker.start()
        return worker

    def stop(self) -> None:
        """Stop after the current iteration; the last saved model is kept (and validated)."""
        if self.worker is not None:
            self._stop.set()
            self._say("stopping…")

    def _on_yielded(self, item) -> None:
        if isinstance(item, Progress):
            done = self._stages.index(item.stage) * item.iterations + item.iteration
            self.progress.value = done
            self.plot.add(item)
            if not self._stop.is_set():
                self._say(f"{item.stage}: iteration {item.iteration}/{item.iterations}, loss {item.loss:.4g}"
                                    f" · {eta(time.perf_counter() - self._t0, done, self.progress.max)}")
            now = time.perf_counter()
            if now - self._last_plot > PLOT_SECONDS:
                self.plot.draw()
                self._last_plot = now
        elif isinstance(item, Notice):
            self._say(f"{item.text}…")
        elif isinstance(item, dict):
            self.metrics = item
            self.results.value = format_metrics(item, self._settings.pixel_size)

    def _on_returned(self, path) -> None:
        if path is not None:
            self.model_path = _models.register(path)

    def _on_errored(self, exc: BaseException) -> None:
        show_error(f"Training stopped: {describe_error(exc)}")

    def _on_finished(self) -> None:
        self.worker = None
        self.train_button.enabled, self.stop_button.enabled = True, False
        self.plot.draw()
        stopped = self._stop.is_set()
        if self.model_path is None:
            self._say("stopped before the first checkpoint: no model saved" if stopped else
                                "no model saved")
            if stopped:
                show_warning("Training stopped before the first checkpoint; lower 'save every' to keep one sooner.")
        else:
            self._say(("stopped; kept the last checkpoint " if stopped else "saved ") + str(self.model_path)
                                + " (now listed in 'Super-resolve with uncertainty')")
            show_info(f"Model saved: {self.model_path}")
            self.out_dir.value = default_out_dir()  # the next run starts fresh instead of resuming this one

    def _say(self, text: str) -> None:
        self.status.value = text


def format_metrics(m: dict, pixel_size: float) -> str:
    rmse = "n/a" if m["rmse"] != m["rmse"] else f"{m['rmse']:.1f} nm"
    return (f"Validation on {m['frames']} new simulated frames of {m['size']}×{m['size']} px "
            f"({m['emitters']} emitters, DeepSTORM alone): JAC {m['jaccard']:.1f} %, RMSE {rmse} "
            f"(Cramér-Rao bound {m['crlb']:.1f} nm at {m['photons']:.0f} photons, {m['background']:.1f} photons/px "
            f"background), efficiency E {m['efficiency']:.1f}, recall {m['recall']:.0f} %, precision "
            f"{m['precision']:.0f} %.")
