"""Simulated SMLM camera stacks with ground truth (paper section 2.1, docs/physics.md).

By default emitters are drawn independently in every frame (a Poisson number at the given density,
uniform positions). With ``on_time`` set, fixed molecules blink instead: each is on for a geometric number
of frames (mean ``on_time``) and its photons vary from frame to frame, so one molecule is localized in
consecutive frames (the precision check of analysis/precision.py). With ``structure`` set to filaments or
clusters (physics/structures.py), the fixed molecules lie on worm-like filaments or in clusters and blink
(on in a fraction ``1 / BLINK_MOLECULES`` of the frames; independently every frame without ``on_time``), so
the local density is several times the mean while ``density`` stays the mean per frame. Emitters are imaged through the
pixel-integrated Gaussian PSF on a background, flat or shaped by a map (a gradient, a Gaussian
illumination profile or cell-like blobs), then through the camera. With a z calibration the PSF is
astigmatic (physics/astigmatism.py) and each emitter gets a uniform z.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
from scipy.ndimage import gaussian_filter

from ..defaults import PIXEL_SIZE_NM
from ..io.files import InputError
from ..settings import check, option
from .astigmatism import ZCalibration, render_astigmatic
from .camera import Camera
from .psf import render_emitters
from .structures import Structure, structure_points

Range = float | tuple[float, float]
BackgroundMap = Literal["gradient", "illumination", "cells"]
BACKGROUND_MAPS = get_args(BackgroundMap)


def draw_values(rng: np.random.Generator, value: Range, n: int) -> np.ndarray:
    """``n`` values: a constant, or log-uniform over ``(lo, hi)`` (uniform when ``lo == 0``)."""
    if np.isscalar(value):
        return np.full(n, float(value))
    lo, hi = map(float, value)
    if lo > 0:
        return np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    return rng.uniform(lo, hi, n)


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

    frames: int = option(100, help="frames to simulate", low=1)
    size: int | tuple[int, int] = option(64, help="frame size (rows = columns)", unit="px", low=8)
    density: Range = option(1.0, help="emitters per um^2 in each frame", unit="/um^2", low=0.0)
    photons: Range = option(2000.0, help="photons per emitter", low=0.0, open_low=True)
    background: Range = option(20.0, help="background photons per pixel", unit="photons/px", low=0.0)
    psf_sigma: Range = option(1.0, help="PSF standard deviation", unit="px", low=0.0, open_low=True,
                              label="PSF sigma")
    pixel_size: float = option(PIXEL_SIZE_NM, help="raw pixel size in the sample plane", unit="nm", low=0.0,
                               open_low=True)
    camera: Camera = field(default_factory=Camera)
    seed: int | None = option(0, help="random seed")
    on_time: float | None = option(None, help="fixed molecules blinking for this mean number of frames (default: new "
                                   "emitters every frame)", unit="frames", low=1.0)
    background_map: BackgroundMap | None = option(None, help="background varying across the field (mean: background)")
    background_ratio: float = option(6.0, help="the background map's highest / lowest", low=1.0)
    z_calibration: ZCalibration | None = None   # astigmatic PSF (then psf_sigma is not used); no option:
    # the command line reads it from a file (--z-calibration CAL.json)
    z_range: tuple[float, float] | None = option(
        None, help="uniform z of the emitters (default: the z calibration's range)", unit="nm")
    structure: Structure = option("uniform", help="where the molecules lie: uniform, or fixed blinking molecules on "
                                  "worm-like filaments or in clusters (density stays the mean)")
    filament_density: float = option(0.3, help="filaments per um^2 (midpoints uniform, reaching in from outside too): "
                                     "0.3 is 1.5 um of filament per um^2", unit="/um^2", low=0.0, open_low=True)
    filament_length: float = option(5000.0, help="contour length of each filament", unit="nm", low=0.0,
                                    open_low=True)
    persistence_length: float = option(2000.0, help="filament stiffness: <cos dtheta(s)> = exp(-s / (2 Lp))",
                                       unit="nm", low=0.0, open_low=True)
    cluster_size: float = option(10.0, help="mean molecules per cluster (Poisson), 1/5 of them on per frame",
                                 low=0.0, open_low=True)
    cluster_radius: float = option(100.0, help="std per axis of the molecules' offsets from their cluster's centre",
                                   unit="nm", low=0.0, open_low=True)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.size) if np.isscalar(self.size) else tuple(self.size)

    def validate(self) -> SimulationSettings:
        check(self)
        self._validate_z()
        self.camera.validate()
        return self

    def _validate_z(self) -> None:
        if self.z_calibration is None:
            if self.z_range is not None:
                raise InputError("a z range needs a z calibration")
            return
        cal = self.z_calibration.validate()
        if not np.isclose(cal.pixel_size, self.pixel_size, rtol=1e-3):
            raise InputError(f"the z calibration was measured with {cal.pixel_size:g} nm pixels, the simulation has "
                             f"{self.pixel_size:g} nm pixels")
        lo, hi = cal.z_range
        z_lo, z_hi = self.z_range or (lo, hi)
        if not (z_lo <= z_hi and lo <= z_lo and z_hi <= hi):
            raise InputError(f"z range {z_lo:g} to {z_hi:g} nm is not within the calibration's {lo:g} to {hi:g} nm")


@dataclass
class Emitters:
    """Ground truth: 0-based frame index, row and column in raw pixels (centres are integers), photons;
    ``z`` (nm) for astigmatic simulations, else None."""

    frame: np.ndarray
    row: np.ndarray
    col: np.ndarray
    photons: np.ndarray
    z: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frame)

    def in_frame(self, t: int) -> Emitters:
        keep = self.frame == t
        return Emitters(self.frame[keep], self.row[keep], self.col[keep], self.photons[keep],
                        None if self.z is None else self.z[keep])


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
                     background: np.ndarray, z_calibration: ZCalibration | None = None) -> np.ndarray:
    """omega (T, H, W): per-frame ``background`` (scalar per frame, or maps) plus the emitters' PSFs
    (of width ``sigma`` per frame, or astigmatic at the emitters' z with a ``z_calibration``)."""
    omega = np.empty((n_frames, *shape))
    background = np.asarray(background, dtype=np.float64)
    omega[:] = background.reshape(n_frames, 1, 1) if background.ndim == 1 else background
    order = np.argsort(emitters.frame, kind="stable")
    bounds = np.searchsorted(emitters.frame[order], np.arange(n_frames + 1))
    for t in range(n_frames):
        idx = order[bounds[t]:bounds[t + 1]]
        if len(idx) and z_calibration is not None:
            omega[t] += render_astigmatic(emitters.row[idx], emitters.col[idx], emitters.z[idx], emitters.photons[idx],
                                          shape, z_calibration)
        elif len(idx):
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
    return structure_points(rng, s.structure, shape, density_px * BLINK_MOLECULES,
                            s.filament_density * (nm / 1000.0) ** 2,
                            s.filament_length / nm, s.persistence_length / nm, s.cluster_size, s.cluster_radius / nm)


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
        density = tuple(density_px) if density_px.ndim else float(density_px)
        emitters = draw_emitters(rng, s.frames, s.shape, density, s.photons)
    else:
        placed = molecules(rng, s, s.shape, float(np.mean(density_px)))
        emitters = blinking_emitters(rng, s.frames, placed, s.photons, s.on_time)
    sigma = draw_values(rng, s.psf_sigma, s.frames)
    background = draw_values(rng, s.background, s.frames)
    if s.background_map is not None:
        background = background[:, None, None] * background_map(s.background_map, s.shape, s.background_ratio, rng)
    if s.z_calibration is not None:  # drawn last: the 2D simulation of the same seed has the same emitters
        emitters.z = rng.uniform(*(s.z_range or s.z_calibration.z_range), len(emitters))
    omega = expected_photons(emitters, s.frames, s.shape, sigma, background, s.z_calibration)
    return SimulatedStack(s.camera.expose(omega, rng), omega, emitters, s)
