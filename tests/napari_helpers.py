"""Helpers for the napari tests: tiny models and stacks, driving the widgets, waiting for workers."""
from __future__ import annotations

import numpy as np

from napari_smlm_uq.physics.simulate import SimulationSettings, simulate

PLUGIN = "napari-smlm-uq"
PREDICT = "Super-resolve with uncertainty"
THRESHOLD = "Filter by uncertainty"
TRAIN = "Train on simulated data"
CAMERA = {"pixel_size": 80.0, "offset": 100.0, "gain": 1.0, "read_noise": 1.5}


def tiny_stack(frames: int = 3, size: int = 16, seed: int = 0) -> np.ndarray:
    settings = SimulationSettings(frames=frames, size=size, density=4.0, photons=3000.0, pixel_size=80.0, seed=seed)
    sim = simulate(settings)
    return np.clip(np.rint(sim.adu), 0, 65535).astype(np.uint16)


def add_raw(viewer, frames: int = 3, size: int = 16, name: str = "raw"):
    p = CAMERA["pixel_size"]
    return viewer.add_image(tiny_stack(frames, size), name=name, scale=(1, p, p), metadata=dict(CAMERA))


def watch(worker, errors: list) -> None:
    """Record a worker's exceptions so the test can fail on them."""
    worker.errored.connect(errors.append)
