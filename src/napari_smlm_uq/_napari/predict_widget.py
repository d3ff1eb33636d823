"""Dock widget "Super-resolve with uncertainty": run the pipeline on an image layer.

The core's :func:`pipeline.predict` runs in a napari thread worker; every finished frame comes back to
the main thread, lands in preallocated arrays (:class:`_layers.PredictionResults`) and the layers
``<name> SR mean/sample/std/sum`` and ``<name> localizations`` grow as frames are done.
"""
from __future__ import annotations

import threading
import time

import napari
from magicgui.widgets import (
    ComboBox,
    Container,
    FloatSpinBox,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.utils.notifications import show_error, show_info, show_warning
from psygnal import Signal

from ..inference.pipeline import FrameResult, PredictSettings, available_devices
from ..physics.camera import Camera
from . import _models
from ._layers import DEFAULT_PIXEL_SIZE, PredictionResults, RawGrid, camera_settings
from ._widgets import ModelChooser, describe_error, layer_chooser, note
from ._workers import Notice, as_frames, eta, predict_job, start_worker

REFRESH_SECONDS = 1.0  # how often the growing result layers are redrawn during a run


def available_memory() -> int | None:
    """Free memory in bytes (None when unknown)."""
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


class PredictWidget(Container):
    """Choose the camera frames, camera and model settings; Run / Cancel; progress with time left."""

    worker_started = Signal(object)   # the worker, before it starts (tests connect errored here)
    run_finished = Signal(object)     # the PredictionResults, after the layers are final

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        self.viewer = napari_viewer
        self.worker = None
        self.results: PredictionResults | None = None
        self._stop = threading.Event()
        self._layers: dict = {}
        self._error: str | None = None
        self._source = ""
        self._t0 = self._last_draw = 0.0
        d, cam = PredictSettings(), Camera()

        self.layer = layer_chooser(napari_viewer, ("raw",), "camera frames")
        self.layer.tooltip = ("image layers of raw camera counts: opened with napari-smlm-uq, the sample, or "
                              "any grayscale integer image")
        self.pixel_size = FloatSpinBox(value=DEFAULT_PIXEL_SIZE, min=1.0, max=1e5, step=0.01, label="pixel size (nm)",
                                       tooltip="raw camera pixel size in the sample plane")
        self.offset = FloatSpinBox(value=cam.offset, min=-1e6, max=1e6, step=0.01, label="offset (ADU)",
                                   tooltip="camera offset (baseline)")
        self.gain = FloatSpinBox(value=cam.gain, min=1e-4, max=1e4, step=0.0001, label="gain (ADU/e⁻)",
                                 tooltip="camera gain, ADU per photo-electron")
        self.read_noise = FloatSpinBox(value=cam.read_noise, min=0.0, max=1000.0, step=0.01, label="read noise (e⁻)",
                                       tooltip="read noise, photo-electrons rms")
        self.camera_note = note()
        self.model = ModelChooser()
        self.samples = SpinBox(value=d.samples, min=0, max=64, label="samples",
                               tooltip="diffusion samples per frame (0: DeepSTORM alone, no uncertainty)")
        self.steps = SpinBox(value=d.steps, min=1, max=1000, label="steps",
                             tooltip="diffusion steps per sample (fewer is faster)")
        self.start_frame = SpinBox(value=0, min=0, max=0, label="first frame",
                                   tooltip="first frame (napari numbers frames from 0)")
        self.stop_frame = SpinBox(value=1, min=1, max=1, label="stop before", tooltip="stop before this frame")
        devices = available_devices()
        self.device = ComboBox(choices=[(f"auto ({devices[-1]})", "auto")] + [(n, n) for n in devices],
                               label="device")
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.progress.native.setFormat("%v / %m frames")
        self.status = note()
        super().__init__(widgets=[
            self.layer, self.pixel_size, self.offset, self.gain, self.read_noise, self.camera_note,
            Container(widgets=[self.start_frame, self.stop_frame], layout="horizontal", label="frames"),
            self.model, self.samples, self.steps, self.device,
            Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", label=""),
            self.progress, self.status])
        self.native.destroyed.connect(lambda *_: self._stop.set())  # closing the dock cancels a run

        self.layer.changed.connect(self._layer_changed)
        self.samples.changed.connect(self._samples_changed)
        self.start_frame.changed.connect(lambda v: setattr(self.stop_frame, "min", v + 1))
        self.run_button.changed.connect(lambda: self.run())
        self.cancel_button.changed.connect(lambda: self.cancel())
        self._samples_previous = self.samples.value
        self._layer_changed(self.layer.value)

    # --- controls ------------------------------------------------------------------------------

    def _layer_changed(self, layer) -> None:
        if layer is None:
            self.camera_note.value = ("Open a camera stack (File > Open) or a sample (File > Open Sample): "
                                      "layers of camera counts are listed here.")
            return
        cam = camera_settings(layer.metadata)
        for key in ("pixel_size", "offset", "gain", "read_noise"):
            getattr(self, key).value = cam[key]
        found = cam["found"]
        missing = [k.replace("_", " ") for k in ("pixel_size", "offset", "gain", "read_noise") if k not in found]
        note_text = "from the layer: " + (", ".join(k.replace("_", " ") for k in found) or "nothing")
        note_text += "; defaults for " + ", ".join(missing) + ": check them" if missing else ""
        extra = layer.metadata.get("note")
        self.camera_note.value = note_text + (f". {extra}" if extra else "")
        n = int(layer.data.shape[0]) if layer.ndim == 3 else 1
        self.start_frame.max, self.stop_frame.max = max(n - 1, 0), max(n, 1)
        self.start_frame.value, self.stop_frame.value = 0, n

    def _samples_changed(self, value: int) -> None:
        if value == 1:  # 1 sample has no spread: jump over it
            self.samples.value = 2 if self._samples_previous == 0 else 0
            return
        self._samples_previous = value

    def settings(self) -> PredictSettings:
        camera = Camera(self.offset.value, self.gain.value, self.read_noise.value)
        return PredictSettings(samples=self.samples.value, steps=self.steps.value, camera=camera,
                               pixel_size=self.pixel_size.value, device=self.device.value).validate()

    # --- running -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.worker is not None

    def run(self):
        """Start a prediction on the chosen layer; returns the worker (None if nothing started)."""
        if self.worker is not None:
            return None
        layer = self.layer.value
        if layer is None:
            show_error("No image layer to super-resolve. Open a camera stack (File > Open) or a sample "
                       "(File > Open Sample > Simulated SMLM stack), then choose it here.")
            return None
        if layer.rgb or layer.multiscale or layer.ndim not in (2, 3):
            kind = "an RGB image" if layer.rgb else ("multiscale" if layer.multiscale else f"{layer.ndim}-dimensional")
            show_error(f"Layer '{layer.name}' is {kind}; a stack of grayscale camera frames (frame, row, column) "
                       "is needed. Open the raw camera TIFF with napari-smlm-uq.")
            return None
        model = self.model.model
        if not model:
            show_error("No model chosen. Choose a model file, or train one with "
                       "'Train on simulated data'.")
            return None
        try:
            settings = self.settings()
        except ValueError as exc:
            show_error(f"Check the settings: {exc}")
            return None
        frames = as_frames(layer.data)
        start, stop = self.start_frame.value, min(self.stop_frame.value, len(frames))
        if stop <= start:
            show_error(f"The frame range {start} to {stop} is empty; choose start < stop.")
            return None
        need, free = PredictionResults.bytes_needed(stop - start, frames.shape[-2:]), available_memory()
        if free is not None and need > 0.7 * free:
            per_frame = PredictionResults.bytes_needed(1, frames.shape[-2:])
            show_error(f"The results of {stop - start} frames need {need / 2**30:.1f} GiB of memory but only "
                       f"{free / 2**30:.1f} GiB are free. Choose a frame range of at most "
                       f"{max(int(0.7 * free // per_frame), 1)} frames.")
            return None
        self._source = layer.name
        self.results = PredictionResults(stop - start, frames.shape[-2:], settings.pixel_size, start,
                                         info={"model": _models.label(model), "samples": settings.samples,
                                               "steps": settings.steps},
                                         grid=RawGrid.of_layer(layer))
        self._layers, self._error = {}, None
        self._stop = threading.Event()
        worker = start_worker(predict_job, frames, model, settings, range(start, stop), self._stop.is_set)
        worker.yielded.connect(self._on_yielded)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.max, self.progress.value = stop - start, 0
        self._say(f"loading model {_models.label(model)}…")
        self._t0 = self._last_draw = time.perf_counter()
        self.worker_started.emit(worker)
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop after the current diffusion step; the frames done so far are kept (marked partial)."""
        if self.worker is None:
            return
        self._stop.set()
        self.worker.quit()
        self._say("cancelling…")

    def _remove_previous(self) -> None:
        """Remove result layers of an earlier run on the same input (so names do not pile up)."""
        for name in self.results.names(self._source, partial=False).values():
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)

    def _on_yielded(self, item) -> None:
        if isinstance(item, Notice):
            show_warning(item.text)
            return
        if not isinstance(item, FrameResult) or self.results is None:
            return
        self.results.add(item)
        done, total = self.results.done, self.results.n_frames
        self.progress.value = done
        self._say(f"frame {item.index}: {len(item.localizations)} localizations · "
                            f"{eta(time.perf_counter() - self._t0, done, total)}")
        now = time.perf_counter()
        if not self._layers or now - self._last_draw > REFRESH_SECONDS:
            self._draw(partial=False)
            self._last_draw = now

    def _draw(self, partial: bool) -> None:
        """Create or update the five result layers from the frames done so far."""
        if not self._layers:  # first frame of this run: replace an earlier run's layers
            self._remove_previous()
        data = self.results.layer_data(self._source, partial=partial)
        for kind, (array, kwargs, layer_type) in data.items():
            layer = self._layers.get(kind)
            if layer is None or layer not in self.viewer.layers:
                add = self.viewer.add_points if layer_type == "points" else self.viewer.add_image
                self._layers[kind] = add(array, **kwargs)
                continue
            if layer_type == "points":
                layer.data = array
                layer.features = kwargs["features"]
                layer.size, layer.symbol, layer.face_color = kwargs["size"], kwargs["symbol"], kwargs["face_color"]
            else:
                layer.data = array
                layer.contrast_limits = kwargs["contrast_limits"]
            layer.metadata = kwargs["metadata"]
            layer.name = kwargs["name"]

    def _on_errored(self, exc: BaseException) -> None:
        self._error = describe_error(exc)
        show_error(f"Prediction stopped: {self._error}")
        self._stop.set()

    def _on_finished(self) -> None:
        results, self.worker = self.results, None
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        if results is None:
            return
        partial = not results.complete
        if results.done:
            self._draw(partial=partial)
        seconds = time.perf_counter() - self._t0
        n_locs = sum(len(x) for x in results.locs)
        if self._error:
            self._say(f"failed after {results.done} of {results.n_frames} frames: {self._error}")
        elif partial:
            self._say(f"stopped: {results.done} of {results.n_frames} frames kept (layers marked "
                                f"'partial'), {n_locs} localizations")
        else:
            self._say(f"done: {results.done} frames in {seconds:.1f} s, {n_locs} localizations")
            show_info(f"Super-resolved {results.done} frames of '{self._source}': {n_locs} localizations.")
        self.run_finished.emit(results)

    def _say(self, text: str) -> None:
        self.status.value = text
