"""Small Qt building blocks shared by the widgets: layer and model choosers, spin boxes, messages."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLayout,
    QSpinBox,
    QWidget,
)

from . import _models


class LayerCombo(QComboBox):
    """Names of the viewer's layers that satisfy ``accept(layer)``, kept up to date; emits
    ``layer_changed(layer or None)``."""

    layer_changed = Signal(object)

    def __init__(self, viewer, accept: Callable, none_label: str | None = None, parent=None):
        super().__init__(parent)
        self.viewer, self.accept, self.none_label = viewer, accept, none_label
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        self._last: str | None = None
        events, refresh, watch = viewer.layers.events, self.refresh, self._watch
        for event in (events.inserted, events.removed, events.moved):
            event.connect(refresh)
        events.inserted.connect(watch)
        for layer in viewer.layers:
            layer.events.name.connect(refresh)

        def disconnect(*_):  # the viewer outlives its dock widgets
            for event in (events.inserted, events.removed, events.moved):
                event.disconnect(refresh)
            events.inserted.disconnect(watch)
            for layer in viewer.layers:
                layer.events.name.disconnect(refresh)

        self.destroyed.connect(disconnect)
        self.currentIndexChanged.connect(self._changed)
        self.refresh()

    def _watch(self, event=None) -> None:
        if event is not None and getattr(event, "value", None) is not None:
            event.value.events.name.connect(self.refresh)

    def refresh(self, event=None) -> None:
        current = self.currentText() or self._last
        names = [layer.name for layer in self.viewer.layers[::-1] if self.accept(layer)]
        items = ([self.none_label] if self.none_label else []) + names
        if items == [self.itemText(i) for i in range(self.count())]:
            return
        self.blockSignals(True)
        self.clear()
        self.addItems(items)
        if current in items:
            self.setCurrentIndex(items.index(current))
        self.blockSignals(False)
        self._changed()

    def showPopup(self) -> None:
        self.refresh()
        super().showPopup()

    def layer(self):
        name = self.currentText()
        if not name or name == self.none_label or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]

    def select(self, name: str) -> None:
        self.refresh()
        index = self.findText(name)
        if index >= 0:
            self.setCurrentIndex(index)

    def _changed(self, *_) -> None:
        name = self.currentText()
        if name != self._last:
            self._last = name
            self.layer_changed.emit(self.layer())


class ModelCombo(QComboBox):
    """Bundled models and registered model files, then "Browse…" (a file dialog). ``value()`` is a
    bundled name, a file path, ``_models.SCRATCH`` (with ``scratch=True``) or None."""

    NONE = "no model yet: Browse… or train one"

    def __init__(self, scratch: bool = False, parent=None):
        super().__init__(parent)
        self.scratch = scratch
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(16)
        self._previous: str | None = None
        self.activated.connect(self._activated)
        _models.subscribe(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        current = self.value() or self._previous
        self.blockSignals(True)
        self.clear()
        choices = _models.choices()
        if self.scratch:
            self.addItem(_models.SCRATCH, _models.SCRATCH)
        elif not choices:
            self.addItem(self.NONE, None)
        for text, value in choices:
            self.addItem(text, value)
            self.setItemData(self.count() - 1, value, Qt.ItemDataRole.ToolTipRole)
        self.addItem(_models.BROWSE, _models.BROWSE)
        index = self.findData(current) if current else -1
        self.setCurrentIndex(index if index >= 0 else 0)
        self.blockSignals(False)

    def value(self) -> str | None:
        value = self.currentData()
        return None if value == _models.BROWSE else value

    def select(self, value: str) -> None:
        index = self.findData(value)
        if index >= 0:
            self.setCurrentIndex(index)
            self._previous = value

    def add_file(self, path: str | Path) -> str:
        """Register a model file, list it and select it."""
        path = str(_models.register(path))
        self.select(path)
        return path

    def _activated(self, index: int) -> None:
        if self.itemData(index) != _models.BROWSE:
            self._previous = self.itemData(index)
            return
        path, _ = QFileDialog.getOpenFileName(self, "Choose a napari-smlm-uq model file", "",
                                              "Model files (*.pt *.pth);;All files (*)")
        if path:
            self.add_file(path)
        else:
            index = self.findData(self._previous) if self._previous else -1
            self.setCurrentIndex(index if index >= 0 else 0)


def spin(value: float, lo: float, hi: float, suffix: str = "", decimals: int | None = None, step: float | None = None,
         tip: str = "") -> QSpinBox | QDoubleSpinBox:
    """An integer spin box when ``decimals`` is None, else a double one."""
    box = QSpinBox() if decimals is None else QDoubleSpinBox()
    if decimals is not None:
        box.setDecimals(decimals)
    box.setRange(lo, hi)
    box.setValue(value)
    if step is not None:
        box.setSingleStep(step)
    if suffix:
        box.setSuffix(suffix)
    box.setToolTip(tip)
    box.setKeyboardTracking(False)
    return box


class RangeBox(QWidget):
    """Two double spin boxes for a ``(low, high)`` range."""

    def __init__(self, lo: float, hi: float, minimum: float, maximum: float, suffix: str = "", decimals: int = 1,
                 tip: str = ""):
        super().__init__()
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.low = spin(lo, minimum, maximum, "", decimals, tip=tip)
        self.high = spin(hi, minimum, maximum, suffix, decimals, tip=tip)
        layout.addWidget(self.low)
        layout.addWidget(self.high)
        self.setToolTip(tip)

    def value(self) -> tuple[float, float]:
        return (self.low.value(), self.high.value())

    def set_value(self, lo: float, hi: float) -> None:
        self.low.setValue(lo)
        self.high.setValue(hi)


def form_group(title: str, rows: list[tuple[str, QWidget | QLayout] | QWidget]) -> QGroupBox:
    """A titled box of labelled rows (a bare widget spans the row)."""
    box = QGroupBox(title)
    form = QFormLayout(box)
    for row in rows:
        form.addRow(*row) if isinstance(row, tuple) else form.addRow(row)
    return box


def hbox(*widgets: QWidget) -> QHBoxLayout:
    """Widgets side by side."""
    layout = QHBoxLayout()
    for w in widgets:
        layout.addWidget(w)
    return layout


def describe_error(exc: BaseException) -> str:
    """A one-paragraph message for a worker's exception, with what to do."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return ("Out of GPU memory even with the smallest batches. Choose device 'cpu', fewer samples, or a "
                "shorter frame range.")
    if isinstance(exc, (ValueError, OSError)):  # InputError is a ValueError: already a user message
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
