"""Command-line options made from the fields of settings dataclasses (settings.py): one generic function for
every command, so that an option is written once, as a field."""
from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from ..io.files import InputError
from ..settings import Spec, build, specs


class ParseError(InputError):
    """A command line argparse refused (the user's mistake): one line, exit status 2."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise ParseError(self.prog, message)


def add_options(parser: argparse.ArgumentParser, cls: type, only: Iterable[str] = (),
                unset: Iterable[str] = ()) -> None:
    """An option for every field of settings class ``cls`` that the command line shows (``only``: just these
    fields); the fields in ``unset`` default to None, meaning "from the input file, else the field's default"."""
    only, unset = set(only), set(unset)
    for spec in specs(cls):
        if spec.option.cli and (not only or spec.name in only):
            add_option(parser, spec, spec.name in unset)


def add_option(parser: argparse.ArgumentParser, spec: Spec, unset: bool = False) -> None:
    """``--name`` for one field: its type, choices, default and help (with unit and bounds); bounds are checked
    as the command line is read, so that the message names the option."""
    default, text = spec.default, spec.describe()
    if unset:
        default, text = None, f"{text}; default: from the file, else {spec.default:g}"
    elif default is not None and default is not False:
        shown = " ".join(map(str, default)) if spec.pair else default
        text = f"{text}; default: {shown}"
    kwargs: dict[str, Any] = {"dest": spec.dest, "default": default, "help": text}
    if spec.kind is bool:
        action = argparse.BooleanOptionalAction if spec.default else "store_true"
        parser.add_argument(spec.flag, action=action, **kwargs)
        return
    if spec.choices is not None:
        kwargs["choices"] = spec.choices
    if spec.pair:
        kwargs.update(nargs=2, metavar=("LOW", "HIGH"))
    parser.add_argument(spec.flag, type=reader(spec), **kwargs)


def reader(spec: Spec):
    """argparse's ``type`` for a field: text -> ``spec.kind``, inside the field's bounds."""
    def read(text: str):
        value = spec.kind(text)   # a ValueError: argparse says "invalid <kind> value"
        if spec.kind in (int, float):
            try:
                spec.check_bounds(value)
            except InputError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None
        return value
    read.__name__ = spec.kind.__name__
    return read


def settings(cls: type, args: argparse.Namespace, **given: Any):
    """``cls`` from the parsed command line (its fields by their option names), ``given`` fields as given."""
    return build(cls, vars(args), **given)
