"""Localization tables: ThunderSTORM's CSV conventions (nm, 1-based frames), read and written atomically,
and conversions from and to :class:`Localizations` and :class:`Emitters`.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from ..localizations import Localizations, nm_to_px, px_to_nm
from ..physics.simulate import Emitters
from .files import InputError, atomic_path
from .picasso import read_locs

LOC_COLUMNS = ("id", "frame", "x [nm]", "y [nm]")


def write_localizations(path: str | os.PathLike, columns: dict[str, np.ndarray]) -> None:
    """Write a ThunderSTORM-style CSV (quoted headers), atomically. ``columns`` maps header -> values;
    ``frame`` is 1-based. The ``id`` column is added (1-based) when absent."""
    n = len(next(iter(columns.values()))) if columns else 0
    cols = {"id": np.arange(1, n + 1), **columns}
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, quoting=csv.QUOTE_NONNUMERIC)
        writer.writerow(list(cols))
        ints = {"id", "frame"}
        table = np.column_stack([np.asarray(v, dtype=float) for v in cols.values()]).reshape(n, len(cols))
        np.savetxt(fh, table, fmt=["%d" if k in ints else "%.4f" for k in cols], delimiter=",")


def read_localizations(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ThunderSTORM-style CSV into ``header -> float array``; checks the required columns."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: not a CSV text file ({exc})") from None
    if not rows:
        raise InputError(f"{path}: empty file")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in LOC_COLUMNS[1:] if c not in header]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(repr(m) for m in missing)}; "
                         f"ThunderSTORM columns 'frame', 'x [nm]', 'y [nm]' are required")
    try:
        data = np.array([[float(v) for v in r] for r in rows[1:] if r], dtype=float).reshape(-1, len(header))
    except ValueError as exc:
        raise InputError(f"{path}: non-numeric value ({exc})") from None
    return {h: data[:, i] for i, h in enumerate(header)}


def emitters_table(emitters: Emitters, pixel_size: float) -> dict[str, np.ndarray]:
    """Ground-truth table: frame (1-based), x [nm] (columns), y [nm] (rows), intensity [photon]; and
    z [nm] for astigmatic simulations."""
    table = {"frame": emitters.frame + 1, "x [nm]": px_to_nm(emitters.col, pixel_size),
             "y [nm]": px_to_nm(emitters.row, pixel_size), "intensity [photon]": emitters.photons}
    return table if emitters.z is None else {**table, "z [nm]": emitters.z}


def table_xy(table: dict[str, np.ndarray]) -> np.ndarray:
    """``(n, 2)`` array of (x, y) in nm."""
    return np.stack([table["x [nm]"], table["y [nm]"]], axis=1)


def localizations_table(locs: Localizations, pixel_size: float) -> dict[str, np.ndarray]:
    """Predicted localizations as ThunderSTORM columns, with ``uncertainty [nm]`` (per axis),
    ``detection`` (fraction of diffusion samples holding the peak) and ``peak snr``; in 3D also ``z [nm]``
    and ``uncertainty z [nm]``."""
    table = {"frame": locs.frame + 1, "x [nm]": px_to_nm(locs.col, pixel_size),
             "y [nm]": px_to_nm(locs.row, pixel_size),
             "uncertainty [nm]": locs.uncertainty * pixel_size, "detection": locs.detection, "peak snr": locs.snr}
    return table if locs.z is None else {**table, "z [nm]": locs.z, "uncertainty z [nm]": locs.uncertainty_z}


def table_localizations(table: dict[str, np.ndarray], pixel_size: float) -> Localizations:
    """Inverse of :func:`localizations_table`; absent uncertainty, detection or peak SNR columns become NaN
    (so does an absent z uncertainty of a table with z; no z column: 2D)."""
    n = len(table["frame"])
    col = lambda key: np.asarray(table.get(key, np.full(n, np.nan)), dtype=np.float64)
    axial = (col("z [nm]"), col("uncertainty z [nm]")) if "z [nm]" in table else (None, None)
    return Localizations(np.asarray(table["frame"]).astype(int) - 1, nm_to_px(table["y [nm]"], pixel_size),
                         nm_to_px(table["x [nm]"], pixel_size), col("uncertainty [nm]") / pixel_size,
                         col("detection"), col("peak snr"), *axial)


def table_emitters(table: dict[str, np.ndarray], pixel_size: float) -> Emitters:
    """Inverse of :func:`emitters_table` (photons NaN when the table has no intensity, z None without z)."""
    n = len(table["frame"])
    return Emitters(np.asarray(table["frame"]).astype(int) - 1, nm_to_px(table["y [nm]"], pixel_size),
                    nm_to_px(table["x [nm]"], pixel_size),
                    np.asarray(table.get("intensity [photon]", np.full(n, np.nan)), dtype=np.float64),
                    None if "z [nm]" not in table else np.asarray(table["z [nm]"], dtype=np.float64))


UNCERTAINTY_ALIASES = ("uncertainty_xy [nm]",)  # ThunderSTORM's newer name of "uncertainty [nm]"


def read_table(path: str | os.PathLike, pixel_size: float | None = None) -> dict[str, np.ndarray]:
    """Our or ThunderSTORM's CSV, or a Picasso HDF5 (``.hdf5``/``.h5``; ``pixel_size`` nm when its metadata
    lacks one), as ThunderSTORM columns; ThunderSTORM's ``uncertainty_xy [nm]`` is read as ``uncertainty [nm]``."""
    if Path(path).suffix.lower() in (".hdf5", ".h5"):
        return read_locs(path, pixel_size)
    table = read_localizations(path)
    for alias in UNCERTAINTY_ALIASES:
        if alias in table and "uncertainty [nm]" not in table:
            table["uncertainty [nm]"] = table.pop(alias)
    return table
