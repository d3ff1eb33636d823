"""Peak memory over a whole acquisition: does it grow with frames? (issue 12: < 4 GB for 10,000 frames of 256x256)

    PYTHONPATH=src python benchmarks/memory_growth.py [--frames 20,80,320] [--parts cli,widget,psi,full] [--out DIR]

Every measurement is a fresh process on a simulated 256x256-px stack (0.5 emitters/um^2, 2000 photons,
background 20; ``smlm-uq simulate``), one torch thread, its peak RSS read by the process itself at the end:
- ``cli``: ``smlm-uq predict --format zarr`` (``cli.main``) with the bundled model, phi alone (``--samples 0``:
  the cheap setting, ~1 s per frame here), for each of ``--frames``;
- ``widget``: the napari prediction widget in a real, headless viewer (``xvfb-run``), writing its result store,
  same model and setting, for each of ``--frames``;
- ``psi``: the CLI with the diffusion on but cheap (bundled model, 2 samples, 1 step) on ``--psi-frames``;
- ``full``: the CLI with the full default pipeline (8 samples, 3 steps) on ``--full-frames`` frames: the
  per-frame peak of the real thing.
- ``replay-cli`` / ``replay-widget``: the CLI and the widget over a whole acquisition (``--replay-frames``,
  10,000 by default) where the network predicts the first ``--replay-real`` frames for real (phi alone) and
  then replays them, re-indexed, for the rest: everything that keeps results (store writes, accumulated
  images, rendering, localizations, the widget's layers and redraws) sees the full count; the network's own
  memory per frame is what the parts above measure.
Each process also records its resident memory (VmRSS) after every frame (a probe wrapped around
``pipeline.predict``; the widget's own count of frames done): the slope over the second half of the longest
run, per frame, extrapolates to 10,000 frames (what a run keeps for good is its localizations; the
accumulated images and the store are fixed size). Writes DIR/memory_growth.json (DIR defaults to
benchmarks/results).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZE, DENSITY, TARGET_FRAMES, TARGET_GB = 256, 0.5, 10_000, 4.0

CLI_CHILD = """
import json, resource, sys, time
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
from memory_growth import replaying, rss_gb
from napari_smlm_uq import cli
from napari_smlm_uq.inference import pipeline
real = int(sys.argv[2])
trace, predict = [], replaying(pipeline.predict, real) if real else pipeline.predict
def probed(*args, **kwargs):
    for result in predict(*args, **kwargs):
        yield result
        trace.append(rss_gb())
pipeline.predict = probed   # cli.predict.predict_here imports it at call time
t0, c0 = time.perf_counter(), time.process_time()
code = cli.main(sys.argv[3:])
print(json.dumps({"code": code, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                  "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "rss_gb_per_frame": trace}))
"""


def rss_gb() -> float:
    """Resident memory of this process now (GB; Linux)."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1e6


def replaying(predict, real: int):
    """``pipeline.predict`` that predicts the first ``real`` frames asked for, then yields them again in turn,
    re-indexed (frame numbers of the results and of their localizations), for the rest."""
    from dataclasses import replace

    def replay(stack, models, settings, frames=None, *args, **kwargs):
        frames = range(len(stack)) if frames is None else frames
        done = []
        for result in predict(stack, models, settings, frames[:real], *args, **kwargs):
            done.append(result)
            yield result
        for k, index in enumerate(frames[real:]):
            result = done[k % len(done)]
            locs = replace(result.localizations, frame=np.full(len(result.localizations), index))
            yield replace(result, index=index, localizations=locs)

    return replay


def widget_child(tif: str, frames: int, out: str, samples: int, steps: int, real: int) -> None:
    """In this (headless, xvfb) process: open ``tif`` in a napari viewer, run the prediction widget on its
    first ``frames`` frames into ``out`` (the first ``real`` predicted, then replayed; 0: all predicted);
    print the peak RSS and times as one JSON line."""
    import resource

    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_smlm_uq.inference import pipeline

    torch.set_num_threads(1)
    if real:
        pipeline.predict = replaying(pipeline.predict, real)   # the widget's job looks it up at call time
    viewer = napari.Viewer(show=False)
    viewer.open(tif, plugin="napari-smlm-uq")
    _, widget = viewer.window.add_plugin_dock_widget("napari-smlm-uq", "Super-resolve with uncertainty")
    widget.samples.value, widget.steps.value, widget.device.value = samples, steps, "cpu"
    widget.start_frame.value, widget.stop_frame.value = 0, frames
    widget.output.value = out
    errors: list = []
    t0, c0 = time.perf_counter(), time.process_time()
    worker = widget.run()
    worker.errored.connect(errors.append)
    trace: list[float] = []
    stalls: list[float] = []   # how long each turn of the event loop took: the viewer is frozen meanwhile
    while widget.running or worker.is_running:
        start = time.perf_counter()
        QApplication.processEvents()
        stalls.append(time.perf_counter() - start)
        if widget.results.done > len(trace):
            trace += [rss_gb()] * (widget.results.done - len(trace))
        time.sleep(0.02)
    results = widget.results
    print(json.dumps({"code": 1 if errors else 0, "errors": [str(e) for e in errors],
                      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                      "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                      "frames_done": results.done, "localizations": len(results.localizations()),
                      "complete": results.store.complete, "rss_gb_per_frame": trace,
                      "event_loop_s": {"max": max(stalls), "p99": float(np.percentile(stalls, 99)),
                                       "busy_share": sum(stalls) / (time.perf_counter() - t0)}}))
    viewer.close()


def run_child(command: list[str], env: dict) -> dict:
    """Run one measuring process; its last stdout line is the JSON it printed."""
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        raise RuntimeError(f"{command[:4]}... failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(lines[-1])


def store_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in (folder / "results.zarr").rglob("*") if p.is_file()) / 1e6


def measure(part: str, frames: int, tif: Path, work: Path, env: dict, samples: int, steps: int,
            real: int = 0) -> dict:
    """One row: ``part`` over the first ``frames`` frames of ``tif`` (``real`` > 0: those predicted, then
    replayed)."""
    out = work / f"{part}-{frames}"
    if part.endswith("widget"):
        command = ["xvfb-run", "-a", sys.executable, __file__, "--child-widget", str(tif), str(frames), str(out),
                   str(samples), str(steps), str(real)]
        row = run_child(command, env)
        folder = out / tif.stem
    else:
        command = [sys.executable, "-c", CLI_CHILD, str(Path(__file__).parent), str(real), "predict", str(tif),
                   "--out", str(out), "--frames", f"0:{frames}",
                   "--samples", str(samples), "--steps", str(steps), "--device", "cpu"]
        row = run_child(command, env)
        folder = out
        row["localizations"] = len((folder / "localizations.csv").read_text().splitlines()) - 1
    row |= {"part": part, "frames": frames, "samples": samples, "steps": steps, "store_mb": store_mb(folder),
            "cpu_s_per_frame": row["cpu_s"] / frames, "predicted_frames": real or frames}
    shutil.rmtree(out, ignore_errors=True)
    print(f"  {part:6s} {frames:5d} frames ({samples} samples, {steps} steps): peak RSS {row['peak_rss_gb']:.2f} GB, "
          f"{row['cpu_s_per_frame']:.2f} CPU s/frame, {row['localizations']} localizations", flush=True)
    return row


def extrapolate(rows: list[dict]) -> dict | None:
    """Peak RSS at 10,000 frames: the longest run's peak plus the slope of its RSS over its second half
    (a least-squares line through the RSS after each frame), per frame, times the frames still to come."""
    if not rows:
        return None
    longest = max(rows, key=lambda r: r["frames"])
    trace = np.asarray(longest["rss_gb_per_frame"], float)
    half = np.arange(len(trace) // 2, len(trace))
    slope = float(np.polyfit(half, trace[half], 1)[0]) if len(half) > 2 else float("nan")
    at = longest["peak_rss_gb"] + max(slope, 0.0) * max(TARGET_FRAMES - longest["frames"], 0)
    return {"frames": longest["frames"], "slope_mb_per_frame_second_half": 1e3 * slope,
            "rss_gb_at_frames": {k: trace[k - 1] for k in (1, 10, 40, 80, 160, 320, 1000, 2500, 5000, 10000)
                                 if k <= len(trace)},
            "peak_rss_gb_at_10000_frames": at}


def thinned(row: dict, points: int = 500) -> dict:
    """The row with its per-frame RSS kept at ``points`` evenly spaced frames (``rss_frames``, 1-based)."""
    trace = row.pop("rss_gb_per_frame")
    if len(trace) <= points:
        return row | {"rss_gb_per_frame": trace}
    keep = np.unique(np.linspace(0, len(trace) - 1, points).round().astype(int))
    return row | {"rss_frames": (keep + 1).tolist(), "rss_gb": [trace[k] for k in keep]}


def full_trace(row: dict) -> list[float]:
    """Per-frame RSS of a row, the frames between those kept by :func:`thinned` holding the last value kept."""
    if "rss_gb_per_frame" in row:
        return row["rss_gb_per_frame"]
    frames, values = np.asarray(row["rss_frames"]), np.asarray(row["rss_gb"])
    return values[np.searchsorted(frames, np.arange(1, row["frames"] + 1), side="right") - 1].tolist()


def tiled(tif: Path, long: Path, frames: int) -> None:
    """``long``: ``frames`` frames, the frames of ``tif`` over and over, with its metadata."""
    from napari_smlm_uq.io.tiff import open_stack, write_stack

    stack = open_stack(tif)
    meta = dict(stack.metadata)
    data = np.asarray(stack.data)
    write_stack(long, data[np.arange(frames) % len(data)], meta.pop("pixel_size"), **meta)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child-widget":
        tif, frames, out, samples, steps, real = sys.argv[2:8]
        widget_child(tif, int(frames), out, int(samples), int(steps), int(real))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", default="20,80,320", help="frame counts of the cli and widget parts")
    ap.add_argument("--psi-frames", default="5,20", help="frame counts of the psi part (2 samples, 1 step)")
    ap.add_argument("--full-frames", type=int, default=2, help="frames of the full default pipeline")
    ap.add_argument("--replay-frames", type=int, default=TARGET_FRAMES, help="frames of the replay parts")
    ap.add_argument("--replay-real", type=int, default=20, help="frames the replay parts predict for real")
    ap.add_argument("--parts", default="cli,widget,psi,full,replay-cli,replay-widget")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    frames = [int(v) for v in args.frames.split(",")]
    psi_frames = [int(v) for v in args.psi_frames.split(",")]
    parts = args.parts.split(",")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    plan = [(p, n, 0, 1) for p in ("cli", "widget") if p in parts for n in frames]
    plan += [("psi", n, 2, 1) for n in psi_frames if "psi" in parts]
    plan += [("full", args.full_frames, 8, 3)] if "full" in parts and args.full_frames else []
    replay = [(p, args.replay_frames, 0, 1) for p in ("replay-cli", "replay-widget") if p in parts]
    out = Path(args.out)
    kept = json.loads((out / "memory_growth.json").read_text())["rows"] if (out / "memory_growth.json").exists() else []
    rows = [r for r in kept if r["part"] not in parts]   # the parts not run this time keep their rows
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tif = work / "acquisition.tif"
        n = max(n for _, n, _, _ in [*plan, ("", args.replay_real, 0, 0)])
        subprocess.run([sys.executable, "-m", "napari_smlm_uq.cli", "simulate", str(tif), "--frames", str(n),
                        "--size", str(SIZE), "--density", str(DENSITY), "--photons", "2000", "--background", "20",
                        "--seed", "9105"], env=env, check=True, capture_output=True)
        for part, count, samples, steps in plan:
            rows.append(thinned(measure(part, count, tif, work, env, samples, steps)))
        if replay:
            long = work / "acquisition-long.tif"
            tiled(tif, long, args.replay_frames)
            for part, count, samples, steps in replay:
                rows.append(thinned(measure(part, count, long, work, env, samples, steps, args.replay_real)))
    growth = {p: extrapolate([r | {"rss_gb_per_frame": full_trace(r)} for r in rows if r["part"] == p])
              for p in ("cli", "widget", "psi", "replay-cli", "replay-widget")}
    info = {"python": platform.python_version(), "machine": platform.machine(), "torch_threads": 1,
            "frame": f"{SIZE}x{SIZE} px", "density_per_um2": DENSITY, "model": "bundled default",
            "target": f"peak RSS < {TARGET_GB} GB for {TARGET_FRAMES} frames", "date": time.strftime("%Y-%m-%d")}
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory_growth.json").write_text(json.dumps({"machine": info, "rows": rows, "growth": growth}, indent=2)
                                            + "\n")
    print(json.dumps(growth, indent=1))
    print(f"wrote {out / 'memory_growth.json'}")


if __name__ == "__main__":
    main()
