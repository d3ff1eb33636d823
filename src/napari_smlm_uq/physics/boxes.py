"""A frame's localizations cut into raw-pixel boxes, each with the neighbours whose light reaches it, and
fitted by maximum likelihood (fit.py). Box coordinates are box pixels; ``corner`` maps them to the frame.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.spatial import cKDTree

from .fit import ImagingModel, RoiFit, fit_rois

REACH = 2.0               # raw pixels beyond the box: neighbours whose light reaches it are fitted too
NEIGHBOURS = 12           # emitters fitted jointly per box (the localization and its nearest neighbours)


def box_half_width(psf_sigma: float) -> int:
    """Raw pixels from a box's centre pixel to its edge: 3 PSF sigmas beyond an emitter anywhere in that pixel."""
    return max(3, int(np.ceil(3.0 * psf_sigma + 0.5)))


def extract_boxes(image: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                  half: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes ``(n, S, S)`` of ``image`` (``(H, W)``, or ``(H, W)`` maps) centred on the pixels nearest to
    ``rows``/``cols``; pixels outside the frame are zero and masked. Returns boxes, mask, corners ``(n, 2)``."""
    h, w = image.shape
    corner = np.column_stack([np.rint(rows), np.rint(cols)]).astype(int) - half
    idx = np.arange(2 * half + 1)
    r, c = corner[:, :1] + idx, corner[:, 1:] + idx               # (n, S)
    inside = ((r >= 0) & (r < h))[:, :, None] & ((c >= 0) & (c < w))[:, None, :]
    boxes = image[np.clip(r, 0, h - 1)[:, :, None], np.clip(c, 0, w - 1)[:, None, :]]
    return np.where(inside, boxes, 0.0), inside, corner


def reaching(rows: np.ndarray, cols: np.ndarray, among: tuple[np.ndarray, np.ndarray], half: int,
             k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each point at ``rows``/``cols``, the indices ``(n, k')`` of its nearest ``k`` points of ``among``
    (their rows, cols) whose light reaches its box (Chebyshev distance <= half + 1/2 + ``REACH``), nearest
    first, and which were found (``k' = min(k, len(among))``; index 0 where none)."""
    n, m = len(rows), len(among[0])
    if not n or not m or k < 1:
        return np.zeros((n, 0), int), np.zeros((n, 0), bool)
    dist, idx = cKDTree(np.column_stack(among)).query(np.column_stack([rows, cols]), k=min(k, m), p=np.inf,
                                                      distance_upper_bound=half + 0.5 + REACH)
    found = np.isfinite(dist.reshape(n, -1))
    return np.where(found, idx.reshape(n, -1), 0), found


def neighbour_slots(rows: np.ndarray, cols: np.ndarray, half: int,
                    k: int = NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """For each localization, the indices ``(n, k)`` of itself (slot 0) and its nearest others whose
    light reaches its box (:func:`reaching`), and which slots are filled."""
    n = len(rows)
    idx, filled = reaching(rows, cols, (rows, cols), half, k)
    slots = np.zeros((n, k), int)
    active = np.zeros((n, k), bool)
    slots[:, :idx.shape[1]] = idx
    active[:, :idx.shape[1]] = filled
    slots[:, 0], active[:, 0] = np.arange(n), True   # a duplicate position could sort another first
    return slots, active


@dataclass
class Boxes:
    """The boxes of some localizations of a frame: photo-electrons ``e`` ``(n, S, S)``, ``inside`` (pixels in
    the frame), ``corner`` ``(n, 2)``, the imaging ``model`` (its read variance a scalar or per box), and each
    box's emitters: box-pixel ``rows``/``cols`` ``(n, k)`` (slot 0 the localization itself) and which slots are
    ``active``."""

    e: np.ndarray
    inside: np.ndarray
    corner: np.ndarray
    model: ImagingModel
    rows: np.ndarray
    cols: np.ndarray
    active: np.ndarray

    @classmethod
    def around(cls, photoelectrons: np.ndarray, rows: np.ndarray, cols: np.ndarray, half: int,
               model: ImagingModel, k: int = NEIGHBOURS, which: np.ndarray | None = None) -> Boxes:
        """Boxes of half-width ``half`` around the localizations ``which`` (all by default) of a frame
        (``model``: its read variance a scalar or the frame's map)."""
        which = np.arange(len(rows)) if which is None else which
        slots, active = (a[which] for a in neighbour_slots(rows, cols, half, k))
        return cls.cut(photoelectrons, rows[which], cols[which], half, model, rows[slots], cols[slots], active)

    @classmethod
    def beside(cls, photoelectrons: np.ndarray, rows: np.ndarray, cols: np.ndarray, others: tuple, half: int,
               model: ImagingModel, k: int = NEIGHBOURS) -> Boxes:
        """Boxes around new emitters at ``rows``/``cols`` (slot 0), each with the nearest ``k - 1`` of the
        ``others`` (their rows, cols) whose light reaches it, as :func:`neighbour_slots` counts them."""
        n = len(rows)
        near, filled = reaching(rows, cols, others, half, k - 1)
        return cls.cut(photoelectrons, rows, cols, half, model,
                       np.column_stack([rows, others[0][near]]), np.column_stack([cols, others[1][near]]),
                       np.column_stack([np.ones(n, bool), filled]))

    @classmethod
    def cut(cls, photoelectrons: np.ndarray, rows: np.ndarray, cols: np.ndarray, half: int, model: ImagingModel,
            emitter_rows: np.ndarray, emitter_cols: np.ndarray, active: np.ndarray) -> Boxes:
        """Boxes of half-width ``half`` centred on the pixels nearest ``rows``/``cols``, holding the emitters at
        frame-pixel ``emitter_rows``/``emitter_cols`` ``(n, k)`` where ``active`` (empty slots trimmed)."""
        e, inside, corner = extract_boxes(photoelectrons, rows, cols, half)
        r2 = model.read_variance
        if np.ndim(r2):
            r2 = extract_boxes(np.asarray(r2, float), rows, cols, half)[0]
        used = int(active.sum(axis=1).max(initial=1))   # slots fill from 0: the rest are empty everywhere
        return cls(e, inside, corner, replace(model, read_variance=r2), emitter_rows[:, :used] - corner[:, :1],
                   emitter_cols[:, :used] - corner[:, 1:], active[:, :used])

    def fit(self, fit_sigma: bool = False, iterations: int = 8) -> RoiFit:
        """Maximum-likelihood fit of every box's active emitters (physics/fit.py)."""
        return fit_rois(self.e, self.cols, self.rows, self.active, self.model, self.inside, fit_sigma, iterations)


def fit_frame(photoelectrons: np.ndarray, rows: np.ndarray, cols: np.ndarray, model: ImagingModel,
              fit_sigma: bool = False, k: int = NEIGHBOURS, half: int | None = None) -> tuple[RoiFit, np.ndarray]:
    """Fit every localization of one frame with its neighbours (``photoelectrons`` ``(H, W)``, e; raw-pixel
    ``rows``/``cols``; ``model`` its read variance a scalar or the frame's map) in boxes of half-width ``half``
    (``box_half_width`` by default). Returns the fit (slot 0 is each localization) and the boxes' corners."""
    boxes = Boxes.around(photoelectrons, rows, cols, half or box_half_width(model.psf_sigma), model, k)
    return boxes.fit(fit_sigma), boxes.corner
