"""Quality of predictions against simulated ground truth: localization scores beside the CRLB, and
whether the uncertainty predicts error (docs/physics.md, section 7). Shared by the demo, the training widget and the
benchmarks."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..inference.calibration import Calibration, frame_context
from ..localizations import Localizations, px_to_nm
from ..physics.kde import render_kde
from ..physics.simulate import Emitters
from . import metrics


def _xy_nm(points: Localizations | Emitters, pixel_size: float) -> np.ndarray:
    """``(n, 2)`` (x, y) in nm from the top-left corner of the first pixel."""
    return np.stack([px_to_nm(points.col, pixel_size), px_to_nm(points.row, pixel_size)], axis=1)


def localization_report(locs: Localizations, truth: Emitters, pixel_size: float,
                        tolerance: float = metrics.ScoreSettings.tolerance) -> dict:
    """JAC/RMSE/E/precision/recall of ``locs`` against ``truth`` (raw pixels of ``pixel_size`` nm; matching
    within ``tolerance`` nm), and for the uncertainty: the std of error/uncertainty over matched
    localizations, the false positives removed by dropping the 10% most uncertain (and least detected)."""
    loc_xy, gt_xy = _xy_nm(locs, pixel_size), _xy_nm(truth, pixel_size)
    s = metrics.score(locs.frame, loc_xy, truth.frame, gt_xy, tolerance)
    m = metrics.match(locs.frame, loc_xy, truth.frame, gt_xy, tolerance)
    report = s.as_dict()
    unc = locs.uncertainty * pixel_size
    if np.isfinite(unc).any() and len(m.loc_idx):
        z = metrics.normalised_errors(loc_xy[m.loc_idx], gt_xy[m.gt_idx], unc[m.loc_idx])
        is_tp = np.zeros(len(loc_xy), bool)
        is_tp[m.loc_idx] = True
        report.update({
            "error_over_uncertainty_std": float(np.std(z)) if len(z) else float("nan"),
            "median_uncertainty_nm": float(np.nanmedian(unc)),
            "fp_removed_by_uncertainty_10pct": metrics.false_positives_removed(is_tp, unc),
            "fp_removed_by_detection_10pct": metrics.false_positives_removed(is_tp, -locs.detection),
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


def _raw_localizations(models, adu: np.ndarray, settings, should_stop) -> list:
    """Per-frame localizations of ``adu`` with uncalibrated (raw) uncertainties of the diffusion samples
    (unrefined: the calibration scales the samples' spread, refine.py combines it afterwards)."""
    from ..inference.pipeline import predict

    calibration, models.calibration = models.calibration, {}
    try:
        return [r.localizations for r in predict(adu, models, replace(settings, refine=False),
                                                 should_stop=should_stop)]
    finally:
        models.calibration = calibration


def calibrate(models, settings, sims, should_stop=lambda: False) -> dict:
    """Fit the uncertainty calibration (calibration.py) on simulated validation stacks: per context
    (distance to the frame edge, close neighbours, peak SNR), the spread of ``error / raw uncertainty`` over
    matched localizations. ``sims`` is a list of :class:`SimulationSettings` (never the test seeds).
    Returns the calibration (``to_dict`` form) and, for the model card, the counts and raw spread per
    context and the raw and calibrated spread per stack. ``models.calibration`` is left as it was."""
    from ..physics.simulate import simulate

    settings = settings.for_model(models)
    z, bins, stack_of = [], [], []
    for k, sim in enumerate(sims):
        stack = simulate(sim)
        sim_settings = replace(settings, camera=sim.camera, pixel_size=sim.pixel_size)
        locs = Localizations.concat(_raw_localizations(models, stack.adu, sim_settings, should_stop))
        gt = stack.emitters
        tolerance = metrics.ScoreSettings.tolerance / sim.pixel_size   # raw pixels
        m = metrics.match(locs.frame, np.column_stack([locs.col, locs.row]),
                          gt.frame, np.column_stack([gt.col, gt.row]), tolerance=tolerance)
        bins_of = frame_context(locs.frame, locs.row, locs.col, locs.snr, sim.shape)
        err = np.column_stack([locs.col[m.loc_idx] - gt.col[m.gt_idx], locs.row[m.loc_idx] - gt.row[m.gt_idx]])
        z.append(err / locs.uncertainty[m.loc_idx, None])
        bins.append(np.stack(bins_of)[:, m.loc_idx])
        stack_of.append(np.full(len(m.loc_idx), k))
    z, bins, stack_of = np.concatenate(z), tuple(np.concatenate(bins, axis=1)), np.concatenate(stack_of)
    cal = Calibration.fit(z, bins)
    calibrated = z / cal.scales[bins][:, None]
    ok = np.isfinite(z).all(axis=1)
    spread = lambda v, sel: float(np.std(v[sel & ok])) if (sel & ok).any() else float("nan")
    per_context = {f"edge {e} neighbours {n} snr {k}": {"n": int((sel & ok).sum()), "raw_spread": spread(z, sel)}
                   for (e, n, k) in np.ndindex(cal.scales.shape)
                   for sel in [(bins[0] == e) & (bins[1] == n) & (bins[2] == k)]}
    per_stack = [{"photons": sim.photons, "background": sim.background, "density": sim.density,
                  "psf_sigma": sim.psf_sigma,
                  "n": int(((stack_of == k) & ok).sum()), "raw_spread": spread(z, stack_of == k),
                  "calibrated_spread": spread(calibrated, stack_of == k)} for k, sim in enumerate(sims)]
    return {"calibration": cal.to_dict(), "raw_spread": spread(z, ok), "calibrated_spread": spread(calibrated, ok),
            "contexts": per_context, "stacks": per_stack,
            "settings": {"samples": settings.samples, "steps": settings.steps, "start": settings.start}}
