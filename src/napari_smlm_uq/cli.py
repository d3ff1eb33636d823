"""The ``smlm-uq`` command line: simulate | crlb | evaluate | camera | predict | train | demo | postprocess | calibrate-z.

Every user mistake ends in one line on stderr and exit status 2, before any output is written.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .io.files import InputError
from .io.store import STORE_NAME

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


def add_camera_kind(p: argparse.ArgumentParser) -> None:
    p.add_argument("--camera-kind", choices=("ccd", "scmos", "emccd"), default="ccd",
                   help="emccd: excess noise factor F^2 = 2 (gain includes the EM gain)")


# --- simulate -----------------------------------------------------------------------------------

def cmd_simulate(a: argparse.Namespace) -> int:
    from .io.tables import emitters_table, write_localizations
    from .io.tiff import write_stack
    from .io.zcalibration import read_zcalibration
    from .physics.camera import Camera
    from .physics.simulate import SimulationSettings, simulate

    settings = SimulationSettings(frames=a.frames, size=a.size, density=a.density, photons=a.photons,
                                  background=a.background, psf_sigma=a.psf_sigma, pixel_size=a.pixel_size,
                                  camera=Camera(a.offset, a.gain, a.read_noise, a.camera_kind), seed=a.seed,
                                  on_time=a.on_time, background_map=a.background_map, background_ratio=a.background_ratio,
                                  z_calibration=a.z_calibration and read_zcalibration(a.z_calibration),
                                  z_range=a.z_range and tuple(a.z_range))
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


# --- calibrate-z --------------------------------------------------------------------------------

def cmd_calibrate_z(a: argparse.Namespace) -> int:
    from .analysis.zcalibration import ZCalibrationSettings, calibrate_file

    settings = ZCalibrationSettings(step=a.step, pixel_size=a.pixel_size, offset=a.offset, gain=a.gain,
                                    read_noise=a.read_noise, box=a.box, min_beads=a.min_beads)
    result = calibrate_file(a.beads, settings, a.out)
    cal, r = result.calibration, result.calibration.residuals
    print(f"wrote {a.out} and {Path(a.out).with_suffix('.png')}: {r['beads_used']} of {r['beads_found']} beads, "
          f"z {cal.z_range[0]:.0f} to {cal.z_range[1]:.0f} nm, held-out width rms {r['huang_heldout_rms_px']:.3f} px "
          f"(spline {r['spline_heldout_rms_px']:.3f} px), {result.seconds:.1f} s")
    for note in result.beads.notes:
        print(f"  dropped {note}")
    return 0


def add_calibrate_z_parser(sub) -> None:
    from .analysis.zcalibration import ZCalibrationSettings as Z

    p = sub.add_parser("calibrate-z", help="astigmatic z calibration from a bead z-stack (JSON and a PNG plot)")
    p.add_argument("beads", help="bead z-stack TIFF (ADU), the focus moving one step per frame")
    p.add_argument("--step", type=_positive(), required=True, help="focus step between frames, nm")
    p.add_argument("--out", required=True, metavar="CAL.json", help="the calibration; its plot goes beside it (.png)")
    p.add_argument("--box", type=int, default=Z.box, help="fit box side, px (odd)")
    p.add_argument("--min-beads", type=int, default=Z.min_beads, help="fewer usable beads: refused")
    add_camera_args(p, defaults=False)
    p.set_defaults(func=cmd_calibrate_z)


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
    from .analysis.metrics import score, score_3d
    from .io.tables import read_localizations, table_xy

    locs, gt = read_localizations(a.locs), read_localizations(a.gt)
    axial = None
    if "z [nm]" in locs and "z [nm]" in gt:   # 3D: both tables have z
        s, axial = score_3d(locs["frame"], table_xy(locs), locs["z [nm]"], gt["frame"], table_xy(gt), gt["z [nm]"],
                            a.tolerance)
    else:
        s = score(locs["frame"], table_xy(locs), gt["frame"], table_xy(gt), a.tolerance)
    if a.json:
        print(json.dumps(s.as_dict() | (axial.as_dict() if axial else {})))
    else:
        print(f"JAC {s.jaccard:.2f} %  RMSE {s.rmse:.2f} nm  E {s.efficiency:.2f}  precision {s.precision:.2f} %  "
              f"recall {s.recall:.2f} %  (TP {s.tp}, FP {s.fp}, FN {s.fn}, tolerance {a.tolerance:g} nm)")
        if axial:
            print(f"3D: RMSE z {axial.rmse_z:.2f} nm  E axial {axial.efficiency_axial:.2f}  "
                  f"E 3D {axial.efficiency_3d:.2f} (mean of lateral and axial)")
    return 0


# --- camera -------------------------------------------------------------------------------------

def cmd_camera(a: argparse.Namespace) -> int:
    from .analysis.psf_estimate import estimate_psf
    from .io.camera_map import read_camera_map
    from .io.tiff import open_stack
    from .physics.camera_estimation import MAX_FRAMES, EstimateError, estimate_camera

    stack = open_stack(a.stack)
    known = {k: v if v is not None else stack.metadata.get(k) for k, v in (("offset", a.offset), ("read_noise", a.read_noise))}
    try:
        estimate = estimate_camera(stack.data[:MAX_FRAMES], a.camera_kind, known["offset"], known["read_noise"], a.method)
    except EstimateError as exc:
        raise InputError(f"{a.stack}: {exc}") from None
    camera = read_camera_map(a.camera_map, stack.shape[1:]) if a.camera_map else estimate.camera()
    try:
        psf, failure = estimate_psf(stack.data, camera, excess=camera.excess_noise), None
    except ValueError as exc:   # too few isolated spots: the camera is still reported
        psf, failure = None, str(exc)
    if a.json:
        print(json.dumps(estimate.as_dict() | {"psf": psf.as_dict() if psf else None, "psf_error": failure,
                                               "psf_camera": a.camera_map or "estimated"}))
        return 0
    print(f"{estimate.source}: {estimate.describe()}")
    for line in estimate.notes:
        print(f"  {line}")
    print(f"spots ({'camera map ' + a.camera_map if a.camera_map else 'estimated camera'}): "
          + (psf.describe() if psf else f"no estimate: {failure}"))
    if psf and psf.warning():
        print(f"warning: {psf.warning()}")
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


def output_folder(command: str, path: str, outputs: tuple[str, ...], overwrite: bool) -> Path:
    """``--out`` as a folder that is not one, or that holds ``outputs`` already without ``--overwrite``: exit 2."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"smlm-uq {command}: --out {out} exists and is not a folder")
    existing = [f for f in outputs if (out / f).exists()]
    if existing and not overwrite:
        raise UsageError(f"smlm-uq {command}: {out} already holds results ({', '.join(existing)}); use --overwrite")
    return out


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


def prepare_stack(a: argparse.Namespace, source: Path, out: Path, models):
    """Check one stack before any work: the file, the frame range, the camera, the background estimate (for
    ``models``), the settings, the output folder. Returns the stack, its frame range, the settings, the
    camera choice (values, sources, messages) and the background choice."""
    from .inference.background_choice import choose_background
    from .inference.camera_choice import choose_camera
    from .inference.pipeline import PredictSettings, background_estimate
    from .io.camera_map import read_camera_map
    from .io.tiff import open_stack
    from .io.zcalibration import read_zcalibration
    from .physics.camera_estimation import MAX_FRAMES as CAMERA_FRAMES

    stack = open_stack(source)
    frames = parse_frames(a.frames, stack.shape[0])
    _check_finite(stack.data, frames)
    meta = stack.metadata
    pick = lambda arg, key, default: arg if arg is not None else meta.get(key, default)  # noqa: E731
    camera_map = read_camera_map(a.camera_map, stack.shape[1:]) if a.camera_map else None
    first = stack.data[frames.start:min(frames.stop, frames.start + CAMERA_FRAMES)]  # what the estimate reads
    choice = choose_camera(first, {"offset": a.offset, "gain": a.gain, "read_noise": a.read_noise},
                           meta, a.camera_kind, camera_map, f"camera map {a.camera_map}")
    background = choose_background(first, choice.camera, background_estimate(models, PredictSettings()), a.background)
    settings = PredictSettings(samples=a.samples, steps=a.steps, start=a.start, camera=choice.camera,
                               pixel_size=pick(a.pixel_size, "pixel_size", PredictSettings.pixel_size), device=a.device,
                               precision=a.precision, threshold=a.threshold, seed=a.seed, schedule=a.schedule,
                               background=background.estimate,
                               z_calibration=a.z_calibration and read_zcalibration(a.z_calibration))
    try:
        settings.validate()
        settings.torch_device()
    except ValueError as exc:
        raise UsageError(f"smlm-uq predict: {exc}") from None
    # a cluster run resumes into its results.zarr (distributed.open_store checks it); one here never does
    output_folder("predict", out, OUTPUTS if a.workers or a.scheduler else OUTPUTS + (STORE_NAME,), a.overwrite)
    return stack, frames, settings, choice, background


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
                  camera: dict, **extra) -> str:
    """The files beside the KDE stacks: sum.tif, localizations.csv and summary.json (written last), with the
    camera used and the consecutive-frame precision check; returns the check's one-line description."""
    from .analysis.precision import consecutive_frame_precision
    from .io.files import write_json
    from .io.tables import localizations_table, write_localizations
    from .io.tiff import write_stack
    from .physics.kde import UPSAMPLING

    n, sr = len(frames), settings.pixel_size / UPSAMPLING
    precision = consecutive_frame_precision(locs, settings.pixel_size)
    write_stack(out / "sum.tif", total.total.astype(np.float32), sr)
    write_localizations(out / "localizations.csv", localizations_table(locs, settings.pixel_size))
    summary = {"input": str(Path(source).resolve()), "frames": [frames.start, frames.stop], "model": model,
               "settings": {"samples": settings.samples, "steps": settings.steps, "start": settings.start,
                            "pixel_size_nm": settings.pixel_size, "device": str(settings.torch_device()),
                            "precision": settings.precision, "bf16": settings.bf16(settings.torch_device()),
                            "background": settings.background,
                            "threshold": settings.threshold, "seed": settings.seed,
                            "schedule": settings.schedule or "model"},
               "timing": {"seconds": seconds, "frames_per_second": n / seconds, "seconds_per_frame": seconds / n},
               "localizations": len(locs), "sr_pixel_size_nm": sr, "camera": camera, "precision": precision.as_dict(),
               **extra}
    write_json(out / "summary.json", summary)
    return precision.describe()


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
    if a.format == "tif" and (a.workers or a.scheduler):
        raise UsageError("smlm-uq predict: a cluster run writes results.zarr; --format tif is for runs in one process")
    if a.z_calibration and (a.workers or a.scheduler):
        raise UsageError("smlm-uq predict: --z-calibration runs in one process (a cluster run keeps no z yet)")
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


def frame_writer(a: argparse.Namespace, files, job, total, model_name: str):
    """``write(result)`` of one frame's mean, std and sample: into ``job.out/results.zarr`` (``--format
    zarr``; when ``files`` closes, the sums of ``total`` are stored and the store marked complete, or partial
    with the frames done if the run stopped) or into three TIFF stacks."""
    from .physics.kde import UPSAMPLING

    first = job.frames.start
    if a.format == "zarr":
        from .io.store import ResultStore

        store = ResultStore.create(job.out, len(job.frames), job.shape, job.settings.pixel_size,
                                   encoding=job.encoding, settings=job.run(a.model))

        def close() -> None:
            if total.total is not None:
                store.write_sums(total.total.astype(np.float32), total.std.astype(np.float32), total.frames)
            store.finish()
        files.callback(close)
        return lambda r: store.write_frame(r.index - first, r.mean, r.std, r.sample)
    from .io.tiff import StackWriter

    sr = job.settings.pixel_size / UPSAMPLING
    writers = {k: files.enter_context(StackWriter(job.out / f"{k}.tif", sr, kind=f"SR {k}", model=model_name))
               for k in ("mean", "std", "sample")}
    return lambda r: [writer.write(getattr(r, key)[None]) for key, writer in writers.items()]


def predict_here(a: argparse.Namespace, source: Path, out: Path) -> int:
    """One stack in this process."""
    import time
    from contextlib import ExitStack

    from .inference.distributed import StackJob
    from .inference.pipeline import StackSum, keep_freed_buffers, predict
    from .inference.refine3d import flat_warning
    from .localizations import Localizations

    models = load_model(a)
    stack, frames, settings, choice, background = prepare_stack(a, source, out, models)
    print("\n".join(choice.messages + [background.describe()]))
    clear_outputs(out, a.overwrite)
    n = len(frames)
    keep_freed_buffers()  # the CLI owns its process: keep freed activation buffers (benchmarks.md)
    total, locs, t0 = StackSum(), [], time.perf_counter()
    with ExitStack() as files:
        job = StackJob(source.resolve(), frames, stack.shape[1:], settings, out, a.store_encoding)
        write = frame_writer(a, files, job, total, models.name)
        bar = progress_bar(files, n)
        for result in predict(stack.data, models, settings, frames):
            for note in result.notes:
                bar.write(f"smlm-uq predict: {note}", file=sys.stderr)
            write(result)
            total.add(result)
            locs.append(result.localizations)
            bar.update()
    seconds = time.perf_counter() - t0
    all_locs = Localizations.concat(locs)
    check = write_results(out, source, frames, models.name, settings, total, all_locs, seconds, choice.as_dict(),
                          background=background.as_dict())
    print(f"{n} frames in {seconds:.1f} s ({seconds / n:.2f} s/frame); {len(all_locs)} localizations -> {out}")
    print(check)
    warning = settings.z_calibration and flat_warning(all_locs, settings.z_calibration)
    if warning:
        print(f"warning: {warning}")
    return 0


def predict_on_cluster(a: argparse.Namespace, sources: list[Path]) -> int:
    """Every stack's chunks on one dask cluster; a stack that fails is reported, the others complete."""
    import time
    from contextlib import ExitStack

    from .inference import distributed as dist

    jobs, failures, choices, many = [], [], {}, len(sources) > 1
    models = load_model(a)
    for source in sources:
        out = Path(a.out) / source.stem if many else Path(a.out)
        try:
            stack, frames, settings, choice, background = prepare_stack(a, source, out, models)
            print("\n".join(f"{source.name}: {m}" for m in choice.messages + [background.describe()]))
            jobs.append(dist.StackJob(source.resolve(), frames, stack.shape[1:], settings, out, a.store_encoding))
            choices[source.resolve()] = choice.as_dict(), background.as_dict()
        except (UsageError, InputError) as exc:
            failures.append(failure(source, exc))
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
                    check = finish_stack(item, models.name, time.perf_counter() - t0, a, *choices[item.job.source])
                    bar.write(f"{item.job.source.name}: {len(item.job.frames)} frames, "
                              f"{len(item.localizations)} localizations -> {item.job.out}; {check}", file=sys.stdout)
    except KeyboardInterrupt:
        print("smlm-uq predict: interrupted; finished chunks are kept: --resume completes the run", file=sys.stderr)
        raise
    finally:
        dist.close(client)
    return report_failures(failures)


def finish_stack(done, model: str, seconds: float, a: argparse.Namespace, camera: dict, background: dict) -> str:
    """A complete stack on the cluster (its KDEs in results.zarr): the other outputs."""
    cluster = {"scheduler": a.scheduler or f"local, {a.workers} workers", "chunk_frames": a.chunk_frames,
               "worker_seconds": done.seconds}
    return write_results(done.job.out, done.job.source, done.job.frames, model, done.job.settings, done.sums,
                         done.localizations, seconds, camera, cluster=cluster, background=background)


# --- train --------------------------------------------------------------------------------------

def cmd_train(a: argparse.Namespace) -> int:
    import dataclasses

    from .models import registry
    from .training import TrainSettings, calibration_stacks, train, validate_model

    settings = TrainSettings(target=a.target, iterations=a.iterations, psi_iterations=a.psi_iterations,
                             batch_size=a.batch_size, lr=a.lr, photons=tuple(a.photons), background=tuple(a.background),
                             psf_sigma=tuple(a.psf_sigma), density=tuple(a.density), read_noise=tuple(a.read_noise),
                             pixel_size=a.pixel_size, edge_patches=a.edge_patches, out_dir=a.out, init=a.init, seed=a.seed,
                             checkpoint_every=a.checkpoint_every, precision=a.precision, calibration_frames=a.calibrate,
                             device=a.device, data_workers=a.data_workers, stage_seconds=a.stage_seconds,
                             background_estimate=a.background_estimate, background_maps=a.background_maps,
                             camera_kind=a.camera_kind,
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


# --- postprocess --------------------------------------------------------------------------------

def cmd_postprocess(a: argparse.Namespace) -> int:
    from .io.tables import read_table
    from .postprocess import workflow

    settings = workflow.Settings(drift=a.drift, merge=a.merge, frc=a.frc, rcc_segment=a.rcc_segment,
                                 segment=a.segment, max_gap=a.max_gap, max_sigmas=a.max_sigmas,
                                 frc_pixel=a.frc_pixel, frc_split=a.frc_split, frc_block=a.frc_block,
                                 max_uncertainty=a.max_uncertainty,
                                 fiducials=np.array(a.fiducial, float) if a.fiducial else None)
    try:
        settings.validate()
    except ValueError as exc:
        raise UsageError(f"smlm-uq postprocess: {exc}") from None
    out = output_folder("postprocess", a.out, workflow.OUTPUTS, a.overwrite)
    table = read_table(a.locs, a.pixel_size)
    result = workflow.run(table, settings)
    for name in workflow.OUTPUTS:
        (out / name).unlink(missing_ok=True)
    written = workflow.write(result, out, picasso=a.picasso, pixel_nm=a.pixel_size or 100.0,
                             source=str(Path(a.locs).resolve()))
    for line in workflow.summary_lines(len(table["frame"]), result):
        print(line)
    print(f"wrote {', '.join(p.name for p in written)} -> {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    # the defaults live with the settings
    from .inference.distributed import DEFAULT_CHUNK_FRAMES
    from .inference.pipeline import PRECISIONS, PredictSettings as D
    from .io.store import DEFAULT_ENCODING, ENCODINGS
    from .physics import camera_estimation as estimation
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
    p.add_argument("--on-time", type=_positive(), default=None,
                   help="fixed molecules blinking for this mean number of frames (default: new emitters every frame)")
    p.add_argument("--background-map", choices=("gradient", "illumination", "cells"), default=None,
                   help="background varying across the field (mean --background)")
    p.add_argument("--background-ratio", type=_positive(), default=6.0, help="the map's highest / lowest background")
    p.add_argument("--z-calibration", default=None, metavar="CAL.json",
                   help="astigmatic PSF from this calibration (smlm-uq calibrate-z); the truth gains z [nm]")
    p.add_argument("--z-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="uniform z of the emitters, nm (default: the calibration's range)")
    add_camera_args(p)
    add_camera_kind(p)
    p.set_defaults(func=cmd_simulate)
    add_calibrate_z_parser(sub)

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

    p = sub.add_parser("camera", help="estimate the camera (offset, gain, read noise), then the PSF sigma, photons and "
                                      "background of isolated spots, from a stack")
    p.add_argument("stack", help="TIFF stack of camera frames (ADU), >= 10 frames")
    p.add_argument("--offset", type=float, default=None, help="known offset, ADU (default: from the file, else estimated)")
    p.add_argument("--read-noise", type=_positive(allow_zero=True), default=None, help="known read noise, e- rms")
    p.add_argument("--method", default=estimation.DEFAULT_METHOD, choices=estimation.METHODS, help="how per-pixel statistics resist blinking molecules")
    p.add_argument("--json", action="store_true", help="one machine-readable JSON line")
    p.add_argument("--camera-map", default=None, help="sCMOS per-pixel map (as for predict) for the spots' fits")
    add_camera_kind(p)
    p.set_defaults(func=cmd_camera)

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
    p.add_argument("--precision", choices=PRECISIONS, default=D.precision,
                   help="network arithmetic: bf16 autocast, fp32, or auto (bf16 where the GPU or CPU computes it "
                        "natively: 1.5-2.3x faster at the same E and calibration; docs/benchmarks.md)")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    p.add_argument("--z-calibration", default=None, metavar="CAL.json",
                   help="3D: astigmatic calibration (smlm-uq calibrate-z) of the stack's pixel size; adds z [nm]")
    p.add_argument("--format", choices=("zarr", "tif"), default="zarr",
                   help="per-frame mean/std/sample: a results.zarr store (docs/store.md) or three TIFF stacks")
    p.add_argument("--store-encoding", choices=tuple(ENCODINGS), default=DEFAULT_ENCODING,
                   help="how results.zarr stores them: compact (float16, |values| < 0.02 as 0: ~0.1-0.5 MB per "
                        "256x256 frame), float16, or float32 (lossless); docs/store.md")
    p.add_argument("--background", choices=("auto", "frame", "local"), default="auto",
                   help="background estimate for the normalisation: the frame median, a local estimate, or auto "
                        "(local when the background varies across the field, else the model's own)")
    p.add_argument("--camera-map", default=None, help="sCMOS per-pixel map: 3-plane TIFF or .npy (offset ADU, "
                   "variance ADU^2, gain ADU/e-); replaces --offset/--gain/--read-noise")


    p.add_argument("--workers", type=int, default=0, help="predict on a local dask cluster of N worker processes")
    p.add_argument("--scheduler", default=None, help="predict on an existing dask cluster (scheduler address)")
    p.add_argument("--chunk-frames", type=int, default=DEFAULT_CHUNK_FRAMES, help="frames per cluster task")
    p.add_argument("--resume", action="store_true", help="complete an interrupted cluster run in --out")
    add_camera_args(p, defaults=False)
    add_camera_kind(p)
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
    p.add_argument("--background-estimate", choices=("frame", "local"), default=T.background_estimate,
                   help="background the input is normalised around: the frame median or a local estimate")
    p.add_argument("--background-maps", type=float, default=T.background_maps,
                   help="fraction of patches whose background varies across the patch (gradients, illumination, cells)")
    p.add_argument("--seed", type=int, default=T.seed)
    p.add_argument("--calibrate", type=int, default=0, metavar="FRAMES",
                   help="afterwards, refit the uncertainty calibration on 6 simulated stacks of FRAMES frames "
                        "spanning the training ranges (0: keep the calibration of --init)")
    p.add_argument("--checkpoint-every", type=int, default=T.checkpoint_every)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--precision", choices=PRECISIONS, default=T.precision,
                   help="network arithmetic: bf16 autocast, fp32, or auto (bf16 where the GPU or CPU computes it "
                        "natively: phi trains 2.2x faster on the CPU measured)")
    p.add_argument("--device", default=T.device, help="auto, cpu or cuda")
    p.add_argument("--data-workers", type=int, default=T.data_workers,
                   help="processes simulating training patches beside the optimiser (0: in line)")
    p.add_argument("--stage-seconds", type=_positive(), default=T.stage_seconds,
                   help="time budget per stage (phi, psi): the iteration count is cut to fit it (paced on iterations 50-100)")
    p.add_argument("--tiny", action="store_true", help="a very small architecture (for quick tests)")
    add_camera_kind(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="simulate, predict with the bundled model, score, draw a figure")
    p.add_argument("--out", default="smlm-uq-demo", help="folder for demo.png and demo.json")
    p.add_argument("--model", default="default", help="bundled model name or model file")
    p.add_argument("--samples", type=int, default=D.samples)
    p.add_argument("--steps", type=int, default=D.steps)
    p.add_argument("--device", default=D.device)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("postprocess", help="drift correction, merging of blinks, FRC resolution, Picasso export")
    p.add_argument("locs", help="localization table: our CSV, a ThunderSTORM CSV or a Picasso HDF5 (.hdf5)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--drift", action="store_true", help="estimate the drift (RCC + intersection) and subtract it")
    p.add_argument("--merge", action="store_true", help="merge localizations of one blink into one event")
    p.add_argument("--frc", action="store_true", help="FRC resolution of all and of the filtered localizations")
    p.add_argument("--picasso", action="store_true", help="also write locs.hdf5 + locs.yaml for Picasso")
    p.add_argument("--rcc-segment", type=int, default=1000, help="frames per RCC segment")
    p.add_argument("--segment", type=int, default=200, help="frames per segment of the intersection refinement")
    p.add_argument("--fiducial", type=float, nargs=2, action="append", metavar=("X", "Y"),
                   help="a fiducial marker near x, y (nm); repeat for several: drift from the markers instead")
    p.add_argument("--max-gap", type=int, default=1, help="missing frames allowed inside one blink")
    p.add_argument("--max-sigmas", type=_positive(), default=3.0,
                   help="linking radius, combined uncertainties")
    p.add_argument("--frc-pixel", type=_positive(), default=5.0, help="FRC histogram pixel, nm")
    p.add_argument("--frc-split", choices=("blocks", "random"), default="blocks", help="how the halves are drawn")
    p.add_argument("--frc-block", type=int, default=100, help="frames per block of the 'blocks' split")
    p.add_argument("--max-uncertainty", type=_positive(), default=None,
                   help="uncertainty filter, nm (default: 1.5 x the median uncertainty)")
    p.add_argument("--pixel-size", type=_positive(), default=None,
                   help="camera pixel size, nm, for Picasso files (default: the file's, else 100)")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    p.set_defaults(func=cmd_postprocess)
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
