"""Emitters the deep read-out missed, found in the light a frame's refit leaves unexplained (docs/method.md,
"Refinement on the raw pixels").

The refit's emitters (positions, photons, the PSF width) are drawn and subtracted from the frame with a smooth
background (physics/residual.py); where the residual holds a PSF's worth of light beyond the noise (a local
maximum of the matched filter's z-score above ``RESIDUAL_Z``) a new emitter is fitted in a box centred there,
jointly with the refit's emitters whose light reaches it (all free), and against the same box without it. It
is kept where it raises the box's log-likelihood by more than ``RESIDUAL_GAIN / 2``, stays within
``RESIDUAL_SHIFT`` of the peak and inside the frame, carries at least ``RESIDUAL_SHARE`` of an emitter's
photons, and lies further than ``DUPLICATE`` PSF sigmas from every neighbour where the joint fit moved it (a
spot localized once at the centre of two emitters moves onto one of them) and from a better new one. The
neighbours are free: light the refit pulled into them, or that a PSF not quite Gaussian leaves beside a bright
spot, is theirs again in the box without the new emitter, so it does not read as one. One box per residual
peak: the work grows with the frame's emitters and pixels, not faster.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.ndimage import maximum_filter
from scipy.spatial import cKDTree

from ..physics.boxes import Boxes, box_half_width
from ..physics.fit import ImagingModel
from ..physics.residual import background_map, detection_z, emitters_image
from .localize import peak_snr

RESIDUAL_Z = 4.0          # matched-filter z-score a residual peak needs to be fitted (the likelihood test decides)
RESIDUAL_GAIN = 25.0      # twice the log-likelihood a new emitter must add to its box (as SPLIT_GAIN_CROWDED)
RESIDUAL_SHARE = 0.15     # a new emitter's photons at least this share of an emitter's (as refine.SPLIT_SHARE)
RESIDUAL_SHIFT = 1.5      # px: how far a new emitter's fit may move from its residual peak
DUPLICATE = 0.5           # PSF sigmas: a new emitter nearer than this to a localization is that localization


@dataclass
class Missed:
    """Emitters found in a frame's residual: frame-pixel ``row``/``col``, the ``gain`` (twice the log-likelihood
    they add to their box) and the peak pixel ``snr`` (as preprocessing.pixel_snr: signal over the background's
    noise)."""

    row: np.ndarray
    col: np.ndarray
    gain: np.ndarray
    snr: np.ndarray

    def __len__(self) -> int:
        return len(self.row)

    def take(self, index) -> Missed:
        return Missed(*(getattr(self, k)[index] for k in self.__dataclass_fields__))


def residual_peaks(e: np.ndarray, rows: np.ndarray, cols: np.ndarray, photons: np.ndarray,
                   model: ImagingModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixels (rows, cols) where the frame ``e`` (photo-electrons) minus the emitters at ``rows``/``cols``
    with ``photons`` and a smooth background holds a PSF above ``RESIDUAL_Z`` (3x3 local maxima of the
    z-score), and the background (photo-electrons per pixel)."""
    half = box_half_width(model.psf_sigma)
    emitted = emitters_image(rows, cols, np.nan_to_num(photons), e.shape, model.psf_sigma, half)
    background = background_map(e - emitted)
    mean = np.clip(background + emitted, 0.0, None)
    variance = np.maximum(model.excess * mean + model.read_variance, 1.0)   # the fit's noise (fit.py), e^2
    z = detection_z(e - emitted - background, variance, model.psf_sigma, half)
    peak = (z == maximum_filter(z, size=3, mode="constant", cval=-np.inf)) & (z > RESIDUAL_Z)
    r, c = np.nonzero(peak)
    return r, c, background


def find_missed(e: np.ndarray, rows: np.ndarray, cols: np.ndarray, photons: np.ndarray, model: ImagingModel,
                reference: float) -> Missed:
    """New emitters in frame ``e`` (photo-electrons) beside the refit's emitters at ``rows``/``cols`` with
    ``photons`` (module docstring); ``reference``: an emitter's photons (the stack's single emitters' median,
    else the frame's)."""
    peak_rows, peak_cols, background = residual_peaks(e, rows, cols, photons, model)
    if not len(peak_rows):
        return Missed(*(np.zeros(0) for _ in range(4)))
    psf_sigma = model.psf_sigma
    start_r, start_c = peak_rows.astype(float), peak_cols.astype(float)
    with_new = Boxes.beside(e, start_r, start_c, (rows, cols), box_half_width(psf_sigma), model)
    without = replace(with_new, active=np.column_stack([np.zeros(len(start_r), bool), with_new.active[:, 1:]]))
    fit, base = with_new.fit(), without.fit()
    gain = 2 * (fit.log_likelihood - base.log_likelihood)
    row, col = fit.row[:, 0] + with_new.corner[:, 0], fit.col[:, 0] + with_new.corner[:, 1]
    h, w = e.shape
    inside = (row >= -0.5) & (row <= h - 0.5) & (col >= -0.5) & (col <= w - 0.5)
    # the neighbours as the joint fit moved them: a spot localized once at the centre of two emitters moves to one
    apart = np.where(with_new.active[:, 1:], np.hypot(fit.row[:, 1:] - fit.row[:, :1], fit.col[:, 1:] - fit.col[:, :1]),
                     np.inf).min(axis=1, initial=np.inf)
    keep = (gain > RESIDUAL_GAIN) & inside & (np.hypot(row - start_r, col - start_c) <= RESIDUAL_SHIFT) \
        & (fit.photons[:, 0] >= RESIDUAL_SHARE * reference) & (apart > DUPLICATE * psf_sigma) \
        & np.isfinite(fit.crlb_row[:, 0]) & np.isfinite(fit.crlb_col[:, 0])
    snr_map = (e - background) / np.sqrt(np.clip(background + model.read_variance, 1.0, None))
    snr = peak_snr(snr_map, row, col)   # as the deep localizations' (preprocessing.pixel_snr's form)
    found = Missed(row, col, gain, snr).take(np.flatnonzero(keep))
    return found.take(distinct(found.row, found.col, found.gain, DUPLICATE * psf_sigma))


def distinct(rows: np.ndarray, cols: np.ndarray, score: np.ndarray, radius: float) -> np.ndarray:
    """Indices of the points kept when, best ``score`` first, each drops the others within ``radius``."""
    kept: list[int] = []
    tree = cKDTree(np.column_stack([rows, cols])) if len(rows) else None
    dropped = np.zeros(len(rows), bool)
    for i in np.argsort(-score):
        if not dropped[i]:
            kept.append(int(i))
            dropped[tree.query_ball_point([rows[i], cols[i]], radius)] = True
    return np.array(kept, int)
