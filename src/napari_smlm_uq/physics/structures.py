"""Molecules on structures: worm-like filaments and clusters.

Real samples put their molecules on structures, so the local density of a frame is many times its mean.
Filament midpoints and cluster centres are drawn uniformly over the field grown by the farthest a molecule
can lie from them, so no edge is special, and the expected number of molecules per pixel^2 inside the field
is exactly the ``density_px`` asked for. Positions are in raw pixels, pixel centres at integers, the field
spanning ``-0.5 .. size - 0.5``.

- Filaments: 2D worm-like chains of contour length ``L`` and persistence length ``Lp``: the tangent angle is
  a random walk, ``dtheta ~ N(0, ds / Lp)``, so ``<cos(theta(s) - theta(0))> = exp(-s / (2 Lp))``. A field
  gets a Poisson number of molecules, as uniform emitters would, spread uniformly along the filaments' parts
  inside it (about ``density_px / (filaments_px L)`` per pixel of contour on average): how many filaments
  cross a field varies a lot, its number of molecules does not.
- Clusters: a Thomas process: centres Poisson at ``density_px / cluster_size`` per pixel^2, a Poisson
  number (mean ``cluster_size``) of molecules per centre, each offset by ``N(0, radius^2)`` per axis; a
  field's number of molecules varies with its number of clusters.
"""
from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from ..io.files import InputError

Structure = Literal["uniform", "filaments", "clusters"]
STRUCTURES = get_args(Structure)
CHAIN_STEP = 0.25       # raw pixels between a chain's vertices (at most Lp / 20, see worm_like_chains)
CLUSTER_REACH = 4.0     # cluster radii beyond which a cluster's molecules are ignored (6e-5 of them)
MAX_DRAWS = 100         # filament draws before a field that no filament crosses is refused


def worm_like_chains(rng: np.random.Generator, n: int, length: float, persistence: float) -> np.ndarray:
    """``n`` 2D worm-like chains ``(n, m + 1, 2)`` (row, col) of contour ``length`` px and ``persistence``
    px, each starting at the origin with a uniform direction; ``m`` steps of ``length / m`` px, at most
    ``min(CHAIN_STEP, persistence / 20)``."""
    m = max(1, int(np.ceil(length / min(CHAIN_STEP, persistence / 20.0))))
    step = length / m
    theta = rng.uniform(0, 2 * np.pi, (n, 1)) + np.cumsum(rng.normal(0, np.sqrt(step / persistence), (n, m)), axis=1)
    steps = step * np.stack([np.sin(theta), np.cos(theta)], axis=-1)
    return np.concatenate([np.zeros((n, 1, 2)), np.cumsum(steps, axis=1)], axis=1)


def _grown_field(rng: np.random.Generator, shape: tuple[int, int], margin: float, per_px2: float) -> np.ndarray:
    """Poisson points ``(k, 2)`` at ``per_px2`` over the field grown by ``margin`` px on every side."""
    lo = np.array([-0.5 - margin, -0.5 - margin])
    hi = np.array([shape[0] - 0.5 + margin, shape[1] - 0.5 + margin])
    k = rng.poisson(per_px2 * np.prod(hi - lo))
    return rng.uniform(lo, hi, (k, 2))


def in_field(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Which of ``points`` ``(n, 2)`` lie inside the field of ``shape``."""
    return ((points >= -0.5) & (points < np.array(shape) - 0.5)).all(axis=1)


def filament_points(rng: np.random.Generator, shape: tuple[int, int], density_px: float, filaments_px: float,
                    length: float, persistence: float) -> np.ndarray:
    """A Poisson number (mean ``density_px`` per pixel^2 of the field of ``shape``) of molecules ``(n, 2)``,
    uniform along the parts inside the field of worm-like filaments (``filaments_px`` per pixel^2, midpoints
    uniform; ``length`` and ``persistence`` px), drawn again until one crosses the field."""
    n = rng.poisson(density_px * shape[0] * shape[1])
    for _ in range(MAX_DRAWS):
        mids = _grown_field(rng, shape, length / 2, filaments_px)
        chains = worm_like_chains(rng, len(mids), length, persistence)
        chains += (mids - chains[:, chains.shape[1] // 2])[:, None, :]
        inside = np.flatnonzero(in_field(0.5 * (chains[:, 1:] + chains[:, :-1]).reshape(-1, 2), shape))  # segments
        if len(inside) or not n:
            break
    else:
        raise InputError(f"no filament crossed the field in {MAX_DRAWS} draws: raise the filament density")
    chain, i = np.divmod(rng.choice(inside, n) if n else np.zeros(0, int), chains.shape[1] - 1)
    frac = rng.uniform(size=(n, 1))
    points = (1 - frac) * chains[chain, i] + frac * chains[chain, i + 1]
    return np.clip(points, -0.5, np.array(shape) - 0.5 - 1e-9)   # segments half out of the field: by < a step


def cluster_points(rng: np.random.Generator, shape: tuple[int, int], density_px: float, size: float,
                   radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A Thomas process at a mean ``density_px`` per pixel^2 in the field of ``shape``: cluster centres
    ``(k, 2)``, every molecule ``(n, 2)`` of their clusters (also those outside the field) and its cluster's
    index ``(n,)``. ``size`` molecules per cluster (mean), ``radius`` px the std of their offsets per axis."""
    centres = _grown_field(rng, shape, CLUSTER_REACH * radius, density_px / size)
    label = np.repeat(np.arange(len(centres)), rng.poisson(size, len(centres)))
    return centres, centres[label] + rng.normal(0, radius, (len(label), 2)), label


def structure_points(rng: np.random.Generator, kind: str, shape: tuple[int, int], density_px: float,
                     filaments_px: float, length: float, persistence: float, cluster_size: float,
                     cluster_radius: float) -> np.ndarray:
    """Molecule positions ``(n, 2)`` (row, col; raw px) inside the field at a mean ``density_px`` per
    pixel^2, drawn uniformly or on a structure of :data:`STRUCTURES` (lengths in px)."""
    if kind == "filaments":
        return filament_points(rng, shape, density_px, filaments_px, length, persistence)
    if kind == "clusters":
        points = cluster_points(rng, shape, density_px, cluster_size, cluster_radius)[1]
        return points[in_field(points, shape)]
    n = rng.poisson(density_px * shape[0] * shape[1])
    return np.column_stack([rng.uniform(-0.5, shape[0] - 0.5, n), rng.uniform(-0.5, shape[1] - 0.5, n)])
