"""``smlm-uq predict``: the super-resolved mean, std and sample, the localizations and a summary of TIFF stacks,
in this process or on a dask cluster (cli/cluster.py). Options: the fields of :class:`PredictSettings` (the
camera and pixel size default to the file's) and of :class:`RunSettings`."""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from ..defaults import CAMERA_FIELDS, PIXEL_SIZE_NM
from ..inference.pipeline import PredictSettings
from ..inference.run import RunSettings, clear_outputs, frame_writer, input_stacks, output_folder, write_results
from ..io.files import InputError
from ._options import add_options, settings

NAME, HELP = "predict", "super-resolved mean, std, sample and localizations of a TIFF stack"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="input",
                   help="TIFF stacks of camera frames (ADU), or a glob; several: one result folder each in --out")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    add_options(p, PredictSettings, unset=("pixel_size", *CAMERA_FIELDS))
    add_options(p, RunSettings)
    p.add_argument("--z-calibration", default=None, metavar="CAL.json",
                   help="3D: astigmatic calibration (smlm-uq calibrate-z) of the stack's pixel size; adds z [nm]")


def run(a: argparse.Namespace) -> int:
    options = settings(RunSettings, a).validate()
    sources = input_stacks(a.inputs)
    if options.cluster:
        from .cluster import predict_on_cluster

        return predict_on_cluster(a, options, sources)
    if len(sources) == 1:
        return predict_here(a, sources[0], Path(a.out))
    failures = []
    for source in sources:
        try:
            predict_here(a, source, Path(a.out) / source.stem)
        except InputError as exc:
            failures.append(failure(source, exc))
    return report_failures(failures)


def failure(source: Path, exc: Exception) -> str:
    """One line for a stack that failed, naming it once."""
    return str(exc) if str(source) in str(exc) else f"{source}: {exc}"


def report_failures(failures: list[str]) -> int:
    for line in failures:
        print(f"smlm-uq predict: error: {line}", file=sys.stderr)
    return 2 if failures else 0


def load_model(a: argparse.Namespace):
    from ..models import registry

    models = registry.load(a.model)
    if a.samples and models.psi is None:
        raise InputError(f"model {a.model!r} has no diffusion model; use --samples 0")
    return models


def prepare_stack(a: argparse.Namespace, source: Path, out: Path, models):
    """Check one stack before any work: the file, the frame range, the camera, the background estimate (for
    ``models``), the settings, the output folder. Returns the stack, its frame range, the settings, the
    camera choice (values, sources, messages), the background choice and the checks of the stack for the
    model (analysis/preflight.py)."""
    from ..analysis.preflight import preflight
    from ..inference.background_choice import choose_background
    from ..inference.camera_choice import choose_camera
    from ..inference.pipeline import background_estimate
    from ..inference.resumable import refuse_interrupted
    from ..inference.run import parse_frames
    from ..io.camera_map import read_camera_map
    from ..io.tiff import check_finite, open_stack
    from ..io.zcalibration import read_zcalibration
    from ..physics.camera_estimation import MAX_FRAMES as CAMERA_FRAMES

    options = settings(RunSettings, a)
    stack = open_stack(source)
    frames = parse_frames(options.frames, stack.shape[0])
    check_finite(stack.data, frames)
    camera_map = read_camera_map(options.camera_map, stack.shape[1:]) if options.camera_map else None
    first = stack.data[frames.start:min(frames.stop, frames.start + CAMERA_FRAMES)]  # what the estimate reads
    choice = choose_camera(first, {k: getattr(a, k) for k in CAMERA_FIELDS}, stack.metadata, a.camera_kind,
                           camera_map, f"camera map {options.camera_map}")
    background = choose_background(first, choice.camera, background_estimate(models, PredictSettings()),
                                   options.background)
    pixel_size = a.pixel_size if a.pixel_size is not None else stack.metadata.get("pixel_size", PIXEL_SIZE_NM)
    z_calibration = read_zcalibration(a.z_calibration) if a.z_calibration else None
    s = settings(PredictSettings, a, camera=choice.camera, pixel_size=pixel_size, background=background.estimate,
                 z_calibration=z_calibration).for_model(models)
    s.validate().torch_device()
    if options.format == "zarr" and not (options.cluster or options.resume or a.overwrite):
        refuse_interrupted(out)   # an interrupted run there: named, not silently replaced
    output_folder(out, options.outputs(out), a.overwrite)
    checks = preflight(first, choice.camera, s.pixel_size, models.info.get("trained_on"), choice.doubts)
    return stack, frames, s, choice, background, checks


def flat_stack(locs, s: PredictSettings) -> list[str]:
    """A warning when a 3D run's z sit at the calibration's focus: a 2D stack read with a z calibration."""
    from ..inference.refine3d import flat_warning

    warning = s.z_calibration is not None and flat_warning(locs, s.z_calibration)
    return [f"warning: {warning}"] if warning else []


def progress_bar(files: ExitStack, frames: int):
    from tqdm import tqdm

    return files.enter_context(tqdm(total=frames, unit="frame", file=sys.stderr, dynamic_ncols=True))


def predict_here(a: argparse.Namespace, source: Path, out: Path) -> int:
    """One stack in this process."""
    from ..inference.distributed import StackJob
    from ..inference.pipeline import StackSum, keep_freed_buffers, predict
    from ..localizations import Localizations

    models = load_model(a)
    stack, frames, s, choice, background, checks = prepare_stack(a, source, out, models)
    print("\n".join([*choice.messages, background.describe(), *(f"warning: {w}" for w in checks.stack)]))
    job = StackJob(source.resolve(), frames, stack.shape[1:], s, out, a.store_encoding)
    if a.format == "zarr":
        from .store_run import predict_into_store

        return predict_into_store(a, stack, job, models, choice, background, checks)
    clear_outputs(out, a.overwrite)
    n = len(frames)
    keep_freed_buffers()  # the CLI owns its process: keep freed activation buffers (benchmarks.md)
    total, locs, t0 = StackSum(), [], time.perf_counter()
    with ExitStack() as files:
        write = frame_writer(files, job, models.name)
        bar = progress_bar(files, n)
        for result in predict(stack.data, models, s, frames):
            for note in result.notes:
                bar.write(f"smlm-uq predict: {note}", file=sys.stderr)
            write(result)
            total.add(result)
            locs.append(result.localizations)
            bar.update()
    seconds = time.perf_counter() - t0
    all_locs = Localizations.concat(locs)
    check = write_results(out, source, frames, models.name, s, total, all_locs, seconds, choice.as_dict(),
                          background=background.as_dict(), warnings=checks.warnings, preflight=checks.as_dict())
    print(f"{n} frames in {seconds:.1f} s ({seconds / n:.2f} s/frame); {len(all_locs)} localizations -> {out}")
    print("\n".join([check, *flat_stack(all_locs, s)]))
    return 0
