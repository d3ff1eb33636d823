"""The ``smlm-uq`` command line: simulate | crlb | evaluate | predict | train | demo.

Every user mistake ends in one line on stderr and exit status 2, before any output is written.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .io.files import InputError

EXIT_USAGE = 2


class UsageError(Exception):
    """A problem with the user's input: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UsageError(f"{self.prog}: {message}")


def _positive(kind=float, allow_zero: bool = False):
    def check(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"must be {'>=' if allow_zero else '>'} 0 (got {text})")
        return value
    check.__name__ = "number"
    return check


def add_camera_args(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    """Camera options shared by every command (units of docs/physics.md); defaults from :class:`Camera` and
    :class:`SimulationSettings`, or None (``defaults=False``: taken from the file later)."""
    from .physics.camera import Camera
    from .physics.simulate import SimulationSettings

    cam, d = Camera(), (lambda v: v) if defaults else (lambda v: None)
    p.add_argument("--pixel-size", type=_positive(), default=d(SimulationSettings.pixel_size), help="raw pixel size, nm")
    p.add_argument("--offset", type=float, default=d(cam.offset), help="camera offset, ADU")
    p.add_argument("--gain", type=_positive(), default=d(cam.gain), help="ADU per photo-electron")
    p.add_argument("--read-noise", type=_positive(allow_zero=True), default=d(cam.read_noise), help="read noise, e- rms")


# --- simulate -----------------------------------------------------------------------------------

def cmd_simulate(a: argparse.Namespace) -> int:
    from .io.tables import emitters_table, write_localizations
    from .io.tiff import write_stack
    from .physics.camera import Camera
    from .physics.simulate import SimulationSettings, simulate

    settings = SimulationSettings(frames=a.frames, size=a.size, density=a.density, photons=a.photons,
                                  background=a.background, psf_sigma=a.psf_sigma, pixel_size=a.pixel_size,
                                  camera=Camera(a.offset, a.gain, a.read_noise), seed=a.seed)
    try:
        settings.validate()
    except ValueError as exc:
        raise UsageError(f"smlm-uq simulate: {exc}") from None
    out = Path(a.out)
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise UsageError(f"smlm-uq simulate: output must end in .tif or .tiff (got {out.name})")
    stack = simulate(settings)
    adu = np.clip(np.rint(stack.adu), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    write_stack(out, adu, a.pixel_size, offset=a.offset, gain=a.gain, read_noise=a.read_noise)
    csv = out.with_suffix(".csv")
    write_localizations(csv, emitters_table(stack.emitters, a.pixel_size))
    print(f"wrote {out} ({adu.shape[0]} frames of {adu.shape[1]}x{adu.shape[2]} px) and {csv} "
          f"({len(stack.emitters)} emitters)")
    return 0


# --- crlb ---------------------------------------------------------------------------------------

def cmd_crlb(a: argparse.Namespace) -> int:
    from .physics.crlb import crlb

    if a.photons <= 0:
        raise UsageError(f"smlm-uq crlb: photons must be > 0 (got {a.photons:g})")
    bounds = crlb(a.photons, a.background, a.psf_sigma, a.read_noise)
    nm = bounds[0] * a.pixel_size
    if a.json:
        print(json.dumps({"crlb_x_nm": nm, "crlb_y_nm": bounds[1] * a.pixel_size,
                          "crlb_photons": bounds[2], "crlb_background": bounds[3]}))
    else:
        print(f"CRLB per axis: {nm:.3f} nm (x and y)  photons: +/-{bounds[2]:.1f}  "
              f"background: +/-{bounds[3]:.3f} photons/px")
    return 0


# --- evaluate -----------------------------------------------------------------------------------

def cmd_evaluate(a: argparse.Namespace) -> int:
    from .analysis.metrics import score
    from .io.tables import read_localizations, table_xy

    locs, gt = read_localizations(a.locs), read_localizations(a.gt)
    s = score(locs["frame"], table_xy(locs), gt["frame"], table_xy(gt), a.tolerance)
    if a.json:
        print(json.dumps(s.as_dict()))
    else:
        print(f"JAC {s.jaccard:.2f} %  RMSE {s.rmse:.2f} nm  E {s.efficiency:.2f}  precision {s.precision:.2f} %  "
              f"recall {s.recall:.2f} %  (TP {s.tp}, FP {s.fp}, FN {s.fn}, tolerance {a.tolerance:g} nm)")
    return 0


# --- predict ------------------------------------------------------------------------------------

def parse_frames(text: str | None, n: int) -> range:
    """``a:b`` (0-based, b exclusive, either may be empty) -> a range inside ``[0, n)``."""
    if not text:
        return range(0, n)
    try:
        a, b = (int(v) if v.strip() else None for v in text.split(":"))
    except ValueError:
        raise UsageError(f"smlm-uq predict: --frames must look like a:b (got {text!r})") from None
    a, b = 0 if a is None else a, n if b is None else b
    if not 0 <= a < b <= n:
        raise UsageError(f"smlm-uq predict: --frames {text} is outside the stack's {n} frames (0:{n})")
    return range(a, b)


def _check_finite(data, frames: range, chunk: int = 64) -> None:
    if np.dtype(data.dtype).kind != "f":
        return
    for i in range(frames.start, frames.stop, chunk):
        block = np.asarray(data[i:min(i + chunk, frames.stop)])
        if not np.all(np.isfinite(block)):
            raise UsageError(f"smlm-uq predict: the stack holds NaN or infinite values (frames {i}..{i + len(block) - 1})")


OUTPUTS = ("mean.tif", "std.tif", "sample.tif", "sum.tif", "localizations.csv", "summary.json")


def input_stacks(patterns: list[str]) -> list[Path]:
    """The input TIFFs: paths, or glob patterns (for shells that do not expand them), in the order given."""
    import glob

    found = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise UsageError(f"smlm-uq predict: no file matches {pattern}")
        found += [Path(p) for p in matches]
    if len({p.stem for p in found}) < len(found):
        raise UsageError("smlm-uq predict: two input stacks have the same name (one result folder each)")
    return found


def prepare_stack(a: argparse.Namespace, source: Path, out: Path):
    """Check one stack before any work: the file, the frame range, the settings, the output folder."""
    from .inference.pipeline import PredictSettings
    from .io.tiff import open_stack
    from .physics.camera import Camera

    stack = open_stack(source)
    frames = parse_frames(a.frames, stack.shape[0])
    meta, cam = stack.metadata, Camera()
    pick = lambda arg, key, default: arg if arg is not None else meta.get(key, default)  # noqa: E731
    camera = Camera(pick(a.offset, "offset", cam.offset), pick(a.gain, "gain", cam.gain),
                    pick(a.read_noise, "read_noise", cam.read_noise))
    settings = PredictSettings(samples=a.samples, steps=a.steps, start=a.start, camera=camera,
                               pixel_size=pick(a.pixel_size, "pixel_size", PredictSettings.pixel_size), device=a.device,
                               bf16=a.bf16, threshold=a.threshold, seed=a.seed, schedule=a.schedule)
    try:
        settings.validate()
        settings.torch_device()
    except ValueError as exc:
        raise UsageError(f"smlm-uq predict: {exc}") from None
    if out.exists() and not out.is_dir():
        raise UsageError(f"smlm-uq predict: --out {out} exists and is not a folder")
    existing = [f for f in OUTPUTS if (out / f).exists()]
    if existing and not a.overwrite:
        raise UsageError(f"smlm-uq predict: {out} already holds results ({', '.join(existing)}); use --overwrite")
    _check_finite(stack.data, frames)
    return stack, frames, settings


def load_model(a: argparse.Namespace):
    from .models import registry

    models = registry.load(a.model)
    if a.samples and models.psi is None:
        raise UsageError(f"smlm-uq predict: model {a.model!r} has no diffusion model; use --samples 0")
    return models


def clear_outputs(out: Path, overwrite: bool) -> None:
    from .inference.distributed import discard

    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        (out / name).unlink(missing_ok=True)
    if overwrite:
        discard(out)


def write_results(out: Path, source: Path, frames: range, model: str, settings, total, locs, seconds: float,
                  **extra) -> None:
    """The files beside the KDE stacks: sum.tif, localizations.csv and summary.json (written last)."""
    from .io.files import write_json
    from .io.tables import localizations_table, write_localizations
    from .io.tiff import write_stack
    from .physics.kde import UPSAMPLING

    n, sr = len(frames), settings.pixel_size / UPSAMPLING
    write_stack(out / "sum.tif", total.total.astype(np.float32), sr)
    write_localizations(out / "localizations.csv", localizations_table(locs, settings.pixel_size))
    summary = {"input": str(Path(source).resolve()), "frames": [frames.start, frames.stop], "model": model,
               "settings": {"samples": settings.samples, "steps": settings.steps, "start": settings.start,
                            "pixel_size_nm": settings.pixel_size, "offset_adu": float(settings.camera.offset),
                            "gain": float(settings.camera.gain), "read_noise_e": float(settings.camera.read_noise),
                            "device": str(settings.torch_device()), "bf16": settings.bf16,
                            "threshold": settings.threshold, "seed": settings.seed,
                            "schedule": settings.schedule or "model"},
               "timing": {"seconds": seconds, "frames_per_second": n / seconds, "seconds_per_frame": seconds / n},
               "localizations": len(locs), "sr_pixel_size_nm": sr, **extra}
    write_json(out / "summary.json", summary)


def progress_bar(files, frames: int):
    from tqdm import tqdm

    return files.enter_context(tqdm(total=frames, unit="frame", file=sys.stderr, dynamic_ncols=True))


def cmd_predict(a: argparse.Namespace) -> int:
    sources = input_stacks(a.inputs)
    if a.chunk_frames < 1:
        raise UsageError(f"smlm-uq predict: --chunk-frames must be >= 1 (got {a.chunk_frames})")
    if a.workers < 0 or (a.workers and a.scheduler):
        raise UsageError("smlm-uq predict: use either --workers N (N >= 1) or --scheduler ADDRESS")
    if a.resume and not (a.workers or a.scheduler):
        raise UsageError("smlm-uq predict: --resume completes a cluster run: add --workers N or --scheduler ADDRESS")
    if a.workers or a.scheduler:
        return predict_on_cluster(a, sources)
    if len(sources) == 1:
        return predict_here(a, sources[0], Path(a.out))
    failures = []
    for source in sources:
        try:
            predict_here(a, source, Path(a.out) / source.stem)
        except (UsageError, InputError) as exc:
            failures.append(failure(source, exc))
    return report_failures(failures)


def failure(source: Path, exc: Exception) -> str:
    """One line for a stack that failed, naming it once."""
    text = str(exc).removeprefix("smlm-uq predict: ")
    return text if str(source) in text else f"{source}: {text}"


def report_failures(failures: list[str]) -> int:
    for line in failures:
        print(f"smlm-uq predict: error: {line}", file=sys.stderr)
    return EXIT_USAGE if failures else 0


def predict_here(a: argparse.Namespace, source: Path, out: Path) -> int:
    """One stack in this process."""
    import time
    from contextlib import ExitStack

    from .inference.pipeline import StackSum, keep_freed_buffers, predict
    from .io.tiff import StackWriter
    from .localizations import Localizations
    from .physics.kde import UPSAMPLING

    stack, frames, settings = prepare_stack(a, source, out)
    models = load_model(a)
    clear_outputs(out, a.overwrite)
    sr = settings.pixel_size / UPSAMPLING
    n = len(frames)
    keep_freed_buffers()  # the CLI owns its process: keep freed activation buffers (benchmarks.md)
    total, locs, t0 = StackSum(), [], time.perf_counter()
    with ExitStack() as files:
        writers = {k: files.enter_context(StackWriter(out / f"{k}.tif", sr, kind=f"SR {k}", model=models.name))
                   for k in ("mean", "std", "sample")}
        bar = progress_bar(files, n)
        for result in predict(stack.data, models, settings, frames):
            for note in result.notes:
                bar.write(f"smlm-uq predict: {note}", file=sys.stderr)
            for key, writer in writers.items():
                writer.write(getattr(result, key)[None])
            total.add(result)
            locs.append(result.localizations)
            bar.update()
    seconds = time.perf_counter() - t0
    all_locs = Localizations.concat(locs)
    write_results(out, source, frames, models.name, settings, total, all_locs, seconds)
    print(f"{n} frames in {seconds:.1f} s ({seconds / n:.2f} s/frame); {len(all_locs)} localizations -> {out}")
    return 0


def predict_on_cluster(a: argparse.Namespace, sources: list[Path]) -> int:
    """Every stack's chunks on one dask cluster; a stack that fails is reported, the others complete."""
    import time
    from contextlib import ExitStack

    from .inference import distributed as dist

    jobs, failures, many = [], [], len(sources) > 1
    for source in sources:
        out = Path(a.out) / source.stem if many else Path(a.out)
        try:
            stack, frames, settings = prepare_stack(a, source, out)
            jobs.append(dist.StackJob(source.resolve(), frames, stack.shape[1:], settings, out))
        except (UsageError, InputError) as exc:
            failures.append(failure(source, exc))
    models = load_model(a)
    for job in jobs:
        clear_outputs(job.out, a.overwrite)
    client = dist.connect(a.scheduler, a.workers)
    t0 = time.perf_counter()
    try:
        with ExitStack() as files:
            bar = progress_bar(files, sum(len(r) for job in jobs for r in job.chunks(a.chunk_frames)))
            for item in dist.predict_on_cluster(client, jobs, a.model, a.chunk_frames, a.resume):
                if isinstance(item, dist.ChunkDone):
                    for note in item.notes:
                        bar.write(f"smlm-uq predict: {item.job.source.name}: {note}", file=sys.stderr)
                    bar.update(len(item.frames))
                elif isinstance(item, dist.StackFailed):
                    failures.append(f"{item.job.source}: {item.error}")
                else:
                    finish_stack(item, models.name, time.perf_counter() - t0, a)
                    bar.write(f"{item.job.source.name}: {len(item.job.frames)} frames, "
                              f"{len(item.localizations)} localizations -> {item.job.out}", file=sys.stdout)
    except KeyboardInterrupt:
        print("smlm-uq predict: interrupted; finished chunks are kept: --resume completes the run", file=sys.stderr)
        raise
    finally:
        dist.close(client)
    return report_failures(failures)


def finish_stack(done, model: str, seconds: float, a: argparse.Namespace) -> None:
    """A complete stack on the cluster (its KDEs in results.zarr): the other outputs."""
    cluster = {"scheduler": a.scheduler or f"local, {a.workers} workers", "chunk_frames": a.chunk_frames,
               "worker_seconds": done.seconds}
    write_results(done.job.out, done.job.source, done.job.frames, model, done.job.settings, done.sums,
                  done.localizations, seconds, cluster=cluster)


# --- train --------------------------------------------------------------------------------------

def cmd_train(a: argparse.Namespace) -> int:
    import dataclasses

    from .models import registry
    from .training import TrainSettings, calibration_stacks, train, validate_model

    settings = TrainSettings(target=a.target, iterations=a.iterations, psi_iterations=a.psi_iterations,
                             batch_size=a.batch_size, lr=a.lr, photons=tuple(a.photons), background=tuple(a.background),
                             psf_sigma=tuple(a.psf_sigma), density=tuple(a.density), read_noise=tuple(a.read_noise),
                             pixel_size=a.pixel_size, edge_patches=a.edge_patches, out_dir=a.out, init=a.init, seed=a.seed,
                             checkpoint_every=a.checkpoint_every, bf16=a.bf16, calibration_frames=a.calibrate,
                             config=registry.tiny_config() if a.tiny else registry.default_config())
    try:
        settings.validate()
    except ValueError as exc:
        raise UsageError(f"smlm-uq train: {exc}") from None
    if a.init:
        registry.resolve(a.init)
    print(f"training {a.target} -> {Path(a.out) / 'model.pt'} "
          f"({json.dumps({k: v for k, v in dataclasses.asdict(settings).items() if k != 'config'})})")
    model_path = None
    for p in train(settings):
        model_path = p.model_path
        if p.stage == "calibration":
            print(f"calibration refitted on {len(calibration_stacks(settings))} simulated stacks: "
                  f"std(error/uncertainty) {p.val_loss:.2f} raw -> {p.loss:.2f} calibrated  {p.elapsed:.0f} s")
        elif p.iteration % a.log_every == 0 or p.val_loss is not None:
            val = f"  validation {p.val_loss:.5f}" if p.val_loss is not None else ""
            print(f"{p.stage} {p.iteration}/{p.iterations}  loss {p.loss:.5f}{val}  {p.elapsed:.0f} s", flush=True)
    print(f"model written to {model_path}")
    if model_path is not None:
        v = validate_model(model_path, settings)
        print(f"validation ({v['frames']} simulated frames of {v['size']} px, {v['emitters']} emitters, phi alone): "
              f"JAC {v['jaccard']:.1f} %  RMSE {v['rmse']:.1f} nm  E {v['efficiency']:.1f}  "
              f"(CRLB {v['crlb']:.1f} nm per axis at {v['photons']:.0f} photons, background {v['background']:.0f})")
    return 0


# --- demo ---------------------------------------------------------------------------------------

def cmd_demo(a: argparse.Namespace) -> int:
    from . import demo
    from .inference.pipeline import PredictSettings
    from .io.files import atomic_path, write_json

    settings = PredictSettings(samples=a.samples, steps=a.steps, device=a.device)
    try:
        settings.validate()
    except ValueError as exc:
        raise UsageError(f"smlm-uq demo: {exc}") from None
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = demo.run(settings, a.model)
    for line in demo.summary_lines(result):
        print(line)
    with atomic_path(out_dir / "demo.png") as tmp:
        demo.figure(result, tmp)
    write_json(out_dir / "demo.json", {k: result[k]["report"] for k in ("phi", "pipeline")}
               | {"pixels": result["pipeline"]["pixels"], "crlb_nm": result["crlb_nm"]})
    print(f"figure: {out_dir / 'demo.png'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .inference.distributed import DEFAULT_CHUNK_FRAMES
    from .inference.pipeline import PredictSettings as D  # the defaults live with the settings
    from .physics.simulate import SimulationSettings as SIM
    from .training import TrainSettings as T

    parser = _Parser(prog="smlm-uq", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("simulate", help="simulate a camera stack (TIFF) and its ground truth (CSV)")
    p.add_argument("out", help="output TIFF; the ground truth goes beside it as .csv")
    p.add_argument("--frames", type=int, default=SIM.frames)
    p.add_argument("--size", type=int, default=SIM.size, help="frame size, pixels")
    p.add_argument("--density", type=float, default=SIM.density, help="emitters per um^2")
    p.add_argument("--photons", type=float, default=SIM.photons, help="photons per emitter")
    p.add_argument("--background", type=float, default=SIM.background, help="photons per pixel")
    p.add_argument("--psf-sigma", type=float, default=SIM.psf_sigma, help="PSF standard deviation, raw pixels")
    p.add_argument("--seed", type=int, default=SIM.seed)
    add_camera_args(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("crlb", help="Cramer-Rao lower bound of the localization precision")
    p.add_argument("--photons", type=float, default=SIM.photons)
    p.add_argument("--background", type=_positive(allow_zero=True), default=SIM.background, help="photons per pixel")
    p.add_argument("--psf-sigma", type=_positive(), default=SIM.psf_sigma, help="raw pixels")
    p.add_argument("--json", action="store_true")
    add_camera_args(p)
    p.set_defaults(func=cmd_crlb)

    p = sub.add_parser("evaluate", help="JAC, RMSE, efficiency of localizations against ground truth")
    p.add_argument("locs", help="localizations CSV (ThunderSTORM columns)")
    p.add_argument("gt", help="ground truth CSV (same columns)")
    p.add_argument("--tolerance", type=_positive(), default=250.0, help="matching radius, nm")
    p.add_argument("--json", action="store_true", help="one machine-readable JSON line")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="super-resolved mean, std, sample and localizations of a TIFF stack")
    p.add_argument("inputs", nargs="+", metavar="input",
                   help="TIFF stacks of camera frames (ADU), or a glob; several: one result folder each in --out")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--samples", type=int, default=D.samples, help="diffusion samples per frame (0: phi alone)")
    p.add_argument("--steps", type=int, default=D.steps, help="diffusion inference steps")
    p.add_argument("--start", type=float, default=D.start,
                   help="preconditioned start, fraction of the noise schedule (1: pure noise)")
    p.add_argument("--schedule", default=None, help="inference noise levels from a named schedule "
                   "(default: the model's training schedule; 'paper' for the paper's)")
    p.add_argument("--device", default=D.device, help="auto, cpu or cuda")
    p.add_argument("--model", default="default", help="bundled model name or model file")
    p.add_argument("--frames", default=None, help="frame range a:b (0-based, b exclusive)")
    p.add_argument("--threshold", type=_positive(), default=D.threshold, help="KDE peak threshold")
    p.add_argument("--seed", type=int, default=D.seed)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (faster on GPUs; slower on some CPUs)")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    p.add_argument("--workers", type=int, default=0, help="predict on a local dask cluster of N worker processes")
    p.add_argument("--scheduler", default=None, help="predict on an existing dask cluster (scheduler address)")
    p.add_argument("--chunk-frames", type=int, default=DEFAULT_CHUNK_FRAMES, help="frames per cluster task")
    p.add_argument("--resume", action="store_true", help="complete an interrupted cluster run in --out")
    add_camera_args(p, defaults=False)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("train", help="train or fine-tune phi and psi on simulated data")
    p.add_argument("--out", required=True, help="output folder (model.pt and resumable checkpoints)")
    p.add_argument("--target", choices=("phi", "psi", "both"), default=T.target)
    p.add_argument("--init", default=T.init, help="bundled model name or model file to fine-tune")
    p.add_argument("--iterations", type=int, default=T.iterations)
    p.add_argument("--psi-iterations", type=int, default=T.psi_iterations, help="psi's iterations with --target both")
    p.add_argument("--batch-size", type=int, default=T.batch_size)
    p.add_argument("--lr", type=float, default=T.lr, help="learning rate")
    rng = lambda name, unit: p.add_argument(  # noqa: E731
        f"--{name}", type=float, nargs=2, default=getattr(T, name.replace("-", "_")), metavar=("LOW", "HIGH"),
        help=f"{unit} range")
    rng("photons", "photons per emitter")
    rng("background", "background photons/pixel")
    rng("psf-sigma", "PSF sigma (raw pixels)")
    rng("density", "emitters/um^2")
    rng("read-noise", "read noise (e- rms)")
    p.add_argument("--pixel-size", type=_positive(), default=T.pixel_size, help="nm (sets the density scale)")
    p.add_argument("--edge-patches", type=float, default=T.edge_patches,
                   help="fraction of patches with emitters up to the patch edge (the rest: centred disc)")
    p.add_argument("--seed", type=int, default=T.seed)
    p.add_argument("--calibrate", type=int, default=0, metavar="FRAMES",
                   help="afterwards, refit the uncertainty calibration on 6 simulated stacks of FRAMES frames "
                        "spanning the training ranges (0: keep the calibration of --init)")
    p.add_argument("--checkpoint-every", type=int, default=T.checkpoint_every)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (faster on GPUs; slower on the CPU measured)")
    p.add_argument("--tiny", action="store_true", help="a very small architecture (for quick tests)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="simulate, predict with the bundled model, score, draw a figure")
    p.add_argument("--out", default="smlm-uq-demo", help="folder for demo.png and demo.json")
    p.add_argument("--model", default="default", help="bundled model name or model file")
    p.add_argument("--samples", type=int, default=D.samples)
    p.add_argument("--steps", type=int, default=D.steps)
    p.add_argument("--device", default=D.device)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (UsageError, InputError) as exc:
        text = f"smlm-uq: {exc}" if isinstance(exc, InputError) else str(exc)
        print(text.replace(": ", ": error: ", 1), file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:  # settings rejected by the core's validation
        print(f"smlm-uq: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("smlm-uq: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
