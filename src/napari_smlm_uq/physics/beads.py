"""Simulated bead z-stacks for the astigmatic calibration (docs/3d.md): fixed beads imaged through the
astigmatic PSF while the focus steps through them, with lateral drift, then through the camera."""
from __future__ import annotations

import numpy as np

from .astigmatism import ZCalibration, render_astigmatic
from .camera import Camera


def bead_stack(calibration: ZCalibration, shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray,
               photons: np.ndarray, heights: np.ndarray, z_stage: np.ndarray, background: float = 20.0,
               drift: np.ndarray | None = None, camera: Camera | None = None, seed: int | None = 0) -> np.ndarray:
    """Camera frames (ADU, float64, ``(T, H, W)``): bead ``j`` (row, col px, ``photons`` per frame) is at
    z = ``z_stage[t] + heights[j]`` (nm) in frame ``t``, shifted by ``drift[t] = (rows, cols)`` px."""
    rng = np.random.default_rng(seed)
    drift = np.zeros((len(z_stage), 2)) if drift is None else np.asarray(drift, np.float64)
    rows, cols, photons, heights = (np.asarray(v, np.float64) for v in (rows, cols, photons, heights))
    omega = np.stack([background + render_astigmatic(rows + dr, cols + dc, z + heights, photons, shape, calibration)
                      for z, (dr, dc) in zip(np.asarray(z_stage, np.float64), drift)])
    return (camera or Camera()).expose(omega, rng)
