"""``smlm-uq camera``: the camera (offset, gain, read noise) estimated from a stack, then the PSF sigma,
photons and background of its isolated spots. Options: the :class:`Camera` fields known beforehand, the
camera map of :class:`RunSettings`, the estimation method."""
from __future__ import annotations

import argparse
import json

from ..defaults import PIXEL_SIZE_NM
from ..inference.run import RunSettings
from ..io.files import InputError
from ..physics import camera_estimation as estimation
from ..physics.camera import Camera
from ._options import add_options

NAME = "camera"
HELP = ("estimate the camera (offset, gain, read noise), then the PSF sigma, photons and background of isolated "
        "spots, from a stack")


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("stack", help="TIFF stack of camera frames (ADU), >= 10 frames")
    add_options(p, Camera, only=("offset", "read_noise", "kind"), unset=("offset", "read_noise"))
    add_options(p, RunSettings, only=("camera_map",))
    p.add_argument("--method", default=estimation.DEFAULT_METHOD, choices=estimation.METHODS,
                   help="how per-pixel statistics resist blinking molecules")
    p.add_argument("--json", action="store_true", help="one machine-readable JSON line")


def run(a: argparse.Namespace) -> int:
    from ..analysis.preflight import preflight
    from ..io.camera_map import read_camera_map
    from ..io.tiff import open_stack

    stack = open_stack(a.stack)
    known = {k: stack.metadata.get(k) if getattr(a, k) is None else getattr(a, k) for k in ("offset", "read_noise")}
    try:
        estimate = estimation.estimate_camera(stack.data[:estimation.MAX_FRAMES], a.camera_kind, known["offset"],
                                              known["read_noise"], a.method)
    except estimation.EstimateError as exc:
        raise InputError(f"{a.stack}: {exc}") from None
    camera = read_camera_map(a.camera_map, stack.shape[1:]) if a.camera_map else estimate.camera()
    checks = preflight(stack.data, camera, stack.metadata.get("pixel_size", PIXEL_SIZE_NM))
    psf, failure = checks.psf, checks.psf_error   # too few isolated spots: the camera is still reported
    if a.json:
        print(json.dumps(estimate.as_dict() | {"psf": psf.as_dict() if psf else None, "psf_error": failure,
                                               "psf_camera": a.camera_map or "estimated",
                                               "density_per_um2": checks.density, "warnings": checks.warnings}))
        return 0
    print(f"{estimate.source}: {estimate.describe()}")
    for line in estimate.notes:
        print(f"  {line}")
    print(f"spots ({'camera map ' + a.camera_map if a.camera_map else 'estimated camera'}): "
          + (psf.describe() if psf else f"no estimate: {failure}"))
    for line in checks.warnings:
        print(f"warning: {line}")
    return 0
