"""Throughput of the pipeline (issue 12): frames/s of phi alone and of the default pipeline on 64x64 and
256x256 frames at 0.5 emitters/um^2, peak RSS and GPU memory, on the CPU and on CUDA when present, with the
levers measured in the same run (each in try/except: an error lands in the table, never stops the run).

    PYTHONPATH=src python benchmarks/throughput.py [--quick] [--devices cpu,cuda] [--cap 280] [--out DIR]

Needs torch, numpy, scipy, tifffile (the result store's size: benchmarks/store_size.py). Prints one table
and writes DIR/throughput.json (DIR defaults to benchmarks/results). E and the spread of the normalised
localization errors (z std) are checked against the default pipeline on the 64x64 frames of each device.
The default pipeline runs at the arithmetic ``--precision auto`` picks (bf16 where the device has it natively;
``machine.auto_precision`` in the JSON); the ``fp32`` rows force fp32.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from napari_smlm_uq.analysis.evaluation import localization_report
from napari_smlm_uq.analysis.render import render
from napari_smlm_uq.inference import pipeline
from napari_smlm_uq.localizations import Localizations
from napari_smlm_uq.models import registry
from napari_smlm_uq.physics.kde import from_model
from napari_smlm_uq.physics.simulate import Emitters, SimulationSettings, simulate

ROOT = Path(__file__).resolve().parents[1]
DENSITY = 0.5  # emitters / um^2
E_TOLERANCE, Z_TOLERANCE = 1.0, 0.05  # points of E; relative change of the z std


class Clock:
    """The run's time cap: rows that would start after it are skipped."""

    def __init__(self, cap_s: float):
        self.t0, self.cap = time.perf_counter(), cap_s

    def left(self) -> float:
        return self.cap - (time.perf_counter() - self.t0)


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (GB; Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1e6 if sys.platform.startswith("linux") else 1e9)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def phi_alone(models, adu, s, device) -> list[Localizations] | None:
    """phi on every frame (its output copied to the host, as predict() does); no localization."""
    phi = models.phi.fused()
    with torch.inference_mode():
        for b0 in range(0, len(adu), s.frame_batch):
            from_model(pipeline.run_phi(phi, adu[b0:b0 + s.frame_batch], s, device)[1]).cpu()
    return None


def default_pipeline(models, adu, s, device) -> list[Localizations]:
    """predict() as the CLI runs it, localizations included."""
    return [r.localizations for r in pipeline.predict(adu, models, s)]


def compiled(run):
    """``run`` with psi wrapped by torch.compile (the first call compiles; the warm-up absorbs it)."""
    def go(models, adu, s, device):
        if not hasattr(models, "compiled_psi"):
            models.compiled_psi = torch.compile(models.psi, dynamic=False)
        eager, models.psi = models.psi, models.compiled_psi
        try:
            return run(models, adu, s, device)
        finally:
            models.psi = eager
    return go


def levers(device: torch.device, quick: bool) -> list[tuple[str, object, dict]]:
    """(name, runner, settings changes) of every row measured on ``device``; the default pipeline first.
    ``psi_tile`` / ``phi_tile``: psi's tile (SR px, overlap 16 below 256) or phi's (raw px) instead of the default."""
    rows = [("phi alone", phi_alone, {"samples": 0}), ("default pipeline", default_pipeline, {})]
    if device.type == "cuda":
        rows += [("fp32", default_pipeline, {"precision": "fp32"}),
                 ("3 steps", default_pipeline, {"steps": 3}),
                 ("frame batch 32", default_pipeline, {"frame_batch": 32}),
                 ("torch.compile", compiled(default_pipeline), {}),
                 ("frame batch 32 + compile", compiled(default_pipeline), {"frame_batch": 32}),
                 ("psi tiles of 64 px (before)", default_pipeline, {"psi_tile": 64})]
    else:
        rows += [("phi alone, fp32", phi_alone, {"samples": 0, "precision": "fp32"}),
                 ("phi alone, fp32, tiles of 128 px (before)", phi_alone,
                  {"samples": 0, "precision": "fp32", "phi_tile": 128}),
                 ("fp32", default_pipeline, {"precision": "fp32"}),
                 ("3 steps", default_pipeline, {"steps": 3}),
                 ("fp32, 3 steps (before)", default_pipeline, {"precision": "fp32", "steps": 3}),
                 ("4 samples", default_pipeline, {"samples": 4})]
        if not quick:
            rows += [("psi tiles of 64 px (before)", default_pipeline, {"psi_tile": 64})]
    return rows


def movie(size: int, frames: int, density: float = DENSITY):
    """The benchmark movie settings (benchmarks.md): 2000 photons, background 20 photons/pixel."""
    return simulate(SimulationSettings(frames=frames, size=size, density=density, photons=2000.0, background=20.0,
                                       seed=9105))


def measure(models, name, run, changes, device, size, stack, n_frames, clock) -> dict:
    """One table row: warm-up on a frame batch, then ``n_frames`` timed; E and z std from the localizations."""
    row = {"device": str(device), "size": size, "lever": name}
    changes = dict(changes)
    tile, phi_tile = changes.pop("psi_tile", None), changes.pop("phi_tile", pipeline.PHI_TILE)
    s = replace(pipeline.PredictSettings(device=device.type), **changes).validate()
    adu = stack.adu[:n_frames]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    saved = pipeline.PSI_TILE, pipeline.PSI_OVERLAP, pipeline.PHI_TILE
    pipeline.PHI_TILE = phi_tile
    if tile is not None:
        pipeline.PSI_TILE, pipeline.PSI_OVERLAP = tile, 16 if tile < 256 else 32
    try:
        # warm-up: allocations, cuDNN/oneDNN kernels, compilation
        if device.type == "cuda" or run is phi_alone or size <= 64:
            run(models, adu[:min(len(adu), s.frame_batch if device.type == "cuda" else 1)], s, device)
            sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        locs = run(models, adu, s, device)
        sync(device)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    except Exception as exc:  # a lever that fails is reported, not fatal
        return row | {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"}
    finally:
        pipeline.PSI_TILE, pipeline.PSI_OVERLAP, pipeline.PHI_TILE = saved
    row |= {"frames": len(adu), "frames_per_s": len(adu) / seconds, "s_per_frame": seconds / len(adu),
            "cpu_s_per_frame": cpu_seconds / len(adu),
            "peak_rss_gb": peak_rss_gb(),
            "peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None}
    if locs is not None:
        rep = localization_report(Localizations.concat(locs), first_frames(stack.emitters, len(adu)),
                                  stack.settings.pixel_size)
        row |= {"E": rep["efficiency"], "z_std": rep.get("error_over_uncertainty_std")}
    print(f"  {row['device']:6s} {size:3d}px {name:28s} {row['frames_per_s']:9.2f} frames/s "
          f"({clock.left():.0f} s left)", flush=True)
    return row


def check_against_default(rows: list[dict]) -> None:
    """Mark each lever's E and z std against the default pipeline of the same device and size."""
    ref = {(r["device"], r["size"]): r for r in rows if r["lever"] == "default pipeline" and "E" in r}
    for r in rows:
        base = ref.get((r["device"], r["size"]))
        if base is None or "E" not in r or r is base or r["lever"] == "phi alone":
            continue
        dz = abs(r["z_std"] / base["z_std"] - 1) if r.get("z_std") and base.get("z_std") else float("nan")
        r["holds"] = bool(abs(r["E"] - base["E"]) <= E_TOLERANCE and dz <= Z_TOLERANCE)


def first_frames(emitters: Emitters, n: int) -> Emitters:
    """The ground truth of the first ``n`` frames."""
    keep = emitters.frame < n
    return Emitters(*(getattr(emitters, k)[keep] for k in ("frame", "row", "col", "photons")))


def render_check(n: int = 10**6, pixel_nm: float = 10.0) -> dict:
    """Seconds to render ``n`` localizations (uncertainty 5-15 nm) over a 25.6 um field at ``pixel_nm``."""
    rng = np.random.default_rng(0)
    x, y, sigma = rng.uniform(0, 25600, n), rng.uniform(0, 25600, n), rng.uniform(5, 15, n)
    t0, c0 = time.perf_counter(), time.process_time()
    image = render(x, y, sigma, (25600.0, 25600.0), pixel_nm)
    return {"localizations": n, "pixel_nm": pixel_nm, "shape": list(image.shape),
            "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}


def table(rows: list[dict]) -> str:
    head = ("| device | frame | lever | frames/s | s/frame | CPU s/frame | peak RSS GB | peak GPU GB | E | z std "
            "| holds |")
    lines = [head, "|" + "---|" * 11]
    fmt = lambda v, f: "–" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, f)
    for r in rows:
        if "error" in r or "skipped" in r:
            lines.append(f"| {r['device']} | {r['size']}x{r['size']} | {r['lever']} | "
                         f"{r.get('error') or r.get('skipped')} | | | | | | | |")
            continue
        lines.append(f"| {r['device']} | {r['size']}x{r['size']} | {r['lever']} | {fmt(r['frames_per_s'], '.2f')} | "
                     f"{fmt(r['s_per_frame'], '.3f')} | {fmt(r['cpu_s_per_frame'], '.3f')} | "
                     f"{fmt(r['peak_rss_gb'], '.2f')} | {fmt(r['peak_gpu_gb'], '.2f')} | "
                     f"{fmt(r.get('E'), '.1f')} | {fmt(r.get('z_std'), '.2f')} | {fmt(r.get('holds'), '')} |")
    return "\n".join(lines)


def frames_for(device: torch.device, size: int, lever: str, quick: bool, cpu_frames: int) -> int:
    """Frames timed per row: enough for a stable rate, little enough for the time cap."""
    if device.type == "cpu" and not lever.startswith("phi alone") and cpu_frames:
        return cpu_frames
    if device.type == "cuda":
        n = (256 if size == 64 else 32) if lever.startswith("phi alone") else (128 if size == 64 else 16)
    elif lever.startswith("phi alone"):
        n = 16 if size == 64 else 4
    else:
        n = 8 if size == 64 else 1
    return max(1, n // 4) if quick else n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default="cpu,cuda", help="comma-separated; cuda is skipped without a GPU")
    ap.add_argument("--sizes", default="64,256", help="frame sizes in raw pixels; empty: the store check alone")
    ap.add_argument("--quick", action="store_true", help="fewer frames and levers (a smoke test)")
    ap.add_argument("--cap", type=float, default=280.0, help="total seconds; later rows are skipped")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--model", default=registry.DEFAULT_MODEL)
    ap.add_argument("--cpu-frames", type=int, default=0,
                    help="frames per CPU pipeline row (0: 8 at 64x64, 1 at 256x256)")
    args = ap.parse_args()
    clock = Clock(args.cap)
    # CUDA first: on a GPU machine its rows matter most within the time cap
    names = sorted(args.devices.split(","), key=lambda d: d != "cuda")
    devices = [torch.device(d) for d in names if d != "cuda" or torch.cuda.is_available()]
    models = registry.load(args.model)
    rows, stacks = [], {}
    for device in devices:
        models.to(device)
        for size in (int(v) for v in args.sizes.split(",") if v):
            for name, run, changes in levers(device, args.quick):
                n = frames_for(device, size, name, args.quick, args.cpu_frames)
                if clock.left() <= 0:
                    rows.append({"device": str(device), "size": size, "lever": name, "skipped": "skipped (time cap)"})
                    continue
                if (size, n) not in stacks:
                    stacks[(size, n)] = movie(size, n)
                rows.append(measure(models, name, run, changes, device, size, stacks[(size, n)], n, clock))
    check_against_default(rows)
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "auto_precision": {str(d): "bf16" if pipeline.native_bf16(d) else "fp32" for d in devices},
            "quick": args.quick, "density_per_um2": DENSITY, "seconds": args.cap - clock.left()}
    result = {"machine": info, "rows": rows}
    if clock.left() > 0:
        result["render_1e6"] = render_check()
    print(table(rows))
    print(json.dumps({k: result.get(k) for k in ("machine", "render_1e6")}, default=str))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"wrote {out / 'throughput.json'}")


if __name__ == "__main__":
    main()
