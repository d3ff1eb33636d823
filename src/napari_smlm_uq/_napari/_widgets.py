"""magicgui building blocks shared by the dock widgets: layer choosers filtered by what a layer holds,
the model chooser, wrapping notes and error messages."""
from __future__ import annotations

from pathlib import Path

from magicgui.widgets import ComboBox, Container, FileEdit, Label

from ..io.files import InputError
from . import _models
from ._layers import layer_kind


def layer_chooser(viewer, kinds: tuple[str, ...], label: str, nullable: bool = False) -> ComboBox:
    """A chooser of the viewer's layers whose :func:`layer_kind` is one of ``kinds`` (topmost first);
    its value is the layer (None when there is none, or "none" is chosen with ``nullable``). napari
    calls ``reset_choices`` of a docked magicgui widget whenever layers are added, removed, moved or
    renamed."""
    def choices(_widget) -> list:
        return [(layer.name, layer) for layer in viewer.layers[::-1] if layer_kind(layer) in kinds]

    return ComboBox(choices=choices, label=label, nullable=nullable)


def more_settings(widgets: list, title: str = "More settings"):
    """A collapsed section (Qt) holding ``widgets``, labelled: the settings a run seldom changes."""
    from superqt import QCollapsible

    box = Container(widgets=widgets)
    box.margins = (0, 0, 0, 0)
    section = QCollapsible(title)
    section.addWidget(box.native)
    section.container = box   # the magicgui side lives as long as the section
    return section


def scrolling(container: Container) -> None:
    """Put ``container``'s form (its layout, with everything in it) into a vertical scroll area filling its
    native widget, so that the dock can shrink to a laptop screen (napari docks ``container.native``); the
    area is never narrower than the form."""
    from qtpy.QtCore import QSize, Qt
    from qtpy.QtWidgets import QScrollArea, QVBoxLayout, QWidget

    class FormArea(QScrollArea):
        def minimumSizeHint(self) -> QSize:
            width = self.widget().minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width()
            return QSize(width, super().minimumSizeHint().height())

    inner = QWidget()
    inner.setLayout(container.native.layout())   # Qt moves the layout and its widgets to ``inner``
    area = FormArea()
    area.setWidgetResizable(True)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setWidget(inner)
    outer = QVBoxLayout(container.native)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)


def note(text: str = "") -> Label:
    """A label whose text wraps to the dock's width."""
    label = Label(value=text)
    label.native.setWordWrap(True)
    return label


class ModelChooser(Container):
    """Bundled models and the model files registered in this session (``scratch``: "from scratch"
    first), and a file field: a file chosen there is registered, listed and selected."""

    def __init__(self, scratch: bool = False, label: str = "model"):
        self.scratch = scratch
        self.choice = ComboBox(choices=self._choices, label=label, nullable=False)
        self.file = FileEdit(mode="r", filter="Model files (*.pt *.pth)", label="or a model file")
        super().__init__(widgets=[self.choice, self.file], labels=True)
        self.margins = (0, 0, 0, 0)
        self.file.changed.connect(self._file_chosen)
        _models.subscribe(self.reset_choices)

    def _choices(self, _widget) -> list:
        choices = [(text, value) for text, value in _models.choices()]
        return ([(_models.SCRATCH, _models.SCRATCH)] if self.scratch else []) + choices

    @property
    def model(self) -> str | None:
        """A bundled name, a file path, :data:`_models.SCRATCH`, or None when there is nothing to choose."""
        return self.choice.value

    def select(self, value: str) -> None:
        self.choice.value = value

    def add_file(self, path: str | Path) -> str:
        """Register a model file, list it and select it."""
        path = str(_models.register(path))
        self.choice.value = path
        return path

    def _file_chosen(self, path) -> None:
        if path and Path(path).is_file():
            self.add_file(path)


def device_choices() -> list[tuple[str, str]]:
    """The devices of this machine, ``auto`` naming the one it picks."""
    from ..inference.pipeline import available_devices

    devices = available_devices()
    return [(f"auto ({devices[-1]})", "auto")] + [(n, n) for n in devices]


def precision_choices() -> list[tuple[str, str]]:
    """The network arithmetics, ``auto`` naming the one it picks on the default device."""
    from ..inference.pipeline import PRECISIONS, PredictSettings, native_bf16

    auto = "bf16" if native_bf16(PredictSettings(device="auto").torch_device()) else "fp32"
    return [(f"auto ({auto})" if p == "auto" else p, p) for p in PRECISIONS]


def describe_error(exc: BaseException) -> str:
    """A one-paragraph message for a worker's exception, with what to do."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return ("Out of GPU memory even with the smallest batches. Choose device 'cpu', fewer samples, or a "
                "shorter frame range.")
    if isinstance(exc, (InputError, OSError)):  # already a message for the user
        return str(exc)
    return f"internal error, please report it: {type(exc).__name__}: {exc}"
