"""Real acquisitions (issue 13): the camera from the data, backgrounds that vary across the field, the
consecutive-frame precision check, and the real stacks of ../shared/data (docs/real-data.md).

    python benchmarks/real_acquisitions.py [--parts camera,background,blinking,real] [--frames 100]
        [--finetuned MODEL] [--samples 8]

Writes ``benchmarks/results/real_acquisitions.json`` (parts not run keep their previous results).
``background`` and ``camera`` use phi alone (``--samples 0``): E and false positives do not need psi;
``blinking`` runs the default pipeline (the z std needs per-localization uncertainties).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_smlm_uq.analysis import metrics
from napari_smlm_uq.analysis.precision import (
    consecutive_frame_precision,
    consecutive_pairs,
    robust_std,
)
from napari_smlm_uq.inference.background_choice import (
    choose_background,
    tile_background,
    variation,
)
from napari_smlm_uq.inference.camera_choice import choose_camera
from napari_smlm_uq.inference.pipeline import PredictSettings, predict
from napari_smlm_uq.io.camera_map import read_camera_map
from napari_smlm_uq.localizations import Localizations
from napari_smlm_uq.models import registry
from napari_smlm_uq.physics.camera import Camera
from napari_smlm_uq.physics.camera_estimation import METHODS, EstimateError, estimate_camera
from napari_smlm_uq.physics.simulate import SimulationSettings, simulate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "real_acquisitions.json"
SHARED = [Path(os.environ["SMLM_UQ_SHARED_DATA"])] if "SMLM_UQ_SHARED_DATA" in os.environ else []
SHARED += [ROOT.parent / "shared" / "data", Path("/work/shared/data")]
TOLERANCE_NM = 250.0
CAMERAS = {"ccd": lambda rng, shape: Camera(100.0, 2.0, 1.5),
           "emccd": lambda rng, shape: Camera(500.0, 20.0, 0.5, "emccd"),
           "scmos map": lambda rng, shape: Camera(rng.normal(100.0, 1.0, shape), rng.normal(2.1, 0.1, shape),
                                                 rng.uniform(1.0, 2.0, shape), "scmos")}


def shared_data() -> Path | None:
    return next((p for p in SHARED if p.is_dir()), None)


def run_predict(adu, models, settings: PredictSettings) -> Localizations:
    return Localizations.concat([r.localizations for r in predict(adu, models, settings)])


def scores(locs: Localizations, truth, pixel_size: float) -> dict:
    s = metrics.score(locs.frame, np.column_stack([locs.col, locs.row]), truth.frame,
                      np.column_stack([truth.col, truth.row]), TOLERANCE_NM / pixel_size)
    return {"E": s.efficiency, "jaccard": s.jaccard, "fp_fraction": s.fp / max(s.tp + s.fp, 1),
            "recall": s.recall, "localizations": len(locs), "rmse_nm": s.rmse * pixel_size}


def camera_part(frames: int) -> dict:
    """Effective gain and offset errors per camera and per blinking-resistance method, on blinking movies
    with a 6x gradient and with a Gaussian illumination profile (64x64 px)."""
    out = {}
    for name, make in CAMERAS.items():
        for bg_map in ("gradient", "illumination"):
            cam = make(np.random.default_rng(1), (64, 64))
            sim = simulate(SimulationSettings(frames=frames, size=64, density=1.0, photons=2000.0, background=20.0,
                                              on_time=3.0, background_map=bg_map, camera=cam, seed=11))
            true_gain = float(np.median(cam.effective_gain))
            true_offset = float(np.median(cam.offset))
            row = {}
            for method in METHODS:
                try:
                    e = estimate_camera(sim.adu, cam.kind, read_noise=float(np.median(cam.read_noise)), method=method)
                except EstimateError as exc:   # the estimate's checks refused it (``plain``: molecules' variance)
                    row[method] = {"refused": str(exc)}
                    continue
                row[method] = {"effective_gain": e.gain * e.excess_noise,
                               "gain_error_pct": 100 * (e.gain * e.excess_noise / true_gain - 1),
                               "offset_error_e": (e.offset - true_offset) / float(np.median(cam.gain)),
                               "gain_se": e.gain_se, "offset_se": e.offset_se}
            out[f"{name}, {bg_map}"] = {"true_effective_gain": true_gain, "true_offset": true_offset, "methods": row}
    return out


def background_part(frames: int, finetuned: str | None) -> dict:
    """E and false positives with the true camera on movies whose background rises 6x across the field
    (gradient, illumination) against flat movies at the mean level; phi alone."""
    models = {"default": registry.load("default")} | ({"fine-tuned": registry.load(finetuned)} if finetuned else {})
    out = {}
    for bg_map in (None, "gradient", "illumination"):
        sim = simulate(SimulationSettings(frames=frames, size=64, density=1.0, photons=2000.0, background=20.0,
                                          background_map=bg_map, seed=9201))
        for model_name, m in models.items():
            for estimate in ("frame", "local"):
                s = PredictSettings(samples=0, camera=sim.settings.camera, background=estimate, device="cpu")
                key = f"{bg_map or 'flat'}, {model_name}, {estimate}"
                out[key] = scores(run_predict(sim.adu, m, s), sim.emitters, 100.0)
        if bg_map:  # predict with no camera options: the camera chosen from the data
            choice = choose_camera(sim.adu, {}, {})
            s = PredictSettings(samples=0, camera=choice.camera, device="cpu")
            out[f"{bg_map}, default, camera from the data"] = scores(run_predict(sim.adu, models["default"], s),
                                                                     sim.emitters, 100.0) | {"camera": choice.as_dict()}
    return out


def background_choice_part(frames: int) -> dict:
    """E and false positives around the frame median and the local estimate (phi alone, true camera) on
    movies whose background varies 1-6x across the field (gradient, illumination, cells) at two mean
    levels, with the variation that background_choice measures and the estimate it picks."""
    models = registry.load("default")
    out = {}
    movies = [(None, 1.0)] + [(m, r) for m in ("gradient", "illumination", "cells") for r in (1.25, 1.5, 2.0, 3.0, 6.0)]
    for level in (20.0, 100.0):
        for bg_map, ratio in movies:
            sim = simulate(SimulationSettings(frames=frames, size=64, density=1.0, photons=2000.0, background=level,
                                              background_map=bg_map, background_ratio=ratio, seed=9401))
            cam = sim.settings.camera
            tiles = tile_background(sim.adu, cam)
            row = {"variation": variation(tiles), "level": float(np.median(tiles)),
                   "pedestal": float((np.percentile(tiles, 95) - np.median(tiles)) / np.sqrt(np.median(tiles))),
                   "chosen": choose_background(sim.adu, cam, "frame").estimate}
            for estimate in ("frame", "local"):
                s = PredictSettings(samples=0, camera=cam, background=estimate, device="cpu")
                row[estimate] = scores(run_predict(sim.adu, models, s), sim.emitters, 100.0)
            out[f"{bg_map or 'flat'} {ratio:g}x, background {level:g}"] = row
            print(f"{bg_map or 'flat'} {ratio:g}x bg {level:g}: variation {row['variation']:.2f} pedestal "
                  f"{row['pedestal']:.2f} E frame {row['frame']['E']:.1f} "
                  f"({100 * row['frame']['fp_fraction']:.1f} % fp) "
                  f"local {row['local']['E']:.1f} ({100 * row['local']['fp_fraction']:.1f} % fp)", flush=True)
    return out


ISOLATION_PX = 2.0   # the contamination filter measured: no third localization this close in either frame


def isolated(locs: Localizations, i: np.ndarray, j: np.ndarray, radius: float = ISOLATION_PX) -> np.ndarray:
    """Pairs ``(i, j)`` with no other localization within ``radius`` raw px of either, in either frame."""
    xy = np.column_stack([locs.col, locs.row])
    keep = np.ones(len(i), bool)
    for k, (a, b) in enumerate(zip(i, j)):
        for t in (locs.frame[a], locs.frame[b]):
            others = np.flatnonzero((locs.frame == t) & (np.arange(len(locs)) != a) & (np.arange(len(locs)) != b))
            near = np.hypot(*(xy[others, None] - xy[[a, b]]).transpose(2, 0, 1)) < radius
            keep[k] &= not near.any()
    return keep


def z_scales(z: np.ndarray) -> dict:
    """std and robust std (1.4826 median |z|) per axis of ``(n, 2)`` z values."""
    return {"std": [float(np.std(z[:, k])) for k in (0, 1)], "robust": [robust_std(z[:, k]) for k in (0, 1)],
            "n": len(z)}


def pair_diagnostics(locs: Localizations, truth) -> dict:
    """The consecutive-frame z against the truth z on the same localizations: pairs of one molecule or of
    two (from the truth), the truth z on the localizations in pairs and on all matched ones, the error
    correlation between the two localizations of one molecule, and the isolation filter."""
    m = metrics.match(locs.frame, np.column_stack([locs.col, locs.row]), truth.frame,
                      np.column_stack([truth.col, truth.row]), TOLERANCE_NM / 100.0)
    gt = np.full(len(locs), -1)
    gt[m.loc_idx] = m.gt_idx
    err = np.full((len(locs), 2), np.nan)
    err[m.loc_idx] = np.column_stack([locs.col[m.loc_idx] - truth.col[m.gt_idx],
                                      locs.row[m.loc_idx] - truth.row[m.gt_idx]])
    z_truth = err / locs.uncertainty[:, None]
    ok = np.isfinite(z_truth).all(axis=1)
    i, j = consecutive_pairs(locs)
    scale = np.sqrt(locs.uncertainty[i] ** 2 + locs.uncertainty[j] ** 2)[:, None]
    z_pair = np.column_stack([locs.col[j] - locs.col[i], locs.row[j] - locs.row[i]]) / scale
    same = (gt[i] >= 0) & (gt[j] >= 0)
    same[same] = (truth.col[gt[i[same]]] == truth.col[gt[j[same]]]) & (truth.row[gt[i[same]]] == truth.row[gt[j[same]]])
    matched = lambda *idx: (k := np.unique(np.concatenate(idx)))[ok[k]]
    keep = isolated(locs, i, j)
    e1, e2 = err[i[same]], err[j[same]]
    return {"pairs": len(i), "pairs_of_two_molecules": int((~same).sum()),
            "consecutive": z_scales(z_pair), "consecutive_one_molecule": z_scales(z_pair[same]),
            "consecutive_isolated": z_scales(z_pair[keep]),
            "truth_all": z_scales(z_truth[ok]), "truth_in_pairs": z_scales(z_truth[matched(i, j)]),
            "truth_in_isolated_pairs": z_scales(z_truth[matched(i[keep], j[keep])]),
            "outliers_pct": {"truth": float(100 * (np.abs(z_truth[ok]) > 5).any(axis=1).mean()),
                             "consecutive": float(100 * (np.abs(z_pair) > 5).any(axis=1).mean())},
            "error_correlation_one_molecule": [float(np.corrcoef(e1[:, k], e2[:, k])[0, 1]) for k in (0, 1)],
            "rmse_truth_nm_per_axis": float(np.sqrt(np.mean(err[ok] ** 2)) * 100.0)}


def blinking_part(frames: int, samples: int) -> dict:
    """Consecutive-frame z std and NeNA against the z std and RMSE computed against the ground truth, on a
    flat and a 6x gradient background, with the background estimate chosen from the data and the other one."""
    models = registry.load("default")
    out = {}
    for bg_map in (None, "gradient"):
        sim = simulate(SimulationSettings(frames=frames, size=48, density=0.5, photons=(1000.0, 5000.0),
                                          background=20.0, on_time=3.0, background_map=bg_map, seed=9301))
        cam = sim.settings.camera
        chosen = choose_background(sim.adu, cam, "frame")
        for estimate in (chosen.estimate, {"frame": "local", "local": "frame"}[chosen.estimate]):
            locs = run_predict(sim.adu, models, PredictSettings(samples=samples, camera=cam, background=estimate,
                                                                device="cpu"))
            key = f"{bg_map or 'flat'}, {estimate}" + (" (chosen)" if estimate == chosen.estimate else "")
            out[key] = {"check": consecutive_frame_precision(locs, 100.0).as_dict(), "samples": samples,
                        "background_choice": chosen.as_dict(), **pair_diagnostics(locs, sim.emitters),
                        **scores(locs, sim.emitters, 100.0)}
            print(key, json.dumps(out[key], default=float), flush=True)
    return out


def real_part(samples: int) -> dict:
    data = shared_data()
    if data is None:
        return {"skipped": "../shared/data not found"}
    out = {}
    scmos = data / "real-scmos-storm"
    adu = tifffile.imread(scmos / "sample.tif")
    calibration = tifffile.imread(scmos / "calib_offset_variance_gain.tif")
    estimate = estimate_camera(adu, "scmos")
    out["scmos camera"] = {"estimate": estimate.as_dict(), "calibration_median_gain": float(np.median(calibration[2])),
                           "calibration_median_offset": float(np.median(calibration[0])),
                           "gain_error_pct": 100 * (estimate.gain / float(np.median(calibration[2])) - 1),
                           "methods": {m: estimate_camera(adu, "scmos", method=m).gain for m in METHODS}}
    models = registry.load("default")
    cal = read_camera_map(scmos / "calib_offset_variance_gain.tif", adu.shape[1:])
    crop = (slice(None), slice(96, 160), slice(96, 160))   # the default pipeline on the central 64x64 px (CPU time)
    runs = {"calibration map, phi alone": (adu, cal, 0), "estimate, phi alone": (adu, estimate.camera(), 0),
            f"calibration map, samples {samples}, central 64x64 px": (adu[crop], replace(cal, **{
                k: getattr(cal, k)[crop[1:]] for k in ("offset", "gain", "read_noise")}), samples)}
    for name, (frames, cam, n_samples) in runs.items():   # the background estimate chosen as predict does
        background = choose_background(frames, cam, "frame")
        settings = PredictSettings(samples=n_samples, camera=cam, pixel_size=160.0, device="cpu",
                                   background=background.estimate)
        locs = run_predict(frames, models, settings)
        out[f"scmos, {name}"] = {"localizations": len(locs), "per_frame": len(locs) / len(frames),
                                 "background": background.as_dict(),
                                 "check": consecutive_frame_precision(locs, 160.0).as_dict()}
    picasso = data / "picasso-testdata"
    adu = tifffile.imread(picasso / "testdata.tif")
    ref = np.genfromtxt(picasso / "ref_picasso_locs.csv", delimiter=",", names=True)
    ref = ref[ref["frame"] < len(adu)]
    choice = choose_camera(adu, {}, {})
    out["picasso camera"] = choice.as_dict()
    background = choose_background(adu, choice.camera, "frame")
    # phi alone: Picasso's movie holds 30 localizations in 100 frames
    locs = run_predict(adu, models, PredictSettings(samples=0, camera=choice.camera, pixel_size=160.0, device="cpu",
                                                    background=background.estimate))
    m = metrics.match(locs.frame, np.column_stack([locs.col, locs.row]), ref["frame"].astype(int),
                      np.column_stack([ref["x"], ref["y"]]), 1.0)
    d = np.hypot(locs.col[m.loc_idx] - ref["x"][m.gt_idx], locs.row[m.loc_idx] - ref["y"][m.gt_idx]) * 160.0
    out["picasso, phi alone"] = {"localizations": len(locs), "picasso_localizations": len(ref),
                                 "matched_within_1px": len(m.loc_idx),
                                 "median_distance_to_picasso_nm": float(np.median(d)) if len(d) else None,
                                 "background": background.as_dict(),
                                 "check": consecutive_frame_precision(locs, 160.0).as_dict()}
    locs = run_predict(adu, models, PredictSettings(samples=samples, camera=choice.camera, pixel_size=160.0,
                                                    device="cpu", background=background.estimate))
    out[f"picasso, samples {samples}"] = {"localizations": len(locs),
                                          "check": consecutive_frame_precision(locs, 160.0).as_dict()}
    return out


def real_background_part(finetuned: str | None) -> dict:
    """Localization counts on the real stacks with the local background estimate (phi alone), with the
    bundled model and the fine-tuned one: the sCMOS field's background varies about 3x."""
    data = shared_data()
    if data is None:
        return {"skipped": "../shared/data not found"}
    scmos, picasso = data / "real-scmos-storm", data / "picasso-testdata" / "testdata.tif"
    adu = tifffile.imread(scmos / "sample.tif")
    stacks = {"scmos, calibration map": (adu, read_camera_map(scmos / "calib_offset_variance_gain.tif", adu.shape[1:])),
              "picasso": (tifffile.imread(picasso), None)}
    models = {"default": registry.load("default")} | ({"fine-tuned": registry.load(finetuned)} if finetuned else {})
    out = {}
    for stack_name, (frames, cam) in stacks.items():
        cam = cam or choose_camera(frames, {}, {}).camera
        for model_name, m in models.items():
            settings = PredictSettings(samples=0, camera=cam, pixel_size=160.0, background="local", device="cpu")
            locs = run_predict(frames, m, settings)
            out[f"{stack_name}, {model_name}, local"] = {"localizations": len(locs),
                                                        "per_frame": len(locs) / len(frames),
                                                        "check": consecutive_frame_precision(locs, 160.0).as_dict()}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="camera,background,blinking,real")
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--finetuned", default=None, help="a model fine-tuned with --background-estimate local")
    a = p.parse_args()
    torch.set_num_threads(1)   # the dev machine's CPU is shared
    parts = {"camera": lambda: camera_part(a.frames), "background": lambda: background_part(a.frames, a.finetuned),
             "background_choice": lambda: background_choice_part(a.frames),
             "blinking": lambda: blinking_part(a.frames, a.samples), "real": lambda: real_part(a.samples),
             "real_background": lambda: real_background_part(a.finetuned)}
    for name in a.parts.split(","):
        t0 = time.perf_counter()
        part = parts[name]() | {"seconds": time.perf_counter() - t0}
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}   # other parts may have run meanwhile
        results[name] = part
        results["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                              "date": time.strftime("%Y-%m-%d"), "note": "2-core CPU of the dev machine, shared"}
        RESULTS.write_text(json.dumps(results, indent=1, default=float) + "\n")
        print(name, json.dumps(results[name], default=float), flush=True)


if __name__ == "__main__":
    main()
