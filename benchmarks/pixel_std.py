"""The per-pixel std against the error of the per-pixel mean, on the pixels with signal (issue 26): coverage of
mean +/- 2 std and Spearman(std, |error|) where the true KDE or the mean exceeds 0.05, beside the same figures
over every pixel, at 0.5-10 emitters/um^2, uniform and on filaments, and on movies whose PSF width and pixel
size differ from the training defaults.

    PYTHONPATH=src python benchmarks/pixel_std.py [--frames 5] [--model default] [--steps N]
                                                  [--out benchmarks/results/pixel_std_cpu.json]

The truth is each frame's KDE as the networks are trained to draw it (analysis/evaluation.true_kdes, saturated at 1);
the movies are density.py's (the benchmark movies' photons, background and camera), seeds 9700+ used nowhere
else. The default pipeline (8 samples, the default steps unless --steps).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from density import movie
from precision import run
from scipy.stats import spearmanr

from napari_smlm_uq.analysis.evaluation import true_kdes
from napari_smlm_uq.inference.pipeline import PredictSettings
from napari_smlm_uq.models import registry
from napari_smlm_uq.physics.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]
SIGNAL = 0.05   # KDE units: a pixel has signal where the true KDE or the mean exceeds this
MOVIES = [(d, s, {}) for s in ("uniform", "filaments") for d in (0.5, 3.0, 5.0, 10.0)] + [
    (3.0, "uniform", {"psf_sigma": 1.4}), (3.0, "uniform", {"pixel_size": 65.0}),
    (3.0, "uniform", {"pixel_size": 160.0})]


def pixel_figures(results: list, stack) -> dict:
    """Coverage (%) of mean +/- 2 std and Spearman(std, |mean - truth|), on signal pixels and on all."""
    truth = np.minimum(true_kdes(stack.emitters, range(len(results)), stack.settings.shape), 1.0)
    mean, std = np.stack([r.mean for r in results]), np.stack([r.std for r in results])
    error = np.abs(mean - truth)
    out = {}
    for name, where in (("signal", (truth > SIGNAL) | (mean > SIGNAL)), ("all", np.ones_like(mean, bool))):
        out[f"coverage_{name}"] = float(100.0 * np.mean(error[where] <= 2.0 * std[where]))
        out[f"spearman_{name}"] = float(spearmanr(std[where], error[where]).statistic)
        out[f"pixels_{name}"] = int(where.sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--model", default=registry.DEFAULT_MODEL, help="bundled model name or model file")
    ap.add_argument("--steps", type=int, default=PredictSettings.steps, help="diffusion steps per sample")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pixel_std_cpu.json")
    a = ap.parse_args()
    torch.set_num_threads(2)
    models, rows, t0 = registry.load(a.model), [], time.perf_counter()
    for i, (density, structure, change) in enumerate(MOVIES):
        stack = simulate(replace(movie(density, structure, a.frames, 64, 9700 + i), **change))
        results, seconds = run(models, stack, PredictSettings(device="cpu", steps=a.steps))
        rows.append(dict(density=density, structure=structure, **change, **pixel_figures(results, stack),
                         seconds_per_frame=seconds))
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    machine = dict(cpu=platform.processor() or platform.machine(), torch=torch.__version__, threads=2,
                   date=time.strftime("%Y-%m-%d"), commit=commit.strip())
    steps = a.steps or models.sampler_steps
    a.out.write_text(json.dumps(dict(machine=machine, model=a.model, steps=steps, frames=a.frames, signal=SIGNAL,
                                     rows=rows, seconds=time.perf_counter() - t0), indent=1) + "\n")
    print("->", a.out)


if __name__ == "__main__":
    main()
