"""The evaluation benchmark (docs/benchmarks.md): everything through ``smlm-uq predict`` / ``evaluate``.

    python benchmarks/run_benchmarks.py [--frames 200] [--study-frames 20] [--parts accuracy,schedule,finetune]

Writes ``benchmarks/results/*.json`` and ``docs/img/bench_*.png``. Movies go to ``benchmarks/movies/``
(not committed). Picasso runs from ``.venv-bench`` (see picasso_baseline.py) when it exists.
Settings (issue 5): 64x64 px, pixel 100 nm, PSF sigma 100 nm, 2000 photons, background 20 photons/px,
read noise 1.5 e-, offset 100 ADU, gain 1; densities 0.5 and 3 /um^2; seeds never used in training.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from napari_smlm_uq.analysis import metrics
from napari_smlm_uq.analysis.evaluation import localization_report, pixel_report
from napari_smlm_uq.inference.calibration import Calibration
from napari_smlm_uq.io.tables import read_localizations, table_emitters, table_localizations, table_xy
from napari_smlm_uq.io.tiff import open_stack
from napari_smlm_uq.localizations import nm_to_px
from napari_smlm_uq.models import registry
from napari_smlm_uq.physics.crlb import crlb_nm
from napari_smlm_uq.physics.kde import render_kde

ROOT = Path(__file__).resolve().parents[1]
MOVIES, RESULTS, IMG = ROOT / "benchmarks" / "movies", ROOT / "benchmarks" / "results", ROOT / "docs" / "img"
BIN = Path(sys.executable).parent
PIXEL_NM = 100.0
CAMERA = ["--pixel-size", "100", "--offset", "100", "--gain", "1", "--read-noise", "1.5"]
SIM = ["--size", "64", "--photons", "2000", "--background", "20", "--psf-sigma", "1.0", *CAMERA]
DENSITIES = {"0.5": 9105, "3": 9130}          # density -> test seed
TUNE_SEEDS = {"0.5": 7005, "3": 7030}         # Picasso's tuning movies
PICASSO = ROOT / ".venv-bench" / "bin" / "python"


def run(cmd: list[str]) -> tuple[str, float, float]:
    """Run a command; returns (stdout, wall seconds, peak RSS in GB of that process)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode:
        last = err.strip().splitlines()[-1] if err.strip() else proc.returncode
        raise RuntimeError(f"{' '.join(cmd)} failed: {last}")
    return out, wall, _peak_rss_gb(proc.pid)


_RSS: dict[int, float] = {}


def _peak_rss_gb(pid: int) -> float:
    return _RSS.pop(pid, float("nan"))


def _patch_popen_rss() -> None:
    """Record each child's own peak RSS (os.wait4) instead of Popen's plain wait."""
    original = subprocess.Popen._try_wait

    def _try_wait(self, wait_flags):
        try:
            pid, status, usage = os.wait4(self.pid, wait_flags)
        except ChildProcessError:
            return original(self, wait_flags)
        if pid == self.pid:
            _RSS[pid] = usage.ru_maxrss / 2**20
        return pid, status

    subprocess.Popen._try_wait = _try_wait


def movie(density: str, seed: int, frames: int, tag: str) -> Path:
    path = MOVIES / f"{tag}_d{density}_s{seed}_f{frames}.tif"
    if not path.exists():
        run([str(BIN / "smlm-uq"), "simulate", str(path), "--frames", str(frames), "--density", density,
             "--seed", str(seed), *SIM])
    return path


def predict(stack: Path, name: str, *options: str) -> dict:
    """``smlm-uq predict`` then ``smlm-uq evaluate`` and the uncertainty figures."""
    out = MOVIES / "runs" / f"{stack.stem}_{name}"
    _, wall, rss = run([str(BIN / "smlm-uq"), "predict", str(stack), "--out", str(out), "--overwrite",
                        "--format", "tif", *options])
    text, _, _ = run([str(BIN / "smlm-uq"), "evaluate", str(out / "localizations.csv"),
                      str(stack.with_suffix(".csv")), "--json"])
    summary = json.loads((out / "summary.json").read_text())
    result = {"name": name, "options": list(options), "evaluate": json.loads(text),
              "seconds_per_frame": summary["timing"]["seconds_per_frame"], "wall_s": wall, "peak_rss_gb": rss}
    locs, gt = read_localizations(out / "localizations.csv"), read_localizations(stack.with_suffix(".csv"))
    truth = table_emitters(gt, PIXEL_NM)
    result["localization"] = localization_report(table_localizations(locs, PIXEL_NM), truth, PIXEL_NM)
    if "uncertainty [nm]" in locs and np.isfinite(locs["uncertainty [nm]"]).any():
        raw = dict(locs, **{"uncertainty [nm]": locs["uncertainty [nm]"] / calibration_factors(locs, options)})
        result["localization"]["error_over_raw_uncertainty_std"] = localization_report(
            table_localizations(raw, PIXEL_NM), truth, PIXEL_NM)["error_over_uncertainty_std"]
    result["curves"] = filtering_curves(locs, gt)
    if "--samples" not in options or options[options.index("--samples") + 1] != "0":
        result["pixels"], result["sparsification"] = pixel_figures(out, gt, stack)
    return result


@functools.cache
def model_calibration(model: str) -> Calibration:
    return Calibration.from_dict(registry.load(model).calibration)


def calibration_factors(locs: dict, options: tuple[str, ...]) -> np.ndarray:
    """The calibration factor ``smlm-uq predict`` applied to each localization (to report raw spreads)."""
    model = options[options.index("--model") + 1] if "--model" in options else registry.DEFAULT_MODEL
    return model_calibration(model).factors(locs["frame"], nm_to_px(locs["y [nm]"], 100), nm_to_px(locs["x [nm]"], 100),
                                            locs["peak snr"], (64, 64))


def filtering_curves(locs: dict, gt: dict) -> dict:
    """Precision of the kept localizations as the uncertainty / detection thresholds tighten."""
    m = metrics.match(locs["frame"], table_xy(locs), gt["frame"], table_xy(gt))
    is_tp = np.zeros(len(locs["frame"]), bool)
    is_tp[m.loc_idx] = True
    f = np.linspace(0, 0.9, 19)
    curves = {"dropped": f.tolist()}
    if np.isfinite(locs.get("uncertainty [nm]", np.array([np.nan]))).any():
        curves["precision_by_uncertainty"] = metrics.precision_when_filtering(is_tp, locs["uncertainty [nm]"],
                                                                              f).tolist()
        curves["precision_by_detection"] = metrics.precision_when_filtering(is_tp, -locs["detection"], f).tolist()
    return curves


def pixel_figures(out: Path, gt: dict, stack: Path) -> tuple[dict, dict]:
    mean, std = np.asarray(open_stack(out / "mean.tif").data), np.asarray(open_stack(out / "std.tif").data)
    h, w = mean.shape[1] // 4, mean.shape[2] // 4
    on = [gt["frame"] == t + 1 for t in range(len(mean))]
    truth = np.stack([render_kde(nm_to_px(gt["y [nm]"][sel], 100), nm_to_px(gt["x [nm]"][sel], 100), (h, w))
                      for sel in on])
    err = np.abs(mean - truth)
    frac, model, oracle = metrics.sparsification(std, err)
    curve = {"fraction": frac.tolist(), "model": model.tolist(), "oracle": oracle.tolist()}
    return pixel_report(mean, std, truth), curve


def picasso(density: str, stack: Path) -> dict | None:
    if not PICASSO.exists():
        return None
    script = str(ROOT / "benchmarks" / "picasso_baseline.py")
    tune = movie(density, TUNE_SEEDS[density], 50, "tune")
    out = {}
    for box in ("7", "5"):
        text, _, _ = run([str(PICASSO), script, "tune", str(tune), str(tune.with_suffix(".csv")), "--box", box,
                          "--grid", "250", "500", "1000", "1500", "2000", "3000", "5000"])
        ng = json.loads(text.strip().splitlines()[-1])["best_ng"]
        csv = MOVIES / "runs" / f"{stack.stem}_picasso_box{box}.csv"
        _, wall, _ = run([str(PICASSO), script, "localize", str(stack), str(csv), "--ng", str(ng), "--box", box,
                          *CAMERA])
        text, _, _ = run([str(BIN / "smlm-uq"), "evaluate", str(csv), str(stack.with_suffix(".csv")), "--json"])
        out[f"box{box}"] = {"ng": ng, "evaluate": json.loads(text), "wall_s": wall}
    return out


def accuracy(frames: int) -> dict:
    res = {"crlb_nm": crlb_nm(2000, 20, 1.0, 100, 1.5), "frames": frames}
    for density, seed in DENSITIES.items():
        stack = movie(density, seed, frames, "test")
        res[density] = {"phi": predict(stack, "phi", "--samples", "0"), "pipeline": predict(stack, "default")}
        summary = {density: {k: v and (v.get("evaluate") or v) for k, v in res[density].items()}}
        print(json.dumps(summary, default=str)[:600], flush=True)
    return res


def picasso_part(frames: int) -> dict:
    return {density: picasso(density, movie(density, seed, frames, "test")) for density, seed in DENSITIES.items()}


FINETUNE_SIM = ["--size", "64", "--photons", "800", "--background", "20", "--psf-sigma", "1.8", *CAMERA]


def finetune(frames: int) -> dict:
    """E before and after fine-tuning on PSF sigma 1.8 px, 800 photons (outside the bundled range)."""
    res = {"frames": frames, "crlb_nm": crlb_nm(800, 20, 1.8, 100, 1.5)}
    stacks = {}
    for density, seed in (("0.5", 9205), ("2", 9220)):
        stacks[density] = MOVIES / f"finetune_d{density}_s{seed}_f{frames}.tif"
        if not stacks[density].exists():
            run([str(BIN / "smlm-uq"), "simulate", str(stacks[density]), "--frames", str(frames), "--density", density,
                 "--seed", str(seed), *FINETUNE_SIM])
    out = MOVIES / "runs" / "finetuned"
    cmd = [str(BIN / "smlm-uq"), "train", "--init", "default", "--out", str(out), "--target", "both",
           "--iterations", "1000", "--psi-iterations", "300", "--psf-sigma", "1.6", "2.0", "--photons", "500", "1300",
           "--background", "5", "60", "--density", "0", "4", "--seed", "11"]
    if (out / "model.pt").exists():
        import shutil
        shutil.rmtree(out)
    _, wall, _ = run(cmd)
    res["train"] = {"command": " ".join(["smlm-uq", *cmd[1:]]).replace(str(out), "finetuned"), "minutes": wall / 60}
    for density, stack in stacks.items():
        res[density] = {f"{when}_{kind}": predict(stack, f"{when}_{kind}",
                                                   *(["--samples", "0"] if kind == "phi" else []),
                                                   *(["--model", str(out / "model.pt")] if when == "after" else []))
                        for when in ("before", "after") for kind in ("phi", "pipeline")}
        print(density, {k: round(v["evaluate"]["efficiency"], 1) for k, v in res[density].items()}, flush=True)
    return res


def schedule_study(frames: int, long_frames: int) -> dict:
    """Steps, samples, start, schedule and precision variants on the test settings (own seeds); the
    50- and 100-step variants on a ``long_frames`` movie only (they cost 17-33x the default)."""
    variants = [(f"steps{k}", "--steps", str(k)) for k in (2, 5, 10, 20)]
    variants += [(f"samples{n}", "--samples", str(n)) for n in (4, 16)]
    variants += [("pure_noise_start_steps10", "--start", "1", "--steps", "10"), ("fp32", "--precision", "fp32")]
    long = [("steps50", "--steps", "50"), ("steps100_paper", "--steps", "100", "--schedule", "paper", "--start", "1")]
    res = {"frames": frames, "long_frames": long_frames}
    for density, seed in DENSITIES.items():
        stack = movie(density, seed + 1, frames, "study")
        runs = [predict(stack, "default")] + [predict(stack, v[0], *v[1:]) for v in variants]
        runs += [predict(stack, "phi", "--samples", "0"),
                 predict(stack, "phi_fp32", "--samples", "0", "--precision", "fp32")]
        short = movie(density, seed + 1, long_frames, "study")
        runs += [dict(predict(short, v[0], *v[1:]), frames=long_frames) for v in long]
        res[density] = runs
        print(density, [(r["name"], round(r["evaluate"]["efficiency"], 1), round(r["seconds_per_frame"], 2))
                        for r in runs], flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--study-frames", type=int, default=20)
    ap.add_argument("--study-long-frames", type=int, default=2)
    ap.add_argument("--finetune-frames", type=int, default=10)
    ap.add_argument("--parts", default="picasso,accuracy,schedule,finetune")  # each writes results/PART.json
    a = ap.parse_args()
    _patch_popen_rss()
    for d in (MOVIES / "runs", RESULTS, IMG):
        d.mkdir(parents=True, exist_ok=True)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}
    for part in a.parts.split(","):
        t0 = time.perf_counter()
        res = {"accuracy": lambda: accuracy(a.frames), "picasso": lambda: picasso_part(a.frames),
               "finetune": lambda: finetune(a.finetune_frames),
               "schedule": lambda: schedule_study(a.study_frames, a.study_long_frames)}[part]()
        res["machine"], res["benchmark_seconds"] = machine, time.perf_counter() - t0
        (RESULTS / f"{part}.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
        print(f"{part}: {res['benchmark_seconds']:.0f} s -> {RESULTS / f'{part}.json'}", flush=True)


if __name__ == "__main__":
    main()
