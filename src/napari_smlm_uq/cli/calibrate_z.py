"""``smlm-uq calibrate-z``: an astigmatic z calibration (JSON, and a PNG plot beside it) from a bead z-stack,
with the options of :class:`ZCalibrationSettings`."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..analysis.zcalibration import ZCalibrationSettings
from ..io.files import InputError
from ._options import add_options, settings

NAME, HELP = "calibrate-z", "astigmatic z calibration from a bead z-stack (JSON and a PNG plot)"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("beads", help="bead z-stack TIFF (ADU), the focus moving one step per frame")
    p.add_argument("--out", required=True, metavar="CAL.json", help="the calibration; its plot goes beside it (.png)")
    add_options(p, ZCalibrationSettings)


def run(a: argparse.Namespace) -> int:
    from ..analysis.zcalibration import calibrate_file

    if a.step is None:
        raise InputError("--step is required: the focus step between frames (nm) cannot be read from a bead stack")
    result = calibrate_file(a.beads, settings(ZCalibrationSettings, a), a.out)
    cal, r = result.calibration, result.calibration.residuals
    print(f"wrote {a.out} and {Path(a.out).with_suffix('.png')}: {r['beads_used']} of {r['beads_found']} beads, "
          f"z {cal.z_range[0]:.0f} to {cal.z_range[1]:.0f} nm, held-out width rms {r['huang_heldout_rms_px']:.3f} px "
          f"(spline {r['spline_heldout_rms_px']:.3f} px), {result.seconds:.1f} s")
    for note in result.beads.notes:
        print(f"  dropped {note}")
    return 0
