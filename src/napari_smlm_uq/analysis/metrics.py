"""Localization metrics of the SMLM Challenge 2016 (Sage et al. 2019), and uncertainty calibration.

Matching is per frame, one-to-one and optimal: it maximises the number of pairs closer than the
tolerance, then minimises their summed distance. Positions are in nm.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import spearmanr

from ..settings import option

_UNMATCHED = 1e12


@dataclass(frozen=True)
class ScoreSettings:
    """How localizations are matched to the ground truth."""

    tolerance: float = option(250.0, help="matching radius", unit="nm", low=0.0, open_low=True)


@dataclass(frozen=True)
class Matching:
    """Index pairs ``(loc_idx, gt_idx)`` of matched localizations and ground truth, and the counts."""

    loc_idx: np.ndarray
    gt_idx: np.ndarray
    n_loc: int
    n_gt: int


@dataclass(frozen=True)
class Scores:
    """JAC, precision and recall in %, lateral RMSE in nm, efficiency E, counts."""

    jaccard: float
    rmse: float
    efficiency: float
    precision: float
    recall: float
    tp: int
    fp: int
    fn: int

    def as_dict(self) -> dict:
        return asdict(self)


def match(loc_frame: np.ndarray, loc_xy: np.ndarray, gt_frame: np.ndarray, gt_xy: np.ndarray,
          tolerance: float = ScoreSettings.tolerance) -> Matching:
    """Optimal one-to-one matching per frame within ``tolerance`` nm. ``*_xy`` are ``(n, 2)`` in nm."""
    loc_frame, gt_frame = np.asarray(loc_frame), np.asarray(gt_frame)
    loc_xy, gt_xy = np.asarray(loc_xy, float).reshape(-1, 2), np.asarray(gt_xy, float).reshape(-1, 2)
    pairs_l, pairs_g = [], []
    for t in np.intersect1d(loc_frame, gt_frame):
        li, gi = np.flatnonzero(loc_frame == t), np.flatnonzero(gt_frame == t)
        dist = np.linalg.norm(loc_xy[li, None, :] - gt_xy[None, gi, :], axis=-1)
        cost = np.where(dist <= tolerance, dist, _UNMATCHED)
        r, c = linear_sum_assignment(cost)
        ok = cost[r, c] < _UNMATCHED
        pairs_l.append(li[r[ok]])
        pairs_g.append(gi[c[ok]])
    cat = lambda parts: np.concatenate(parts).astype(int) if parts else np.zeros(0, int)
    return Matching(cat(pairs_l), cat(pairs_g), len(loc_frame), len(gt_frame))


def efficiency(jaccard: float, rmse: float, alpha: float = 1.0) -> float:
    """``E = 100 - sqrt((100 - JAC)^2 + alpha^2 RMSE^2)`` with alpha in nm^-1 (1 for 2D)."""
    return float(100.0 - np.sqrt((100.0 - jaccard) ** 2 + (alpha * rmse) ** 2))


def score(loc_frame, loc_xy, gt_frame, gt_xy, tolerance: float = ScoreSettings.tolerance) -> Scores:
    """Match, then JAC = TP / (TP + FP + FN), lateral RMSE over matched pairs, E, precision, recall."""
    return matched_scores(match(loc_frame, loc_xy, gt_frame, gt_xy, tolerance), loc_xy, gt_xy)


def matched_scores(m: Matching, loc_xy, gt_xy) -> Scores:
    """The :class:`Scores` of a matching of localizations ``loc_xy`` to the truth ``gt_xy`` (nm)."""
    tp = len(m.loc_idx)
    fp, fn = m.n_loc - tp, m.n_gt - tp
    err = np.asarray(loc_xy, float).reshape(-1, 2)[m.loc_idx] - np.asarray(gt_xy, float).reshape(-1, 2)[m.gt_idx]
    rmse = float(np.sqrt(np.mean(np.sum(err**2, axis=1)))) if tp else float("nan")
    jac = 100.0 * tp / max(tp + fp + fn, 1)
    return Scores(jac, rmse, efficiency(jac, rmse if tp else 0.0) if tp else 0.0,
                  100.0 * tp / max(m.n_loc, 1), 100.0 * tp / max(m.n_gt, 1), tp, fp, fn)


AXIAL_ALPHA = 0.5   # nm^-1: the challenge's weight of the axial RMSE in its 3D efficiency


@dataclass(frozen=True)
class AxialScores:
    """3D scores of the matched pairs (matched laterally, as in :func:`score`): ``rmse_z`` (nm), the axial
    efficiency ``efficiency_axial`` (alpha :data:`AXIAL_ALPHA`) and ``efficiency_3d``, the mean of the lateral
    and axial efficiencies (SMLM Challenge 2016, Sage et al. 2019)."""

    rmse_z: float
    efficiency_axial: float
    efficiency_3d: float

    def as_dict(self) -> dict:
        return asdict(self)


def score_3d(loc_frame, loc_xy, loc_z, gt_frame, gt_xy, gt_z, tolerance: float = 250.0) -> tuple[Scores, AxialScores]:
    """:func:`score` and the axial scores of the same matching (``*_z`` nm)."""
    m = match(loc_frame, loc_xy, gt_frame, gt_xy, tolerance)
    lateral = matched_scores(m, loc_xy, gt_xy)
    if not lateral.tp:
        return lateral, AxialScores(float("nan"), 0.0, 0.0)
    rmse_z = float(np.sqrt(np.mean((np.asarray(loc_z, float)[m.loc_idx] - np.asarray(gt_z, float)[m.gt_idx]) ** 2)))
    axial = efficiency(lateral.jaccard, rmse_z, AXIAL_ALPHA)
    return lateral, AxialScores(rmse_z, axial, 0.5 * (lateral.efficiency + axial))


# --- uncertainty quality (docs/physics.md, section 7) ---------------------------------------------------------

def spearman(std: np.ndarray, abs_error: np.ndarray) -> float:
    """Per-pixel Spearman rank correlation of predicted std with the absolute error."""
    return float(spearmanr(np.ravel(std), np.ravel(abs_error)).statistic)


def sparsification(std: np.ndarray, abs_error: np.ndarray,
                    n_points: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparsification curves: mean error of what is left after removing the fraction ``f`` of pixels
    with the highest std (model), and the highest error (oracle). Returns (fractions, model, oracle)."""
    s, e = np.ravel(std), np.ravel(abs_error)
    fractions = np.linspace(0.0, 0.95, n_points)
    by_std, by_err = e[np.argsort(-s, kind="stable")], np.sort(e)[::-1]
    n = len(e)
    keep = lambda order, f: order[int(round(f * n)):].mean()
    model = np.array([keep(by_std, f) for f in fractions])
    oracle = np.array([keep(by_err, f) for f in fractions])
    return fractions, model / model[0], oracle / oracle[0]


def ause(std: np.ndarray, abs_error: np.ndarray, n_points: int = 20) -> float:
    """Area under the sparsification error (model curve minus oracle curve); lower is better."""
    f, model, oracle = sparsification(std, abs_error, n_points)
    return float(np.trapezoid(model - oracle, f))


def coverage(mean: np.ndarray, std: np.ndarray, truth: np.ndarray, k: float = 2.0) -> float:
    """Fraction of pixels whose truth lies within ``mean +/- k std``."""
    return float(np.mean(np.abs(np.ravel(truth) - np.ravel(mean)) <= k * np.ravel(std)))


# --- localization uncertainty -------------------------------------------------------------------

def normalised_errors(loc_xy: np.ndarray, gt_xy: np.ndarray, uncertainty: np.ndarray) -> np.ndarray:
    """Per-axis ``error / uncertainty`` of matched pairs (both axes pooled, finite uncertainties only);
    its standard deviation is 1 for a calibrated per-axis uncertainty."""
    ok = np.isfinite(uncertainty) & (uncertainty > 0)
    return ((np.asarray(loc_xy)[ok] - np.asarray(gt_xy)[ok]) / np.asarray(uncertainty)[ok, None]).ravel()


def precision_when_filtering(is_tp: np.ndarray, score: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Precision (%) of what is kept after dropping, for each ``f`` in ``fractions``, the fraction ``f``
    of localizations with the highest ``score`` (e.g. uncertainty; NaN counts as most uncertain)."""
    order = np.argsort(-np.nan_to_num(np.asarray(score, float), nan=np.inf), kind="stable")
    tp = np.asarray(is_tp, bool)[order]
    n = len(tp)
    out = []
    for f in fractions:
        kept = tp[int(round(f * n)):]
        out.append(100.0 * kept.mean() if len(kept) else np.nan)
    return np.array(out)


def false_positives_removed(is_tp: np.ndarray, score: np.ndarray, drop: float = 0.1) -> float:
    """Fraction (%) of all false positives among the ``drop`` fraction with the highest ``score``
    (NaN when there are no false positives to remove)."""
    order = np.argsort(-np.nan_to_num(np.asarray(score, float), nan=np.inf), kind="stable")
    fp = ~np.asarray(is_tp, bool)[order]
    if not fp.any():
        return float("nan")
    n_drop = int(round(drop * len(fp)))
    return float(100.0 * fp[:n_drop].sum() / fp.sum())
