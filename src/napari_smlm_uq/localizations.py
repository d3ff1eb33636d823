"""Conversions between pixel coordinates and ThunderSTORM localization tables (nm, 1-based frames)."""
from __future__ import annotations

import numpy as np

from .localize import Localizations
from .physics.simulate import Emitters


def px_to_nm(coord: np.ndarray, pixel_size: float) -> np.ndarray:
    """Raw-pixel coordinate (pixel centres at integers) -> nm from the top-left corner of pixel (0, 0)."""
    return (np.asarray(coord, dtype=np.float64) + 0.5) * pixel_size


def nm_to_px(coord: np.ndarray, pixel_size: float) -> np.ndarray:
    return np.asarray(coord, dtype=np.float64) / pixel_size - 0.5


def emitters_table(emitters: Emitters, pixel_size: float) -> dict[str, np.ndarray]:
    """Ground-truth table: frame (1-based), x [nm] (columns), y [nm] (rows), intensity [photon]."""
    return {"frame": emitters.frame + 1, "x [nm]": px_to_nm(emitters.col, pixel_size),
            "y [nm]": px_to_nm(emitters.row, pixel_size), "intensity [photon]": emitters.photons}


def table_xy(table: dict[str, np.ndarray]) -> np.ndarray:
    """``(n, 2)`` array of (x, y) in nm."""
    return np.stack([table["x [nm]"], table["y [nm]"]], axis=1)


def localizations_table(locs: Localizations, pixel_size: float) -> dict[str, np.ndarray]:
    """Predicted localizations as ThunderSTORM columns, with ``uncertainty [nm]`` (per axis),
    ``detection`` (fraction of diffusion samples holding the peak) and ``peak snr``."""
    return {"frame": locs.frame + 1, "x [nm]": px_to_nm(locs.col, pixel_size), "y [nm]": px_to_nm(locs.row, pixel_size),
            "uncertainty [nm]": locs.uncertainty * pixel_size, "detection": locs.detection, "peak snr": locs.snr}
