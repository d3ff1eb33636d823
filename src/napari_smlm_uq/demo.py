"""``smlm-uq demo``: simulate a small stack, run the bundled pipeline, score it, draw a figure."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .analysis.evaluation import localization_report, pixel_report, true_kdes
from .defaults import PIXEL_SIZE_NM
from .inference.pipeline import PredictSettings, predict
from .localizations import Localizations, px_to_nm
from .models import registry
from .physics.crlb import crlb_nm
from .physics.simulate import SimulationSettings, simulate

DEMO_SIM = SimulationSettings(frames=10, size=32, density=1.5, photons=2000.0, background=20.0, psf_sigma=1.0,
                              pixel_size=PIXEL_SIZE_NM, seed=2026)


def run(settings: PredictSettings, model: str = registry.DEFAULT_MODEL, sim: SimulationSettings = DEMO_SIM) -> dict:
    """Scores of phi alone and of the diffusion pipeline on a fresh simulated stack, plus arrays to plot."""
    stack = simulate(sim)
    models = registry.load(model)
    out = {"stack": stack, "crlb_nm": crlb_nm(sim.photons, sim.background, sim.psf_sigma, sim.pixel_size,
                                                      float(sim.camera.read_noise))}
    phi_only = PredictSettings(samples=0, camera=sim.camera, pixel_size=sim.pixel_size)
    for key, s in (("phi", phi_only), ("pipeline", settings)):
        t0 = time.perf_counter()
        results = list(predict(stack.adu, models, s))
        locs = Localizations.concat([r.localizations for r in results])
        out[key] = {"report": localization_report(locs, stack.emitters, sim.pixel_size), "results": results,
                    "locs": locs,
                    "seconds_per_frame": (time.perf_counter() - t0) / sim.frames}
    res = out["pipeline"]["results"]
    mean, std = np.stack([r.mean for r in res]), np.stack([r.std for r in res])
    out["pipeline"]["pixels"] = pixel_report(mean, std, true_kdes(stack.emitters, range(sim.frames), sim.shape))
    return out


def figure(out: dict, path: Path, frame: int = 0) -> None:
    """Raw frame, SR mean, SR std, uncertainty-filtered mean, localizations coloured by uncertainty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stack, p = out["stack"], out["stack"].settings.pixel_size
    r = out["pipeline"]["results"][frame]
    h, w = stack.adu.shape[1:]
    raw_ext = (0, w * p / 1000, h * p / 1000, 0)  # um, pixel edges
    signal = r.mean > 0.05
    relative = r.std / np.maximum(r.mean, 1e-6)
    keep = ~signal | (relative <= np.quantile(relative[signal], 0.8)) if signal.any() else np.ones_like(r.std, bool)
    panels = [("raw frame (ADU)", stack.adu[frame], "gray"), ("SR mean (KDE)", r.mean, "magma"),
              ("SR std", r.std, "viridis"), ("mean, 20% least certain removed", np.where(keep, r.mean, 0), "magma")]
    fig, axes = plt.subplots(1, 5, figsize=(20, 4.4), constrained_layout=True)
    for ax, (title, img, cmap) in zip(axes, panels):
        im = ax.imshow(img, cmap=cmap, extent=raw_ext)
        ax.set_title(title)
        fig.colorbar(im, ax=ax, shrink=0.8)
    locs, gt = out["pipeline"]["locs"], stack.emitters.in_frame(frame)
    ax = axes[4]
    ax.imshow(r.mean, cmap="gray_r", extent=raw_ext, alpha=0.5)
    sel = locs.frame == frame
    um = lambda coord: px_to_nm(coord, p) / 1000
    ax.scatter(um(gt.col), um(gt.row), s=70, facecolors="none", edgecolors="k", label="ground truth")
    sc = ax.scatter(um(locs.col[sel]), um(locs.row[sel]), c=locs.uncertainty[sel] * p, s=18, cmap="plasma",
                    label="localizations")
    fig.colorbar(sc, ax=ax, shrink=0.8, label="uncertainty (nm)")
    ax.set_xlim(raw_ext[:2])
    ax.set_ylim(raw_ext[2:])
    ax.set_title("localizations by uncertainty")
    ax.legend(loc="lower right", fontsize=8)
    for ax in axes:
        ax.set_xlabel("x (um)")
    axes[0].set_ylabel("y (um)")
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)


def summary_lines(out: dict) -> list[str]:
    lines = [f"simulated {out['stack'].settings.frames} frames of {out['stack'].settings.size} px, "
             f"{len(out['stack'].emitters)} emitters; CRLB {out['crlb_nm']:.2f} nm per axis"]
    for key, label in (("phi", "phi alone       "), ("pipeline", "diffusion mean  ")):
        rep = out[key]["report"]
        lines.append(f"{label} JAC {rep['jaccard']:5.1f} %  RMSE {rep['rmse']:5.1f} nm  E {rep['efficiency']:5.1f}  "
                     f"({out[key]['seconds_per_frame']:.2f} s/frame)")
    rep, pix = out["pipeline"]["report"], out["pipeline"]["pixels"]
    if "error_over_uncertainty_std" in rep:
        fp = rep["fp_removed_by_uncertainty_10pct"]
        removed = (f"dropping the 10% most uncertain removes {fp:.0f}% of the {rep['fp']} false positives"
                   if np.isfinite(fp) else "no false positives")
        lines.append(f"uncertainty: median {rep['median_uncertainty_nm']:.1f} nm, std(error/uncertainty) "
                     f"{rep['error_over_uncertainty_std']:.2f} (1 = calibrated); {removed}")
    lines.append(f"per-pixel std vs |error|: Spearman {pix['spearman']:.2f}, AUSE {pix['ause']:.3f}, "
                 f"coverage of mean +/- 2 std {100 * pix['coverage_2std']:.1f}%")
    return lines
