"""Training data: 16x16-pixel patches simulated afresh for every batch (paper section 4), with their
model-space KDE targets; uniform, edge-cut and structured (filaments, clusters) emitters, flat or varying
backgrounds, sCMOS or EMCCD noise. Used by :func:`training.train` and the benchmarks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .inference.preprocessing import normalise
from .physics.kde import render_kde, to_model
from .physics.simulate import (
    BACKGROUND_MAPS,
    Emitters,
    SimulationSettings,
    background_map,
    blinking_emitters,
    draw_emitters,
    draw_values,
    expected_photons,
    molecules,
)

if TYPE_CHECKING:
    from .training import TrainSettings

PATCH = 16          # raw pixels (64 SR pixels)
DISC_RADIUS = 7.0   # raw pixels (paper section 4)


def simulate_patches(rng: np.random.Generator, n: int, s: TrainSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` training patches: normalised inputs ``(n, 1, 16, 16)`` and model-space KDEs ``(n, 1, 64, 64)``;
    with ``s.z_calibration`` the spots are astigmatic (z uniform over its valid range).
    A fraction ``s.structured`` of the patches (the last ones) has its emitters on filaments or in clusters
    (:func:`structured_emitters`). The others are uniform: in a centred disc (paper 4) or, in a fraction
    ``s.edge_patches`` of them, anywhere up to the patch edge, where a frame's edge cuts their PSFs (trained on
    the disc alone, the first bundled weights had 34 nm RMSE within 200 nm of the frame edge against 7 nm
    inside; training-log.md)."""
    shape = (PATCH, PATCH)
    density_px = tuple(np.asarray(s.density) * (s.pixel_size / 1000.0) ** 2)
    n_structured = int(round(n * s.structured))
    n_uniform = n - n_structured
    n_disc = n_uniform - int(round(n_uniform * s.edge_patches))
    parts = [draw_emitters(rng, n_disc, shape, density_px, s.photons, disc_radius=DISC_RADIUS),
             draw_emitters(rng, n_uniform - n_disc, shape, density_px, s.photons)]
    if n_structured:
        parts.append(structured_emitters(rng, n_structured, density_px, s))
    first = np.cumsum([0, n_disc, n_uniform - n_disc])
    emitters = Emitters(np.concatenate([p.frame + f for p, f in zip(parts, first)]),
                        *(np.concatenate([getattr(p, k) for p in parts]) for k in ("row", "col", "photons")))
    sigma, background = draw_values(rng, s.psf_sigma, n), draw_values(rng, s.background, n)
    read = rng.uniform(*s.read_noise, n)[:, None, None]
    if s.background_maps:
        background = background[:, None, None] * varying_backgrounds(rng, n, s.background_maps)
    if s.z_calibration is not None:   # astigmatic spots, z uniform over the calibration's valid range
        emitters.z = rng.uniform(*s.z_calibration.z_range, len(emitters))
    omega = expected_photons(emitters, n, shape, sigma, background, s.z_calibration)
    counts = rng.poisson(omega).astype(np.float64)
    if s.camera_kind == "emccd":   # effective photo-electrons: Gamma(n, 1) multiplication over F^2 = 2
        counts = rng.gamma(counts) / 2.0
    e_shifted = counts + rng.standard_normal(omega.shape) * read + read**2
    x = normalise(torch.from_numpy(e_shifted.astype(np.float32))[:, None], s.background_estimate)
    kde = np.stack([render_kde(emitters.in_frame(t).row, emitters.in_frame(t).col, shape) for t in range(n)])
    return x, torch.from_numpy(to_model(kde))[:, None]


def structured_emitters(
    rng: np.random.Generator, n: int, density_px: tuple[float, float], s: TrainSettings
) -> Emitters:
    """Emitters of ``n`` patches, each one frame of blinking molecules on filaments or in clusters (even odds;
    the structure's shape as :class:`SimulationSettings` sets it by default) at a mean density drawn from
    ``density_px`` (emitters on per pixel^2), over the whole patch."""
    kinds = [SimulationSettings(structure=kind, pixel_size=s.pixel_size) for kind in ("filaments", "clusters")]
    density, pick = draw_values(rng, density_px, n), rng.integers(len(kinds), size=n)
    parts = [blinking_emitters(rng, 1, molecules(rng, kinds[k], (PATCH, PATCH), d), s.photons, None)
             for k, d in zip(pick, density)]
    return Emitters(np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)]),
                    *(np.concatenate([getattr(p, k) for p in parts]) for k in ("row", "col", "photons")))


def varying_backgrounds(rng: np.random.Generator, n: int, fraction: float, field: int = 64) -> np.ndarray:
    """``(n, PATCH, PATCH)`` background shapes: flat (1) but for a ``fraction`` of patches cut at random
    from a ``field``-pixel background map (simulate.BACKGROUND_MAPS) whose highest / lowest is 1-6x."""
    shapes = np.ones((n, PATCH, PATCH))
    for i in np.flatnonzero(rng.uniform(size=n) < fraction):
        name = BACKGROUND_MAPS[rng.integers(len(BACKGROUND_MAPS))]
        full = background_map(name, (field, field), rng.uniform(1, 6), rng)
        r, c = rng.integers(0, field - PATCH + 1, 2)
        shapes[i] = full[r:r + PATCH, c:c + PATCH]
    return shapes


class PatchBatches(torch.utils.data.IterableDataset):
    """Endless training batches, each data-loader worker drawing from its own seed."""

    def __init__(self, s: TrainSettings, seeds: np.ndarray):
        self.s, self.seeds = s, seeds

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng(int(self.seeds[info.id if info else 0]))
        while True:
            yield simulate_patches(rng, self.s.batch_size, self.s)
