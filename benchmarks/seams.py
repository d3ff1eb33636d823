"""psi's tile grid in the std map (issue 12, "no seams"): the seam ratio (tests/seam_ratio.py), E and the
calibration of the localization uncertainty for inference variants that need no retraining.

    PYTHONPATH=src python benchmarks/seams.py [--frames 6] [--variants tiles64,default] [--real-frames 2]

Simulations: the benchmark movie settings (64x64 px, 2000 photons, background 20, densities 0.5 and 3 /um^2);
real frames: ../shared/data/real-scmos-storm (camera from the median of its calibration maps). Writes
benchmarks/results/seams.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

from napari_smlm_uq.analysis.evaluation import (
    localization_report,
    pixel_report,
    true_kdes,
)
from napari_smlm_uq.inference import pipeline
from napari_smlm_uq.io.files import write_json
from napari_smlm_uq.localizations import Localizations
from napari_smlm_uq.models import registry
from napari_smlm_uq.physics.camera import Camera
from napari_smlm_uq.physics.simulate import SimulationSettings, simulate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))   # the seam ratio the tests check
from seam_ratio import tile_seam_ratio  # noqa: E402

# variant: (psi tile on every device, overlap), SR pixels. "tiles64" is the layout before whole-frame psi
# (64 px training-size tiles, GroupNorm statistics pooled over a frame's tiles); "default" the pipeline's own.
VARIANTS = {
    "tiles64": (64, 16),
    "default": (None, None),
}
# grids whose trace the std map is checked for: the 64 px tiles/attention windows, and the CPU's psi tiles
GRIDS = {"grid64": (64, 16), "grid64_windows": (64, 0), "grid256": (256, 32)}


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


def run(models, adu, settings, name: str) -> tuple[list, float]:
    """Results and CPU seconds per frame of one variant."""
    tile, overlap = VARIANTS[name]
    saved = pipeline.PSI_TILE, pipeline.PSI_OVERLAP
    if tile is not None:
        pipeline.PSI_TILE, pipeline.PSI_OVERLAP = tile, overlap
    try:
        t0 = time.process_time()
        results = list(pipeline.predict(adu, models, settings))
        return results, (time.process_time() - t0) / len(adu)
    finally:
        pipeline.PSI_TILE, pipeline.PSI_OVERLAP = saved


def seam_ratios(std: np.ndarray, mean: np.ndarray) -> dict:
    return {f"seam_ratio_{g}": tile_seam_ratio(std, mean, tile, overlap) for g, (tile, overlap) in GRIDS.items()}


def simulated(models, name: str, density: float, frames: int) -> dict:
    sim = SimulationSettings(frames=frames, size=64, density=density, photons=2000.0, background=20.0, seed=9105)
    stack = simulate(sim)
    settings = pipeline.PredictSettings(camera=sim.camera, pixel_size=sim.pixel_size, device="cpu")
    results, spf = run(models, stack.adu, settings, name)
    mean, std = np.stack([r.mean for r in results]), np.stack([r.std for r in results])
    rep = localization_report(Localizations.concat([r.localizations for r in results]), stack.emitters, sim.pixel_size)
    pix = pixel_report(mean, std, true_kdes(stack.emitters, range(frames), sim.shape))
    return seam_ratios(std, mean) | {"E": rep["efficiency"], "rmse_nm": rep["rmse"],
            "z_std": rep.get("error_over_uncertainty_std"), "coverage_2std": pix["coverage_2std"],
            "std_mean": float(std.mean()), "cpu_s_per_frame": spf}


def real(models, name: str, frames: int, crop: int) -> dict:
    adu, camera, pixel = real_frames(frames)
    adu = adu[:, :crop, :crop]
    results, spf = run(models, adu, pipeline.PredictSettings(camera=camera, pixel_size=pixel, device="cpu"), name)
    mean, std = np.stack([r.mean for r in results]), np.stack([r.std for r in results])
    return seam_ratios(std, mean) | {"std_mean": float(std.mean()), "cpu_s_per_frame": spf,
            "localizations_per_frame": float(np.mean([len(r.localizations) for r in results]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--real-frames", type=int, default=2)
    ap.add_argument("--real-crop", type=int, default=128, help="raw pixels of the real frames used (square)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
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
