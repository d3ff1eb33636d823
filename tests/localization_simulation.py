"""Localization-level simulation for the tests and benchmarks/postprocess_benchmark.py: a known structure
(rings or filaments) whose molecules blink over several frames, a smooth stage drift, and each localization
displaced by Gaussian noise of its own uncertainty (nm). No camera frames are made."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PSF_NM = 130.0  # PSF standard deviation behind the uncertainty model sigma = PSF_NM / sqrt(photons)


@dataclass
class SimulatedLocalizations:
    """Observed localizations (``frame`` 0-based, ``x``/``y`` nm, ``sigma`` nm per axis, ``photons``) with
    their truth: ``molecule`` index, ``event`` (blink) index, the true position (``x_true``, ``y_true``,
    nm, without drift), and the drift ``drift`` (frames, 2) in nm (x, y) that was added."""

    frame: np.ndarray
    x: np.ndarray
    y: np.ndarray
    sigma: np.ndarray
    photons: np.ndarray
    molecule: np.ndarray
    event: np.ndarray
    x_true: np.ndarray
    y_true: np.ndarray
    drift: np.ndarray
    field_nm: float

    def __len__(self) -> int:
        return len(self.x)


def ring_sites(field_nm: float, n: int, rng: np.random.Generator, radius_nm: tuple = (50.0, 150.0)) -> np.ndarray:
    """``(n, 2)`` molecule positions on rings (8 molecules each, radius uniform in ``radius_nm``; unequal
    radii keep the rings' common Fourier zeros out of the FRC) spread over the field."""
    rings = max(n // 8, 1)
    radius = rng.uniform(*radius_nm, size=(rings, 1, 1))
    centres = rng.uniform(radius_nm[1] + 200, field_nm - radius_nm[1] - 200, size=(rings, 2))
    angle = np.arange(8) * np.pi / 4 + rng.uniform(0, 2 * np.pi, size=(rings, 1))
    xy = centres[:, None, :] + radius * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
    return xy.reshape(-1, 2)


def filament_sites(field_nm: float, n: int, rng: np.random.Generator, length_nm: float = 3000.0) -> np.ndarray:
    """``(n, 2)`` molecule positions along straight filaments of ``length_nm`` (40 molecules each)."""
    filaments = max(n // 40, 1)
    start = rng.uniform(length_nm / 2, field_nm - length_nm / 2, size=(filaments, 2))
    angle = rng.uniform(0, np.pi, size=(filaments, 1))
    t = rng.uniform(-length_nm / 2, length_nm / 2, size=(filaments, 40))
    xy = start[:, None, :] + t[..., None] * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
    return xy.reshape(-1, 2)


def smooth_drift(frames: int, amplitude_nm: float = 200.0) -> np.ndarray:
    """A smooth drift path ``(frames, 2)`` (x, y nm) that starts at 0 and wanders ``amplitude_nm``."""
    t = np.arange(frames) / max(frames - 1, 1)
    x = amplitude_nm * (0.8 * t + 0.2 * np.sin(3 * np.pi * t))
    y = amplitude_nm * (-0.5 * t ** 2 + 0.25 * np.sin(2 * np.pi * t) - 0.15 * (1 - np.cos(5 * np.pi * t)))
    return np.stack([x, y], axis=1)


def simulate_localizations(frames: int = 1000, field_um: float = 10.0, density: float = 0.5,
                           structure: str = "rings", molecules: int = 2000, on_frames: float = 3.0,
                           photons: float = 1500.0, photon_spread: float = 0.6, drift_nm: float = 200.0,
                           seed: int = 0) -> SimulatedLocalizations:
    """Blinking molecules on a structure: ``density`` molecules on per frame per um^2; each blink lasts a
    geometric number of frames (mean ``on_frames``) and gives one localization per frame, with photons
    log-normal around ``photons`` (log-sd ``photon_spread``) and uncertainty PSF_NM / sqrt(photons)."""
    rng = np.random.default_rng(seed)
    field_nm = field_um * 1000.0
    sites = {"rings": ring_sites, "filaments": filament_sites}[structure](field_nm, molecules, rng)
    events = rng.poisson(density * field_um ** 2 * frames / on_frames)
    start = rng.integers(0, frames, events)
    length = rng.geometric(1.0 / on_frames, events)
    mol = rng.integers(0, len(sites), events)
    ev = np.repeat(np.arange(events), length)
    frame = start[ev] + np.arange(len(ev)) - np.repeat(np.cumsum(length) - length, length)
    keep = frame < frames
    ev, frame = ev[keep], frame[keep]
    n = len(ev)
    phot = photons * np.exp(photon_spread * rng.standard_normal(n))
    sigma = PSF_NM / np.sqrt(phot)
    drift = smooth_drift(frames, drift_nm)
    truth = sites[mol[ev]]
    xy = truth + drift[frame] + sigma[:, None] * rng.standard_normal((n, 2))
    return SimulatedLocalizations(frame, xy[:, 0], xy[:, 1], sigma, phot, mol[ev], ev, truth[:, 0], truth[:, 1],
                                  drift, field_nm)
