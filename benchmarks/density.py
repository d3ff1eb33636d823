"""Dense and structured frames (issue 26): E, JAC, RMSE, localization z std and seconds per frame against the mean
density, emitters uniform or on filaments.

    PYTHONPATH=src python benchmarks/density.py [--frames 100] [--size 64] [--densities 0.5,1,3,5,8,10]
        [--structures uniform,filaments] [--methods default,phi,picasso] [--device auto] [--model NAME_OR_FILE]
        [--residual-search]

The benchmark movies of docs/benchmarks.md (100 nm pixels, PSF sigma 1 px, 2000 photons, background 20 photons/px,
read noise 1.5 e-, offset 100 ADU, gain 1; benchmarks/precision.py's ``BENCH``) at mean densities of 0.5-10
emitters/um^2. ``filaments``: blinking molecules on worm-like filaments (physics/structures.py with the
simulator's default shape: 0.3 filaments/um^2, 5 um long, persistence length 2 um; a fifth of the molecules on
in each frame), so the local density along a filament is many times the mean. Seeds 9400+ (test) and 7400+
(Picasso's tuning movies) are used nowhere else. Methods: ``default`` (the default pipeline: phi, diffusion
samples, refinement), ``phi`` (phi alone, samples 0, refined), ``picasso`` (Picasso's gaussmle, its minimum net
gradient and box tuned for each movie on a tuning movie of the same settings; only where ``.venv-bench`` exists,
see picasso_baseline.py; its s/frame is after numba's warm-up), and the read-out's own ceiling: ``kde_readout``
(``_unsaturated``), the peaks of the true KDE, saturated at 1 as the networks learn it (or not). Scores as
precision.score: E, JAC, RMSE (nm, lateral), precision, recall, the localization z std (error / reported
uncertainty per axis), isolated RMSE over the CRLB; beside them the lateral CRLB of an isolated emitter and the
mean number of other emitters within 250 nm of an emitter (how crowded a movie is).
Writes the JSON (after every movie) and the plot.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from precision import BENCH, lateral_crlb, run, score
from scipy.spatial import cKDTree

from napari_smlm_uq.inference.localize import find_peaks
from napari_smlm_uq.inference.pipeline import PredictSettings
from napari_smlm_uq.io.tables import emitters_table, read_localizations, table_localizations, write_localizations
from napari_smlm_uq.io.tiff import write_stack
from napari_smlm_uq.localizations import Localizations
from napari_smlm_uq.models import registry
from napari_smlm_uq.physics.kde import from_model, render_kde, sr_to_raw, to_model
from napari_smlm_uq.physics.simulate import SimulatedStack, SimulationSettings, simulate
from napari_smlm_uq.physics.structures import STRUCTURES as SIM_STRUCTURES

ROOT = Path(__file__).resolve().parents[1]
RESULTS, IMG = ROOT / "benchmarks" / "results", ROOT / "docs" / "img"
PICASSO = ROOT / ".venv-bench" / "bin" / "python"
DENSITIES = (0.5, 1.0, 3.0, 5.0, 8.0, 10.0)
STRUCTURES = ("uniform", "filaments")
TEST_SEED, TUNE_SEED = 9400, 7400
CROWDING_NM = 250.0
NG_GRID = ("250", "500", "1000", "1500", "2000", "3000", "5000")


def movie(
    density: float,
    structure: str,
    frames: int,
    size: int,
    seed: int,
    filament_density: float = SimulationSettings.filament_density,
) -> SimulationSettings:
    return SimulationSettings(
        frames=frames,
        **{**BENCH, "size": size},
        density=density,
        structure=structure,
        seed=seed,
        filament_density=filament_density,
    )


def seed_of(i: int, j: int, base: int) -> int:
    """Seed of density ``i`` and structure ``j``."""
    return base + 10 * i + j


def crowding(gt, pixel_size: float, radius_nm: float = CROWDING_NM) -> float:
    """Mean number of other emitters of its frame within ``radius_nm`` of an emitter."""
    counts = []
    for t in np.unique(gt.frame):
        xy = np.column_stack([gt.row, gt.col])[gt.frame == t]
        counts += [len(found) - 1 for found in cKDTree(xy).query_ball_point(xy, radius_nm / pixel_size)]
    return float(np.mean(counts)) if counts else float("nan")


def ours(models, stack: SimulatedStack, settings: PredictSettings) -> dict:
    """Scores, wall seconds per frame, and the process's CPU seconds per frame (all its threads: steadier
    than the wall time on a machine that other jobs load)."""
    cpu = time.process_time()
    results, seconds = run(models, stack, settings)
    cpu = (time.process_time() - cpu) / stack.settings.frames
    locs = Localizations.concat([r.localizations for r in results])
    return dict(score(locs, stack.emitters, stack.settings), seconds_per_frame=seconds, cpu_seconds_per_frame=cpu)


def readout_ceiling(stack: SimulatedStack, saturate: bool) -> dict:
    """What the KDE read-out finds in a perfect network's output: the peaks (localize.find_peaks, default
    threshold) of each frame's true KDE, saturated at 1 as the networks are trained to draw it
    (kde.to_model) or not; positions unrefined."""
    gt, parts = stack.emitters, []
    for t in range(stack.settings.frames):
        e = gt.in_frame(t)
        kde = render_kde(e.row, e.col, stack.settings.shape)
        peaks = find_peaks(from_model(to_model(kde)) if saturate else kde)
        nan = np.full(len(peaks), np.nan)
        parts.append(
            Localizations(np.full(len(peaks), t), sr_to_raw(peaks[:, 0]), sr_to_raw(peaks[:, 1]), nan, nan, nan)
        )
    return dict(score(Localizations.concat(parts), gt, stack.settings), seconds_per_frame=float("nan"))


def write_movie(stack: SimulatedStack, folder: Path, name: str) -> Path:
    """The stack as a uint16 TIFF (as ``smlm-uq simulate`` writes it) and its ground truth CSV beside it."""
    s = stack.settings
    path = folder / f"{name}.tif"
    adu = np.clip(np.rint(stack.adu), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    write_stack(path, adu, s.pixel_size, offset=s.camera.offset, gain=s.camera.gain, read_noise=s.camera.read_noise)
    write_localizations(path.with_suffix(".csv"), emitters_table(stack.emitters, s.pixel_size))
    return path


def picasso(stack: SimulatedStack, tune: SimulatedStack, folder: Path) -> dict:
    """Picasso tuned (net gradient, box 5 or 7) for E on ``tune``, then run on ``stack`` and scored."""
    script = str(ROOT / "benchmarks" / "picasso_baseline.py")
    cam = stack.settings.camera
    camera = [
        "--pixel-size",
        f"{stack.settings.pixel_size:g}",
        "--offset",
        f"{cam.offset:g}",
        "--gain",
        f"{cam.gain:g}",
        "--read-noise",
        f"{cam.read_noise:g}",
    ]
    tune_tif, test_tif = write_movie(tune, folder, "tune"), write_movie(stack, folder, "test")
    env = dict(os.environ, NUMBA_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    out = subprocess.run(
        [
            str(PICASSO),
            script,
            "tune",
            str(tune_tif),
            str(tune_tif.with_suffix(".csv")),
            "--box",
            "5",
            "7",
            "--grid",
            *NG_GRID,
            *camera,
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    best = json.loads(out.strip().splitlines()[-1])
    csv = folder / "picasso.csv"
    err = subprocess.run(
        [
            str(PICASSO),
            script,
            "localize",
            str(test_tif),
            str(csv),
            "--ng",
            str(best["best_ng"]),
            "--box",
            str(best["best_box"]),
            *camera,
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stderr
    ms = float(re.search(r"([0-9.]+) ms per frame", err).group(1))
    locs = table_localizations(read_localizations(csv), stack.settings.pixel_size)
    return dict(
        score(locs, stack.emitters, stack.settings),
        seconds_per_frame=ms / 1000.0,
        ng=best["best_ng"],
        box=best["best_box"],
    )


def study(models, density: float, structure: str, seeds: tuple[int, int], a: argparse.Namespace) -> dict:
    stack = simulate(movie(density, structure, a.frames, a.size, seeds[0], a.filament_density))
    res = {
        "emitters": len(stack.emitters),
        "emitters_per_um2": len(stack.emitters) / a.frames / (a.size * BENCH["pixel_size"] / 1000) ** 2,
        "neighbours_within_250nm": crowding(stack.emitters, BENCH["pixel_size"]),
    }
    base = PredictSettings(device=a.device, samples=a.samples, residual_search=a.residual_search)
    for method in a.methods:
        if method == "default":
            res[method] = ours(models, stack, base)
        elif method == "phi":
            res[method] = ours(models, stack, replace(base, samples=0))
        elif method in ("kde_readout", "kde_readout_unsaturated"):
            res[method] = readout_ceiling(stack, saturate=method == "kde_readout")
        elif method == "picasso" and PICASSO.exists():
            tune = simulate(movie(density, structure, a.frames, a.size, seeds[1], a.filament_density))
            with tempfile.TemporaryDirectory() as folder:
                res[method] = picasso(stack, tune, Path(folder))
    print(
        f"{structure} {density:g}/um^2",
        json.dumps(
            {
                m: [
                    round(res[m]["efficiency"], 1),
                    round(res[m]["jaccard"], 1),
                    round(res[m]["rmse"], 1),
                    round(res[m]["z_std"], 2),
                    round(res[m]["seconds_per_frame"], 3),
                ]
                for m in a.methods
                if m in res
            }
        ),
        flush=True,
    )
    return res


def plot(res: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = (
        "cpu_seconds_per_frame"
        if any(
            "cpu_seconds_per_frame" in m
            for rows in res["movies"].values()
            for movie in rows.values()
            for m in movie.values()
            if isinstance(m, dict)
        )
        else "seconds_per_frame"
    )
    panels = (
        ("efficiency", "E"),
        ("jaccard", "JAC (%)"),
        ("z_std", "localization z std"),
        (timed, "CPU s / frame" if timed.startswith("cpu") else "s / frame"),
    )
    fig, axes = plt.subplots(1, 4, figsize=(14, 4.2), dpi=110)
    names = {
        "default": "default pipeline",
        "phi": "phi alone",
        "picasso": "Picasso",
        "kde_readout": "read-out of the true KDE",
    }
    colours = {"default": "C0", "phi": "C1", "picasso": "C2", "kde_readout": "C3", "kde_readout_unsaturated": "C4"}
    for ax, (key, label) in zip(axes, panels):
        for structure, style in (("uniform", "o-"), ("filaments", "s--")):
            rows = res["movies"].get(structure, {})
            for method in (m for m in res["methods"] if m in names):
                xs = [float(d) for d in rows if key in rows[d].get(method, {})]
                if xs:
                    ax.plot(
                        xs,
                        [rows[f"{d:g}"][method][key] for d in xs],
                        style,
                        color=colours[method],
                        label=f"{names[method]}, {structure}",
                        ms=4,
                    )
        if key == "z_std":
            ax.axhspan(0.9, 1.1, color="0.85", zorder=0)
        if key in ("seconds_per_frame", "cpu_seconds_per_frame", "z_std"):
            ax.set_yscale("log")
        ax.set_xlabel("mean density (emitters/um^2)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7)
    m = res["machine"]
    fig.suptitle(
        f"{res['frames']} frames of {res['size']}x{res['size']} px per movie, 2000 photons, background 20, PSF 1 px, "
        f"filaments {res.get('filament_density', 0.3):g}/um^2; {m['device']}, {m['threads']} thread(s), {m['date']}"
        f"{', ' + m['note'] if m['note'] else ''}",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(out)


def merged(paths: list[Path]) -> dict:
    """Result files as one: the first's settings, every file's methods per movie."""
    res = json.loads(paths[0].read_text())
    for path in paths[1:]:
        more = json.loads(path.read_text())
        res["methods"] += [m for m in more["methods"] if m not in res["methods"]]
        for structure, rows in more["movies"].items():
            for density, movie_res in rows.items():
                res["movies"].setdefault(structure, {}).setdefault(density, {}).update(
                    {m: v for m, v in movie_res.items() if isinstance(v, dict)}
                )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--size", type=int, default=64, help="frame size, pixels")
    ap.add_argument("--densities", default=",".join(f"{d:g}" for d in DENSITIES), help="mean emitters/um^2")
    ap.add_argument("--structures", default=",".join(STRUCTURES))
    ap.add_argument("--methods", default="default,phi,picasso")
    ap.add_argument(
        "--filament-density",
        type=float,
        default=SimulationSettings.filament_density,
        help="filaments per um^2 (fewer: more crowded along them at the same mean density)",
    )
    ap.add_argument(
        "--samples", type=int, default=PredictSettings.samples, help="diffusion samples of the default pipeline"
    )
    ap.add_argument("--residual-search", action=argparse.BooleanOptionalAction, default=False,
                    help="the refinement's search for missed emitters (PredictSettings.residual_search)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default=registry.DEFAULT_MODEL, help="bundled model name or model file")
    ap.add_argument(
        "--note", default="", help="said of the machine in the results and plot (e.g. 'loaded by other jobs')"
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "density_cpu.json")
    ap.add_argument("--plot", type=Path, default=IMG / "density.png")
    ap.add_argument(
        "--replot", type=Path, nargs="+", help="only plot these result files together (the first's settings)"
    )
    a = ap.parse_args()
    if a.replot:
        plot(merged(a.replot), a.plot)
        return
    a.methods = a.methods.split(",")
    models = registry.load(a.model)
    device = PredictSettings(device=a.device).torch_device()
    machine = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()}-core CPU",
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "threads": torch.get_num_threads(),
        "note": a.note,
    }
    res = {
        "frames": a.frames,
        "size": a.size,
        "samples": a.samples,
        "filament_density": a.filament_density,
        "model": a.model,
        "residual_search": a.residual_search,
        "methods": a.methods,
        "picasso": PICASSO.exists(),
        "machine": machine,
        "crlb_lateral_nm": lateral_crlb(
            BENCH["photons"], BENCH["background"], BENCH["psf_sigma"], BENCH["camera"].read_noise
        )
        * BENCH["pixel_size"],
        "movies": {},
    }
    warm = simulate(movie(1.0, "uniform", 2, a.size, TUNE_SEED - 1))
    for samples in [a.samples] * ("default" in a.methods) + [0] * ("phi" in a.methods):
        run(models, warm, PredictSettings(device=a.device, samples=samples))  # start-up is not a frame's cost
    t0 = time.perf_counter()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    for structure in a.structures.split(","):
        for i, density in enumerate(float(d) for d in a.densities.split(",")):
            k, j = (
                DENSITIES.index(density) if density in DENSITIES else len(DENSITIES) + i,
                SIM_STRUCTURES.index(structure),
            )
            seeds = (seed_of(k, j, TEST_SEED), seed_of(k, j, TUNE_SEED))
            res["movies"].setdefault(structure, {})[f"{density:g}"] = study(models, density, structure, seeds, a)
            res["benchmark_seconds"] = time.perf_counter() - t0
            a.out.write_text(json.dumps(res, indent=1, default=float) + "\n")
    a.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(res, a.plot)
    print(f"{res['benchmark_seconds']:.0f} s -> {a.out}, {a.plot}")


if __name__ == "__main__":
    main()
