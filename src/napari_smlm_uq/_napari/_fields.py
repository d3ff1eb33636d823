"""magicgui inputs made from the fields of settings dataclasses (settings.py), as the command line is made from
them (cli/_options.py): a field declared once appears in both, with the same default, bounds and help.

A number becomes a spin box (two for a ``(low, high)`` range) with the field's bounds; a field that may be
None shows 0 ("default") or an empty text for "not set". Choices become a combo box, a flag a
check box, text a line edit.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, LineEdit, SpinBox, TupleEdit

from ..settings import Spec, build, specs

LARGEST = 1e9   # spin boxes' upper end where a field has none


def field_widget(spec: Spec, choices: list | None = None):
    """The magicgui widget of one field (``choices``: ``(text, value)`` pairs instead of the field's own)."""
    unit = f" ({spec.option.unit})" if spec.option.unit else ""
    common = {"name": spec.dest, "tooltip": spec.describe()}
    if spec.kind is bool:
        return CheckBox(value=spec.default, text=spec.label, **common)
    if choices is not None or spec.choices is not None:
        return ComboBox(choices=choices or list(spec.choices), value=spec.default, label=spec.label + unit,
                        nullable=spec.optional, **common)
    if spec.kind is str:
        return LineEdit(value=spec.default or "", label=spec.label + unit, **common)
    o = spec.option
    step = o.step or (1 if spec.kind is int else 0.01)
    low = (o.low if o.low is not None else -LARGEST) + (step if o.open_low else 0)
    high = o.high if o.high is not None else (10**9 if spec.kind is int else LARGEST)
    if spec.pair:
        return TupleEdit(value=tuple(spec.default), label=spec.label + unit, options={"min": low, "max": high,
                                                                                      "step": step}, **common)
    if not spec.optional:
        return (SpinBox if spec.kind is int else FloatSpinBox)(value=spec.default, min=low, max=high, step=step,
                                                               label=spec.label + unit, **common)
    low = min(low, 0)   # 0 stands for None
    if spec.kind is int:   # superqt's integer spin box shows no special text
        unit = f" ({spec.option.unit}; 0: default)" if spec.option.unit else " (0: default)"
        return SpinBox(value=spec.default or 0, min=low, max=high, step=step, label=spec.label + unit, **common)
    box = FloatSpinBox(value=spec.default or 0, min=low, max=high, step=step, label=spec.label + unit, **common)
    box.native.setSpecialValueText("default")
    return box


def field_value(spec: Spec, widget) -> Any:
    """A widget's value as the field's: None for an optional field left at 0 or empty, a tuple for a range."""
    value = widget.value
    if spec.optional and value in (0, "", None):
        return None
    return tuple(value) if spec.pair else value


class SettingsForm:
    """The inputs of the fields of ``classes`` that the widgets show (``only``: just these fields), keyed by
    :attr:`Spec.dest` (as the command line's options); ``choices`` replaces a field's choices."""

    def __init__(self, *classes: type, only: Iterable[str] = (), choices: dict[str, list] | None = None):
        only = set(only)
        self.specs = {s.dest: s for cls in classes for s in specs(cls)
                      if s.option.gui and (not only or s.name in only)}
        self.widgets = {dest: field_widget(s, (choices or {}).get(dest)) for dest, s in self.specs.items()}
        self._placed: set[str] = set()

    def __getitem__(self, dest: str):
        return self.widgets[dest]

    def take(self, *dests: str) -> list:
        """These inputs, in this order, for a place in the layout."""
        self._placed.update(dests)
        return [self.widgets[d] for d in dests]

    def rest(self) -> list:
        """The inputs not :meth:`take` n yet (a new field appears here by itself)."""
        return self.take(*(d for d in self.widgets if d not in self._placed))

    def values(self) -> dict[str, Any]:
        return {dest: field_value(s, self.widgets[dest]) for dest, s in self.specs.items()}

    def build(self, cls: type, **given: Any):
        """``cls`` from the inputs' values (fields without an input keep their defaults), ``given`` as given."""
        return build(cls, self.values(), **given)

    def attach(self, owner: Any) -> None:
        """Each input as an attribute of ``owner`` named as its field (``widget.samples``)."""
        for dest, widget in self.widgets.items():
            setattr(owner, dest, widget)
