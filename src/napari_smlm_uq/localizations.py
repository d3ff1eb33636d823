"""The localization type shared by every stage: raw-pixel positions with their uncertainty, and the
conversion of raw-pixel coordinates to the nm of localization tables."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FIELDS = ("frame", "row", "col", "uncertainty", "detection", "snr")


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
    without a frame), ``frame`` (0-based)."""

    frame: np.ndarray
    row: np.ndarray
    col: np.ndarray
    uncertainty: np.ndarray
    detection: np.ndarray
    snr: np.ndarray

    @classmethod
    def empty(cls) -> Localizations:
        z = np.zeros(0)
        return cls(z.astype(int), z, z, z, z, z)

    @classmethod
    def concat(cls, parts: list[Localizations]) -> Localizations:
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in FIELDS))

    def take(self, index: np.ndarray) -> Localizations:
        """The localizations at ``index`` (integer positions, repeats allowed, or a boolean mask)."""
        return Localizations(*(getattr(self, k)[index] for k in FIELDS))

    def __len__(self) -> int:
        return len(self.row)
