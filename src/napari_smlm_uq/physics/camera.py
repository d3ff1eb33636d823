"""Camera model: photo-electrons <-> ADU, with gain, offset, Gaussian read noise and, for an EMCCD, the
excess noise of electron multiplication (docs/physics.md, "Camera").

Each parameter is a scalar (CCD-style camera) or an ``(H, W)`` map (sCMOS).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from ..settings import check, option

ArrayLike = float | np.ndarray
CameraKind = Literal["ccd", "scmos", "emccd"]

#: excess noise factor F^2 per camera kind: electron multiplication doubles the shot-noise variance
EXCESS_NOISE = dict(zip(get_args(CameraKind), (1.0, 1.0, 2.0)))


@dataclass(frozen=True)
class Camera:
    """offset in ADU, gain in ADU per photo-electron (for an EMCCD: including the EM gain), read noise in
    photo-electrons rms, kind ``ccd``, ``scmos`` or ``emccd``."""

    offset: ArrayLike = option(100.0, help="camera offset (baseline)", unit="ADU", step=0.01)
    gain: ArrayLike = option(1.0, help="camera gain, ADU per photo-electron (EMCCD: with the EM gain)", unit="ADU/e-",
                             low=0.0, open_low=True, step=0.0001)
    read_noise: ArrayLike = option(1.5, help="read noise, photo-electrons rms", unit="e- rms", low=0.0, step=0.01)
    kind: CameraKind = option("ccd", help="camera kind: emccd doubles the shot noise (excess noise factor F^2 = 2)",
                              flag="--camera-kind", label="camera kind")

    @property
    def excess_noise(self) -> float:
        """F^2: 2 for an EMCCD, 1 otherwise."""
        return EXCESS_NOISE[self.kind]

    @property
    def effective_gain(self) -> ArrayLike:
        """ADU per effective photo-electron, ``gain x F^2``: the photon-transfer slope (ADU^2 / ADU)."""
        return np.asarray(self.gain) * self.excess_noise

    def validate(self) -> Camera:
        check(self)
        return self

    def expose(self, omega: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Camera frames in ADU (float64) for expected photon images ``omega`` (``(..., H, W)``). An EMCCD
        multiplies each pixel's ``n`` photo-electrons by a Gamma(n, 1) register (mean n, variance n)."""
        shot = rng.poisson(omega).astype(np.float64)
        if self.kind == "emccd":
            shot = rng.gamma(shot)
        read = rng.standard_normal(omega.shape) * (np.asarray(self.gain) * np.asarray(self.read_noise))
        return np.asarray(self.gain) * shot + np.asarray(self.offset) + read

    def noise_variance(self, mean_adu: ArrayLike) -> ArrayLike:
        """Expected variance (ADU^2) of a pixel whose mean is ``mean_adu``: ``g F^2 (mean - o) + (g r)^2``."""
        g = np.asarray(self.gain)
        read = (g * np.asarray(self.read_noise)) ** 2
        return self.effective_gain * (np.asarray(mean_adu) - np.asarray(self.offset)) + read

    def to_photoelectrons(self, adu: np.ndarray) -> np.ndarray:
        """``e = (x - o) / (g F^2)`` in effective photo-electrons (float32): for an EMCCD half the photo-electrons,
        with Poisson-like variance equal to their mean; ``e + (r/F^2)^2`` is ~Poisson(omega/F^2 + (r/F^2)^2)."""
        return ((np.asarray(adu, dtype=np.float32) - np.float32(self.offset))
                / np.float32(self.effective_gain)).astype(np.float32)

    def shifted_photoelectrons(self, adu: np.ndarray) -> np.ndarray:
        """The Poisson-Normal variable ``e + r^2`` (Huang 2013): mean and variance both ``omega + r^2``
        (in effective photo-electrons, read noise ``r / F^2``)."""
        return self.to_photoelectrons(adu) + np.float32((np.asarray(self.read_noise) / self.excess_noise) ** 2)
