"""sCMOS per-pixel camera maps from a file, in storm-analysis's calibration layout: three planes
``(3, H, W)``: offset (ADU), read-noise variance (ADU^2), gain (ADU per photo-electron); a TIFF or ``.npy``
(docs/real-data.md)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile

from ..physics.camera import Camera
from .files import InputError


def read_camera_map(path: str | os.PathLike, frame_shape: tuple[int, int]) -> Camera:
    """An sCMOS :class:`Camera` (read noise ``sqrt(variance) / gain`` e- rms) from a 3-plane map file
    matching frames of ``frame_shape``. Raises :class:`InputError` on a wrong shape, NaN, or non-positive
    gain or variance."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such camera map file")
    try:
        planes = np.load(path) if path.suffix.lower() == ".npy" else tifffile.imread(path)
    except Exception as exc:  # numpy and tifffile raise several types for unreadable files
        raise InputError(f"{path}: not a readable .npy or TIFF camera map ({exc})") from None
    planes = np.asarray(planes, dtype=np.float64)
    if planes.shape != (3, *frame_shape):
        raise InputError(f"{path}: camera map of shape {planes.shape}; (3, {frame_shape[0]}, {frame_shape[1]}) "
                         "needed (offset ADU, variance ADU^2, gain ADU/e-)")
    if not np.all(np.isfinite(planes)):
        raise InputError(f"{path}: the camera map holds NaN or infinite values")
    offset, variance, gain = planes
    for name, plane in (("variance", variance), ("gain", gain)):
        if np.any(plane <= 0):
            raise InputError(f"{path}: the camera map's {name} plane has values <= 0 "
                             f"({int(np.sum(plane <= 0))} pixels)")
    return Camera(offset, gain, np.sqrt(variance) / gain, "scmos")
