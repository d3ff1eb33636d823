"""Quality of predictions against simulated ground truth: localization scores beside the CRLB, and
whether the uncertainty predicts error (DESIGN.md 7). Shared by the demo, the training widget and the
benchmarks."""
from __future__ import annotations

import numpy as np

from . import metrics
from .kde import render_kde
from .localizations import table_xy
from .physics.simulate import Emitters


def localization_report(locs: dict[str, np.ndarray], gt: dict[str, np.ndarray], tolerance: float = 250.0) -> dict:
    """JAC/RMSE/E/precision/recall, and for the uncertainty: the std of error/uncertainty over matched
    localizations, the false positives removed by dropping the 10% most uncertain (and least detected)."""
    loc_xy, gt_xy = table_xy(locs), table_xy(gt)
    s = metrics.score(locs["frame"], loc_xy, gt["frame"], gt_xy, tolerance)
    m = metrics.match(locs["frame"], loc_xy, gt["frame"], gt_xy, tolerance)
    report = s.as_dict()
    unc = locs.get("uncertainty [nm]")
    if unc is not None and np.isfinite(unc).any() and len(m.loc_idx):
        z = metrics.normalised_errors(loc_xy[m.loc_idx], gt_xy[m.gt_idx], unc[m.loc_idx])
        is_tp = np.zeros(len(loc_xy), bool)
        is_tp[m.loc_idx] = True
        report.update({
            "error_over_uncertainty_std": float(np.std(z)) if len(z) else float("nan"),
            "median_uncertainty_nm": float(np.nanmedian(unc)),
            "fp_removed_by_uncertainty_10pct": metrics.false_positives_removed(is_tp, unc),
            "fp_removed_by_detection_10pct": metrics.false_positives_removed(is_tp, -locs["detection"]),
        })
    return report


def true_kdes(emitters: Emitters, frames: range, raw_shape: tuple[int, int]) -> np.ndarray:
    """Ground-truth KDEs ``(T, 4H, 4W)`` of the given frames."""
    return np.stack([render_kde(emitters.in_frame(t).row, emitters.in_frame(t).col, raw_shape) for t in frames])


def pixel_report(mean: np.ndarray, std: np.ndarray, truth: np.ndarray) -> dict:
    """Does the per-pixel std predict |mean - truth|? Spearman, AUSE, coverage of mean +/- 2 std."""
    err = np.abs(mean - truth)
    ratio = err / np.maximum(std, 1e-6)
    return {"spearman": metrics.spearman(std, err), "ause": metrics.ause(std, err),
            "coverage_2std": metrics.coverage(mean, std, truth, 2.0),
            "std_scale_for_95pct": float(np.quantile(ratio, 0.95) / 2.0)}


def calibrate(models, settings, sims, should_stop=lambda: False) -> dict:
    """Fit the uncertainty scale on simulated validation stacks: ``scale = std(error / raw uncertainty)``
    over matched localizations, so that calibrated ``error / uncertainty`` has unit spread. ``sims``
    is a list of :class:`SimulationSettings` (never the test seeds); returns the scale and the spread
    per stack (for the model card)."""
    from .localize import Localizations
    from .localizations import emitters_table, localizations_table
    from .physics.simulate import simulate
    from .pipeline import predict

    models.calibration.pop("uncertainty_scale", None)
    pooled, per_stack = [], []
    for sim in sims:
        stack = simulate(sim)
        results = [r.localizations for r in predict(stack.adu, models, settings, should_stop)]
        locs = localizations_table(Localizations.concat(results), sim.pixel_size)
        gt = emitters_table(stack.emitters, sim.pixel_size)
        m = metrics.match(locs["frame"], table_xy(locs), gt["frame"], table_xy(gt))
        z = metrics.normalised_errors(table_xy(locs)[m.loc_idx], table_xy(gt)[m.gt_idx], locs["uncertainty [nm]"][m.loc_idx])
        pooled.append(z)
        per_stack.append({"photons": sim.photons, "background": sim.background, "density": sim.density,
                          "psf_sigma": sim.psf_sigma, "raw_spread": float(np.std(z)), "n": int(len(z) // 2)})
    z = np.concatenate(pooled)
    return {"uncertainty_scale": float(np.std(z)), "raw_spread_std": float(np.std(z)),
            "raw_spread_robust": float(1.4826 * np.median(np.abs(z - np.median(z)))), "stacks": per_stack,
            "settings": {"samples": settings.samples, "steps": settings.steps, "start": settings.start}}
