"""psi's tile grid in the std map (issue 12, "no seams"): the seam ratio (analysis/seams.py), E and the
calibration of the localization uncertainty for inference variants that need no retraining.

    PYTHONPATH=src python benchmarks/seams.py [--frames 6] [--variants fixed,frame_norm,...] [--real-frames 2]

Simulations: the benchmark movie settings (64x64 px, 2000 photons, background 20, densities 0.5 and 3 /um^2);
real frames: ../shared/data/real-scmos-storm (camera from the median of its calibration maps). Writes
benchmarks/results/seams.json.
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import tifffile

from napari_smlm_uq.analysis.evaluation import (
    localization_report,
    pixel_report,
    true_kdes,
)
from napari_smlm_uq.analysis.seams import tile_seam_ratio
from napari_smlm_uq.inference import pipeline
from napari_smlm_uq.io.files import write_json
from napari_smlm_uq.io.tables import emitters_table, localizations_table
from napari_smlm_uq.localizations import Localizations
from napari_smlm_uq.models import registry
from napari_smlm_uq.physics.camera import Camera
from napari_smlm_uq.physics.simulate import SimulationSettings, simulate

ROOT = Path(__file__).resolve().parents[1]
# variant: (PredictSettings changes, psi tile, psi overlap)
VARIANTS = {
    "fixed": ({"frame_norm": False}, 64, 16),
    "shift": ({"tile_shift": True, "frame_norm": False}, 64, 16),
    "overlap32": ({"frame_norm": False}, 64, 32),
    "tile256": ({"frame_norm": False}, 256, 32),
    "frame_norm": ({"frame_norm": True}, 64, 16),  # GroupNorm statistics pooled over each image's tiles
}


def shared_data() -> Path | None:
    for base in (os.environ.get("SMLM_UQ_SHARED_DATA"), ROOT.parent / "shared" / "data", "/work/shared/data"):
        if base and Path(base, "real-scmos-storm").is_dir():
            return Path(base)
    return None


def real_frames(n: int) -> tuple[np.ndarray, Camera, float]:
    """The first ``n`` real sCMOS frames (ADU), a camera from the medians of its calibration, pixel nm."""
    folder = shared_data() / "real-scmos-storm"
    offset, variance, gain = tifffile.imread(folder / "calib_offset_variance_gain.tif")
    g = float(np.median(gain))
    camera = Camera(float(np.median(offset)), g, float(np.sqrt(np.median(variance)) / g))
    return tifffile.imread(folder / "sample.tif")[:n].astype(np.float64), camera, 160.0


def run(models, adu, settings, tile: int, overlap: int) -> tuple[list, float]:
    pipeline.PSI_TILE, pipeline.PSI_OVERLAP = tile, overlap
    t0 = time.perf_counter()
    results = list(pipeline.predict(adu, models, settings))
    return results, (time.perf_counter() - t0) / len(adu)


def simulated(models, name: str, density: float, frames: int) -> dict:
    changes, tile, overlap = VARIANTS[name]
    sim = SimulationSettings(frames=frames, size=64, density=density, photons=2000.0, background=20.0, seed=9105)
    stack = simulate(sim)
    results, spf = run(models, stack.adu, replace(pipeline.PredictSettings(), **changes), tile, overlap)
    mean, std = np.stack([r.mean for r in results]), np.stack([r.std for r in results])
    locs = localizations_table(Localizations.concat([r.localizations for r in results]), sim.pixel_size)
    rep = localization_report(locs, emitters_table(stack.emitters, sim.pixel_size))
    pix = pixel_report(mean, std, true_kdes(stack.emitters, range(frames), sim.shape))
    return {"seam_ratio": tile_seam_ratio(std, mean), "E": rep["efficiency"], "rmse_nm": rep["rmse"],
            "z_std": rep.get("error_over_uncertainty_std"), "coverage_2std": pix["coverage_2std"],
            "std_mean": float(std.mean()), "s_per_frame": spf}


def real(models, name: str, frames: int, crop: int) -> dict:
    changes, tile, overlap = VARIANTS[name]
    adu, camera, pixel = real_frames(frames)
    adu = adu[:, :crop, :crop]
    s = replace(pipeline.PredictSettings(camera=camera, pixel_size=pixel), **changes)
    results, spf = run(models, adu, s, tile, overlap)
    mean, std = np.stack([r.mean for r in results]), np.stack([r.std for r in results])
    return {"seam_ratio": tile_seam_ratio(std, mean), "std_mean": float(std.mean()), "s_per_frame": spf,
            "localizations_per_frame": float(np.mean([len(r.localizations) for r in results]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--real-frames", type=int, default=2)
    ap.add_argument("--real-crop", type=int, default=128, help="raw pixels of the real frames used (square)")
    ap.add_argument("--variants", default="fixed,frame_norm,shift,overlap32,tile256")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "seams.json"))
    args = ap.parse_args()
    models = registry.load()
    out = {"frames": args.frames, "real_frames": args.real_frames, "real_crop": args.real_crop, "variants": {}}
    for name in args.variants.split(","):
        row = out["variants"][name] = {}
        parts = {f"sim_{d}": (simulated, (d, args.frames)) for d in (0.5, 3.0)}
        if shared_data() is not None and args.real_frames:
            parts["real"] = (real, (args.real_frames, args.real_crop))
        for key, (fn, fn_args) in parts.items():
            row[key] = fn(models, name, *fn_args)
            print(name, key, {k: round(v, 3) if isinstance(v, float) else v for k, v in row[key].items()}, flush=True)
            write_json(args.out, out)


if __name__ == "__main__":
    main()
