"""``smlm-uq simulate``: a camera stack (TIFF) and its ground truth (CSV), from :class:`SimulationSettings`."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..io.files import InputError
from ..physics.simulate import SimulationSettings
from ._options import add_options, settings

NAME, HELP = "simulate", "simulate a camera stack (TIFF) and its ground truth (CSV)"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output TIFF; the ground truth goes beside it as .csv")
    add_options(p, SimulationSettings)
    p.add_argument("--z-calibration", default=None, metavar="CAL.json",
                   help="astigmatic PSF from this calibration (smlm-uq calibrate-z); the truth gains z [nm]")


def run(a: argparse.Namespace) -> int:
    from ..io.tables import emitters_table, write_localizations
    from ..io.tiff import write_stack
    from ..io.zcalibration import read_zcalibration
    from ..physics.simulate import simulate

    z_calibration = read_zcalibration(a.z_calibration) if a.z_calibration else None
    s = settings(SimulationSettings, a, z_calibration=z_calibration).validate()
    out = Path(a.out)
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise InputError(f"output must end in .tif or .tiff (got {out.name})")
    stack = simulate(s)
    adu = np.clip(np.rint(stack.adu), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    cam = s.camera
    write_stack(out, adu, s.pixel_size, offset=cam.offset, gain=cam.gain, read_noise=cam.read_noise)
    csv = out.with_suffix(".csv")
    write_localizations(csv, emitters_table(stack.emitters, s.pixel_size))
    print(f"wrote {out} ({adu.shape[0]} frames of {adu.shape[1]}x{adu.shape[2]} px) and {csv} "
          f"({len(stack.emitters)} emitters)")
    return 0
