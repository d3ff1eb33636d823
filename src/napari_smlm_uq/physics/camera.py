"""Camera model: photo-electrons <-> ADU, with gain, offset and Gaussian read noise (docs/physics.md, section 2).

Each parameter is a scalar (CCD-style camera) or an ``(H, W)`` map (sCMOS).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ArrayLike = float | np.ndarray


@dataclass(frozen=True)
class Camera:
    """offset in ADU, gain in ADU per photo-electron, read noise in photo-electrons rms."""

    offset: ArrayLike = 100.0
    gain: ArrayLike = 1.0
    read_noise: ArrayLike = 1.5

    def validate(self) -> "Camera":
        if np.any(np.asarray(self.gain) <= 0):
            raise ValueError(f"gain must be > 0 ADU per photo-electron (got {self.gain})")
        if np.any(np.asarray(self.read_noise) < 0):
            raise ValueError(f"read noise must be >= 0 photo-electrons rms (got {self.read_noise})")
        if not np.all(np.isfinite(np.asarray(self.offset))):
            raise ValueError(f"offset must be a finite number of ADU (got {self.offset})")
        return self

    def expose(self, omega: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Camera frames in ADU (float64) for expected photon images ``omega`` (``(..., H, W)``)."""
        shot = rng.poisson(omega).astype(np.float64)
        read = rng.standard_normal(omega.shape) * (np.asarray(self.gain) * np.asarray(self.read_noise))
        return np.asarray(self.gain) * shot + np.asarray(self.offset) + read

    def to_photoelectrons(self, adu: np.ndarray) -> np.ndarray:
        """``e = (x - o) / g`` in photo-electrons (float32); ``e + r^2`` is ~Poisson(omega + r^2)."""
        return ((np.asarray(adu, dtype=np.float32) - np.float32(self.offset)) / np.float32(self.gain)).astype(np.float32)

    def shifted_photoelectrons(self, adu: np.ndarray) -> np.ndarray:
        """The Poisson-Normal variable ``e + r^2`` (Huang 2013): mean and variance both ``omega + r^2``."""
        return self.to_photoelectrons(adu) + np.float32(np.asarray(self.read_noise) ** 2)
