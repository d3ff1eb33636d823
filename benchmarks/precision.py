"""Against the CRLB (issue 9): isolated-emitter lateral RMSE over each emitter's own Cramer-Rao bound.

    PYTHONPATH=src python benchmarks/precision.py [--device cuda] [--frames 200] [--samples 8] [--steps 2] \
        [--precision auto]

For the benchmark movies (64x64 px, 100 nm px, PSF sigma 1 px, 2000 photons, background 20, densities 0.5
and 3 /um^2, seeds 9105/9130), a stack outside them (PSF sigma 1.4 px, 700 photons, background 80) and a
photon sweep (500-10,000 photons log-uniform, 0.5 /um^2): phi alone, the diffusion mean and both refined
on the raw pixels (inference/refine.py; the refined diffusion also with the uncertainty rule used before
2026-11-27), scored by E, RMSE, isolated RMSE / CRLB (no other emitter within
1 um, and within 500 nm), the localization z std (error / uncertainty per axis), seconds per frame; and,
on phi alone, where the isolated error comes from: the part that depends on the emitter's sub-pixel phase
on the 4x SR grid (the read-out's bias), and the read-out by a kernel fit to the KDE around each peak; and,
for the movies of one photon count, the E an unbiased localizer at the CRLB would reach (``efficient_ceiling``).
Writes benchmarks/results/precision.json and docs/img/precision_crlb.png. No napari needed.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from napari_smlm_uq.analysis import metrics
from napari_smlm_uq.inference.pipeline import PredictSettings, predict
from napari_smlm_uq.inference.refine import Refiner, refined_localizations
from napari_smlm_uq.localizations import Localizations
from napari_smlm_uq.models import registry
from napari_smlm_uq.physics.boxes import fit_frame
from napari_smlm_uq.physics.camera import Camera
from napari_smlm_uq.physics.crlb import crlb, crlb_in_frame, pair_lateral_crlb
from napari_smlm_uq.physics.fit import ImagingModel
from napari_smlm_uq.physics.kde import KERNEL_SIGMA, raw_to_sr, sr_to_raw
from napari_smlm_uq.physics.simulate import SimulationSettings, simulate

ROOT = Path(__file__).resolve().parents[1]
RESULTS, IMG = ROOT / "benchmarks" / "results", ROOT / "docs" / "img"
CAMERA = Camera(offset=100.0, gain=1.0, read_noise=1.5)
BENCH = dict(size=64, photons=2000.0, background=20.0, psf_sigma=1.0, pixel_size=100.0, camera=CAMERA)
MOVIES = {  # name -> simulation settings (frames set by --frames); seeds never used in training or calibration
    "d0.5": dict(BENCH, density=0.5, seed=9105),
    "d3": dict(BENCH, density=3.0, seed=9130),
    "outside_d0.5": dict(BENCH, density=0.5, photons=700.0, background=80.0, psf_sigma=1.4, seed=9155),
    "outside_d3": dict(BENCH, density=3.0, photons=700.0, background=80.0, psf_sigma=1.4, seed=9180),
    "sweep": dict(BENCH, density=0.5, photons=(500.0, 10000.0), seed=9195),
}
ISOLATION_NM = (1000.0, 500.0)
PHOTON_BINS = (500, 1000, 2000, 4000, 10000)
MERGE_BELOW = np.arange(0.0, 1.55, 0.1)   # px: separations the ceiling's joint fit is tried below


@functools.cache
def lateral_crlb(photons: float, background: float, psf_sigma: float, read_noise: float) -> float:
    """Lateral (x and y) bound in raw px: ``sqrt(crlb_x^2 + crlb_y^2)``."""
    return float(np.sqrt(2) * crlb(photons, background, psf_sigma, read_noise)[0])


def lateral_bound(photons: float, row: float, col: float, sim: SimulationSettings, roi: int = 11) -> float:
    """Lateral bound (raw px) of an emitter at ``row``/``col``: the centred box's, or within ``roi // 2`` px of
    the frame's edge, from the pixels of its box that lie in the frame (crlb.crlb_in_frame)."""
    rn, half = float(sim.camera.read_noise), roi // 2
    if min(row, col, sim.shape[0] - 1 - row, sim.shape[1] - 1 - col) >= half:
        return lateral_crlb(photons, sim.background, sim.psf_sigma, rn)
    return float(np.hypot(*crlb_in_frame(photons, sim.background, sim.psf_sigma, row, col, sim.shape, rn, roi)[:2]))


def nearest_neighbour(gt) -> np.ndarray:
    """Distance (raw px) from each ground-truth emitter to the nearest other of its frame (inf if alone)."""
    out = np.full(len(gt.frame), np.inf)
    for t in np.unique(gt.frame):
        idx = np.flatnonzero(gt.frame == t)
        if len(idx) > 1:
            d = np.hypot(gt.row[idx, None] - gt.row[None, idx], gt.col[idx, None] - gt.col[None, idx])
            out[idx] = (d + np.eye(len(idx)) * 1e9).min(axis=1)
    return out


def isolated(gt, radius_px: float) -> np.ndarray:
    """Ground-truth emitters with no other emitter of their frame within ``radius_px``."""
    return nearest_neighbour(gt) > radius_px


def efficient_ceiling(gt, sim: SimulationSettings, merge_below=MERGE_BELOW) -> dict:
    """E of an unbiased localizer at the Cramer-Rao bound that finds every emitter: each at the larger of its
    own bound (frame pixels) and the bound of a joint fit with its nearest neighbour (two equal emitters,
    crlb.pair_lateral_crlb); and the best E when pairs closer than ``d`` px are reported as one localization
    at their centre (one emitter missed, the other ``d/2`` off) instead, over ``merge_below``. Movies of one
    photon count only (None otherwise)."""
    if np.ndim(sim.photons):
        return None
    rn, nn = float(sim.camera.read_noise), nearest_neighbour(gt)
    own = np.array([lateral_bound(sim.photons, r, c, sim) for r, c in zip(gt.row, gt.col)])
    grid = np.linspace(0.05, 4.0, 80) * sim.psf_sigma
    pair_bound = [pair_lateral_crlb(d, sim.photons, sim.background, sim.psf_sigma, rn) for d in grid]
    pair = np.interp(nn, grid, pair_bound, right=0.0)
    bound2 = np.maximum(own, pair) ** 2 * sim.pixel_size**2
    centre2 = (nn * sim.pixel_size / 2) ** 2 + own**2 * sim.pixel_size**2   # reported at the pair's centre
    rows = []
    for d in merge_below:
        merged = nn < d            # both of each such pair: half are missed, half carry the centre's offset
        found = len(nn) - merged.sum() / 2
        mse = (bound2[~merged].sum() + centre2[merged].sum() / 2) / found
        jac = float(100.0 * found / len(nn))
        rows.append({"merge_below_px": round(float(d), 2), "jaccard": jac, "rmse_nm": float(np.sqrt(mse)),
                     "efficiency": metrics.efficiency(jac, float(np.sqrt(mse)))})
    best = max(rows, key=lambda r: r["efficiency"])
    return {"unbiased": rows[0], "best": best, "by_merge": rows}


def score(locs: Localizations, gt, sim: SimulationSettings) -> dict:
    """E, JAC, RMSE (nm), z std, and isolated lateral RMSE / CRLB (overall and per photon bin)."""
    px = sim.pixel_size
    loc_xy, gt_xy = np.column_stack([locs.col, locs.row]) * px, np.column_stack([gt.col, gt.row]) * px
    s = metrics.score(locs.frame, loc_xy, gt.frame, gt_xy)
    m = metrics.match(locs.frame, loc_xy, gt.frame, gt_xy)
    out = {k: s.as_dict()[k] for k in ("efficiency", "jaccard", "rmse", "precision", "recall")}
    unc = locs.uncertainty[m.loc_idx] * px
    z = metrics.normalised_errors(loc_xy[m.loc_idx], gt_xy[m.gt_idx], unc)
    out["z_std"] = float(np.std(z)) if len(z) else float("nan")
    out["z_std_robust"] = float(1.4826 * np.median(np.abs(z))) if len(z) else float("nan")
    err2 = np.sum((loc_xy[m.loc_idx] - gt_xy[m.gt_idx]) ** 2, axis=1)
    photons = np.round(gt.photons[m.gt_idx], 0)
    bound = np.array([lateral_bound(n, r, c, sim) for n, r, c in zip(photons, gt.row[m.gt_idx], gt.col[m.gt_idx])]) * px
    box = np.array([lateral_crlb(n, sim.background, sim.psf_sigma, float(sim.camera.read_noise)) for n in photons]) * px
    for radius in ISOLATION_NM:
        alone = isolated(gt, radius / px)[m.gt_idx]
        out[f"isolated_{radius:g}nm"] = _ratio(err2[alone], bound[alone], box[alone])
        out[f"isolated_{radius:g}nm"]["by_photons"] = [
            dict(_ratio(err2[sel], bound[sel], box[sel]), photons=[lo, hi])
            for lo, hi in itertools.pairwise(PHOTON_BINS)
            for sel in [alone & (gt.photons[m.gt_idx] >= lo) & (gt.photons[m.gt_idx] < hi)]]
    return out


def _ratio(err2: np.ndarray, bound: np.ndarray, box: np.ndarray) -> dict:
    """RMSE over the root-mean-square bound of the frame's pixels (``rmse_over_crlb``) and of a whole box
    wherever the emitter is (``rmse_over_crlb_box``, the figure reported until 2026-11-27)."""
    if not len(err2):
        return {"n": 0, "rmse_nm": float("nan"), "crlb_nm": float("nan"), "rmse_over_crlb": float("nan"),
                "rmse_over_crlb_box": float("nan")}
    rmse, lim = float(np.sqrt(err2.mean())), float(np.sqrt(np.mean(bound**2)))
    return {"n": int(len(err2)), "rmse_nm": rmse, "crlb_nm": lim, "rmse_over_crlb": rmse / lim,
            "rmse_over_crlb_box": rmse / float(np.sqrt(np.mean(box**2)))}


def run(models, stack, settings: PredictSettings) -> tuple[list, float]:
    """Frame results and seconds per frame of a simulated stack."""
    sim = stack.settings
    t0 = time.perf_counter()
    results = list(predict(stack.adu, models, replace(settings, camera=sim.camera, pixel_size=sim.pixel_size)))
    return results, (time.perf_counter() - t0) / sim.frames


def refined(results: list, adu: np.ndarray, camera: Camera) -> tuple[Localizations, float]:
    """Every frame's localizations refined on its raw frame; seconds per frame for the refinement."""
    refiner = Refiner(camera)
    t0 = time.perf_counter()
    locs = [refiner(r.localizations, adu[r.index]) for r in results]
    return Localizations.concat(locs), (time.perf_counter() - t0) / len(results)


def former_rule(results: list, adu: np.ndarray, camera: Camera) -> Localizations:
    """The refined positions with the uncertainty of the rule used until 2026-11-27 (``sigma^2 = sigma_fisher^2
    + 0.1 sigma_diffusion^2`` for every kept fit: no width excess, diffusion spread also on isolated spots)."""
    refiner, parts = Refiner(camera), []
    for r in results:
        fit, loc = refiner.refit(r.localizations, adu[r.index])
        unc = np.where(fit.ok, np.sqrt(fit.fisher**2 + 0.1 * loc.uncertainty**2), loc.uncertainty)
        parts.append(replace(loc, row=fit.row, col=fit.col, uncertainty=unc))
    return Localizations.concat(parts)


def kernel_fit_readout(results: list) -> Localizations:
    """Positions from a least-squares fit of the known KDE kernel (7x7 SR px) around each mean-KDE peak."""
    parts = []
    for r in results:
        loc = r.localizations
        rows, cols = raw_to_sr(loc.row), raw_to_sr(loc.col)
        if len(loc):
            fit, corner = fit_frame(r.mean.astype(np.float64), rows, cols, ImagingModel(KERNEL_SIGMA, 1e4), k=1)
            rows, cols = fit.row[:, 0] + corner[:, 0], fit.col[:, 0] + corner[:, 1]
        parts.append(replace(loc, row=sr_to_raw(rows), col=sr_to_raw(cols)))
    return Localizations.concat(parts)


def phase_bias(locs: Localizations, gt, sim: SimulationSettings, bins: int = 8) -> dict:
    """Isolated (1 um) matched errors split into the part explained by the emitter's sub-pixel phase on the
    SR grid (mean error per phase bin, per axis: the read-out's bias) and the rest."""
    px = sim.pixel_size
    m = metrics.match(locs.frame, np.column_stack([locs.col, locs.row]) * px,
                      gt.frame, np.column_stack([gt.col, gt.row]) * px)
    alone = isolated(gt, ISOLATION_NM[0] / px)[m.gt_idx]
    li, gi = m.loc_idx[alone], m.gt_idx[alone]
    total, systematic = 0.0, 0.0
    for loc_c, gt_c in ((locs.col, gt.col), (locs.row, gt.row)):
        err = (loc_c[li] - gt_c[gi]) * px
        phase = np.floor(np.mod(raw_to_sr(gt_c[gi]) + 0.5, 1.0) * bins).astype(int)
        means = np.array([err[phase == b].mean() if (phase == b).any() else 0.0 for b in range(bins)])
        total += np.mean(err**2)
        systematic += np.mean(means[phase] ** 2)
    return {"n": int(len(li)), "rmse_nm": float(np.sqrt(total)), "phase_bias_rmse_nm": float(np.sqrt(systematic)),
            "rest_rmse_nm": float(np.sqrt(max(total - systematic, 0.0)))}


def diffusion_weight_scan(results: list, adu: np.ndarray, gt, sim: SimulationSettings,
                          weights=(0.0, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0)) -> dict:
    """z std of the refined positions with
    ``sigma^2 = sigma_fisher^2 + max(excess, hidden) + c sigma_diffusion^2 [crowded]`` for each ``c`` (one
    refit of every frame, its uncertainty combined with each ``c``)."""
    refiner = Refiner(sim.camera)
    fits = [refiner.refit(r.localizations, adu[r.index]) for r in results]
    out = {}
    for c in weights:
        scored = score(Localizations.concat([refined_localizations(*f, diffusion_weight=c) for f in fits]), gt, sim)
        out[f"{c:g}"] = {k: scored[k] for k in ("z_std", "z_std_robust")}
    return out


def study(models, name: str, sim: SimulationSettings, settings: PredictSettings) -> dict:
    stack = simulate(sim)
    gt = stack.emitters
    phi, phi_s = run(models, stack, replace(settings, samples=0))
    diff, diff_s = run(models, stack, settings)
    phi_locs, diff_locs = (Localizations.concat([r.localizations for r in res]) for res in (phi, diff))
    phi_ref, phi_ref_s = refined(phi, stack.adu, sim.camera)
    diff_ref, diff_ref_s = refined(diff, stack.adu, sim.camera)
    res = {
        "phi": dict(score(phi_locs, gt, sim), seconds_per_frame=phi_s),
        "diffusion": dict(score(diff_locs, gt, sim), seconds_per_frame=diff_s),
        "phi_refined": dict(score(phi_ref, gt, sim), seconds_per_frame=phi_s + phi_ref_s,
                            refine_seconds_per_frame=phi_ref_s),
        "diffusion_refined": dict(score(diff_ref, gt, sim), seconds_per_frame=diff_s + diff_ref_s,
                                  refine_seconds_per_frame=diff_ref_s),
        "diffusion_refined_former_rule": score(former_rule(diff, stack.adu, sim.camera), gt, sim),
        "phi_kernel_fit_readout": score(kernel_fit_readout(phi), gt, sim),
        "phi_phase_bias": phase_bias(phi_locs, gt, sim),
        "diffusion_phase_bias": phase_bias(diff_locs, gt, sim),
        "phi_refined_phase_bias": phase_bias(phi_ref, gt, sim),
        "z_std_by_diffusion_weight": diffusion_weight_scan(diff, stack.adu, gt, sim),
        "efficient_ceiling": efficient_ceiling(gt, sim),
    }
    res["settings"] = {k: v for k, v in MOVIES[name].items() if k != "camera"} | {"frames": sim.frames}
    ratio = lambda v, radius: round(v.get(f"isolated_{radius}nm", {}).get("rmse_over_crlb", np.nan), 2)
    print(name, json.dumps({k: [round(v.get("efficiency", np.nan), 1), ratio(v, 1000), ratio(v, 500),
                                round(v.get("z_std", np.nan), 2)]
                            for k, v in res.items() if v and "efficiency" in v}), flush=True)
    return res


def plot(res: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for method, style in (("phi", "s-"), ("diffusion", "o-"), ("diffusion_refined", "^-"), ("phi_refined", "v--")):
        rows = res["sweep"][method]["isolated_1000nm"]["by_photons"]
        x = [np.sqrt(r["photons"][0] * r["photons"][1]) for r in rows]
        ax.plot(x, [r["rmse_over_crlb"] for r in rows], style, label=method.replace("_", " "))
    ax.axhline(1.0, color="k", lw=1)
    ax.axhline(1.25, color="k", lw=1, ls=":", label="target 1.25")
    ax.set_xscale("log")
    ax.set_xlabel("photons per emitter")
    ax.set_ylabel("isolated lateral RMSE / CRLB")
    ax.set_title(f"Isolated emitters (no neighbour within 1 um), 0.5 /um^2, PSF 1 px, background 20; "
                 f"{res['frames']} frames, {res['machine']['device']}", fontsize=7)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--steps", type=int, default=PredictSettings.steps)
    ap.add_argument("--precision", default=PredictSettings.precision, help="auto, fp32 or bf16")
    ap.add_argument("--movies", default=",".join(MOVIES))
    ap.add_argument("--out", type=Path, default=RESULTS / "precision.json")
    ap.add_argument("--model", default=registry.DEFAULT_MODEL, help="bundled model name or model file")
    ap.add_argument("--plot", type=Path, default=IMG / "precision_crlb.png")
    a = ap.parse_args()
    models = registry.load(a.model)
    # refined below, on the same results
    settings = PredictSettings(samples=a.samples, steps=a.steps, precision=a.precision, device=a.device,
                               refine=False).for_model(models)
    device = settings.torch_device()
    machine = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()}-core CPU",
               "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d")}
    t0 = time.perf_counter()
    res = {"frames": a.frames, "samples": a.samples, "steps": settings.steps, "bf16": settings.bf16(device),
           "machine": machine, "model": a.model}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    for name in a.movies.split(","):  # written after every movie: a long run can be read as it goes
        res[name] = study(models, name, SimulationSettings(frames=a.frames, **MOVIES[name]), settings)
        res["benchmark_seconds"] = time.perf_counter() - t0
        a.out.write_text(json.dumps(res, indent=1, default=float) + "\n")
    if "sweep" in res:
        a.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(res, a.plot)
    print(f"{res['benchmark_seconds']:.0f} s -> {a.out}")


if __name__ == "__main__":
    main()
