"""Astigmatic z calibrations as JSON files (physics/astigmatism.ZCalibration), written atomically."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..physics.astigmatism import ZCalibration
from .files import InputError, write_json

FORMAT = "smlm-uq z calibration"
VERSION = 1


def write_zcalibration(path: str | os.PathLike, calibration: ZCalibration) -> None:
    write_json(path, {"format": FORMAT, "version": VERSION, **calibration.to_dict()})


def read_zcalibration(path: str | os.PathLike) -> ZCalibration:
    """Read a file written by :func:`write_zcalibration`; :class:`InputError` for anything else."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        d = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a JSON file ({exc})") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise InputError(f"{path}: not a z calibration (made by smlm-uq calibrate-z)")
    if d.get("version") != VERSION:
        raise InputError(f"{path}: z calibration version {d.get('version')}; this smlm-uq reads version {VERSION}")
    try:
        return ZCalibration.from_dict(d)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: broken z calibration ({exc})") from None
