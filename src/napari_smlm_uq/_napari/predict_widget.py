"""Dock widget "Super-resolve with uncertainty": run the pipeline on an image layer.

The core's :func:`pipeline.predict` runs in a napari thread worker, which also writes every finished frame
to the result store of the output folder (:class:`_layers.PredictionResults`, docs/store.md) and, at the end,
the localizations; the main thread only draws. The layers ``<name> SR mean/sample/std`` read the store
lazily; ``<name> SR sum``, ``SR sum std``, ``rendered`` and ``localizations`` (in memory) grow as frames are
done. The inputs of the settings are made from their fields (_fields.py). The camera comes from
:func:`camera_choice.choose_camera` (metadata, else the estimate from the data), the background estimate
from :func:`background_choice.choose_background` (local when the background varies across the field);
those methods are in _camera_section.py.
"""
from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import CheckBox, Container, FileEdit, FloatSpinBox, ProgressBar, PushButton, SpinBox
from napari.utils.notifications import show_error, show_info, show_warning
from psygnal import Signal
from qtpy.QtCore import QTimer

from ..defaults import RENDER_PIXEL_NM
from ..inference import distributed
from ..inference.background_choice import BackgroundChoice
from ..inference.camera_choice import CameraChoice
from ..inference.pipeline import PredictSettings
from ..inference.run import RunOutcome, RunSettings, run_folder
from ..io.files import InputError
from ..io.store import ENCODINGS
from ..io.tiff import check_finite
from ..physics.camera import Camera
from ..physics.camera_estimation import MAX_FRAMES as CAMERA_FRAMES
from . import _models, _temporary
from ._camera_section import CameraSection
from ._fields import SettingsForm
from ._layers import PredictionResults, RawGrid, show_layers
from ._temporary import temporary_folder
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
from ._workers import FrameDone, Notice, as_frames, cluster_job, eta, predict_job, start_worker
from ._z_section import read_z_field, z_calibration_field, z_info, z_notes

ENCODING_TEXT = {"compact": "compact (float16, |values| < 0.02 as 0)", "float32": "float32 (lossless)"}
REFRESH_SECONDS = 1.0  # how often the growing result layers are redrawn during a run, at most
DRAW_SHARE = 0.1  # ... and at most this share of the viewer's time (10^6 localizations take a while to draw)


class PredictWidget(CameraSection, Container):
    """Choose the camera frames, camera, model settings and output folder; Run / Cancel; progress with time
    left; after a run, the consecutive-frame precision check."""

    worker_started = Signal(object)   # the worker, before it starts (tests connect errored here)
    run_finished = Signal(object)     # the PredictionResults, after the layers are final

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        self.viewer = napari_viewer
        self.worker = None
        self.results: PredictionResults | None = None
        self.camera_choice: CameraChoice | None = None
        self.background_choice: BackgroundChoice | None = None
        self._stop = threading.Event()
        self._layers: dict = {}
        self._removed: list = []   # result layers the user removed, until they are let go of (_let_go)
        self._error: str | None = None
        self._lost = False   # the run's store cannot be read any more
        self._outcome: RunOutcome | None = None   # what the worker returned on closing the run
        self._source = ""
        self._z = None   # the running prediction's z calibration (3D), None in 2D
        self._temporary: list[Path] = []   # this widget's run folders in the system's temporary folder
        self._t0 = self._next_draw = 0.0
        self.fields = SettingsForm(PredictSettings, RunSettings, choices={
            "device": device_choices(), "precision": precision_choices(),
            "store_encoding": [(ENCODING_TEXT.get(e, e), e) for e in ENCODINGS]})
        self.fields.attach(self)

        self.layer = layer_chooser(napari_viewer, ("raw",), "camera frames")
        self.layer.tooltip = ("image layers of raw camera counts: opened with napari-smlm-uq, the sample, or "
                              "any grayscale integer image")
        self.camera_map = FileEdit(mode="r", nullable=True, filter="Camera maps (*.npy *.tif *.tiff)",
                                   label="sCMOS map", tooltip="per-pixel offset, gain and read noise "
                                   "(docs/real-data.md); replaces the three values above")
        self.estimate_button = PushButton(text="Estimate from data",
                                          tooltip="estimate gain, offset and read noise from the frames' noise")
        self.camera_note = note()
        self.background_note = note()
        self.model = ModelChooser()
        self.z_calibration = z_calibration_field()
        self.start_frame = SpinBox(value=0, min=0, max=0, label="first frame",
                                   tooltip="first frame (napari numbers frames from 0)")
        self.stop_frame = SpinBox(value=1, min=1, max=1, label="stop before", tooltip="stop before this frame")
        self.render_pixel = FloatSpinBox(value=RENDER_PIXEL_NM, min=0.5, max=1e4, step=0.5,
                                         label="render pixel (nm)",
                                         tooltip="pixel size of the rendered localizations (Gaussians of their "
                                                 "uncertainty)")
        self.output = FileEdit(mode="d", nullable=True, label="output folder",
                               tooltip="each run writes results.zarr and localizations.csv into a new folder "
                                       "here; empty: a temporary folder")
        self.keep = CheckBox(value=False, text="keep temporary results",
                             tooltip="without an output folder the results are removed when napari quits, "
                                     "unless this is ticked")
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.progress.native.setFormat("%v / %m frames")
        self.status = note()
        self.precision_check = note()
        f = self.fields
        run_row = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", label="")
        super().__init__(widgets=[
            self.layer, *f.take("pixel_size", "camera_kind", "offset", "gain", "read_noise"), self.camera_map,
            self.estimate_button, self.camera_note, *f.take("background"), self.background_note,
            Container(widgets=[self.start_frame, self.stop_frame], layout="horizontal", label="frames"),
            self.model, self.z_calibration, *f.take("samples", "steps", "device", "precision"), self.render_pixel,
            self.output,
            *f.take("store_encoding"), self.keep, *f.take("scheduler"), run_row,
            self.progress, self.status, self.precision_check])
        self.native.layout().insertWidget(self.index(run_row), more_settings(f.rest()))
        scrolling(self)   # fits a laptop screen
        self.native.destroyed.connect(lambda *_: self._closed())  # closing napari cancels a run
        self.native_parent_changed.connect(lambda parent: parent is None and self.cancel())  # ... removing the dock

        self.layer.changed.connect(self._layer_changed)
        napari_viewer.layers.events.removed.connect(self._layer_removed)
        self.samples.changed.connect(self._samples_changed)
        self.background.changed.connect(lambda _: self._background_changed())
        self.start_frame.changed.connect(lambda v: setattr(self.stop_frame, "min", v + 1))
        for box in (self.start_frame, self.stop_frame):
            box.changed.connect(lambda _: self._show_total())
        self.keep.changed.connect(self._keep_changed)
        self.estimate_button.changed.connect(lambda: self.estimate_camera())
        self.run_button.changed.connect(lambda: self.run())
        self.cancel_button.changed.connect(lambda: self.cancel())
        self._samples_previous = self.samples.value
        self._layer_changed(self.layer.value)

    # --- controls ------------------------------------------------------------------------------

    def _show_total(self) -> None:
        """The progress bar's total: the frames of the chosen range (before and between runs)."""
        if self.worker is None:
            self.progress.max, self.progress.value = max(self.stop_frame.value - self.start_frame.value, 1), 0

    def _samples_changed(self, value: int) -> None:
        if value == 1:  # 1 sample has no spread: jump over it
            self.samples.value = 2 if self._samples_previous == 0 else 0
            return
        self._samples_previous = value

    def settings(self, camera: Camera | None = None) -> PredictSettings:
        """The settings of the inputs (``camera``: instead of the camera inputs') with the background chosen and
        the z calibration's file read."""
        given = {"camera": camera} if camera is not None else {}
        background = self.background_choice.estimate if self.background_choice else None
        return self.fields.build(PredictSettings, background=background, z_calibration=read_z_field(
            self.z_calibration), **given).validate()

    def output_folder(self) -> Path:
        """A new folder for this run: under the chosen output folder, else in the system's temporary folder."""
        if self.output.value:
            return run_folder(Path(self.output.value), self._source)
        folder = temporary_folder()
        self._temporary.append(folder)
        self._keep_changed(self.keep.value)
        return folder

    def _keep_changed(self, keep: bool) -> None:
        _temporary.keep(self._temporary, keep)

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
        frames = as_frames(layer.data)
        start, stop = self.start_frame.value, min(self.stop_frame.value, len(frames))
        if stop <= start:
            show_error(f"The frame range {start} to {stop} is empty; choose start < stop.")
            return None
        scheduler = self.scheduler.value.strip()
        if scheduler and not layer.metadata.get("path"):
            show_error(f"A cluster run reads the stack from its file: open '{layer.name}' from a TIFF that the "
                       "workers can read (File > Open), or leave the cluster field empty.")
            return None
        try:
            check_finite(frames, range(start, stop))
            camera = self.checked_camera(frames[start:])
            self._show_background(np.asarray(frames[start:start + CAMERA_FRAMES]), camera)
            settings = self.settings(camera)
            self._source, self._z = layer.name, settings.z_calibration
            if scheduler:
                job = distributed.StackJob(Path(layer.metadata["path"]), range(start, stop), frames.shape[-2:],
                                           settings, self.output_folder(), self.store_encoding.value)
                self.results = PredictionResults(distributed.open_store(job, model, resume=False),
                                                 self.render_pixel.value)
                self.results.in_order = False
            else:
                self.results = PredictionResults.create(
                    self.output_folder(), stop - start, frames.shape[-2:], settings.pixel_size, start,
                    info={"source": layer.name, "model": _models.label(model), "samples": settings.samples,
                          "steps": settings.steps, **z_info(settings.z_calibration)},
                    grid=RawGrid.of_layer(layer), render_pixel=self.render_pixel.value,
                    encoding=self.store_encoding.value)
        except (InputError, OSError) as exc:
            show_error(f"Check the settings: {exc}")
            return None
        self._layers, self._error, self._lost = {}, None, False
        self._let_go()   # an earlier run's layers, if removed: here, not by chance during the run
        self.precision_check.value = ""
        self._stop = threading.Event()
        if scheduler:
            worker = start_worker(cluster_job, scheduler, job, model, distributed.DEFAULT_CHUNK_FRAMES,
                                  self._stop.is_set, self.results.add_stack, self.results.close)
        else:
            worker = start_worker(predict_job, frames, model, settings, range(start, stop), self._stop.is_set,
                                  self.results.add, self.results.close)
        self._outcome = None
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.max, self.progress.value = stop - start, 0
        self._say(f"loading model {_models.label(model)}…")
        self._t0 = self._next_draw = time.perf_counter()
        self.worker_started.emit(worker)
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop after the current diffusion step; the frames done so far are kept (marked partial)."""
        if self.worker is None:
            return
        self._stop.set()   # the run ends itself (not worker.quit(), which abandons the job before it writes)
        self._say("cancelling…")

    def _layer_removed(self, event) -> None:
        """Let go of a result layer the user removed at a moment we choose: a removed layer is cyclic garbage
        whose vispy objects queue GL deletions when collected; collected by chance, inside a draw or from the
        worker's thread, they crashed napari (tests/test_napari_remove_layers.py). Held until the event loop
        is idle, then collected on the main thread."""
        gone = [kind for kind, layer in self._layers.items() if getattr(layer, "__wrapped__", layer) is event.value]
        if gone:   # ours are the proxies napari gives plugins
            self._removed += [self._layers.pop(kind) for kind in gone]
            QTimer.singleShot(0, self._let_go)

    def _let_go(self) -> None:
        """Release the removed layers and collect them, once for all removed together (a full collection takes
        0.3-0.8 s with napari and torch loaded)."""
        if self._removed:
            self._removed.clear()
            gc.collect()

    def _closed(self) -> None:
        """napari closed with the dock: stop the run (its worker still writes the frames done, marked partial)
        and show nothing more (the dock's Qt widgets are gone)."""
        self._stop.set()
        if self.worker is not None:
            for signal, slot in ((self.worker.yielded, self._on_yielded), (self.worker.returned, self._on_returned),
                                 (self.worker.errored, self._on_errored), (self.worker.finished, self._on_finished)):
                signal.disconnect(slot)

    def _remove_previous(self) -> None:
        """Remove result layers of an earlier run on the same input (so names do not pile up)."""
        for name in self.results.names(self._source, partial=False).values():
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)

    def _on_yielded(self, item) -> None:
        if isinstance(item, Notice):
            show_warning(item.text)
            return
        if self.results is None:
            return
        if isinstance(item, FrameDone):   # the worker has written it to the store
            text = f"frame {item.index}: {item.localizations} localizations"
        elif isinstance(item, distributed.ChunkDone):
            self.results.done += len(item.frames)
            for line in item.notes:
                show_warning(line)
            text = f"frames {item.frames.start}-{item.frames.stop - 1} done on the cluster"
        elif isinstance(item, distributed.StackDone):   # the worker has added its sums and localizations
            return
        elif isinstance(item, distributed.StackFailed):
            self._on_errored(InputError(item.error))
            return
        else:
            return
        done, total = self.results.done, self.results.n_frames
        self.progress.value = done
        self._say(f"{text} · {eta(time.perf_counter() - self._t0, done, total)}")
        now = time.perf_counter()
        if not self._layers or now > self._next_draw:
            self._draw(partial=False)
            end = time.perf_counter()
            self._next_draw = end + max(REFRESH_SECONDS, (end - now) * (1 / DRAW_SHARE - 1))

    def _draw(self, partial: bool) -> None:
        """Create or update the result layers from the frames done so far; once the store cannot be read (its
        folder removed: zarr says KeyError), _store_lost and no more drawing."""
        if self._lost:
            return
        if not self._layers:  # first frame of this run: replace an earlier run's layers
            self._remove_previous()
        try:
            show_layers(self.viewer, self._layers, self.results.layer_data(self._source, partial=partial))
        except (OSError, KeyError) as exc:
            self._lost = True
            self._store_lost(self.results, exc)

    def _on_errored(self, exc: BaseException) -> None:
        self._error = describe_error(exc)
        show_error(f"Prediction stopped: {self._error}")
        self._stop.set()

    def _on_returned(self, outcome: RunOutcome) -> None:
        self._outcome = outcome

    def _on_finished(self) -> None:
        """The worker has closed the run (results.close: written, checked); show how it ended."""
        results, self.worker = self.results, None
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        if results is None:
            return
        outcome = self._outcome or RunOutcome(False, len(results.localizations()), "")  # failed
        partial = not outcome.complete
        if results.done:
            self._draw(partial=partial)
        seconds = time.perf_counter() - self._t0
        n_locs = outcome.localizations
        if self._error:
            self._say(f"failed after {results.done} of {results.n_frames} frames: {self._error}")
        elif partial:
            self._say(f"stopped: {results.done} of {results.n_frames} frames kept (layers and store marked "
                      f"'partial'), {n_locs} localizations")
        else:
            self._say(f"done: {results.done} frames in {seconds:.1f} s, {n_locs} localizations -> {results.path}")
            show_info(f"Super-resolved {results.done} frames of '{self._source}': {n_locs} localizations.")
            if self._z is not None:
                self._say("\n".join([self.status.value, *z_notes(results.localizations(), self._z, results.z_range())]))
        self.precision_check.value = outcome.precision
        self.run_finished.emit(results)

    def _store_lost(self, results: PredictionResults, exc: BaseException) -> None:
        """The run's store cannot be read (its folder removed mid-run): remove the layers that read it, mark the
        others (held in memory) partial, and say so."""
        names = results.names(self._source, partial=True)
        for kind, layer in list(self._layers.items()):   # removing one pops it (_layer_removed)
            if layer in self.viewer.layers:
                if kind in ("mean", "sample", "std"):
                    self.viewer.layers.remove(layer)
                else:
                    layer.name, layer.metadata = names[kind], {**layer.metadata, "partial": True}
        self._error = f"the results in {results.path} cannot be read any more ({type(exc).__name__}: {exc})"
        show_error(f"Prediction stopped: {self._error}; the sums and localizations are kept in napari.")

    def _say(self, text: str) -> None:
        self.status.value = text
