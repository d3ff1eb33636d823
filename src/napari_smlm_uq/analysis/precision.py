"""A precision check without ground truth: a molecule on in consecutive frames is localized twice at one
point. Unambiguous mutual nearest neighbours in consecutive frames (each the other's only neighbour within
``radius``) give (a) the NeNA precision (Endesfelder et al. 2014, Histochem Cell Biol 141:629): the
distances between the pair follow a Rayleigh law of scale ``sqrt(2) sigma``, fitted by maximum likelihood
with a share of random pairs growing linearly with distance; (b) per axis the std of
``z = d / sqrt(s1^2 + s2^2)``, which is 1 when the reported uncertainties ``s`` are right, and its robust
estimate ``1.4826 median |z|``: a pair of two different molecules within ``radius`` (one switching off, a
neighbour on in the next frame) has ``|z|`` of 5-25 and a few percent of such pairs dominate the std
(docs/real-data.md); the robust scale measures the bulk."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.spatial import cKDTree

from ..localizations import Localizations

LINK_RADIUS = 1.0   # raw pixels
MAD_TO_STD = 1.4826  # std / median |z| of a normal law


def robust_std(z: np.ndarray) -> float:
    """``1.4826 median |z|``: the std of ``z`` (centred at 0) if normal, insensitive to a few outliers."""
    return float(MAD_TO_STD * np.median(np.abs(z))) if len(z) > 1 else float("nan")


def consecutive_pairs(locs: Localizations, radius: float = LINK_RADIUS) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(i, j)`` of localizations in frames ``t`` and ``t + 1`` that are each other's only
    neighbour within ``radius`` raw pixels."""
    xy = np.column_stack([locs.col, locs.row])
    firsts, seconds = [], []
    for t in np.unique(locs.frame):
        a, b = np.flatnonzero(locs.frame == t), np.flatnonzero(locs.frame == t + 1)
        if not len(a) or not len(b):
            continue
        ta, tb = cKDTree(xy[a]), cKDTree(xy[b])
        near_b = tb.query_ball_point(xy[a], radius)
        near_a = ta.query_ball_point(xy[b], radius)
        for i, found in enumerate(near_b):
            if len(found) == 1 and len(near_a[found[0]]) == 1:
                firsts.append(a[i])
                seconds.append(b[found[0]])
    return np.asarray(firsts, int), np.asarray(seconds, int)


def nena(distances: np.ndarray, radius: float = LINK_RADIUS) -> tuple[float, float]:
    """NeNA precision per axis (units of ``distances``) and its standard error: maximum-likelihood fit of
    ``(1 - w) Rayleigh(d; sqrt(2) sigma)`` truncated at ``radius`` plus ``w 2 d / radius^2`` (random pairs).
    NaN when the fit puts sigma beyond ``radius``: the pairs are then indistinguishable from random ones."""
    d = np.asarray(distances, float)
    if len(d) < 5:
        return float("nan"), float("nan")

    def nll(params: np.ndarray) -> float:
        sigma, w = np.exp(params[0]), 1 / (1 + np.exp(-params[1]))
        s2 = 2 * sigma**2
        rayleigh = d / s2 * np.exp(-d**2 / (2 * s2)) / (1 - np.exp(-radius**2 / (2 * s2)))
        return -float(np.sum(np.log((1 - w) * rayleigh + w * 2 * d / radius**2 + 1e-300)))

    start = np.array([np.log(np.sqrt(np.mean(d**2) / 4)), -3.0])
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):   # the search may try extreme sigmas
        sigma = float(np.exp(minimize(nll, start, method="Nelder-Mead").x[0]))
    if not sigma < radius:
        return float("nan"), float("nan")
    return sigma, sigma / (2 * np.sqrt(len(d)))


@dataclass
class PrecisionCheck:
    """Consecutive-frame pairs, the NeNA precision (nm, per axis) and its standard error, and the std of
    ``d / sqrt(s1^2 + s2^2)`` in x and y and its robust estimate (NaN without uncertainties, i.e. phi alone)."""

    pairs: int
    nena_nm: float
    nena_se_nm: float
    z_std_x: float
    z_std_y: float
    z_robust_x: float
    z_robust_y: float

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if not self.pairs:
            return "precision check: no molecule was localized in consecutive frames"
        z = (f"; d/sqrt(s1^2+s2^2): robust std x {self.z_robust_x:.2f}, y {self.z_robust_y:.2f}, std x "
             f"{self.z_std_x:.2f}, y {self.z_std_y:.2f} (1 when the uncertainty is right; the std also counts "
             "pairs of two molecules)" if np.isfinite(self.z_std_x) else "")
        nena = (f"NeNA {self.nena_nm:.1f} +/- {self.nena_se_nm:.1f} nm" if np.isfinite(self.nena_nm)
                else "NeNA not determined (too few pairs, or no closer than random ones), so no check of the "
                     "uncertainties either")
        return f"precision check on {self.pairs} consecutive-frame pairs: {nena}{z}"


def consecutive_frame_precision(locs: Localizations, pixel_size: float, radius: float = LINK_RADIUS) -> PrecisionCheck:
    """The precision check of ``locs`` (raw pixels; ``pixel_size`` nm)."""
    i, j = consecutive_pairs(locs, radius)
    dx, dy = locs.col[j] - locs.col[i], locs.row[j] - locs.row[i]
    sigma, se = nena(np.hypot(dx, dy), radius)
    scale = np.sqrt(locs.uncertainty[i] ** 2 + locs.uncertainty[j] ** 2)
    # without a NeNA the pairs are no closer than chance: not one molecule twice, so no test of the uncertainty
    ok = np.isfinite(scale) & (scale > 0) & np.isfinite(sigma)
    z = [v[ok] / scale[ok] for v in (dx, dy)]
    z_std = [float(np.std(v)) if len(v) > 1 else float("nan") for v in z]
    return PrecisionCheck(len(i), sigma * pixel_size, se * pixel_size, *z_std, *map(robust_std, z))
