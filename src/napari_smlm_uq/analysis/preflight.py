"""What to tell the user about a stack before a run (``smlm-uq predict`` prints it, summary.json keeps it, the
widgets show it): the camera's doubts (inference/camera_choice.py), and the PSF width, photons and background
of its isolated spots (psf_estimate.py) and its emitter density against the model's training range.

The density comes from the pixels' temporal statistics, so that it holds where spots merge and cannot be
counted: emitters ``N`` photons each, at ``rho`` per px^2, add ``M = rho N`` to a pixel's mean, ``V = rho N^2 /
(4 pi s^2)`` to its variance beyond the shot noise and ``V exp(-1 / (4 s^2))`` to its covariance with its
neighbours (a Poisson field of Gaussian spots of width ``s``, about ``sqrt(sigma^2 + 1/12)`` for a pixelated PSF
``sigma``), so ``s`` follows from the covariance and ``rho = M^2 / (4 pi s^2 V)``, whatever the gain. ``M`` is
the mean over a pixel's background, a low quantile of the pixel over the frames corrected for its shot noise.
On simulated stacks (100-nm pixels, PSF 1 px, 50 frames, photons 1,000-4,000, a gradient background) it reads
0.30, 0.80, 2.3, 7.3 and 13.0 /um^2 at 0.3, 1, 3, 10 and 25 /um^2 (blinking molecules: 0.33, 0.98, 2.7, 7.7,
12.8), and ``s`` within 2 % at every density: a lower bound where spots overlap, as the background quantile
takes in their light; the spots' overlap ``4 pi s^2 rho`` tells a continuum.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm

from ..physics.camera import Camera
from .psf_estimate import TRAINING_RANGE, PSFEstimate, estimate_psf

MAX_FRAMES = 200          # frames read (the first ones): the camera estimate's
MAX_SIDE = 256            # px: the density is measured on the central crop of larger frames (memory)
MIN_FRAMES = 10           # fewer: no density estimate
MIN_QUANTILE = 0.01       # the background's quantile over frames (at least 1 / (frames + 1): the minimum)
TRAINING_DENSITY = (0.0, 6.0)   # emitters / um^2 at 100-nm pixels: the bundled model's (docs/models.md)
TRAINING_PIXEL = 100.0    # nm
# estimated emitters per PSF area (4 pi s^2) beyond which spots merge into a continuum that the model does not
# resolve: 1.3 reads where the truth is ~15 /um^2 (100-nm pixels, PSF 1 px; module docstring)
CONTINUUM = 1.3
SURVEY_OVERLAP = 0.5   # beyond this overlap the isolated-spot survey fits blends: its warnings are left out


@dataclass
class Preflight:
    """The checks of one stack: its isolated spots (None: too few, ``psf_error`` says why), its density
    (emitters / um^2; NaN: too few frames), one line per problem of the camera (``camera``, as the camera
    choice words them) and of the stack (``stack``: PSF, photons, background, density)."""

    psf: PSFEstimate | None
    psf_error: str | None
    density: float
    camera: list[str] = field(default_factory=list)
    stack: list[str] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return self.camera + self.stack

    def as_dict(self) -> dict:
        return {"psf": self.psf.as_dict() if self.psf else None, "psf_error": self.psf_error,
                "density_per_um2": self.density, "warnings": self.warnings}


def estimate_density(frames, camera: Camera) -> tuple[float, float]:
    """Emitters per px^2 of ``(T, H, W)`` ADU frames (T >= :data:`MIN_FRAMES`) and their spots' width ``s`` (px,
    the pixelated PSF's; module docstring). NaN width where the frames show no emitters."""
    e = camera.shifted_photoelectrons(np.asarray(frames)).astype(np.float64)   # variance = mean for shot noise
    q = max(MIN_QUANTILE, 1.0 / (len(e) + 1))
    low = np.quantile(e, q, axis=0)
    background = low - norm.ppf(q) * np.sqrt(np.maximum(low, 1.0))
    mean = e.mean(axis=0)
    d = e - mean
    excess = float(np.mean((d**2).sum(axis=0) / (len(e) - 1) - mean))
    neighbours = 0.5 * sum(float(np.mean((a * b).sum(axis=0))) / (len(e) - 1)
                           for a, b in ((d[:, 1:], d[:, :-1]), (d[:, :, 1:], d[:, :, :-1])))
    signal = float(np.mean(mean - background))
    if not 0 < neighbours < excess or signal <= 0:
        return 0.0, float("nan")
    width2 = -1.0 / (4.0 * np.log(neighbours / excess))
    return signal**2 / (4 * np.pi * width2 * excess), float(np.sqrt(width2))


def central_crop(frames, camera: Camera, side: int = MAX_SIDE) -> tuple[np.ndarray, Camera]:
    """The central ``side`` x ``side`` px of ``(T, H, W)`` frames (array-like), and the camera's maps cut alike."""
    rows, cols = (slice(max(0, (n - side) // 2), max(0, (n - side) // 2) + side) for n in frames.shape[-2:])

    def cut(value):
        return np.asarray(value)[rows, cols] if np.ndim(value) == 2 else value

    cropped = Camera(cut(camera.offset), cut(camera.gain), cut(camera.read_noise), camera.kind)
    return np.asarray(frames[:, rows, cols]), cropped


def preflight(frames, camera: Camera, pixel_size: float, trained_on: dict | None = None,
              camera_doubts: list[str] = ()) -> Preflight:
    """The checks of ``(T, H, W)`` ADU frames (array-like; the first :data:`MAX_FRAMES` are read) for a model
    trained on ``trained_on`` (its ``info["trained_on"]``: photons, background, psf_sigma, density and
    pixel_size ranges; None: the bundled model's); ``camera_doubts``: lines from the camera choice."""
    trained_on = trained_on or {}
    frames = frames[:MAX_FRAMES]
    warnings = []
    try:
        psf, psf_error = estimate_psf(frames, camera, excess=camera.excess_noise), None
    except ValueError as exc:
        psf, psf_error = None, str(exc)
    per_px, width = estimate_density(*central_crop(frames, camera)) if len(frames) >= MIN_FRAMES else (np.nan, np.nan)
    overlap = 4 * np.pi * width**2 * per_px if np.isfinite(width) else 0.0
    training = {k: tuple(trained_on.get(k, v)) for k, v in TRAINING_RANGE.items()}
    if psf is not None and psf.warning(training) and overlap < SURVEY_OVERLAP:
        warnings.append(psf.warning(training))
    crowding = density_warning(per_px, overlap, pixel_size, trained_on) if np.isfinite(per_px) else None
    warnings += [crowding] if crowding else []
    return Preflight(psf, psf_error, per_px / (pixel_size / 1000.0) ** 2, list(camera_doubts), warnings)


def density_warning(per_px: float, overlap: float, pixel_size: float, trained_on: dict) -> str | None:
    """The line where the spots' ``overlap`` (emitters per PSF area) lies beyond :data:`CONTINUUM`, or ``per_px``
    emitters per px^2 beyond the model's training range (compared per pixel^2: the network sees pixels)."""
    per_um2 = per_px / (pixel_size / 1000.0) ** 2
    trained_pixel = float(trained_on.get("pixel_size", TRAINING_PIXEL))
    high = float(trained_on.get("density", TRAINING_DENSITY)[1]) * (trained_pixel / pixel_size) ** 2
    if overlap >= CONTINUUM:
        return (f"this stack is too dense for the model: about {per_um2:.3g} emitters/um^2 or more "
                f"({overlap:.2g} per PSF area), where spots merge into a continuum beyond what the model resolves "
                f"(trained up to {high:.3g} /um^2 at {pixel_size:g}-nm pixels); its localizations there are not "
                "reliable")
    if per_um2 > high:
        return (f"this stack is denser than the model's training range: about {per_um2:.3g} emitters/um^2 "
                f"(trained up to {high:.3g} /um^2 at {pixel_size:g}-nm pixels); expect missed emitters where spots "
                "overlap")
    return None
