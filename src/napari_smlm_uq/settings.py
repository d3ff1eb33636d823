"""Settings declared once: every field of a job's settings dataclass carries its default, unit, range, choices
and help text, and both front ends are built from these fields (the command line in ``cli/``, the widgets'
inputs in ``_napari/_fields.py``), so adding an option is adding one field.

A field is declared with :func:`option`. Its choices are its ``Literal`` type; ``low`` and ``high`` bound a
number (``open_low``: strictly above ``low``); a ``tuple[float, float]`` field is a ``(low, high)`` range whose
ends both obey the bounds; ``None``, where the type allows it, means "not set". A field whose type is itself
a settings dataclass (the :class:`~physics.camera.Camera` of a prediction) contributes that class's fields.
:func:`check` validates an object against its fields and raises :class:`InputError`, the one error type for
the user's mistakes.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .io.files import InputError

__all__ = ["InputError", "Option", "Spec", "build", "check", "option", "specs"]


@dataclass(frozen=True)
class Option:
    """What the front ends need beyond the type and default: ``flag`` (command-line name, default
    ``--field-name``), ``label`` (widget label and error messages, default the name with spaces), ``step`` of a
    spin box; ``cli`` / ``gui``: whether the command line / the widget shows the field."""

    help: str
    unit: str = ""
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    flag: str = ""
    label: str = ""
    step: float | None = None
    cli: bool = True
    gui: bool = True


def option(default: Any = dataclasses.MISSING, *, help: str, factory: Any = dataclasses.MISSING, **meta) -> Any:
    """A dataclass field with its :class:`Option` (keywords as there): ``x: float = option(1.0, help=...)``."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"option": Option(help, **meta)})


@dataclass(frozen=True)
class Spec:
    """One field as the front ends see it: ``kind`` (bool, int, float or str), its ``choices`` (None: any),
    whether None is allowed (``optional``), whether it is a ``(low, high)`` ``pair`` and whether it may be one
    (``ranged``: a number or a range, as a simulation's photons)."""

    name: str
    option: Option
    kind: type
    choices: tuple | None
    optional: bool
    pair: bool
    ranged: bool
    default: Any

    @property
    def flag(self) -> str:
        return self.option.flag or "--" + self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        """The key of the parsed command line (and of :func:`build`'s values)."""
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def label(self) -> str:
        return self.option.label or self.name.replace("_", " ")

    def bounds(self) -> str:
        """The allowed values in words ("> 0", "in [0, 1]"), or ""."""
        o = self.option
        if o.low is not None and o.high is not None:
            return f"in {'(' if o.open_low else '['}{o.low:g}, {o.high:g}]"
        if o.low is not None:
            return f"{'>' if o.open_low else '>='} {o.low:g}"
        return "" if o.high is None else f"<= {o.high:g}"

    def describe(self) -> str:
        """Help text with the unit and the allowed values."""
        extra = ", ".join(t for t in (self.option.unit, self.bounds()) if t)
        return f"{self.option.help} ({extra})" if extra else self.option.help

    def check(self, value: Any) -> None:
        """Raise :class:`InputError` unless ``value`` is allowed."""
        if value is None:
            if not self.optional:
                raise InputError(f"{self.label} must be set")
            return
        if self.choices is not None:
            if value not in self.choices:
                raise InputError(f"{self.label} must be one of {', '.join(map(str, self.choices))} (got {value!r})")
            return
        if self.kind not in (int, float):
            return
        values = np.asarray(value, float)
        if self.pair and values.shape != (2,):
            raise InputError(f"{self.label} must be a range: low high (got {value})")
        self.check_bounds(values)
        if self.ranged and values.shape == (2,) and values[0] > values[1]:
            raise InputError(f"{self.label} range must have low <= high (got {values[0]:g}, {values[1]:g})")

    def check_bounds(self, value: Any) -> None:
        """Raise :class:`InputError` unless the number ``value`` (or every value of an array) is finite and
        inside the bounds."""
        values, o = np.asarray(value, float), self.option
        if (np.all(np.isfinite(values)) and (o.low is None or np.all(values > o.low if o.open_low else values >= o.low))
                and (o.high is None or np.all(values <= o.high))):
            return
        shown = (", ".join(f"{v:g}" for v in values.ravel()) if values.size <= 2
                 else f"values from {values.min():g} to {values.max():g}")
        unit = f" {o.unit}" if o.unit else ""
        raise InputError(f"{self.label} must be {self.bounds() or 'finite'}{unit} (got {shown})")


def _spec(f: dataclasses.Field, hint: Any) -> Spec:
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    optional = type(None) in args
    first = next(a for a in args if a is not type(None))   # the first type decides (float | tuple: a float)
    choices, pair, kind = None, False, first
    if typing.get_origin(first) is Literal:
        choices = typing.get_args(first)
        kind = type(choices[0])
    elif typing.get_origin(first) is tuple:
        pair, kind = True, typing.get_args(first)[0]
    ranged = tuple[float, float] in args
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    return Spec(f.name, f.metadata["option"], kind, choices, optional, pair, ranged, default)


@functools.cache
def specs(cls: type, flatten: bool = True) -> tuple[Spec, ...]:
    """The declared fields of settings class ``cls``, with those of nested settings classes (``flatten``)."""
    hints = typing.get_type_hints(cls)
    out: list[Spec] = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += specs(hints[f.name]) if flatten else []
        elif "option" in f.metadata:
            out.append(_spec(f, hints[f.name]))
    return tuple(out)


def spec(cls: type, name: str) -> Spec:
    return next(s for s in specs(cls) if s.name == name)


def check(obj: Any) -> None:
    """Check every declared field of ``obj`` (not of its nested settings: they check themselves)."""
    for s in specs(type(obj), flatten=False):
        s.check(getattr(obj, s.name))


def build(cls: type, values: Mapping[str, Any], **given: Any) -> Any:
    """An instance of ``cls`` from ``values`` keyed by :attr:`Spec.dest` (a parsed command line, a widget's
    values; a field that is absent, or that no front end shows, keeps its default), nested settings built
    alike, ``given`` fields as given."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in given:
            kwargs[f.name] = given[f.name]
        elif dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = build(hints[f.name], values)
        elif "option" in f.metadata and (f.metadata["option"].cli or f.metadata["option"].gui):
            s = _spec(f, hints[f.name])
            if s.dest in values:
                value = values[s.dest]
                kwargs[f.name] = tuple(value) if s.pair and value is not None else value
    return cls(**kwargs)
