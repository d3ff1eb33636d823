"""The localization type shared by every stage: raw-pixel positions with their uncertainty, and the
conversion of raw-pixel coordinates to the nm of localization tables."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

FIELDS = ("frame", "row", "col", "uncertainty", "detection", "snr")
AXIAL = ("z", "uncertainty_z")   # 3D only (a z calibration): None in 2D


def px_to_nm(coord: np.ndarray, pixel_size: float) -> np.ndarray:
    """Raw-pixel coordinate (pixel centres at integers) -> nm from the top-left corner of pixel (0, 0)."""
    return (np.asarray(coord, dtype=np.float64) + 0.5) * pixel_size


def nm_to_px(coord: np.ndarray, pixel_size: float) -> np.ndarray:
    """nm from the top-left corner of pixel (0, 0) -> raw-pixel coordinate (the inverse of :func:`px_to_nm`)."""
    return np.asarray(coord, dtype=np.float64) / pixel_size - 0.5


@dataclass
class Localizations:
    """Raw-pixel ``row``/``col``, ``uncertainty`` (raw px, per axis; NaN without samples),
    ``detection`` (fraction of samples), ``snr`` (peak pixel SNR, preprocessing.pixel_snr; NaN
    without a frame), ``frame`` (0-based); in 3D (refined with a z calibration) ``z`` and ``uncertainty_z``
    (nm; NaN where the fit was not kept), None in 2D."""

    frame: np.ndarray
    row: np.ndarray
    col: np.ndarray
    uncertainty: np.ndarray
    detection: np.ndarray
    snr: np.ndarray
    z: np.ndarray | None = None
    uncertainty_z: np.ndarray | None = None

    @classmethod
    def empty(cls) -> Localizations:
        z = np.zeros(0)
        return cls(z.astype(int), z, z, z, z, z)

    @classmethod
    def concat(cls, parts: list[Localizations]) -> Localizations:
        """The parts in order; 3D when any part is (NaN z for a 2D part's localizations)."""
        if not parts:
            return cls.empty()
        out = cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in FIELDS))
        if all(p.z is None for p in parts):
            return out
        axial = lambda k: np.concatenate([np.full(len(p), np.nan) if p.z is None else getattr(p, k) for p in parts])
        return replace(out, z=axial("z"), uncertainty_z=axial("uncertainty_z"))

    def take(self, index: np.ndarray) -> Localizations:
        """The localizations at ``index`` (integer positions, repeats allowed, or a boolean mask)."""
        axial = (None if getattr(self, k) is None else getattr(self, k)[index] for k in AXIAL)
        return Localizations(*(getattr(self, k)[index] for k in FIELDS), *axial)

    @property
    def is_3d(self) -> bool:
        return self.z is not None

    def __len__(self) -> int:
        return len(self.row)


def within_z_uncertainty(uncertainty_z: np.ndarray, max_nm: float | None) -> np.ndarray:
    """Which localizations a z-uncertainty filter keeps: all for ``max_nm`` None, else those whose z uncertainty
    (nm) is at most ``max_nm``; a NaN one (the 3D fit was not kept: docs/3d.md) fails any limit."""
    u = np.asarray(uncertainty_z, np.float64)
    return np.ones(u.shape, bool) if max_nm is None else np.nan_to_num(u, nan=np.inf) <= max_nm
