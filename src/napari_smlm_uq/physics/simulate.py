"""Simulated SMLM camera stacks with ground truth (paper section 2.1, docs/physics.md).

By default emitters are drawn independently in every frame (a Poisson number at the given density,
uniform positions). With ``on_time`` set, fixed molecules blink instead: each is on for a geometric number
of frames (mean ``on_time``) and its photons vary from frame to frame, so one molecule is localized in
consecutive frames (the precision check of analysis/precision.py). With ``structure`` set to filaments or
clusters (physics/structures.py), the fixed molecules lie on worm-like filaments or in clusters and blink
(on in a fraction ``1 / BLINK_MOLECULES`` of the frames; independently every frame without ``on_time``), so
the local density is several times the mean while ``density`` stays the mean per frame. Emitters are imaged through the
pixel-integrated Gaussian PSF on a background, flat or shaped by a map (a gradient, a Gaussian
illumination profile or cell-like blobs), then through the camera.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter

from .camera import Camera
from .psf import render_emitters
from .structures import STRUCTURES, structure_points

Range = float | tuple[float, float]


def draw_values(rng: np.random.Generator, value: Range, n: int) -> np.ndarray:
    """``n`` values: a constant, or log-uniform over ``(lo, hi)`` (uniform when ``lo == 0``)."""
    if np.isscalar(value):
        return np.full(n, float(value))
    lo, hi = map(float, value)
    if lo > 0:
        return np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    return rng.uniform(lo, hi, n)


def _check_range(name: str, value: Range, minimum: float, strict: bool) -> None:
    values = [value] if np.isscalar(value) else list(value)
    bad = [v for v in values if not np.isfinite(v) or (v <= minimum if strict else v < minimum)]
    if bad or (len(values) == 2 and values[0] > values[1]):
        op = ">" if strict else ">="
        raise ValueError(f"{name} must be {op} {minimum:g} (got {value})")


@dataclass(frozen=True)
class SimulationSettings:
    """What to simulate. Units: pixel_size nm, density emitters/um^2, photons per emitter, background
    photons/pixel, psf_sigma raw pixels. ``photons``, ``background`` and ``psf_sigma`` may be ranges
    ``(lo, hi)``: photons vary per emitter, background and PSF width per frame.

    ``on_time`` (frames, None: independent emitters per frame) makes fixed molecules blink; ``density`` is
    then the mean density of molecules that are on, and ``photons`` each molecule's mean brightness.
    ``background_map`` (:data:`BACKGROUND_MAPS`) shapes the background across the field, its mean staying
    ``background`` and its highest pixel ``background_ratio`` times its lowest.

    ``structure`` (:data:`~.structures.STRUCTURES`) puts fixed, blinking molecules on filaments or in clusters
    (``density`` then the mean density of molecules that are on, as with ``on_time``); the parameters below
    shape them and are ignored for ``uniform``."""

    frames: int = 100
    size: int | tuple[int, int] = 64
    density: Range = 1.0
    photons: Range = 2000.0
    background: Range = 20.0
    psf_sigma: Range = 1.0
    pixel_size: float = 100.0
    camera: Camera = field(default_factory=Camera)
    seed: int | None = 0
    on_time: float | None = None
    background_map: str | None = None
    background_ratio: float = 6.0
    structure: str = "uniform"          # uniform | filaments | clusters: where the molecules lie
    filament_density: float = 0.3       # filaments per um^2 (midpoints uniform, reaching in from outside too): 1.5 um of filament per um^2
    filament_length: float = 5000.0     # nm, contour length of each filament
    persistence_length: float = 2000.0  # nm, bending stiffness: <cos dtheta(s)> = exp(-s / (2 Lp))
    cluster_size: float = 10.0          # mean molecules per cluster (Poisson), of which 1/5 are on per frame
    cluster_radius: float = 100.0       # nm, std per axis of the molecules' offsets from their cluster's centre

    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.size) if np.isscalar(self.size) else tuple(self.size)

    def validate(self) -> "SimulationSettings":
        if int(self.frames) < 1:
            raise ValueError(f"frames must be >= 1 (got {self.frames})")
        if min(self.shape) < 8:
            raise ValueError(f"size must be >= 8 pixels (got {self.size})")
        _check_range("density", self.density, 0.0, strict=False)
        _check_range("photons", self.photons, 0.0, strict=True)
        _check_range("background", self.background, 0.0, strict=False)
        _check_range("psf_sigma", self.psf_sigma, 0.0, strict=True)
        _check_range("pixel_size", self.pixel_size, 0.0, strict=True)
        if self.on_time is not None:
            _check_range("on_time", self.on_time, 1.0, strict=False)
        if self.background_map is not None and self.background_map not in BACKGROUND_MAPS:
            raise ValueError(f"background map must be one of {', '.join(BACKGROUND_MAPS)} (got {self.background_map!r})")
        _check_range("background_ratio", self.background_ratio, 1.0, strict=False)
        if self.structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {', '.join(STRUCTURES)} (got {self.structure!r})")
        for name in ("filament_density", "filament_length", "persistence_length", "cluster_size", "cluster_radius"):
            _check_range(name, getattr(self, name), 0.0, strict=True)
        self.camera.validate()
        return self


@dataclass
class Emitters:
    """Ground truth: 0-based frame index, row and column in raw pixels (centres are integers), photons."""

    frame: np.ndarray
    row: np.ndarray
    col: np.ndarray
    photons: np.ndarray

    def __len__(self) -> int:
        return len(self.frame)

    def in_frame(self, t: int) -> "Emitters":
        keep = self.frame == t
        return Emitters(self.frame[keep], self.row[keep], self.col[keep], self.photons[keep])


@dataclass
class SimulatedStack:
    """A simulated stack: ``adu`` (T, H, W) float64 camera counts, ``omega`` the expected photons."""

    adu: np.ndarray
    omega: np.ndarray
    emitters: Emitters
    settings: SimulationSettings


def draw_emitters(rng: np.random.Generator, n_frames: int, shape: tuple[int, int], density_px: Range,
                  photons: Range, disc_radius: float | None = None) -> Emitters:
    """Emitters per frame at ``density_px`` (emitters per pixel^2; a range is drawn per frame), uniform
    over the field, or over a centred disc of ``disc_radius`` pixels (the training patches, paper 4)."""
    h, w = shape
    area = np.pi * disc_radius**2 if disc_radius else h * w
    counts = rng.poisson(draw_values(rng, density_px, n_frames) * area)
    n = int(counts.sum())
    frame = np.repeat(np.arange(n_frames), counts)
    if disc_radius:
        rad = disc_radius * np.sqrt(rng.uniform(0, 1, n))
        ang = rng.uniform(0, 2 * np.pi, n)
        row, col = (h - 1) / 2 + rad * np.sin(ang), (w - 1) / 2 + rad * np.cos(ang)
    else:
        row, col = rng.uniform(-0.5, h - 0.5, n), rng.uniform(-0.5, w - 0.5, n)
    return Emitters(frame, row, col, draw_values(rng, photons, n))


def expected_photons(emitters: Emitters, n_frames: int, shape: tuple[int, int], sigma: np.ndarray,
                     background: np.ndarray) -> np.ndarray:
    """omega (T, H, W): per-frame ``background`` (scalar per frame, or maps) plus the emitters' PSFs."""
    omega = np.empty((n_frames, *shape))
    background = np.asarray(background, dtype=np.float64)
    omega[:] = background.reshape(n_frames, 1, 1) if background.ndim == 1 else background
    order = np.argsort(emitters.frame, kind="stable")
    bounds = np.searchsorted(emitters.frame[order], np.arange(n_frames + 1))
    for t in range(n_frames):
        idx = order[bounds[t]:bounds[t + 1]]
        if len(idx):
            omega[t] += render_emitters(emitters.row[idx], emitters.col[idx], emitters.photons[idx], shape, sigma[t])
    return omega


BLINK_MOLECULES = 5.0   # molecules per molecule that is on at a time (the fraction on is 1/5)
PHOTON_JITTER = 0.3     # frame-to-frame variation of a molecule's photons (log-normal sigma)


def blink(rng: np.random.Generator, n_frames: int, n: int, on_time: float) -> np.ndarray:
    """``(n_frames, n)`` on/off states of ``n`` molecules: a two-state Markov chain, on for a mean of
    ``on_time`` frames and a fraction ``1 / BLINK_MOLECULES`` of the time, starting in that stationary state
    (``on_time = BLINK_MOLECULES / (BLINK_MOLECULES - 1)``: independent frames)."""
    p_off = 1.0 / on_time
    p_on = p_off / (BLINK_MOLECULES - 1)
    on = np.empty((n_frames, n), bool)
    on[0] = rng.uniform(size=n) < 1.0 / BLINK_MOLECULES
    for t in range(1, n_frames):
        flip = rng.uniform(size=n)
        on[t] = np.where(on[t - 1], flip >= p_off, flip < p_on)
    return on


def blinking_emitters(rng: np.random.Generator, n_frames: int, molecules: np.ndarray, photons: Range,
                      on_time: float | None) -> Emitters:
    """Fixed ``molecules`` ``(n, 2)`` (row, col; raw px) blinking as :func:`blink` (independently every frame
    when ``on_time`` is None); photons per frame a molecule's brightness times a log-normal jitter."""
    brightness = draw_values(rng, photons, len(molecules))
    on = blink(rng, n_frames, len(molecules), on_time or BLINK_MOLECULES / (BLINK_MOLECULES - 1))
    frame, idx = np.nonzero(on)
    jitter = np.exp(PHOTON_JITTER * rng.standard_normal(len(idx)) - PHOTON_JITTER**2 / 2)
    return Emitters(frame, molecules[idx, 0], molecules[idx, 1], brightness[idx] * jitter)


def molecules(rng: np.random.Generator, s: SimulationSettings, shape: tuple[int, int], density_px: float) -> np.ndarray:
    """Fixed molecules ``(n, 2)`` for ``BLINK_MOLECULES`` times ``density_px`` emitters on per pixel^2, on
    ``s.structure`` (its lengths converted from nm to raw px)."""
    nm = s.pixel_size
    return structure_points(rng, s.structure, shape, density_px * BLINK_MOLECULES, s.filament_density * (nm / 1000.0) ** 2,
                            s.filament_length / nm, s.persistence_length / nm, s.cluster_size, s.cluster_radius / nm)


BACKGROUND_MAPS = ("gradient", "illumination", "cells")


def background_map(kind: str, shape: tuple[int, int], ratio: float, rng: np.random.Generator) -> np.ndarray:
    """A background shape ``(H, W)`` with mean 1 and max/min ``ratio``: a left-to-right ``gradient``, a
    centred Gaussian ``illumination`` profile (sigma a third of the field), or ``cells`` (smoothed random
    blobs of about 8 px)."""
    h, w = shape
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    if kind == "gradient":
        shape_map = cols / max(w - 1, 1)
    elif kind == "illumination":
        shape_map = np.exp(-(((rows - (h - 1) / 2) / (h / 3)) ** 2 + ((cols - (w - 1) / 2) / (w / 3)) ** 2) / 2)
    else:
        shape_map = gaussian_filter(rng.standard_normal(shape), 4.0, mode="wrap")
    unit = (shape_map - shape_map.min()) / np.ptp(shape_map)   # 0..1
    level = 1.0 + (ratio - 1.0) * unit                           # 1..ratio
    return level / level.mean()


def simulate(settings: SimulationSettings) -> SimulatedStack:
    """Simulate a stack of camera frames in ADU, with its ground truth emitters."""
    s = settings.validate()
    rng = np.random.default_rng(s.seed)
    density_px = np.asarray(s.density) * (s.pixel_size / 1000.0) ** 2
    if s.on_time is None and s.structure == "uniform":
        emitters = draw_emitters(rng, s.frames, s.shape, tuple(density_px) if density_px.ndim else float(density_px), s.photons)
    else:
        emitters = blinking_emitters(rng, s.frames, molecules(rng, s, s.shape, float(np.mean(density_px))), s.photons, s.on_time)
    sigma = draw_values(rng, s.psf_sigma, s.frames)
    background = draw_values(rng, s.background, s.frames)
    if s.background_map is not None:
        background = background[:, None, None] * background_map(s.background_map, s.shape, s.background_ratio, rng)
    omega = expected_photons(emitters, s.frames, s.shape, sigma, background)
    return SimulatedStack(s.camera.expose(omega, rng), omega, emitters, s)
