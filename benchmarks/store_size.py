"""Size on disk of the result store (io/store.py) and what its encodings change, on predicted frames.

    PYTHONPATH=src python benchmarks/store_size.py [--frames 4] [--big-frames 1] [--out DIR]

The default pipeline (bundled model, 8 samples, its own steps) predicts the benchmark movies (benchmarks.md: 2000
photons, background 20, PSF sigma 1 px) at 0.5 and 3 emitters/um^2: ``--frames`` frames of 64x64 px and
``--big-frames`` of 256x256 px (16x the work: 0 skips them). Each frame's mean, std and sample go into a
store of every encoding (and of a few alternatives that were measured and not chosen); per encoding:
compressed bytes per frame and per SR pixel (mean, std and sample together), the projection to 10,000
frames of 256x256 px, the max and RMS error of each stored array against the float32 results, the
coverage of mean +/- 2 std against the true KDEs (all SR pixels, and those within an emitter's kernel:
true KDE >= 0.01), and E / RMSE of the peaks of the stored mean (``localize`` without samples; the
``stored_mean_peaks_former_rule`` entries of results/store_size.json were measured by the first version of
this script with the former peak rule, which counted each pixel of a plateau of equal maxima as a peak). Writes
DIR/store_size.json (DIR defaults to benchmarks/results); needs zarr, not napari.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from napari_smlm_uq.analysis import metrics
from napari_smlm_uq.analysis.evaluation import localization_report, true_kdes
from napari_smlm_uq.inference import localize as localize_module
from napari_smlm_uq.inference import pipeline
from napari_smlm_uq.io import store as store_module
from napari_smlm_uq.io.store import ENCODINGS, Encoding, ResultStore
from napari_smlm_uq.localizations import Localizations
from napari_smlm_uq.models import registry
from napari_smlm_uq.physics.simulate import SimulationSettings, simulate

ROOT = Path(__file__).resolve().parents[1]
DENSITIES = (0.5, 3.0)           # emitters / um^2
NEAR = 0.01                      # KDE units: SR pixels within an emitter's kernel (true KDE at least this)
TARGET_BYTES_PER_FRAME = 1e6     # 10 GB for 10,000 frames of 256x256 px
SR_PIXELS_256 = (256 * 4) ** 2


@dataclass(frozen=True)
class StdFloored(Encoding):
    """Alternative: the std also floored to 0 below the floor (not kept: mean +/- 2 std then misses the
    true KDE's tails wherever both are 0)."""

    def apply(self, mean, std, sample):
        mean, _, sample = super().apply(mean, std, sample)
        return mean, np.where(std < self.floor, 0.0, std), sample


@dataclass(frozen=True)
class Stepped(Encoding):
    """Alternative: float16 rounded to multiples of ``floor`` (the former ``step_bits``: 2^-10, 2^-7)."""

    def apply(self, mean, std, sample):
        return tuple(np.round(np.asarray(a) / self.floor) * self.floor for a in (mean, std, sample))


@dataclass(frozen=True)
class MantissaRounded(Encoding):
    """Alternative: ``compact`` with the float16 mantissa rounded to 5 of its 10 bits (relative error <= 2^-6)."""

    def apply(self, mean, std, sample):
        return tuple(keep_bits(a, 5) for a in super().apply(mean, std, sample))


def keep_bits(a: np.ndarray, bits: int) -> np.ndarray:
    """float16 with its mantissa rounded (half to even) to ``bits`` of 10 bits."""
    u = np.asarray(a, np.float16).view(np.uint16).astype(np.uint32)
    drop = 10 - bits
    u = (u + (1 << (drop - 1)) - 1 + ((u >> drop) & 1)) & ~np.uint32((1 << drop) - 1)
    return u.astype(np.uint16).view(np.float16)


ALTERNATIVES = (StdFloored("floor 0.03, std floored too", "float16", 0.03, "zstd", 0.3),
                MantissaRounded("compact, 5 mantissa bits", "float16", 0.03, "zstd", 0.3),
                Encoding("compact, floor 0.02 (before)", "float16", 0.02, "zstd", 0.3),
                Stepped("float16 rounded to 2^-10", "float16", 2.0**-10, "blosc", 1.7),
                Stepped("float16 rounded to 2^-7", "float16", 2.0**-7, "blosc", 1.7))


def peaks_report(mean: np.ndarray, stack) -> dict:
    """E, JAC and RMSE of the peaks of ``mean`` ``(T, 4H, 4W)`` against the stack's emitters."""
    locs = Localizations.concat([localize_module.localize(m, None, i) for i, m in enumerate(mean)])
    keep = stack.emitters.frame < len(mean)
    truth = type(stack.emitters)(*(getattr(stack.emitters, k)[keep] for k in ("frame", "row", "col", "photons")))
    rep = localization_report(locs, truth, stack.settings.pixel_size)
    return {k: rep[k] for k in ("efficiency", "jaccard", "rmse")} | {"localizations": len(locs)}


def stored(results, raw_shape, encoding: Encoding) -> dict:
    """Write ``results`` in ``encoding``; bytes on disk, write time and the arrays as read back (float32)."""
    store_module.ENCODINGS[encoding.name] = encoding   # the alternatives, for this process only
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultStore.create(tmp, len(results), raw_shape, 100.0, encoding=encoding.name, check_space=False)
        t0 = time.process_time()
        for r in results:
            store.write(r)
        cpu = (time.process_time() - t0) / len(results)
        size = {k: sum(p.stat().st_size for p in (store.path / k / "c").rglob("*") if p.is_file())
                for k in ("mean", "std", "sample")}
        arrays = {k: store.group[k][:].astype(np.float32) for k in ("mean", "std", "sample")}
    return {"bytes": size, "write_cpu_s_per_frame": cpu, "arrays": arrays}


def measure(results, stack, encoding: Encoding) -> dict:
    """One row: sizes, errors, coverage, E of the stored mean."""
    n, raw_shape = len(results), stack.adu.shape[1:]
    exact = {k: np.stack([getattr(r, k) for r in results]) for k in ("mean", "std", "sample")}
    s = stored(results, raw_shape, encoding)
    total = sum(s["bytes"].values())
    per_px = total / exact["mean"].size
    truth = true_kdes(stack.emitters, range(n), raw_shape)
    near = truth >= NEAR
    mean, std = s["arrays"]["mean"], s["arrays"]["std"]
    err = {k: np.abs(s["arrays"][k] - exact[k]) for k in exact}
    row = {"encoding": encoding.name, "bytes_per_frame": total / n,
           "bytes_per_frame_by_array": {k: v / n for k, v in s["bytes"].items()},
           "bytes_per_sr_pixel_all_arrays": per_px, "mb_per_256_frame": per_px * SR_PIXELS_256 / 1e6,
           "gb_per_10000_256_frames": per_px * SR_PIXELS_256 * 1e4 / 1e9,
           "write_cpu_s_per_frame": s["write_cpu_s_per_frame"],
           "max_error": {k: float(e.max()) for k, e in err.items()},
           "rms_error": {k: float(np.sqrt(np.mean(e.astype(np.float64) ** 2))) for k, e in err.items()},
           "coverage_2std": metrics.coverage(mean, std, truth, 2.0),
           "coverage_2std_near_emitters": metrics.coverage(mean[near], std[near], truth[near], 2.0),
           "stored_mean_peaks": peaks_report(mean, stack)}
    print(f"  {encoding.name:28s} {row['mb_per_256_frame']:6.3f} MB per 256x256 frame, "
          f"coverage {100 * row['coverage_2std']:.2f} / {100 * row['coverage_2std_near_emitters']:.2f} %, "
          f"E {row['stored_mean_peaks']['efficiency']:.2f}", flush=True)
    return row


def movie(size: int, frames: int, density: float):
    return simulate(SimulationSettings(frames=frames, size=size, density=density, photons=2000.0, background=20.0,
                                       seed=9105))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=4, help="64x64 frames per density")
    ap.add_argument("--big-frames", type=int, default=1, help="256x256 frames per density (0: none)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    models = registry.load(registry.DEFAULT_MODEL)
    settings = pipeline.PredictSettings(device="cpu")
    chosen = list(ENCODINGS.values())   # before stored() adds the alternatives to ENCODINGS
    runs = []
    for size, frames in ((64, args.frames), (256, args.big_frames)):
        for density in DENSITIES if frames else ():
            stack = movie(size, frames, density)
            t0 = time.process_time()
            results = list(pipeline.predict(stack.adu, models, settings))
            print(f"{size}x{size} px, {density} /um^2: {frames} frames predicted in "
                  f"{(time.process_time() - t0) / frames:.1f} CPU s each", flush=True)
            rows = [measure(results, stack, e) for e in (chosen + list(ALTERNATIVES) if size == 64 else chosen)]
            runs.append({"size": size, "density_per_um2": density, "frames": frames, "rows": rows})
    info = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
            "cpu_threads": 1, "pipeline": "bundled default model, 8 samples, its own steps",
            "target_bytes_per_256_frame": TARGET_BYTES_PER_FRAME, "near_emitters": f"true KDE >= {NEAR}"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "store_size.json").write_text(json.dumps({"machine": info, "runs": runs}, indent=2) + "\n")
    print(f"wrote {out / 'store_size.json'}")


if __name__ == "__main__":
    main()
