"""Predictions on a dask cluster: many stacks and huge stacks, chunk by chunk (docs/cluster.md).

The client splits every stack's frames into chunks and submits one task per chunk to dask.distributed
workers (a LocalCluster, or any scheduler such as one started by dask-jobqueue's SLURMCluster). A worker
loads the model once (cached per worker process, on its own GPU when it has one), predicts its chunk with
:func:`pipeline.predict` (random streams per frame: the same samples whatever the chunking) and writes the
frames' KDEs straight into their region of the result store ``OUT/results.zarr`` (io/store.py, one zarr chunk
per frame: workers never share a file); the refinement's prior (PSF width, single emitters' photons) is learned
once by the client and sent with every chunk, so every chunk refines as the single process does (a 3D run's
z calibration travels in the settings: the 3D refinement learns nothing, so its chunks need no prior). The chunk's
localizations and accumulated images come back to the client, which keeps them in ``OUT/parts/`` until the
stack is complete, so a run interrupted as a whole leaves
a partial store and resumes with only the missing chunks. Workers and client share a filesystem.
"""
from __future__ import annotations

import functools
import json
import shutil
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..io.files import InputError, atomic_path
from ..io.store import DEFAULT_ENCODING, STORE_NAME, ResultStore
from ..localizations import AXIAL, FIELDS, Localizations
from ..models import registry
from ..models.registry import Models
from .pipeline import PredictSettings, StackSum, keep_freed_buffers, learn_prior, never, predict

DEFAULT_CHUNK_FRAMES = 32   # frames per task: dask's cost (<= 60 ms a chunk, benchmarks.md) stays small against a
                            # chunk's work (0.3 s on a GPU at 100 frames/s, minutes on a CPU)
POLL_S = 0.1                # seconds between looks at the finished chunks (and at should_stop)
CONNECT_TIMEOUT_S = 5       # an unreachable scheduler is reported after this many seconds
PARTS = "parts"             # OUT/parts/: localizations and sums of the finished chunks of an incomplete run


@dataclass(frozen=True, eq=False)   # one job per stack: compared (and hashed) by identity
class StackJob:
    """One stack to predict: its TIFF (a path every worker can read), frame range, raw frame shape (pixels),
    settings, output folder and how its result store keeps the frames (io/store.py ``ENCODINGS``)."""

    source: Path
    frames: range
    shape: tuple[int, int]
    settings: PredictSettings
    out: Path
    encoding: str = DEFAULT_ENCODING

    def chunks(self, size: int) -> list[range]:
        """The frame ranges still missing (after an interrupted run), cut into chunks of ``size`` frames."""
        return [range(a, min(a + size, stop)) for start, stop in missing(self.frames, finished(self.out))
                for a in range(start, stop, size)]

    def run(self, model: str) -> dict:
        """What the store's frames belong to (a resume checks it; the refinement's prior is learned from them)."""
        settings = {k: v for k, v in asdict(self.settings).items() if k != "prior"}
        return {"source": str(self.source), "frames": [self.frames.start, self.frames.stop], "model": str(model),
                "settings": json.loads(json.dumps(settings, default=str))}

    def with_prior(self, model: str) -> StackJob:
        """This job with the refinement's prior learned once, here, for all its chunks (pipeline.learn_prior):
        every chunk refines its first frame as the single-process run does. A 3D run (a z calibration) learns none."""
        if not self.settings.refine or self.settings.prior is not None or self.settings.z_calibration is not None:
            return self
        from ..io.tiff import open_stack

        prior = learn_prior(open_stack(self.source).data, worker_models(model), self.settings, self.frames)
        return replace(self, settings=replace(self.settings, prior=prior))


@dataclass
class ChunkResult:
    """What a worker returns for one chunk: its localizations and accumulated images (the KDEs are stored)."""

    frames: range
    localizations: Localizations
    sums: StackSum
    seconds: float
    notes: tuple[str, ...]


@dataclass
class ChunkDone:
    """Progress: a chunk of ``job`` was predicted and kept."""

    job: StackJob
    frames: range
    seconds: float
    notes: tuple[str, ...]


@dataclass
class StackDone:
    """A stack is complete: its store is marked complete; localizations in frame order and the sums."""

    job: StackJob
    localizations: Localizations
    sums: StackSum
    seconds: float   # worker seconds summed over its chunks


@dataclass
class StackFailed:
    job: StackJob
    error: str


# --- the store and the parts of an incomplete run --------------------------------------------------------

def _part(out: Path, frames: range) -> Path:
    return out / PARTS / f"{frames.start:08d}-{frames.stop:08d}.npz"


def finished(out: Path) -> list[range]:
    """The chunks of ``out`` whose frames are stored and whose localizations are kept, in frame order."""
    ranges = (path.name.split(".")[0].split("-") for path in (out / PARTS).glob("*.npz"))
    return sorted((range(int(a), int(b)) for a, b in ranges), key=lambda r: r.start)


def missing(frames: range, done: list[range]) -> list[tuple[int, int]]:
    """The ``[start, stop)`` ranges of ``frames`` not covered by ``done``."""
    todo = np.ones(len(frames), bool)
    for r in done:
        todo[max(r.start, frames.start) - frames.start:max(0, min(r.stop, frames.stop) - frames.start)] = False
    edges = np.diff(np.concatenate([[0], todo.astype(np.int8), [0]]))
    return [(frames.start + int(a), frames.start + int(b))
            for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))]


def open_store(job: StackJob, model: str, resume: bool) -> ResultStore:
    """A new result store for ``job``, or (``resume``) its interrupted one, checked to belong to this run."""
    if not (job.out / STORE_NAME).exists():
        shutil.rmtree(job.out / PARTS, ignore_errors=True)
        (job.out / PARTS).mkdir(parents=True)
        return ResultStore.create(job.out, len(job.frames), job.shape, job.settings.pixel_size,
                                  encoding=job.encoding, settings=job.run(model))
    store = ResultStore.open(job.out, "r+")
    if store.complete:
        raise InputError(f"{job.out} already holds results ({STORE_NAME}); use --overwrite")
    if not resume:
        raise InputError(f"{job.out} holds an interrupted run; use --resume to complete it or --overwrite")
    if not store.matches(len(job.frames), job.shape, job.run(model)):
        raise InputError(f"{job.out} holds an interrupted run of other input or settings; use --overwrite")
    (job.out / PARTS).mkdir(exist_ok=True)
    return store


def keep_chunk(out: Path, chunk: ChunkResult) -> None:
    """Keep a chunk's localizations (with z and its uncertainty in 3D) and sums (atomically: the file marks the
    chunk finished)."""
    locs = {f"loc_{k}": getattr(chunk.localizations, k) for k in FIELDS + AXIAL
            if getattr(chunk.localizations, k) is not None}
    with atomic_path(_part(out, chunk.frames)) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, total=chunk.sums.total, variance=chunk.sums.variance, seconds=chunk.seconds, **locs)


def read_chunk(out: Path, frames: range) -> ChunkResult:
    with np.load(_part(out, frames)) as z:
        sums = StackSum()
        sums.total, sums.variance, sums.frames = z["total"], z["variance"], len(frames)
        axial = (z[f"loc_{k}"] if f"loc_{k}" in z.files else None for k in AXIAL)   # 3D runs only
        locs = Localizations(*(z[f"loc_{k}"] for k in FIELDS), *axial)
        return ChunkResult(frames, locs, sums, float(z["seconds"]), ())


def discard(out: Path) -> None:
    """Remove a cluster run's store and parts from ``out`` (``--overwrite``)."""
    for name in (STORE_NAME, PARTS):
        shutil.rmtree(out / name, ignore_errors=True)


# --- on the workers ------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=2)
def worker_models(model: str) -> Models:
    """The model, loaded once per worker process."""
    return registry.load(model)


def worker_device(settings: PredictSettings) -> PredictSettings:
    """On a node with several GPUs, LocalCluster worker ``k`` uses GPU ``k mod count`` (SLURM and dask-cuda
    workers see only their own GPU, as GPU 0)."""
    if settings.device not in ("auto", "cuda") or torch.cuda.device_count() < 2:
        return settings
    from distributed import get_worker

    name = get_worker().name
    return replace(settings, device=f"cuda:{name % torch.cuda.device_count()}") if isinstance(name, int) else settings


def predict_chunk(source: str, frames: range, model: str, settings: PredictSettings, out: str) -> ChunkResult:
    """Predict one chunk on a worker, writing each frame into its region of ``OUT/results.zarr`` (frame
    ``i`` of the stack at ``i - first``: the store holds the run's frame range); the rest is returned."""
    from ..io.tiff import open_stack

    keep_freed_buffers()
    store = ResultStore.open(out, "r+")
    first = store.meta["settings"]["frames"][0]
    sums, locs, seconds, notes = StackSum(), [], 0.0, []
    for r in predict(open_stack(source).data, worker_models(model), worker_device(settings), frames):
        store.write_frame(r.index - first, r.mean, r.std, r.sample)
        sums.add(r)
        locs.append(r.localizations)
        seconds += r.seconds
        notes += r.notes
    return ChunkResult(frames, Localizations.concat(locs), sums, seconds, tuple(notes))


# --- on the client -------------------------------------------------------------------------------------

def version_mismatches(versions: dict[str, object], ours: str) -> list[str]:
    """One line per worker whose napari-smlm-uq is missing or another version than ``ours``."""
    return [f"worker {w}: napari-smlm-uq {v if isinstance(v, str) else 'not installed'} (here: {ours})"
            for w, v in sorted(versions.items()) if v != ours]


def check_workers(client) -> None:
    """Raise :class:`InputError` unless every worker runs this version of napari-smlm-uq (before any work)."""
    from .. import __version__

    def installed() -> str | None:  # defined here, so dask sends its code: it runs where the package is missing
        try:
            return __import__("napari_smlm_uq").__version__
        except ImportError:
            return None

    versions = client.run(installed, on_error="return")
    if not versions:
        raise InputError(f"the dask scheduler {client.scheduler.address} has no workers")
    bad = version_mismatches(versions, __version__)
    if bad:
        raise InputError("workers with another napari-smlm-uq: " + "; ".join(bad))


def connect(scheduler: str | None = None, workers: int = 1):
    """A dask Client: to ``scheduler`` (an address), or to a new LocalCluster of ``workers`` processes of one
    thread each. An unreachable scheduler raises :class:`InputError` after :data:`CONNECT_TIMEOUT_S`."""
    import logging

    from distributed import Client, LocalCluster

    if scheduler is None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.ERROR)
        return Client(cluster, set_as_default=False)
    try:
        return Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, ValueError) as exc:   # TimeoutError is an OSError
        raise InputError(f"cannot reach the dask scheduler {scheduler!r} ({type(exc).__name__})") from None


def close(client) -> None:
    """Close the client, and the LocalCluster it started."""
    from distributed import LocalCluster

    cluster = client.cluster
    client.close()
    if isinstance(cluster, LocalCluster):
        cluster.close()


def predict_on_cluster(client, jobs: list[StackJob], model: str, chunk_frames: int = DEFAULT_CHUNK_FRAMES,
                       resume: bool = False, should_stop: Callable[[], bool] = never
                       ) -> Generator[ChunkDone | StackDone | StackFailed, None, None]:
    """Predict ``jobs`` on ``client``'s workers: yields a :class:`ChunkDone` per chunk (progress), then a
    :class:`StackDone` or :class:`StackFailed` per stack. A failing stack does not stop the others; a worker
    lost mid-chunk has its chunk rescheduled by dask (kept once). On ``should_stop()``, on an exception or
    when the caller stops iterating, the remaining chunks are cancelled and the finished ones stay in
    ``OUT/parts`` for a ``resume``."""
    from distributed import as_completed

    if chunk_frames < 1:
        raise InputError(f"chunk frames must be >= 1 (got {chunk_frames})")
    check_workers(client)
    pending, left, stores = {}, {}, {}
    for job in jobs:
        try:
            store = open_store(job, model, resume)
        except InputError as exc:
            yield StackFailed(job, str(exc))
            continue
        chunks = job.chunks(chunk_frames)
        job = job.with_prior(model) if chunks else job
        stores[job] = store
        left[job] = len(chunks)
        for frames in chunks:
            future = client.submit(predict_chunk, str(job.source), frames, str(model), job.settings, str(job.out),
                                   pure=False)
            pending[future] = job
    try:
        yield from (_complete(job, stores[job]) for job in stores if not left[job])   # resumed, nothing missing
        finishing = as_completed(list(pending), loop=client.loop)
        while pending and not should_stop():
            ready = finishing.next_batch(block=False)
            for future in ready:
                yield from _collect(future, pending, left, stores)
            if not ready:
                time.sleep(POLL_S)
    finally:
        client.cancel(list(pending))
        for job, store in stores.items():
            if left.get(job, 1):   # a chunk not kept (even with every frame in the store): partial, listing
                store.mark_partial()   # the frame ranges done


def _collect(future, pending: dict, left: dict, stores: dict) -> Iterator[ChunkDone | StackDone | StackFailed]:
    job = pending.pop(future, None)
    if job not in left:   # cancelled: its stack failed
        return
    if future.status == "error":
        yield StackFailed(job, f"{type(future.exception()).__name__}: {future.exception()}")
        del left[job]
        for other in [f for f, j in pending.items() if j is job]:
            other.cancel()
            del pending[other]
        return
    chunk: ChunkResult = future.result()
    keep_chunk(job.out, chunk)
    left[job] -= 1
    yield ChunkDone(job, chunk.frames, chunk.seconds, chunk.notes)
    if not left[job]:
        yield _complete(job, stores[job])


def _complete(job: StackJob, store: ResultStore) -> StackDone:
    """A stack whose chunks are all finished: localizations in frame order, the summed images (stored too),
    worker seconds; the store is marked complete and the parts are dropped."""
    sums, locs, seconds = StackSum(), [], 0.0
    for frames in finished(job.out):
        chunk = read_chunk(job.out, frames)
        sums.merge(chunk.sums)
        locs.append(chunk.localizations)
        seconds += chunk.seconds
    store.write_sums(sums.total, sums.std, sums.frames)
    store.finish()
    shutil.rmtree(job.out / PARTS)
    return StackDone(job, Localizations.concat(locs), sums, seconds)
