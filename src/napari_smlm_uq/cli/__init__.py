"""The ``smlm-uq`` command line: simulate | crlb | evaluate | camera | predict | train | demo | postprocess |
calibrate-z.

How it is built (read this before adding an option):

- Each command is a module of this package with ``NAME``, ``HELP``, ``arguments(parser)`` and ``run(args) ->
  exit status``; :data:`COMMANDS` lists them.
- Its options are the fields of the job's settings dataclasses (``PredictSettings``, ``TrainSettings``,
  ``SimulationSettings``, postprocess ``Settings``, ``RunSettings``...), each declared once with
  ``settings.option(default, help=..., unit=..., low=..., high=..., flag=..., label=...)`` and its choices as a
  ``Literal`` type. ``arguments`` calls ``add_options(parser, SettingsClass)`` (cli/_options.py) and ``run``
  builds the settings with ``settings(SettingsClass, args)``. Adding an option is adding one field: the
  command line and the widget (``_napari/_fields.py``) both get it. Only what is not a setting is written by
  hand in a command's module: its input and output paths, ``--json``, ``--overwrite``.
- Errors: the user's mistakes raise ``InputError`` (io/files.py; argparse's own become one): one line on
  stderr, exit status 2, nothing written. Anything else is a bug of ours: its traceback and a request to
  report it, exit status 1. A fault of the machine's files (a full disk, a folder that vanished): one line
  naming what of the run is kept, exit status 1. Ctrl-C: exit status 130.
"""
from __future__ import annotations

import argparse
import sys
import traceback

from ..io.files import InputError, StorageError
from . import calibrate_z, camera, crlb, demo, evaluate, postprocess, predict, simulate, train
from ._options import ParseError, Parser

PROG = "smlm-uq"
EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 2, 1, 130
EXIT_FAULT = 1   # the machine failed the run (a full disk, a vanished folder): one line naming what is kept
COMMANDS = (simulate, crlb, evaluate, camera, predict, train, demo, postprocess, calibrate_z)


def parser() -> argparse.ArgumentParser:
    """The command line: one sub-command per module of :data:`COMMANDS`."""
    root = Parser(prog=PROG, description=__doc__.splitlines()[0])
    sub = root.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        p = sub.add_parser(command.NAME, help=command.HELP, description=command.HELP)
        command.arguments(p)
        p.set_defaults(run=command.run)
    return root


def main(argv: list[str] | None = None) -> int:
    prog = PROG
    try:
        args = parser().parse_args(argv)
        prog = f"{PROG} {args.command}"
        return args.run(args)
    except InputError as exc:
        print(f"{exc.prog if isinstance(exc, ParseError) else prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StorageError as exc:   # the output folder failed mid-run: what is kept is named
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAULT
    except OSError as exc:   # any other fault of the machine's files: one line, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{prog}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAULT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:
        traceback.print_exc()
        print(f"{prog}: internal error (not a problem with your input): please report it with the command and "
              "the traceback above", file=sys.stderr)
        return EXIT_BUG
