"""Dock widget "Calibrate z from beads": ``smlm-uq calibrate-z`` on an image layer (docs/3d.md, section 2).

The inputs are the fields of :class:`ZCalibrationSettings` (the camera values and pixel size left at "default"
come from the layer's metadata, as the command takes them from the file's). :func:`calibrate_adu` and
:func:`save_calibration` run in a thread worker and write the calibration (JSON) and its plot (PNG beside it),
which the dock then shows; a stack that cannot be calibrated gets the core's one-line message and no file.
"""
from __future__ import annotations

from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import Container, FileEdit, PushButton
from napari.utils.notifications import show_error, show_info
from psygnal import Signal
from qtpy.QtCore import Qt
from qtpy.QtGui import QPixmap
from qtpy.QtWidgets import QLabel

from ..analysis.zcalibration import (
    ZCalibrationResult,
    ZCalibrationSettings,
    calibrate_adu,
    checked_output,
    save_calibration,
)
from ..defaults import CAMERA_FIELDS
from ..io.files import InputError
from ._fields import SettingsForm
from ._widgets import describe_error, layer_chooser, more_settings, note, scrolling
from ._workers import start_worker

PLOT_WIDTH = 330   # px of the calibration plot in the dock (a laptop screen: docks are narrow)


def calibrate_job(adu, metadata: dict, settings: ZCalibrationSettings, source: str, out: Path):
    """Calibrate (in the worker's thread) and write the calibration and its plot; returns the result."""
    result = calibrate_adu(np.asarray(adu), metadata, settings, source)
    save_calibration(result, out)
    return result


class ZCalibrationWidget(Container):
    """Bead z-stack layer, focus step and camera; Calibrate; the plot and what was written."""

    finished = Signal(object)   # the result (None when the stack could not be calibrated)

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        self.viewer = napari_viewer
        self.worker = None
        self.fields = SettingsForm(ZCalibrationSettings)
        self.fields.attach(self)
        self.layer = layer_chooser(napari_viewer, ("raw",), "bead z-stack")
        self.layer.tooltip = "camera frames of beads, the focus moving one step per frame (z grows with the frame)"
        self.output = FileEdit(mode="w", filter="z calibrations (*.json)", label="save as",
                               tooltip="the calibration (.json); its plot is written beside it (.png)")
        self.button = PushButton(text="Calibrate")
        self.status = note("Choose the bead stack, the focus step between frames and a file to save to.")
        f = self.fields
        super().__init__(widgets=[self.layer, *f.take("step", "pixel_size", "offset", "gain", "read_noise"),
                                  self.output, self.button, self.status])
        self.native.layout().insertWidget(self.index(self.button), more_settings(f.rest()))
        self.plot = QLabel()
        self.plot.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.native.layout().addWidget(self.plot)
        scrolling(self)
        self.button.changed.connect(lambda: self.run())

    def run(self):
        """Start calibrating the chosen layer; returns the worker (None when the inputs are refused)."""
        layer = self.layer.value
        if self.worker is not None:
            return None
        try:
            if layer is None:
                raise InputError("no bead stack: open one (File > Open) and choose it here")
            if not self.output.value or str(self.output.value) in ("", "."):
                raise InputError("choose a file to save the calibration to (.json)")
            settings = self.fields.build(ZCalibrationSettings)
            out = checked_output(self.output.value, settings)
        except InputError as exc:
            self._failed(exc)
            return None
        metadata = {k: v for k, v in layer.metadata.items() if k in ("pixel_size", *CAMERA_FIELDS)}
        self.worker = start_worker(calibrate_job, layer.data, metadata, settings, layer.name, out)
        self.worker.returned.connect(lambda result: self._done(result, out))
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._finished)
        self.button.enabled = False
        self.plot.clear()
        self.status.value = f"calibrating '{layer.name}'…"
        self.worker.start()
        return self.worker

    def _done(self, result: ZCalibrationResult, out: Path) -> None:
        cal, r = result.calibration, result.calibration.residuals
        self.status.value = "\n".join([
            f"wrote {out.name} and {out.with_suffix('.png').name}: {r['beads_used']} of {r['beads_found']} beads, "
            f"{'Huang curves' if cal.model == 'huang2008' else 'splines'}, z {cal.z_range[0]:.0f} to "
            f"{cal.z_range[1]:.0f} nm, {cal.pixel_size:g} nm pixels, {result.seconds:.1f} s",
            *(f"dropped {line}" for line in result.beads.notes)])
        pixmap = QPixmap(str(out.with_suffix(".png")))
        self.plot.setPixmap(pixmap.scaledToWidth(PLOT_WIDTH, Qt.TransformationMode.SmoothTransformation))
        show_info(f"z calibration written to {out}; use it in 'Super-resolve with uncertainty'.")
        self.finished.emit(result)

    def _failed(self, exc: BaseException) -> None:
        self.status.value = f"not calibrated: {describe_error(exc)}"
        show_error(f"Calibration failed: {describe_error(exc)}")
        self.finished.emit(None)

    def _finished(self) -> None:
        self.worker = None
        self.button.enabled = True
