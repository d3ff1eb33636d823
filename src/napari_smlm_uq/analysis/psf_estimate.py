"""The PSF width, photons and background of a stack, measured on its isolated bright spots.

Frames are converted to photo-electrons with the camera, spots are found as local maxima of the
background-subtracted, lightly smoothed frame that stand ``MIN_SNR`` times the background's shot noise
above it and have no other maximum within ``ISOLATION`` raw pixels; each is fitted alone by maximum
likelihood (physics/fit.py) with a free PSF width. The estimate is compared with the bundled model's
training range (docs/models.md) so that a user can be told to fine-tune.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, maximum_filter

from ..io.files import InputError
from ..physics.boxes import fit_frame
from ..physics.camera import Camera
from ..physics.fit import ImagingModel

# The bundled model's training range (docs/models.md): photons per emitter, background photons/px, PSF sigma px.
TRAINING_RANGE = {"photons": (500.0, 10000.0), "background": (5.0, 100.0), "psf_sigma": (0.8, 1.5)}
MIN_SNR = 6.0          # peak over the background's shot noise (smoothed frame) for a spot to be fitted
ISOLATION = 6          # raw pixels: no other spot (at half the threshold) this close
START_SIGMA = 1.3      # raw pixels: the fits' starting width
FIT_HALF = int(np.ceil(3 * START_SIGMA))   # raw pixels: the fit box's half-width (4), 2 px clear of any other spot
MIN_SPOTS = 10
# Training ranges around an estimate: the median +/- WIDEN spreads (a spread is ~1 standard deviation, so
# +/- 2 covers ~95 % of the spots), at least +/- MIN_HALF_WIDTH of the median, never below FLOOR.
WIDEN = 2.0
MIN_HALF_WIDTH = 0.1
FLOOR = {"psf_sigma": 0.3, "photons": 1.0, "background": 0.0}


@dataclass(frozen=True)
class PSFEstimate:
    """Medians and spreads (half the 16-84 % range) over ``spots`` fitted spots: PSF ``sigma`` (raw px),
    ``photons`` per spot, ``background`` (photons/px)."""

    sigma: float
    sigma_spread: float
    photons: float
    photons_spread: float
    background: float
    background_spread: float
    spots: int

    def as_dict(self) -> dict:
        return {"sigma_px": self.sigma, "sigma_spread_px": self.sigma_spread, "photons": self.photons,
                "photons_spread": self.photons_spread, "background": self.background,
                "background_spread": self.background_spread, "spots": self.spots,
                "outside_training": self.outside_training()}

    def describe(self) -> str:
        """``PSF sigma 1.30 +/- 0.05 px, photons ..., background ... (N spots)`` (+/-: the spread over spots)."""
        return (f"PSF sigma {self.sigma:.3g} +/- {self.sigma_spread:.2g} px, photons {self.photons:.4g} +/- "
                f"{self.photons_spread:.2g}, background {self.background:.3g} +/- {self.background_spread:.2g} "
                f"photons/px ({self.spots} spots)")

    def training_ranges(self, widen: float = WIDEN) -> dict[str, tuple[float, float]]:
        """Simulation ranges (name -> (low, high)) for training on this stack: see :data:`WIDEN`."""
        values = {"psf_sigma": (self.sigma, self.sigma_spread), "photons": (self.photons, self.photons_spread),
                  "background": (self.background, self.background_spread)}
        ranges = {}
        for key, (median, spread) in values.items():
            half = max(widen * spread, MIN_HALF_WIDTH * median)
            ranges[key] = (max(median - half, FLOOR[key]), median + half)
        return ranges

    def outside_training(self, training: dict = TRAINING_RANGE) -> list[str]:
        """The quantities whose median lies outside ``training`` (name -> (low, high))."""
        values = {"photons": self.photons, "background": self.background, "psf_sigma": self.sigma}
        return [k for k, (lo, hi) in training.items() if not lo <= values[k] <= hi]

    def warning(self, training: dict = TRAINING_RANGE) -> str | None:
        """A one-line warning suggesting fine-tuning when the stack is outside ``training``, else None."""
        out = self.outside_training(training)
        if not out:
            return None
        values = {"photons": self.photons, "background": self.background, "psf_sigma": self.sigma}
        parts = [f"{k.replace('_', ' ')} {values[k]:.3g} (trained {training[k][0]:g}-{training[k][1]:g})" for k in out]
        return ("this stack lies outside the model's training range: " + ", ".join(parts)
                + "; fine-tune on its conditions (smlm-uq train --init default, docs/models.md)")


def find_spots(e: np.ndarray, min_snr: float = MIN_SNR, isolation: int = ISOLATION) -> tuple[np.ndarray, np.ndarray]:
    """Isolated bright spots of one frame of photo-electrons ``(H, W)``: raw-pixel rows and columns."""
    background = float(np.median(e))
    smooth = gaussian_filter(e - background, 1.0)
    noise = np.sqrt(max(background, 1.0)) / (2 * np.sqrt(np.pi))   # shot noise after the 1-px Gaussian filter
    h, w = e.shape
    weak = (smooth == maximum_filter(smooth, size=3)) & (smooth > 0.5 * min_snr * noise)
    r, c = np.nonzero(weak)
    strong = smooth[r, c] > min_snr * noise
    inner = (r >= isolation) & (r < h - isolation) & (c >= isolation) & (c < w - isolation)
    d = np.maximum(np.abs(r[:, None] - r[None, :]), np.abs(c[:, None] - c[None, :]))
    d = d + isolation * np.eye(len(r), dtype=int)
    alone = (d >= isolation).all(axis=1)
    keep = strong & inner & alone
    return r[keep].astype(float), c[keep].astype(float)


def estimate_psf(frames_adu, camera: Camera, max_spots: int = 300, excess: float = 1.0) -> PSFEstimate:
    """Fit up to ``max_spots`` isolated spots of ``frames_adu`` (``(T, H, W)`` ADU, any array-like, read
    frame by frame until enough spots are found). ``excess``: the camera's excess noise factor ``F^2``."""
    model = ImagingModel(START_SIGMA, np.asarray(camera.read_noise, float) ** 2, excess)
    fits = []
    found = 0
    for t in range(len(frames_adu)):
        e = camera.to_photoelectrons(np.asarray(frames_adu[t])).astype(np.float64)
        rows, cols = find_spots(e)
        if not len(rows):
            continue
        fit, _ = fit_frame(e, rows, cols, model, fit_sigma=True, k=1, half=FIT_HALF)
        good = np.isfinite(fit.crlb_sigma) & (fit.sigma > 0.45) & (fit.sigma < 3.9) & (fit.photons[:, 0] > 0)
        fits.append(np.column_stack([fit.sigma, fit.photons[:, 0], fit.background])[good])
        found += int(good.sum())
        if found >= 2 * max_spots:
            break
    values = np.concatenate(fits) if fits else np.zeros((0, 3))
    if len(values) < MIN_SPOTS:
        raise InputError(f"only {len(values)} isolated bright spots found (need >= {MIN_SPOTS}): "
                         "check the camera settings, or give more frames")
    values = values[np.argsort(-values[:, 1])[:max_spots]]
    median = np.median(values, axis=0)
    spread = 0.5 * (np.percentile(values, 84, axis=0) - np.percentile(values, 16, axis=0))
    return PSFEstimate(float(median[0]), float(spread[0]), float(median[1]), float(spread[1]), float(median[2]),
                       float(spread[2]), len(values))
