"""Merging blinks: localizations of one molecule in consecutive frames (a gap of at most ``max_gap``
missing frames), each within ``max_sigmas`` combined uncertainties of the event's running position, become
one event at the inverse-variance weighted mean with the combined uncertainty 1/sqrt(sum 1/sigma^2)."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree


@dataclass
class Events:
    """Merged events: ``first`` frame (0-based), position ``x``/``y`` and ``sigma`` (nm), ``frames`` (number
    of localizations merged), ``photons`` (summed; NaN without photons) and ``index``: the event of every
    input localization."""

    first: np.ndarray
    x: np.ndarray
    y: np.ndarray
    sigma: np.ndarray
    frames: np.ndarray
    photons: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def mean_of(self, values: np.ndarray) -> np.ndarray:
        """Per-event mean of a per-localization column."""
        return np.bincount(self.index, weights=values, minlength=len(self)) / self.frames


def link(frame: np.ndarray, x: np.ndarray, y: np.ndarray, sigma: np.ndarray, max_gap: int = 1,
         max_sigmas: float = 3.0) -> np.ndarray:
    """Event index of each localization. Frame by frame, each localization joins the nearest open event
    (last seen at most ``max_gap`` + 1 frames before) within ``max_sigmas`` * sqrt(sigma^2 + event
    sigma^2); each event takes at most one localization per frame; the others open new events."""
    order = np.argsort(frame, kind="stable")
    f, w = np.asarray(frame, int)[order], 1.0 / np.asarray(sigma, float)[order] ** 2
    xy = np.stack([x, y], axis=1)[order]
    index = np.empty(len(f), np.int64)
    ws, wxy = np.zeros(len(f)), np.zeros((len(f), 2))  # per event: summed weights, weighted position sums
    recent: deque[tuple[int, np.ndarray]] = deque()  # (frame, events seen in it) of the last max_gap + 1 frames
    count = 0
    bounds = np.flatnonzero(np.diff(f)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(f)]):
        now = f[lo]
        while recent and recent[0][0] < now - 1 - max_gap:
            recent.popleft()
        open_ids = np.unique(np.concatenate([ids for _, ids in recent])) if recent else np.zeros(0, np.int64)
        joined = _match(xy[lo:hi], w[lo:hi], open_ids, ws, wxy, max_sigmas)
        new = joined < 0
        joined[new] = count + np.arange(new.sum())
        count += int(new.sum())
        ws[joined] += w[lo:hi]
        wxy[joined] += w[lo:hi, None] * xy[lo:hi]
        index[lo:hi] = joined
        recent.append((now, joined))
    out = np.empty_like(index)
    out[order] = index
    return out


def _match(xy: np.ndarray, w: np.ndarray, open_ids: np.ndarray, ws: np.ndarray, wxy: np.ndarray,
           max_sigmas: float) -> np.ndarray:
    """Open event joined by each localization of one frame (-1: none), nearest first, one per event."""
    joined = np.full(len(xy), -1, np.int64)
    if len(open_ids) == 0:
        return joined
    centre = wxy[open_ids] / ws[open_ids, None]
    dist, k = cKDTree(centre).query(xy)
    limit = max_sigmas * np.sqrt(1.0 / w + 1.0 / ws[open_ids[k]])
    ok = np.flatnonzero(dist <= limit)
    ok = ok[np.argsort(dist[ok], kind="stable")]
    _, first = np.unique(k[ok], return_index=True)
    joined[ok[first]] = open_ids[k[ok[first]]]
    return joined


def merge(frame: np.ndarray, x: np.ndarray, y: np.ndarray, sigma: np.ndarray, photons: np.ndarray | None = None,
          max_gap: int = 1, max_sigmas: float = 3.0) -> Events:
    """Link (:func:`link`) and merge: weighted mean position, combined uncertainty, frames, summed photons."""
    index = link(frame, x, y, sigma, max_gap, max_sigmas)
    n = int(index.max()) + 1 if len(index) else 0
    w = 1.0 / np.asarray(sigma, float) ** 2
    wsum = np.bincount(index, weights=w, minlength=n)
    first = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first, index, np.asarray(frame, np.int64))
    phot = np.full(n, np.nan) if photons is None else np.bincount(index, weights=photons, minlength=n)
    return Events(first, np.bincount(index, weights=w * x, minlength=n) / wsum,
                  np.bincount(index, weights=w * y, minlength=n) / wsum, 1.0 / np.sqrt(wsum),
                  np.bincount(index, minlength=n), phot, index)
