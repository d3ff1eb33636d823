"""Merging blinks: localizations of one molecule in consecutive frames (a gap of at most ``max_gap``
missing frames), each within ``max_sigmas`` combined uncertainties of the event's running position, become
one event at the inverse-variance weighted mean with the combined uncertainty 1/sqrt(sum 1/sigma^2).

In 3D (``z`` and ``sigma_z`` given) the gate is the normalized 3D distance
``d_xy^2 / (sigma^2 + sigma_event^2) + dz^2 / (sigma_z^2 + sigma_z_event^2)``, within the radius that misses
the same share of one molecule's localizations as the 2D gate of ``max_sigmas`` (:func:`radius_3d`), and z is
merged like x and y. A NaN ``sigma_z`` (a 3D fit that was not kept) means z unknown: such a localization
links laterally and adds nothing to its event's z."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree
from scipy.stats import chi2


@dataclass
class Events:
    """Merged events: ``first`` frame (0-based), position ``x``/``y`` and ``sigma`` (nm), ``frames`` (number
    of localizations merged), ``photons`` (summed; NaN without photons) and ``index``: the event of every
    input localization. In 3D ``z`` and ``sigma_z`` (nm): the inverse-variance mean over the localizations
    with a finite z uncertainty and 1/sqrt(sum 1/sigma_z^2); where none has one, the mean z and NaN."""

    first: np.ndarray
    x: np.ndarray
    y: np.ndarray
    sigma: np.ndarray
    frames: np.ndarray
    photons: np.ndarray
    index: np.ndarray
    z: np.ndarray | None = None
    sigma_z: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.x)

    def mean_of(self, values: np.ndarray) -> np.ndarray:
        """Per-event mean of a per-localization column."""
        return np.bincount(self.index, weights=values, minlength=len(self)) / self.frames


def radius_3d(max_sigmas: float) -> float:
    """The normalized 3D gate radius (chi-square, 3 degrees of freedom) that keeps the share of one
    molecule's localizations that the 2D gate of ``max_sigmas`` keeps (2 degrees of freedom): 3.33 for 3."""
    return float(np.sqrt(chi2.ppf(chi2.cdf(max_sigmas ** 2, 2), 3)))


class _Sums:
    """Per-event running sums while linking: inverse-variance weights and weighted positions; in 3D the z
    weights (0 where z is unknown), weighted z, and the plain z sum and count (an event without z weight)."""

    def __init__(self, n: int, axial: bool):
        self.w, self.wxy = np.zeros(n), np.zeros((n, 2))
        self.axial = axial
        self.wz, self.wzz, self.zsum, self.count = (np.zeros(n) for _ in range(4)) if axial else (None,) * 4

    def add(self, ids: np.ndarray, w: np.ndarray, xy: np.ndarray, wz: np.ndarray | None, z: np.ndarray | None):
        self.w[ids] += w
        self.wxy[ids] += w[:, None] * xy
        if self.axial:
            self.wz[ids] += wz
            self.wzz[ids] += wz * z
            self.zsum[ids] += z
            self.count[ids] += 1

    def centre(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Events' (x, y) and z (nm; the plain mean where no z weight)."""
        xy = self.wxy[ids] / self.w[ids, None]
        if not self.axial:
            return xy, None
        wz = self.wz[ids]
        return xy, np.where(wz > 0, self.wzz[ids] / np.where(wz > 0, wz, 1.0), self.zsum[ids] / self.count[ids])


def link(frame: np.ndarray, x: np.ndarray, y: np.ndarray, sigma: np.ndarray, max_gap: int = 1,
         max_sigmas: float = 3.0, z: np.ndarray | None = None, sigma_z: np.ndarray | None = None) -> np.ndarray:
    """Event index of each localization. Frame by frame, each localization joins the nearest open event
    (last seen at most ``max_gap`` + 1 frames before) within ``max_sigmas`` * sqrt(sigma^2 + event
    sigma^2) (in 3D: the normalized 3D gate; nearest with z scaled by the median sigma / sigma_z); each
    event takes at most one localization per frame; the others open new events."""
    order = np.argsort(frame, kind="stable")
    f, w = np.asarray(frame, int)[order], 1.0 / np.asarray(sigma, float)[order] ** 2
    xy = np.stack([x, y], axis=1)[order]
    axial = z is not None and sigma_z is not None
    zz, wz = (np.asarray(z, float)[order], _z_weights(sigma_z)[order]) if axial else (None, None)
    gate = _Gate(max_sigmas, _z_scale(sigma, sigma_z) if axial else 0.0)
    index = np.empty(len(f), np.int64)
    sums = _Sums(len(f), axial)
    recent: deque[tuple[int, np.ndarray]] = deque()  # (frame, events seen in it) of the last max_gap + 1 frames
    count = 0
    bounds = np.flatnonzero(np.diff(f)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(f)]):
        now, part = f[lo], slice(lo, hi)
        while recent and recent[0][0] < now - 1 - max_gap:
            recent.popleft()
        open_ids = np.unique(np.concatenate([ids for _, ids in recent])) if recent else np.zeros(0, np.int64)
        z_part, wz_part = (zz[part], wz[part]) if axial else (None, None)
        joined = gate.match(xy[part], w[part], z_part, wz_part, open_ids, sums)
        new = joined < 0
        joined[new] = count + np.arange(new.sum())
        count += int(new.sum())
        sums.add(joined, w[part], xy[part], wz_part, z_part)
        index[part] = joined
        recent.append((now, joined))
    out = np.empty_like(index)
    out[order] = index
    return out


def _z_weights(sigma_z: np.ndarray) -> np.ndarray:
    """1/sigma_z^2, 0 where z is unknown (a NaN uncertainty)."""
    s = np.asarray(sigma_z, float)
    return np.where(np.isfinite(s), 1.0 / np.where(np.isfinite(s), s, 1.0) ** 2, 0.0)


def _z_scale(sigma: np.ndarray, sigma_z: np.ndarray) -> float:
    """z's scale in the nearest-event search: the median lateral over the median axial uncertainty."""
    known = np.isfinite(sigma_z)
    return float(np.median(sigma) / np.median(np.asarray(sigma_z)[known])) if known.any() else 0.0


@dataclass
class _Gate:
    """Which open event each localization of a frame joins: ``max_sigmas`` laterally (2D, or 3D where z is
    unknown on either side) or :func:`radius_3d`, nearest by distance with z scaled by ``z_scale``."""

    max_sigmas: float
    z_scale: float

    def __post_init__(self):
        self.radius_3d = radius_3d(self.max_sigmas)

    def match(self, xy: np.ndarray, w: np.ndarray, z: np.ndarray | None, wz: np.ndarray | None,
              open_ids: np.ndarray, sums: _Sums) -> np.ndarray:
        """Open event joined by each localization (-1: none), nearest first, one localization per event."""
        joined = np.full(len(xy), -1, np.int64)
        if len(open_ids) == 0:
            return joined
        centre, centre_z = sums.centre(open_ids)
        if z is None:
            dist, k = cKDTree(centre).query(xy)
            ok = np.flatnonzero(dist <= self.max_sigmas * np.sqrt(1.0 / w + 1.0 / sums.w[open_ids[k]]))
        else:
            dist, k = cKDTree(np.c_[centre, self.z_scale * centre_z]).query(np.c_[xy, self.z_scale * z])
            ok = np.flatnonzero(self._within(xy, w, z, wz, centre[k], centre_z[k], open_ids[k], sums))
        ok = ok[np.argsort(dist[ok], kind="stable")]
        _, first = np.unique(k[ok], return_index=True)
        joined[ok[first]] = open_ids[k[ok[first]]]
        return joined

    def _within(self, xy, w, z, wz, centre, centre_z, ids, sums: _Sums) -> np.ndarray:
        """The 3D gate of each localization and its nearest event."""
        lateral = np.sum((xy - centre) ** 2, axis=1) / (1.0 / w + 1.0 / sums.w[ids])
        known = (wz > 0) & (sums.wz[ids] > 0)
        var_z = np.where(known, 1.0 / np.where(wz > 0, wz, 1.0) + 1.0 / np.where(known, sums.wz[ids], 1.0), 1.0)
        d2 = lateral + np.where(known, (z - centre_z) ** 2 / var_z, 0.0)
        return d2 <= np.where(known, self.radius_3d, self.max_sigmas) ** 2


def merge(frame: np.ndarray, x: np.ndarray, y: np.ndarray, sigma: np.ndarray, photons: np.ndarray | None = None,
          max_gap: int = 1, max_sigmas: float = 3.0, z: np.ndarray | None = None,
          sigma_z: np.ndarray | None = None) -> Events:
    """Link (:func:`link`) and merge: weighted mean position (and z), combined uncertainty, frames, summed
    photons."""
    index = link(frame, x, y, sigma, max_gap, max_sigmas, z, sigma_z)
    n = int(index.max()) + 1 if len(index) else 0
    w = 1.0 / np.asarray(sigma, float) ** 2
    wsum = np.bincount(index, weights=w, minlength=n)
    first = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first, index, np.asarray(frame, np.int64))
    phot = np.full(n, np.nan) if photons is None else np.bincount(index, weights=photons, minlength=n)
    events = Events(first, np.bincount(index, weights=w * x, minlength=n) / wsum,
                    np.bincount(index, weights=w * y, minlength=n) / wsum, 1.0 / np.sqrt(wsum),
                    np.bincount(index, minlength=n), phot, index)
    if z is not None and sigma_z is not None:
        events.z, events.sigma_z = _merged_z(index, n, np.asarray(z, float), _z_weights(sigma_z))
    return events


def _merged_z(index: np.ndarray, n: int, z: np.ndarray, wz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per event: the inverse-variance mean z and 1/sqrt(sum wz); the plain mean and NaN without z weight."""
    wsum = np.bincount(index, weights=wz, minlength=n)
    known = wsum > 0
    plain = np.bincount(index, weights=z, minlength=n) / np.bincount(index, minlength=n)
    weighted = np.bincount(index, weights=wz * z, minlength=n) / np.where(known, wsum, 1.0)
    return np.where(known, weighted, plain), np.where(known, 1.0 / np.sqrt(np.where(known, wsum, 1.0)), np.nan)
