"""Throughput of the pipeline (issues 12 and 24): frames/s of phi alone, phi alone + refinement and the default
pipeline on 64x64 and 256x256 frames at 0.5 emitters/um^2, peak RSS and GPU memory, the fraction of the wall
time the network waits (on reading, host work and the caller: inference/overlap.py), on the CPU and on CUDA
when present, with the levers measured in the same run (each in try/except: an error lands in the table,
never stops the run). Then a whole acquisition: ``smlm-uq predict`` (the CLI itself: the result store and the
localizations written) on ``--acquisition-frames`` simulated 256x256 frames, in this process and on a dask
LocalCluster of ``--cluster`` workers, extrapolated to 10,000 frames (the run's fixed cost plus 10,000 times
its seconds per frame).

    PYTHONPATH=src python benchmarks/throughput.py [--quick] [--devices cpu,cuda] [--cap 280] [--out DIR]
        [--levers "NAME;..."] [--acquisition-frames 50] [--cluster 1,2] [--name throughput.json]

Needs torch, numpy, scipy, tifffile; the acquisition rows use zarr (else the CLI's TIFF output) and tqdm (else
a silent stand-in for the CLI's progress bar), the cluster rows dask.distributed: a row whose module is missing
says so. Prints the tables
and writes DIR/NAME after every row (DIR defaults to benchmarks/results). E and the spread of the normalised
localization errors (z std) are checked against the default pipeline on the 64x64 frames of each device.
The default pipeline runs at the arithmetic ``--precision auto`` picks (bf16 where the device has it natively;
``machine.auto_precision`` in the JSON); the ``fp32`` rows force fp32.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import resource
import sys
import tempfile
import time
import types
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from napari_smlm_uq.analysis.evaluation import localization_report
from napari_smlm_uq.analysis.render import render
from napari_smlm_uq.inference import overlap, pipeline
from napari_smlm_uq.inference.overlap import Timeline
from napari_smlm_uq.io.tiff import write_stack
from napari_smlm_uq.localizations import Localizations
from napari_smlm_uq.models import registry
from napari_smlm_uq.physics.kde import from_model
from napari_smlm_uq.physics.simulate import Emitters, SimulationSettings, simulate

ROOT = Path(__file__).resolve().parents[1]
DENSITY = 0.5  # emitters / um^2
ACQUISITION = 10_000  # frames of a whole acquisition
STAND_INS: set[str] = set()   # modules replaced by a stand-in in this run
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


def phi_alone(models, adu, s, device, timeline: Timeline) -> list[Localizations] | None:
    """phi on every frame (its output copied to the host, as predict() does); no localization."""
    phi = models.phi.fused()
    with torch.inference_mode():
        for b0 in range(0, len(adu), s.frame_batch):
            from_model(pipeline.run_phi(phi, adu[b0:b0 + s.frame_batch], s, device)[1]).cpu()
    return None


def default_pipeline(models, adu, s, device, timeline: Timeline) -> list[Localizations]:
    """predict() as the CLI runs it, localizations included."""
    return [r.localizations for r in pipeline.predict(adu, models, s, timeline=timeline)]


def compiled(run):
    """``run`` with psi wrapped by torch.compile (the first call compiles; the warm-up absorbs it)."""
    def go(models, adu, s, device, timeline):
        if not hasattr(models, "compiled_psi"):
            models.compiled_psi = torch.compile(models.psi, dynamic=False)
        eager, models.psi = models.psi, models.compiled_psi
        try:
            return run(models, adu, s, device, timeline)
        finally:
            models.psi = eager
    return go


def levers(device: torch.device, quick: bool) -> list[tuple[str, object, dict]]:
    """(name, runner, settings changes) of every row measured on ``device``; the default pipeline first.
    ``psi_tile`` / ``phi_tile``: psi's tile (SR px, overlap 16 below 256) or phi's (raw px) instead of the default;
    ``depth``: the network's lead over the host work (overlap.DEPTH; 0: one after the other, in line);
    ``host_threads``: the host work's threads once the refiner has settled (overlap.HOST_THREADS)."""
    rows = [("phi alone", phi_alone, {"samples": 0}), ("default pipeline", default_pipeline, {}),
            ("phi alone + refinement", default_pipeline, {"samples": 0}),
            ("phi alone + refinement, host work in line", default_pipeline,
             {"samples": 0, "depth": 0, "host_threads": 1}),
            ("host work in line", default_pipeline, {"depth": 0, "host_threads": 1})]
    if device.type == "cuda":
        rows += [("phi alone + refinement, host work in one thread", default_pipeline,
                  {"samples": 0, "host_threads": 1}),
                 ("host work in one thread", default_pipeline, {"host_threads": 1}),
                 ("fp32", default_pipeline, {"precision": "fp32"}),
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
    depth, threads = changes.pop("depth", overlap.DEPTH), changes.pop("host_threads", overlap.HOST_THREADS)
    s = replace(pipeline.PredictSettings(device=device.type), **changes).validate()
    adu = stack.adu[:n_frames]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    saved = pipeline.PSI_TILE, pipeline.PSI_OVERLAP, pipeline.PHI_TILE, overlap.DEPTH, overlap.HOST_THREADS
    pipeline.PHI_TILE, overlap.DEPTH, overlap.HOST_THREADS, timeline = phi_tile, depth, threads, Timeline()
    if tile is not None:
        pipeline.PSI_TILE, pipeline.PSI_OVERLAP = tile, 16 if tile < 256 else 32
    try:
        # warm-up: allocations, cuDNN/oneDNN kernels, compilation
        if device.type == "cuda" or s.samples == 0 or size <= 64:
            run(models, adu[:min(len(adu), s.frame_batch if device.type == "cuda" else 1)], s, device, Timeline())
            sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        locs = run(models, adu, s, device, timeline)
        sync(device)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    except Exception as exc:  # a lever that fails is reported, not fatal
        return row | {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"}
    finally:
        pipeline.PSI_TILE, pipeline.PSI_OVERLAP, pipeline.PHI_TILE, overlap.DEPTH, overlap.HOST_THREADS = saved
    row |= {"frames": len(adu), "frames_per_s": len(adu) / seconds, "s_per_frame": seconds / len(adu),
            "cpu_s_per_frame": cpu_seconds / len(adu),
            "peak_rss_gb": peak_rss_gb(),
            "peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None}
    if timeline.wall:
        row |= {"network_waiting": timeline.network_waiting(), "timeline": timeline.as_dict()}
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
        if base is None or "E" not in r or r is base or r["lever"].startswith("phi alone"):
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
    head = ("| device | frame | lever | frames/s | s/frame | CPU s/frame | peak RSS GB | peak GPU GB | network waits "
            "| E | z std | holds |")
    lines = [head, "|" + "---|" * 12]
    fmt = lambda v, f: "–" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, f)
    for r in rows:
        if "error" in r or "skipped" in r:
            lines.append(f"| {r['device']} | {r['size']}x{r['size']} | {r['lever']} | "
                         f"{r.get('error') or r.get('skipped')} | | | | | | | | |")
            continue
        lines.append(f"| {r['device']} | {r['size']}x{r['size']} | {r['lever']} | {fmt(r['frames_per_s'], '.2f')} | "
                     f"{fmt(r['s_per_frame'], '.3f')} | {fmt(r['cpu_s_per_frame'], '.3f')} | "
                     f"{fmt(r['peak_rss_gb'], '.2f')} | {fmt(r['peak_gpu_gb'], '.2f')} | "
                     f"{fmt(r.get('network_waiting'), '.0%')} | "
                     f"{fmt(r.get('E'), '.1f')} | {fmt(r.get('z_std'), '.2f')} | {fmt(r.get('holds'), '')} |")
    return "\n".join(lines)


def frames_for(device: torch.device, size: int, lever: str, quick: bool, cpu_frames: int) -> int:
    """Frames timed per row: enough for a stable rate, little enough for the time cap."""
    if device.type == "cpu" and not lever.startswith("phi alone") and cpu_frames:
        return cpu_frames
    if device.type == "cuda" and "refinement" in lever:
        n = 256 if size == 64 else 64
    elif device.type == "cuda":
        n = (256 if size == 64 else 32) if lever.startswith("phi alone") else (128 if size == 64 else 16)
    elif lever.startswith("phi alone"):
        n = 16 if size == 64 else 4
    else:
        n = 8 if size == 64 else 1
    return max(1, n // 4) if quick else n


# --- a whole acquisition through the CLI ------------------------------------------------------------------

def missing_modules(*names: str) -> list[str]:
    return [name for name in names if importlib.util.find_spec(name) is None]


def stand_in_tqdm() -> None:
    """A silent stand-in for tqdm, the CLI's progress bar, where it is not installed (a bare GPU machine)."""
    class Bar:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n: int = 1) -> None:
            pass

        def write(self, text: str, file=None) -> None:
            print(text, file=file or sys.stdout)

    module = types.ModuleType("tqdm")
    module.tqdm = Bar
    sys.modules["tqdm"] = module


@contextmanager
def recorded(timeline: Timeline):
    """``pipeline.predict`` recording into ``timeline`` while the CLI (which looks it up when it runs) predicts."""
    original = pipeline.predict
    pipeline.predict = lambda *args, **kwargs: original(*args, timeline=timeline, **kwargs)
    try:
        yield
    finally:
        pipeline.predict = original


def acquisition_movie(folder: Path, size: int, frames: int) -> Path:
    """The benchmark movie as a 16-bit TIFF, as a camera writes it."""
    sim = movie(size, frames)
    path = folder / f"movie_{size}px_{frames}.tif"
    write_stack(path, np.clip(np.rint(sim.adu), 0, 65535).astype(np.uint16), sim.settings.pixel_size)
    return path


def smlm_uq_predict(source: Path, out: Path, samples: int, device: torch.device, workers: int, store: str,
                    model: str, frames: str | None = None) -> int:
    """``smlm-uq predict`` with the simulation's camera (the defaults of :class:`Camera`)."""
    from napari_smlm_uq import cli

    cam = pipeline.PredictSettings().camera
    argv = ["predict", str(source), "--out", str(out), "--overwrite", "--samples", str(samples), "--device",
            device.type, "--model", model, "--format", store, "--offset", str(cam.offset), "--gain", str(cam.gain),
            "--read-noise", str(cam.read_noise)]
    return cli.main(argv + (["--workers", str(workers)] if workers else []) + (["--frames", frames] if frames else []))


def acquisition_row(lever: str, samples: int, device: torch.device, workers: int, source: Path, frames: int,
                    size: int, model: str, folder: Path, clock: Clock) -> dict:
    """One whole-acquisition row: the CLI on ``frames`` frames (in this process after a 1-frame warm-up, or on
    a fresh LocalCluster of ``workers``), its seconds per frame from the prediction loop (summary.json) and the
    rest of its wall time as the fixed cost, extrapolated to :data:`ACQUISITION` frames."""
    row = {"device": str(device), "workers": workers, "lever": lever, "size": size, "density_per_um2": DENSITY}
    lacking = missing_modules(*(("zarr", "dask", "distributed") if workers else ()))
    if lacking:
        return row | {"skipped": f"skipped: no module {', '.join(lacking)}"}
    if clock.left() <= 0:
        return row | {"skipped": "skipped (time cap)"}
    store = "zarr" if importlib.util.find_spec("zarr") else "tif"
    out, timeline = folder / f"{device.type}_{samples}_{workers}", Timeline()
    try:
        if not workers and smlm_uq_predict(source, out, samples, device, 0, store, model, "0:1"):
            return row | {"error": "the 1-frame warm-up failed"}
        t0 = time.perf_counter()
        with recorded(timeline):
            status = smlm_uq_predict(source, out, samples, device, workers, store, model)
        wall = time.perf_counter() - t0
        if status:
            return row | {"error": f"smlm-uq predict exit status {status}"}
        summary = json.loads((out / "summary.json").read_text())
    except Exception as exc:  # reported in the table, not fatal
        return row | {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"}
    loop = summary["timing"]["seconds"]
    row |= {"frames": frames, "store": store, "progress_bar": "stand-in" if "tqdm" in STAND_INS else "tqdm",
            "wall_s": wall, "loop_s": loop, "fixed_s": wall - loop,
            "s_per_frame": loop / frames, "frames_per_s": frames / loop, "localizations": summary["localizations"],
            "acquisition_frames": ACQUISITION, "acquisition_s": wall - loop + ACQUISITION * loop / frames,
            "peak_rss_gb": peak_rss_gb()}
    if timeline.wall:   # the cluster's workers predict in other processes
        row |= {"network_waiting": timeline.network_waiting(), "timeline": timeline.as_dict()}
    print(f"  {row['device']:6s} {'workers ' + str(workers) if workers else 'in process':10s} {lever:24s} "
          f"{row['frames_per_s']:8.2f} frames/s -> {ACQUISITION} frames in {row['acquisition_s'] / 3600:.2f} h "
          f"({clock.left():.0f} s left)", flush=True)
    return row


def acquisition_table(rows: list[dict]) -> str:
    head = (f"| device | where | pipeline | frame | frames measured | s/frame | frames/s | network waits | "
            f"{ACQUISITION:,} frames at {DENSITY} /µm² |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        where = f"LocalCluster, {r['workers']} worker{'s' * (r['workers'] > 1)}" if r["workers"] else "one process"
        start = f"| {r['device']} | {where} | {r['lever']} | {r['size']}x{r['size']} |"
        if "error" in r or "skipped" in r:
            lines.append(f"{start} {r.get('error') or r.get('skipped')} | | | | |")
            continue
        hours = r["acquisition_s"] / 3600
        took = f"{hours:.1f} h" if hours >= 1 else f"{60 * hours:.0f} min"
        waits = format(r["network_waiting"], ".0%") if "network_waiting" in r else "–"
        lines.append(f"{start} {r['frames']} | {r['s_per_frame']:.3f} | "
                     f"{r['frames_per_s']:.2f} | {waits} | {took} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default="cpu,cuda", help="comma-separated; cuda is skipped without a GPU")
    ap.add_argument("--sizes", default="64,256", help="frame sizes of the lever rows in raw pixels; empty: none")
    ap.add_argument("--levers", default="", help="lever names to measure, separated by ; (default: all)")
    ap.add_argument("--quick", action="store_true", help="fewer frames and levers (a smoke test)")
    ap.add_argument("--cap", type=float, default=280.0, help="total seconds; later rows are skipped")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--name", default="throughput.json", help="the JSON file written in --out")
    ap.add_argument("--model", default=registry.DEFAULT_MODEL)
    ap.add_argument("--cpu-frames", type=int, default=0,
                    help="frames per CPU pipeline row (0: 8 at 64x64, 1 at 256x256)")
    ap.add_argument("--acquisition-frames", type=int, default=50,
                    help=f"frames of the whole-acquisition rows (extrapolated to {ACQUISITION:,}; 0: none)")
    ap.add_argument("--acquisition-size", type=int, default=256, help="their frame size in raw pixels")
    ap.add_argument("--cluster", default="1,2", help="LocalCluster worker counts of the acquisition rows; empty: none")
    args = ap.parse_args()
    clock = Clock(args.cap)
    # CUDA first: on a GPU machine its rows matter most within the time cap
    names = sorted(args.devices.split(","), key=lambda d: d != "cuda")
    devices = [torch.device(d) for d in names if d != "cuda" or torch.cuda.is_available()]
    wanted = {v.strip() for v in args.levers.split(";") if v.strip()}
    models = registry.load(args.model)
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "auto_precision": {str(d): "bf16" if pipeline.native_bf16(d) else "fp32" for d in devices},
            "quick": args.quick, "density_per_um2": DENSITY, "overlap_depth": overlap.DEPTH,
            "host_threads": {str(d): overlap.host_threads(d.type) for d in devices},
            "argv": sys.argv[1:]}
    result = {"machine": info, "rows": [], "acquisition": []}
    rows, stacks, path = result["rows"], {}, Path(args.out) / args.name
    path.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:   # after every row: a run cut short keeps what it measured
        info["seconds"] = args.cap - clock.left()
        path.write_text(json.dumps(result, indent=2, default=float) + "\n")

    for device in devices:
        models.to(device)
        for size in (int(v) for v in args.sizes.split(",") if v):
            for name, run, changes in levers(device, args.quick):
                if wanted and name not in wanted:
                    continue
                n = frames_for(device, size, name, args.quick, args.cpu_frames)
                if clock.left() <= 0:
                    rows.append({"device": str(device), "size": size, "lever": name, "skipped": "skipped (time cap)"})
                    continue
                if (size, n) not in stacks:
                    stacks[(size, n)] = movie(size, n)
                rows.append(measure(models, name, run, changes, device, size, stacks[(size, n)], n, clock))
                save()
    check_against_default(rows)
    if args.acquisition_frames:
        workers = [0] + [int(v) for v in args.cluster.split(",") if v]
        if missing_modules("tqdm"):
            print("tqdm is not installed: the CLI's progress bar is a silent stand-in", flush=True)
            stand_in_tqdm()
            STAND_INS.add("tqdm")
        with tempfile.TemporaryDirectory(prefix="throughput_") as tmp:
            source = acquisition_movie(Path(tmp), args.acquisition_size, args.acquisition_frames)
            for device in devices:   # in one process first: within the time cap those rows matter most
                for w in workers:
                    for lever, samples in (("phi alone + refinement", 0),
                                           ("default pipeline", pipeline.PredictSettings.samples)):
                        result["acquisition"].append(acquisition_row(lever, samples, device, w, source,
                                                                     args.acquisition_frames, args.acquisition_size,
                                                                     args.model, Path(tmp), clock))
                        save()
    if clock.left() > 0:
        result["render_1e6"] = render_check()
    print(table(rows))
    print(acquisition_table(result["acquisition"]))
    print(json.dumps({k: result.get(k) for k in ("machine", "render_1e6")}, default=str))
    save()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
