"""Sample data: a small simulated SMLM stack and its ground-truth emitters."""
from __future__ import annotations

import numpy as np

from ..defaults import PIXEL_SIZE_NM
from ..io.tables import emitters_table
from ..physics.camera import Camera
from ..physics.simulate import SimulationSettings, simulate
from ._layers import TAG, RawGrid, raw_geometry

SAMPLE = SimulationSettings(frames=20, size=64, density=1.0, photons=(1000.0, 5000.0), background=20.0,
                            psf_sigma=1.0, pixel_size=PIXEL_SIZE_NM, camera=Camera(), seed=1)


def simulated_stack(settings: SimulationSettings = SAMPLE) -> list[tuple]:
    """The camera frames (ADU, uint16, scale in nm, camera settings in metadata) and the ground truth as
    a points layer in world coordinates (frame, row nm, col nm), features frame (1-based) and photons."""
    sim = simulate(settings)
    s, p = sim.settings, float(settings.pixel_size)
    camera = {"pixel_size": p, "pixel_size_source": "simulation", "offset": float(s.camera.offset),
              "gain": float(s.camera.gain), "read_noise": float(s.camera.read_noise)}
    adu = np.clip(np.rint(sim.adu), 0, 65535).astype(np.uint16)
    truth = sim.emitters
    sim_info = {"frames": s.frames, "size": s.shape, "density (/um^2)": s.density, "photons": s.photons,
                "background (photons/px)": s.background, "psf_sigma (px)": s.psf_sigma}
    image = (adu, {"name": "simulated stack", "metadata": {**camera, "simulation": sim_info, TAG: "raw"},
                   "contrast_limits": (float(adu.min()), float(np.percentile(adu, 99.9))),
                   **raw_geometry(p, 3)}, "image")
    grid = RawGrid.for_pixel_size(p)
    coords = grid.world(truth.frame, truth.row, truth.col)
    table = emitters_table(truth, p)
    points = (coords, {"name": "ground truth", "features": {"frame": table["frame"], "photons": truth.photons},
                       "size": 0.6 * p, "symbol": "cross", "face_color": "lime", "border_width": 0.0,
                       "metadata": {"pixel_size": p, TAG: "ground truth"}, "ndim": 3,
                       **grid.axes(3)}, "points")
    return [image, points]
