"""``smlm-uq crlb``: the Cramer-Rao lower bound of the localization precision, for the emitter, background,
PSF and camera of :class:`SimulationSettings`."""
from __future__ import annotations

import argparse
import json

from ..physics.simulate import SimulationSettings
from ._options import add_options, settings

NAME, HELP = "crlb", "Cramer-Rao lower bound of the localization precision"
FIELDS = ("photons", "background", "psf_sigma", "pixel_size", "read_noise")


def arguments(p: argparse.ArgumentParser) -> None:
    add_options(p, SimulationSettings, only=FIELDS)
    p.add_argument("--json", action="store_true", help="one machine-readable JSON line")


def run(a: argparse.Namespace) -> int:
    from ..physics.crlb import crlb

    s = settings(SimulationSettings, a).validate()
    bounds = crlb(s.photons, s.background, s.psf_sigma, s.camera.read_noise)
    nm = bounds[0] * s.pixel_size
    if a.json:
        print(json.dumps({"crlb_x_nm": nm, "crlb_y_nm": bounds[1] * s.pixel_size,
                          "crlb_photons": bounds[2], "crlb_background": bounds[3]}))
    else:
        print(f"CRLB per axis: {nm:.3f} nm (x and y)  photons: +/-{bounds[2]:.1f}  "
              f"background: +/-{bounds[3]:.3f} photons/px")
    return 0
