"""Dock widget "Filter by uncertainty": hide what the model is unsure about.

Pick a mean and a std layer (and optionally the localizations). A slider on the std, absolute or
relative to the mean (``std / (mean + eps)``), marks the uncertain SR pixels; the widget shows the mean
with those pixels zeroed (``<mean> filtered``), the uncertain region (``<mean> uncertain``), hides the
localizations that fall in it and reports the fractions of signal and localizations kept.
"""
from __future__ import annotations

import napari
import numpy as np
from napari.layers import Image, Points
from napari.utils.notifications import show_warning
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QComboBox, QFormLayout, QLabel, QVBoxLayout, QWidget
from superqt import QLabeledDoubleSlider

from ._layers import world_to_index
from ._qt import LayerCombo

EPS = 0.01          # KDE units (a kernel's peak is 1): keeps std / (mean + eps) finite on empty background
MODES = {"absolute": "std (KDE units)", "relative": "std / mean"}
STEPS = 1000


def is_sr_image(layer) -> bool:
    """Grayscale image layers other than this widget's own outputs."""
    return isinstance(layer, Image) and not layer.rgb and layer.metadata.get("kind") not in ("filtered", "uncertain")


class ThresholdWidget(QWidget):
    """Threshold the per-pixel uncertainty of a prediction; live filtered image and kept fractions."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.mean_combo = LayerCombo(napari_viewer, is_sr_image)
        self.std_combo = LayerCombo(napari_viewer, is_sr_image)
        self.points_combo = LayerCombo(napari_viewer, lambda layer: isinstance(layer, Points), none_label="(none)")
        self.mode = QComboBox()
        for key, text in MODES.items():
            self.mode.addItem(text, key)
        self.slider = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.slider.setToolTip("SR pixels whose uncertainty is above this value are removed")
        self.kept = QLabel("")
        self.kept.setWordWrap(True)
        form = QFormLayout()
        form.addRow("mean", self.mean_combo)
        form.addRow("std", self.std_combo)
        form.addRow("localizations", self.points_combo)
        form.addRow("threshold on", self.mode)
        form.addRow("max uncertainty", self.slider)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.kept)
        layout.addStretch()

        self.signal_fraction = float("nan")
        self.points_fraction = float("nan")
        self._cache: tuple | None = None
        self._points_layer = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(30)
        self._timer.timeout.connect(self.apply)

        self.mean_combo.layer_changed.connect(self._mean_changed)
        self.std_combo.layer_changed.connect(lambda _: self._reset_range())
        self.points_combo.layer_changed.connect(lambda _: self._schedule())
        self.mode.currentIndexChanged.connect(lambda _: self._reset_range())
        self.slider.valueChanged.connect(lambda _: self._schedule())
        self._pick_defaults()

    # --- choosing layers -----------------------------------------------------------------------

    def _pick_defaults(self) -> None:
        """Prefer the most recent prediction's mean, its std and its localizations."""
        means = [layer for layer in self.viewer.layers[::-1] if layer.metadata.get("kind") == "mean"
                 and isinstance(layer, Image)]
        if means:
            self.mean_combo.select(means[0].name)
        self._mean_changed(self.mean_combo.layer())

    def _partner(self, mean, kind: str):
        source, partial = mean.metadata.get("source"), mean.metadata.get("partial")
        for layer in self.viewer.layers[::-1]:
            meta = layer.metadata
            if meta.get("kind") == kind and meta.get("source") == source and meta.get("partial") == partial:
                return layer
        return None

    def _mean_changed(self, mean) -> None:
        if mean is not None:
            for combo, kind in ((self.std_combo, "std"), (self.points_combo, "localizations")):
                partner = self._partner(mean, kind)
                if partner is not None:
                    combo.select(partner.name)
        self._reset_range()

    # --- computing -----------------------------------------------------------------------------

    def _arrays(self):
        """``(mean, metric)`` arrays of the chosen layers (cached), or None with a reason."""
        mean, std = self.mean_combo.layer(), self.std_combo.layer()
        if mean is None or std is None:
            return None, "Choose a mean and a std layer (from 'Super-resolve with uncertainty')."
        mode = self.mode.currentData()
        key = (id(mean), id(std), id(mean.data), id(std.data), np.shape(mean.data), np.shape(std.data), mode)
        if self._cache is None or self._cache[0] != key:
            m, s = np.asarray(mean.data, dtype=np.float32), np.asarray(std.data, dtype=np.float32)
            if m.shape != s.shape:
                return None, f"'{mean.name}' {m.shape} and '{std.name}' {s.shape} differ in shape."
            metric = s if mode == "absolute" else s / (np.clip(m, 0, None) + EPS)
            self._cache = (key, m, metric, float(np.clip(m, 0, None).sum()))
        return self._cache[1:], ""

    def _reset_range(self) -> None:
        arrays, why = self._arrays()
        top = 1.0
        if arrays is not None:
            metric = arrays[1]
            top = float(np.max(metric)) if metric.size else 1.0
            top = top if top > 0 else 1.0
        self.slider.blockSignals(True)
        self.slider.setRange(0.0, top)
        self.slider.setSingleStep(top / STEPS)
        self.slider.setDecimals(max(2, int(np.ceil(-np.log10(top / STEPS)))))
        self.slider.setValue(top)
        self.slider.blockSignals(False)
        self._schedule()

    def _schedule(self) -> None:
        self._timer.start()

    def threshold(self) -> float:
        return float(self.slider.value())

    def apply(self) -> None:
        """Update the filtered and uncertain layers, the localizations shown and the kept fractions."""
        arrays, why = self._arrays()
        if arrays is None:
            self.kept.setText(why)
            return
        mean_arr, metric, total = arrays
        mean = self.mean_combo.layer()
        uncertain = metric > self.threshold()
        filtered = np.where(uncertain, 0.0, mean_arr).astype(np.float32)
        self.signal_fraction = float(np.clip(filtered, 0, None).sum() / total) if total > 0 else 1.0
        geometry = {"scale": mean.scale, "translate": mean.translate, "units": mean.units,
                    "axis_labels": mean.axis_labels, "metadata": {
            **{k: v for k, v in mean.metadata.items() if k in ("source", "pixel_size", "frames", "partial")},
            "threshold": self.threshold(), "mode": self.mode.currentData()}}
        self._show(f"{mean.name} filtered", filtered, "filtered", mean,
                   {"colormap": mean.colormap.name, "contrast_limits": mean.contrast_limits, **geometry})
        self._show(f"{mean.name} uncertain", uncertain.astype(np.uint8), "uncertain", mean,
                   {"colormap": "red", "contrast_limits": (0, 1), "blending": "additive", "opacity": 0.6, **geometry})
        self._filter_points(mean, uncertain)
        text = f"signal kept: {100 * self.signal_fraction:.1f} %"
        if self._points_layer is not None:
            n = len(self._points_layer.data)
            text += f" · localizations kept: {int(round(self.points_fraction * n))} / {n}"
            text += f" ({100 * self.points_fraction:.1f} %)" if n else ""
        self.kept.setText(text)

    def _show(self, name: str, data: np.ndarray, kind: str, mean, kwargs: dict) -> None:
        """Update layer ``name`` or add it just above ``mean`` (so localizations above stay visible)."""
        kwargs["metadata"]["kind"] = kind
        layers = self.viewer.layers
        if name in layers and isinstance(layers[name], Image):
            layer = layers[name]
            layer.data = data
            layer.scale, layer.translate, layer.metadata = kwargs["scale"], kwargs["translate"], kwargs["metadata"]
            return
        layer = self.viewer.add_image(data, name=name, **kwargs)
        if mean in layers:
            layers.move(layers.index(layer), layers.index(mean) + 1)

    def _filter_points(self, mean, uncertain: np.ndarray) -> None:
        points = self.points_combo.layer()
        old = self._points_layer
        if old is not None and old is not points and old in self.viewer.layers:
            old.shown = np.ones(len(old.data), bool)  # release the previous layer
        self._points_layer = points
        if points is None:
            self.points_fraction = float("nan")
            return
        if len(points.data) == 0:
            self.points_fraction = 1.0
            return
        world = np.asarray(points.data) * np.asarray(points.scale) + np.asarray(points.translate)
        if world.shape[1] < uncertain.ndim:
            show_warning(f"'{points.name}' has fewer dimensions than '{mean.name}'; localizations not filtered.")
            self.points_fraction = float("nan")
            return
        idx, inside = world_to_index(world, mean.scale, mean.translate, uncertain.shape)
        hidden = inside & uncertain[tuple(idx.T)]
        points.shown = ~hidden
        self.points_fraction = float((~hidden).mean())
