"""The ``smlm-uq`` command line: simulate | crlb | evaluate | predict | train | demo.

Every user mistake ends in one line on stderr and exit status 2, before any output is written.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .io import InputError

EXIT_USAGE = 2


class UsageError(Exception):
    """A problem with the user's input: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UsageError(f"{self.prog}: {message}")


def _positive(kind=float, allow_zero: bool = False):
    def check(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"must be {'>=' if allow_zero else '>'} 0 (got {text})")
        return value
    check.__name__ = "number"
    return check


def add_camera_args(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    """Camera options shared by every command (DESIGN.md 2 units)."""
    d = (lambda v: v) if defaults else (lambda v: None)
    p.add_argument("--pixel-size", type=_positive(), default=d(100.0), help="raw pixel size, nm")
    p.add_argument("--offset", type=float, default=d(100.0), help="camera offset, ADU")
    p.add_argument("--gain", type=_positive(), default=d(1.0), help="ADU per photo-electron")
    p.add_argument("--read-noise", type=_positive(allow_zero=True), default=d(1.5), help="read noise, e- rms")


# --- simulate -----------------------------------------------------------------------------------

def cmd_simulate(a: argparse.Namespace) -> int:
    from .io import write_localizations, write_stack
    from .localizations import emitters_table
    from .physics.camera import Camera
    from .physics.simulate import SimulationSettings, simulate

    settings = SimulationSettings(frames=a.frames, size=a.size, density=a.density, photons=a.photons,
                                  background=a.background, psf_sigma=a.psf_sigma, pixel_size=a.pixel_size,
                                  camera=Camera(a.offset, a.gain, a.read_noise), seed=a.seed)
    try:
        settings.validate()
    except ValueError as exc:
        raise UsageError(f"smlm-uq simulate: {exc}") from None
    out = Path(a.out)
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise UsageError(f"smlm-uq simulate: output must end in .tif or .tiff (got {out.name})")
    stack = simulate(settings)
    adu = np.clip(np.rint(stack.adu), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    write_stack(out, adu, a.pixel_size, offset=a.offset, gain=a.gain, read_noise=a.read_noise)
    csv = out.with_suffix(".csv")
    write_localizations(csv, emitters_table(stack.emitters, a.pixel_size))
    print(f"wrote {out} ({adu.shape[0]} frames of {adu.shape[1]}x{adu.shape[2]} px) and {csv} "
          f"({len(stack.emitters)} emitters)")
    return 0


# --- crlb ---------------------------------------------------------------------------------------

def cmd_crlb(a: argparse.Namespace) -> int:
    from .physics.crlb import crlb

    if a.photons <= 0:
        raise UsageError(f"smlm-uq crlb: photons must be > 0 (got {a.photons:g})")
    bounds = crlb(a.photons, a.background, a.psf_sigma, a.read_noise)
    nm = bounds[0] * a.pixel_size
    if a.json:
        print(json.dumps({"crlb_x_nm": nm, "crlb_y_nm": bounds[1] * a.pixel_size,
                          "crlb_photons": bounds[2], "crlb_background": bounds[3]}))
    else:
        print(f"CRLB per axis: {nm:.3f} nm (x and y)  photons: +/-{bounds[2]:.1f}  "
              f"background: +/-{bounds[3]:.3f} photons/px")
    return 0


# --- evaluate -----------------------------------------------------------------------------------

def cmd_evaluate(a: argparse.Namespace) -> int:
    from .io import read_localizations
    from .localizations import table_xy
    from .metrics import score

    locs, gt = read_localizations(a.locs), read_localizations(a.gt)
    s = score(locs["frame"], table_xy(locs), gt["frame"], table_xy(gt), a.tolerance)
    if a.json:
        print(json.dumps(s.as_dict()))
    else:
        print(f"JAC {s.jaccard:.2f} %  RMSE {s.rmse:.2f} nm  E {s.efficiency:.2f}  precision {s.precision:.2f} %  "
              f"recall {s.recall:.2f} %  (TP {s.tp}, FP {s.fp}, FN {s.fn}, tolerance {a.tolerance:g} nm)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="smlm-uq", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("simulate", help="simulate a camera stack (TIFF) and its ground truth (CSV)")
    p.add_argument("out", help="output TIFF; the ground truth goes beside it as .csv")
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--size", type=int, default=64, help="frame size, pixels")
    p.add_argument("--density", type=float, default=1.0, help="emitters per um^2")
    p.add_argument("--photons", type=float, default=2000.0, help="photons per emitter")
    p.add_argument("--background", type=float, default=20.0, help="photons per pixel")
    p.add_argument("--psf-sigma", type=float, default=1.0, help="PSF standard deviation, raw pixels")
    p.add_argument("--seed", type=int, default=0)
    add_camera_args(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("crlb", help="Cramer-Rao lower bound of the localization precision")
    p.add_argument("--photons", type=float, default=2000.0)
    p.add_argument("--background", type=_positive(allow_zero=True), default=20.0, help="photons per pixel")
    p.add_argument("--psf-sigma", type=_positive(), default=1.0, help="raw pixels")
    p.add_argument("--json", action="store_true")
    add_camera_args(p)
    p.set_defaults(func=cmd_crlb)

    p = sub.add_parser("evaluate", help="JAC, RMSE, efficiency of localizations against ground truth")
    p.add_argument("locs", help="localizations CSV (ThunderSTORM columns)")
    p.add_argument("gt", help="ground truth CSV (same columns)")
    p.add_argument("--tolerance", type=_positive(), default=250.0, help="matching radius, nm")
    p.add_argument("--json", action="store_true", help="one machine-readable JSON line")
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (UsageError, InputError) as exc:
        text = f"smlm-uq: {exc}" if isinstance(exc, InputError) else str(exc)
        print(text.replace(": ", ": error: ", 1), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("smlm-uq: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
