"""One prediction run, shared by the command line and the widget: its options beyond the network settings
(:class:`RunSettings`), its output folder, and its results: the per-frame KDEs in a result store
(docs/store.md), the accumulated images, the localization table and the consecutive-frame precision check
(:class:`RunResults`); for the command line also ``sum.tif`` and ``summary.json`` (:func:`write_results`).
"""
from __future__ import annotations

import glob
import threading
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from ..analysis.precision import consecutive_frame_precision
from ..io.files import InputError, write_json
from ..io.store import DEFAULT_ENCODING, ENCODINGS, STORE_NAME, ResultStore
from ..io.tables import localizations_table, read_table, table_localizations, write_localizations
from ..localizations import Localizations
from ..models.registry import DEFAULT_MODEL
from ..physics.kde import UPSAMPLING
from ..settings import option
from .distributed import DEFAULT_CHUNK_FRAMES
from .pipeline import FrameResult, StackSum

OUTPUTS = ("mean.tif", "std.tif", "sample.tif", "sum.tif", "localizations.csv", "summary.json")
LOCALIZATIONS_FILE = "localizations.csv"  # beside results.zarr
Encoding = Literal[tuple(ENCODINGS)]      # io/store.py's encodings


@dataclass
class RunSettings:
    """A prediction run's options beside :class:`~inference.pipeline.PredictSettings`: the model, frames, camera
    map, background choice, where and how the results are kept, and the dask cluster."""

    model: str = option(DEFAULT_MODEL, help="bundled model name or model file", gui=False)
    frames: str | None = option(None, help="frame range a:b (0-based, b exclusive)", gui=False)
    background: Literal["auto", "frame", "local"] = option(
        "auto", help="background estimate of the normalisation: the frame median, a local estimate, or auto (local "
        "when the background varies across the field, else the model's own)", label="background estimate")
    camera_map: str | None = option(None, help="sCMOS per-pixel map: 3-plane TIFF or .npy (offset ADU, variance "
                                    "ADU^2, gain ADU/e-); replaces offset, gain and read noise", gui=False)
    format: Literal["zarr", "tif"] = option("zarr", help="per-frame mean/std/sample: a results.zarr store "
                                            "(docs/store.md) or three TIFF stacks", gui=False)
    store_encoding: Encoding = option(DEFAULT_ENCODING, help="how results.zarr stores them: compact (float16, |values| "
                                      "< 0.03 as 0: ~0.3-0.8 MB per 256x256 frame), float16, or float32 (lossless); "
                                      "docs/store.md", label="stored as")
    workers: int = option(0, help="predict on a local dask cluster of N worker processes", low=0, gui=False)
    scheduler: str | None = option(None, help="predict on an existing dask cluster: its scheduler address "
                                   "(tcp://host:8786), whose workers read the TIFF and write the output folder",
                                   label="cluster")
    chunk_frames: int = option(DEFAULT_CHUNK_FRAMES, help="frames per cluster task", low=1, gui=False)
    resume: bool = option(False, help="complete an interrupted or damaged run in --out (its frames kept and intact "
                          "are reused, the rest predicted)", gui=False)

    @property
    def cluster(self) -> bool:
        return bool(self.workers or self.scheduler)

    def validate(self) -> RunSettings:
        """The rules between options (each option's own range is checked when it is read)."""
        if self.workers and self.scheduler:
            raise InputError("use either --workers N (N >= 1) or --scheduler ADDRESS")
        if self.resume and self.format == "tif":
            raise InputError("--resume completes a results.zarr run; --format tif runs start again")
        if self.format == "tif" and self.cluster:
            raise InputError("a cluster run writes results.zarr; --format tif is for runs in one process")
        return self

    def outputs(self, out: Path) -> tuple[str, ...]:
        """Files in the output folder ``out`` that mean "already holds results": none when a run in one process
        resumes its results.zarr (resumable.StoreRun checks it); a cluster run resumes into its results.zarr
        (distributed.open_store checks it); any other run never does."""
        if self.resume and not self.cluster and (out / STORE_NAME).exists():
            return ()
        return OUTPUTS if self.cluster else (*OUTPUTS, STORE_NAME)


def parse_frames(text: str | None, n: int) -> range:
    """``a:b`` (0-based, b exclusive, either may be empty) -> a range inside ``[0, n)``."""
    if not text:
        return range(0, n)
    try:
        a, b = (int(v) if v.strip() else None for v in text.split(":"))
    except ValueError:
        raise InputError(f"--frames must look like a:b (got {text!r})") from None
    a, b = 0 if a is None else a, n if b is None else b
    if not 0 <= a < b <= n:
        raise InputError(f"--frames {text} is outside the stack's {n} frames (0:{n})")
    return range(a, b)


def input_stacks(patterns: list[str]) -> list[Path]:
    """The input TIFFs: paths, or glob patterns (for shells that do not expand them), in the order given."""
    found = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise InputError(f"no file matches {pattern}")
        found += [Path(p) for p in matches]
    if len({p.stem for p in found}) < len(found):
        raise InputError("two input stacks have the same name (one result folder each)")
    return found


def output_folder(path: str | Path, outputs: tuple[str, ...], overwrite: bool) -> Path:
    """``path`` as an output folder; InputError when it is not a folder, or holds ``outputs`` already without
    ``overwrite``."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    existing = [f for f in outputs if (out / f).exists()]
    if existing and not overwrite:
        raise InputError(f"{out} already holds results ({', '.join(existing)}); use --overwrite")
    return out


def run_folder(parent: Path, name: str) -> Path:
    """A new folder for one run under ``parent``: ``name``, else ``name 2``, ``name 3``..."""
    folder, k = parent / name, 1
    while folder.exists():
        k += 1
        folder = parent / f"{name} {k}"
    return folder


def clear_outputs(out: Path, overwrite: bool) -> None:
    """Make ``out`` and remove an earlier run's files (with ``overwrite`` also its store and chunks)."""
    from .distributed import discard

    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        (out / name).unlink(missing_ok=True)
    if overwrite:
        discard(out)


def frame_writer(files: ExitStack, job, model_name: str):
    """``write(result)`` of one frame's mean, std and sample of ``job`` (an ``inference.distributed.StackJob``)
    into three TIFF stacks (``--format tif``; a results.zarr run goes through resumable.StoreRun)."""
    from ..io.tiff import StackWriter

    sr = job.settings.pixel_size / UPSAMPLING
    writers = {k: files.enter_context(StackWriter(job.out / f"{k}.tif", sr, kind=f"SR {k}", model=model_name))
               for k in ("mean", "std", "sample")}
    return lambda r: [writer.write(getattr(r, key)[None]) for key, writer in writers.items()]


def write_results(out: Path, source: Path, frames: range, model: str, settings, total: StackSum, locs: Localizations,
                  seconds: float, camera: dict, **extra) -> str:
    """The files beside the KDE stacks: sum.tif, localizations.csv and summary.json (written last), with the
    camera used and the consecutive-frame precision check; returns the check's one-line description."""
    from ..io.tiff import write_stack

    n, sr = len(frames), settings.pixel_size / UPSAMPLING
    precision = consecutive_frame_precision(locs, settings.pixel_size)
    write_stack(out / "sum.tif", total.total.astype(np.float32), sr)
    write_localizations(out / LOCALIZATIONS_FILE, localizations_table(locs, settings.pixel_size))
    device = settings.torch_device()
    summary = {"input": str(Path(source).resolve()), "frames": [frames.start, frames.stop], "model": model,
               "settings": {"samples": settings.samples, "steps": settings.steps, "start": settings.start,
                            "pixel_size_nm": settings.pixel_size, "device": str(device),
                            "precision": settings.precision, "bf16": settings.bf16(device),
                            "background": settings.background, "threshold": settings.threshold,
                            "seed": settings.seed, "schedule": settings.schedule or "model"},
               "timing": {"seconds": seconds, "frames_per_second": n / seconds, "seconds_per_frame": seconds / n},
               "localizations": len(locs), "sr_pixel_size_nm": sr, "camera": camera, "precision": precision.as_dict(),
               **extra}
    write_json(out / "summary.json", summary)
    return precision.describe()


@dataclass
class RunOutcome:
    """How a run ended: its store complete or not, its localization count, the consecutive-frame precision
    check described ("" without frames)."""

    complete: bool
    localizations: int
    precision: str


class RunResults:
    """One run's results: the per-frame KDE stacks go to a :class:`ResultStore` on disk; memory holds only the
    accumulated images (sum and its std) and the localizations. Store frame ``i`` is raw frame
    ``first_frame + i``; frames arrive in order (``in_order`` False: a cluster run's chunks)."""

    def __init__(self, store: ResultStore):
        settings = store.meta.get("settings", {})
        self.store, self.path = store, store.path.parent
        self.pixel_size = float(store.meta["pixel_size_nm"])
        self.raw_shape = tuple(int(v) for v in store.meta["raw_shape"])
        # the widget keeps first_frame; a cluster run (inference/distributed.py) its frame range
        self.n_frames = store.frames
        self.first_frame = int(settings.get("first_frame", settings.get("frames", [0])[0]))
        self.info = {k: v for k, v in settings.items() if k not in ("first_frame", "grid")}
        self.total = StackSum()
        self.locs: list[Localizations] = []
        self._locs_lock = threading.Lock()   # a worker adds frames while the viewer draws
        self.done = 0
        self.in_order = True
        self.seconds = 0.0

    @classmethod
    def create(cls, folder: str | Path, n_frames: int, raw_shape: tuple[int, int], pixel_size: float,
               first_frame: int = 0, info: dict | None = None, encoding: str = DEFAULT_ENCODING, **kwargs):
        """A new (partial) store in ``folder`` (``encoding``: io/store.py ``ENCODINGS``; ``info``: kept in its
        settings); raises :class:`InputError` when it cannot be written or the disk is too small for it."""
        settings = {**(info or {}), "first_frame": int(first_frame)}
        return cls(ResultStore.create(folder, n_frames, raw_shape, pixel_size, encoding=encoding, settings=settings),
                   **kwargs)

    @classmethod
    def open(cls, folder: str | Path, mode: str = "r", **kwargs):
        """The results kept in an output folder (or its ``results.zarr``): the frames done, the accumulated
        images, and the localizations of :data:`LOCALIZATIONS_FILE` (none if the run never finished);
        ``mode="r+"`` to go on writing (a cluster run's store, filled by the workers)."""
        results = cls(ResultStore.open(folder, mode), **kwargs)
        store = results.store
        done = store.done()
        results.done = int(done.sum())
        results.in_order = bool(done[:results.done].all())
        csv = results.path / LOCALIZATIONS_FILE
        if csv.exists():
            results.add_localizations(table_localizations(read_table(csv), results.pixel_size))
        if store.meta.get("accumulated_frames"):
            results.total.total = np.asarray(store.group["sum"][...], np.float64)
            results.total.variance = np.square(np.asarray(store.group["sum_std"][...], np.float64))
            results.total.frames = int(store.meta["accumulated_frames"])
        return results

    @property
    def complete(self) -> bool:
        return self.done == self.n_frames

    def add(self, result: FrameResult) -> None:
        """Write one frame to the store and add it to the accumulated images and localizations (in the
        prediction's worker thread; ``done`` counts it once it is in the store)."""
        i = result.index - self.first_frame
        if i != self.done:
            raise ValueError(f"frame {result.index} arrived out of order (expected {self.first_frame + self.done})")
        self.store.write(replace(result, index=i))
        self.total.add(result)
        self.add_localizations(result.localizations)
        self.done += 1
        self.seconds += result.seconds

    def add_stack(self, sums: StackSum, locs: Localizations) -> None:
        """The accumulated images and localizations of frames predicted elsewhere (a cluster run)."""
        self.total.merge(sums)
        self.add_localizations(locs)

    def add_localizations(self, locs: Localizations) -> None:
        with self._locs_lock:
            self.locs.append(locs)

    def localizations(self) -> Localizations:
        with self._locs_lock:
            parts = list(self.locs)
        return Localizations.concat(parts)

    def finish(self) -> bool:
        """Write the accumulated images and the localizations beside the store, then mark the store complete
        if every frame is done; returns whether it is (a cancelled or failed run stays partial)."""
        if self.total.total is not None:
            self.store.write_sums(self.total.total.astype(np.float32), self.total.std.astype(np.float32),
                                  self.total.frames)
        locs = self.localizations()
        write_localizations(self.path / LOCALIZATIONS_FILE, localizations_table(locs, self.pixel_size))
        return self.store.finish()

    def close(self) -> RunOutcome:
        """:meth:`finish` and the run's summary; for the prediction's worker thread (writing and checking 10^6
        localizations takes a while)."""
        complete = self.finish()
        locs = self.localizations()
        check = consecutive_frame_precision(locs, self.pixel_size).describe() if self.done else ""
        return RunOutcome(complete, len(locs), check)
