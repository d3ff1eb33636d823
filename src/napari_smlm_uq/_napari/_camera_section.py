"""The camera part of the predict dock: a newly chosen layer fills in the camera, pixel size and background
estimate (file metadata, else estimated from its frames: :func:`camera_choice.choose_camera`,
:func:`background_choice.choose_background`); "Estimate from data"; the camera a run uses, checked against
the data."""

from __future__ import annotations

import numpy as np
from napari.utils.notifications import show_error, show_warning

from ..analysis.preflight import preflight
from ..defaults import CAMERA_FIELDS, PIXEL_SIZE_NM
from ..inference.background_choice import choose_background
from ..inference.camera_choice import CameraChoice, choose_camera
from ..io.camera_map import read_camera_map
from ..physics.camera import Camera
from ..physics.camera_estimation import MAX_FRAMES as CAMERA_FRAMES
from ._layers import camera_settings
from ._workers import as_frames


class CameraSection:
    """Mixin of :class:`predict_widget.PredictWidget`: its camera methods. Uses the widget's inputs (``layer``,
    ``pixel_size``, ``camera_kind``, the camera fields, ``camera_map``, ``background``, ``start_frame``,
    ``stop_frame``), notes (``camera_note``, ``background_note``) and ``_show_total``; sets ``camera_choice``
    and ``background_choice``."""

    def _layer_changed(self, layer) -> None:
        """A layer chosen: fill in its frame range, pixel size, camera and background estimate."""
        if layer is None:
            self.camera_note.value = ("Open a camera stack (File > Open) or a sample (File > Open Sample): "
                                      "layers of camera counts are listed here.")
            self.background_note.value = ""
            return
        meta = camera_settings(layer.metadata)
        self.pixel_size.value = meta["pixel_size"]
        n = int(layer.data.shape[0]) if layer.ndim == 3 else 1
        self.start_frame.max, self.stop_frame.max = max(n - 1, 0), max(n, 1)
        self.start_frame.value, self.stop_frame.value = 0, n
        self._show_total()
        known = {k: layer.metadata[k] for k in meta["found"] if k != "pixel_size"}
        frames = self._camera_frames(layer)
        self._show_camera(choose_camera(frames, {}, known, self.camera_kind.value))
        self._show_background(frames, self.camera_choice.camera)
        found = "pixel_size" in meta["found"]
        self.camera_note.value += (f"; pixel size {meta['pixel_size']:g} nm (file metadata)" if found
                                   else f"; pixel size: default {PIXEL_SIZE_NM:g} nm, check it")
        extra = layer.metadata.get("note")
        self.camera_note.value += f". {extra}" if extra else ""

    def _camera_frames(self, layer):
        """The frames the camera estimate reads: the first ones of the chosen range."""
        start = self.start_frame.value
        return np.asarray(as_frames(layer.data)[start:start + CAMERA_FRAMES])

    def _show_camera(self, choice: CameraChoice) -> None:
        """Fill the camera fields from ``choice`` and say where each value came from."""
        for key in CAMERA_FIELDS:
            getattr(self, key).value = float(np.median(getattr(choice.camera, key)))
        self.camera_choice = choice
        self.camera_note.value = "\n".join(choice.messages)

    def _show_background(self, frames, camera: Camera) -> None:
        """Choose the background estimate from ``frames`` (ADU) with ``camera`` and say why."""
        self.background_choice = choose_background(frames, camera, given=self.background.value)
        self.background_note.value = self.background_choice.describe()

    def _background_changed(self) -> None:
        layer = self.layer.value
        if layer is not None and self.camera_choice is not None:
            self._show_background(self._camera_frames(layer), self.camera_choice.camera)

    def estimate_camera(self) -> CameraChoice | None:
        """Estimate gain, offset and read noise from the chosen layer's frames and fill the fields."""
        layer = self.layer.value
        if layer is None:
            show_error("No image layer to estimate the camera from.")
            return None
        choice = choose_camera(self._camera_frames(layer), {}, {}, self.camera_kind.value)
        self._show_camera(choice)
        checks = preflight(self._camera_frames(layer), choice.camera, self.pixel_size.value, None, choice.doubts)
        for line in checks.warnings:
            show_warning(line)
        return choice

    def checked_camera(self, frames) -> Camera:
        """The camera of the fields (or the sCMOS map), checked against the data's background noise: a
        disagreement is shown as a warning before the run. Raises InputError for a map that does not fit."""
        camera_map = None
        if self.camera_map.value:
            camera_map = read_camera_map(self.camera_map.value, frames.shape[-2:])
        given = {k: getattr(self, k).value for k in CAMERA_FIELDS}
        choice = choose_camera(np.asarray(frames[:CAMERA_FRAMES]), given, {}, self.camera_kind.value, camera_map,
                               "sCMOS map")
        if camera_map is not None:   # the note says which camera the run uses, naming the map's file once
            self.camera_note.value = "\n".join([f"sCMOS map: {self.camera_map.value}", *choice.messages])
        if choice.warning:
            show_warning(choice.warning.replace("command line", "the widget"))
        return choice.camera
