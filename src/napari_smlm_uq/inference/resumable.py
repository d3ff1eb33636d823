"""A prediction in one process into ``OUT/results.zarr`` that survives what happens to long runs: Ctrl-C, a
full disk or a folder that vanishes, a killed process, chunk files deleted or truncated afterwards.

The store keeps each frame's KDEs; ``OUT/checkpoint/`` keeps what the store cannot, the localizations and the
accumulated sums of the frames kept: ``locs-NNNNNN.npz`` (the localizations of the frames kept at one
checkpoint), then ``sums.npz`` (the mask of kept store frames, the summed means and variances, how many
``locs`` files it includes), replaced atomically at most every :data:`KEEP_EVERY_S` seconds, at the end and
when a run stops. Replacing ``sums.npz`` is the moment frames count as kept; a kill at any point leaves the
last one. A ``--resume`` keeps the frames that are kept *and* intact in the store (every chunk there and
readable) and predicts the rest (with per-frame random streams: the samples an uninterrupted run draws). Once
the outputs beside the store are written, the store is marked complete and the checkpoint goes.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..io.files import InputError, StorageError, atomic_path
from ..io.store import STORE_NAME, ResultStore, frame_ranges
from ..localizations import AXIAL, FIELDS, Localizations
from . import pipeline
from .distributed import StackJob
from .pipeline import StackSum, never

CHECKPOINT = "checkpoint"
KEEP_EVERY_S = 10.0   # a killed run loses at most this much work; sums.npz is 2 x 8 bytes per SR pixel
FINAL_OUTPUTS = ("localizations.csv", "summary.json")   # written beside a complete store (cli.write_results)
UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)   # a missing or damaged .npz


def _sums_path(out: Path) -> Path:
    return out / CHECKPOINT / "sums.npz"


def _locs_path(out: Path, part: int) -> Path:
    return out / CHECKPOINT / f"locs-{part:06d}.npz"


def _read_checkpoint(out: Path, frames: int) -> tuple[np.ndarray, StackSum, list[Localizations]]:
    """The kept mask, sums and localizations of ``OUT/checkpoint`` (nothing kept where there is none or it
    cannot be read); ``locs`` files written after the last ``sums.npz`` are dropped."""
    sums, kept, locs = StackSum(), np.zeros(frames, bool), []
    try:
        with open(_sums_path(out), "rb") as fh, np.load(fh) as z:
            mask, parts = z["kept"].astype(bool), int(z["parts"])
            if len(mask) != frames:
                raise ValueError("another run's checkpoint")
            if mask.any():
                sums.total, sums.variance, sums.frames = z["total"], z["variance"], int(mask.sum())
            for part in range(parts):
                with open(_locs_path(out, part), "rb") as fh_part, np.load(fh_part) as p:
                    axial = (p[k] if k in p.files else None for k in AXIAL)   # 3D runs only
                    locs.append(Localizations(*(p[k] for k in FIELDS), *axial))
        kept = mask
    except UNREADABLE:   # none, or damaged: nothing kept
        sums, locs, parts = StackSum(), [], 0
    for path in (out / CHECKPOINT).glob("locs-*.npz"):
        if int(path.stem.split("-")[1]) >= parts:
            path.unlink()
    return kept, sums, locs


def kept_frames(out: Path) -> tuple[int, int] | None:
    """``(kept, frames)`` of an interrupted run in ``out`` (store frames done and in the checkpoint, without
    reading the chunks; nothing changed), or None where ``out`` holds no readable partial store."""
    try:
        store = ResultStore.open(out)
    except InputError:   # none, or not ours: the caller's other checks name it
        return None
    if store.complete:
        return None
    try:
        with open(_sums_path(out), "rb") as fh, np.load(fh) as z:
            kept = z["kept"].astype(bool)
    except UNREADABLE:
        kept = np.zeros(store.frames, bool)
    try:
        return int((kept & store.done()).sum()) if len(kept) == store.frames else 0, store.frames
    except Exception:   # a damaged done array: a resume finds out what is left
        return 0, store.frames


def refuse_interrupted(out: Path) -> None:
    """Raise :class:`InputError` if ``out`` holds an interrupted run (before a run that would not resume it)."""
    found = kept_frames(out)
    if found:
        raise InputError(f"{out} holds an interrupted run ({found[0]} of {found[1]} frames kept): "
                         f"--resume completes it, --overwrite starts again")


class StoreRun:
    """One stack predicted into ``job.out/results.zarr``: new, or (:meth:`start` with ``resume``) the frames an
    interrupted or damaged run still needs. Use as a context manager around :meth:`predict`: leaving it on an
    error keeps what can be kept and leaves the store partial."""

    def __init__(self, job: StackJob, store: ResultStore, kept: np.ndarray, sums: StackSum,
                 locs: list[Localizations], todo: np.ndarray, final: bool, message: str):
        self.job, self.store, self.kept, self.sums, self.locs = job, store, kept, sums, locs
        self.todo, self.final, self.message = todo, final, message
        self.parts = len(locs)
        self._pending, self._pending_sums, self._pending_locs = np.zeros_like(kept), StackSum(), []
        self._last_keep = time.monotonic()

    # --- starting ------------------------------------------------------------------------------------------
    @classmethod
    def start(cls, job: StackJob, model: str, resume: bool = False) -> StoreRun:
        """A new store in ``job.out`` (which must hold none), or with ``resume`` the one there, checked to
        belong to this input and these settings, its chunks read once to find damaged frames."""
        out, n = job.out, len(job.frames)
        try:
            if not (resume and (out / STORE_NAME).exists()):
                shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
                store = ResultStore.create(out, n, job.shape, job.settings.pixel_size, encoding=job.encoding,
                                           settings=job.run(model))
                (out / CHECKPOINT).mkdir()
                note = f"{out}: no interrupted run to resume; " if resume else ""
                return cls(job, store, np.zeros(n, bool), StackSum(), [], np.ones(n, bool), False,
                           f"{note}predicting {n} frames" if resume else "")
            return cls._resume(job, model)
        except OSError as exc:
            raise StorageError(f"cannot write to {out}: {exc.strerror or exc}; nothing predicted yet") from None

    @classmethod
    def _resume(cls, job: StackJob, model: str) -> StoreRun:
        out, n = job.out, len(job.frames)
        store = ResultStore.open(out, "r+")
        if not store.matches(n, job.shape, job.run(model)):
            raise InputError(f"{out} holds a run of other input or settings: --overwrite replaces it, "
                             f"or choose another --out")
        for leftover in (out / STORE_NAME).rglob("*.partial"):   # a chunk write cut short by a kill
            leftover.unlink()
        marked, intact = store.check()
        final = (store.complete and not (out / CHECKPOINT).exists() and store.sums_intact()
                 and all((out / name).exists() for name in FINAL_OUTPUTS))
        if final:   # the accumulated image and localizations are written: only damaged frames are redone
            kept, sums, locs = np.ones(n, bool), StackSum(), []
        else:
            kept, sums, locs = _read_checkpoint(out, n)
        if store.complete or (marked & ~intact).any():
            store.mark_partial(redo=marked & ~intact)
        (out / CHECKPOINT).mkdir(exist_ok=True)
        todo = ~(kept & intact)
        damaged = int((marked & ~intact).sum())
        hurt = f" ({damaged} damaged on disk)" if damaged else ""
        left = int(todo.sum())
        if final and not left:
            message = f"{out} holds the complete results of this run ({n} frames): nothing to predict"
        elif final:
            message = (f"{out}: the complete run has {left} of {n} frames damaged on disk: predicting them again "
                       f"(its localizations and accumulated image are kept)")
        else:
            message = f"{out}: resuming: {int((kept & intact).sum())} of {n} frames kept, {left} to predict{hurt}"
        return cls(job, store, kept, sums, locs, todo, final, message)

    # --- predicting ----------------------------------------------------------------------------------------
    def ranges(self) -> list[range]:
        """The raw frame ranges still to predict."""
        first = self.job.frames.start
        return [range(first + a, first + b) for a, b in frame_ranges(self.todo)]

    def predict(self, stack, models, should_stop: Callable[[], bool] = never) -> Iterator:
        """Predict the frames still to do (``pipeline.predict``), storing and keeping each; yields the results."""
        for frames in self.ranges():
            for result in pipeline.predict(stack, models, self.job.settings, frames, should_stop):
                self.add(result)
                yield result

    def add(self, result) -> None:
        """Store one frame's KDEs; its localizations and sums are kept at the next checkpoint."""
        index = result.index - self.job.frames.start
        try:
            if not self._store_there():   # a folder that vanished: zarr would write into a new, empty one
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(self.store.path))
            self.store.write_frame(index, result.mean, result.std, result.sample)
        except OSError as exc:
            raise self._failed(exc) from None
        self.todo[index] = False
        if not self.kept[index]:
            self._pending[index] = True
            self._pending_sums.add(result)
            self._pending_locs.append(result.localizations)
        if time.monotonic() - self._last_keep >= KEEP_EVERY_S:
            self.keep()

    def keep(self) -> None:
        """Checkpoint: the frames predicted since the last one count as kept."""
        if self._pending.any():
            try:
                self._write_checkpoint()
            except OSError as exc:
                raise StorageError(self._fault(exc)) from None   # the last checkpoint stands
            self.kept |= self._pending
            self.locs.append(Localizations.concat(self._pending_locs))
            self._pending, self._pending_sums, self._pending_locs = np.zeros_like(self.kept), StackSum(), []
            self.parts += 1
        self._last_keep = time.monotonic()

    def _write_checkpoint(self) -> None:
        sums = StackSum()
        sums.merge(self.sums)
        sums.merge(self._pending_sums)
        locs = Localizations.concat(self._pending_locs)
        with atomic_path(_locs_path(self.job.out, self.parts)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **{k: getattr(locs, k) for k in FIELDS + AXIAL if getattr(locs, k) is not None})
        with atomic_path(_sums_path(self.job.out)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, kept=self.kept | self._pending, parts=self.parts + 1, total=sums.total, variance=sums.variance)
        self.sums = sums

    def _failed(self, exc: OSError) -> StorageError:
        """The error to raise when the output folder fails: first keep what was predicted, if it still can."""
        with contextlib.suppress(StorageError):
            self.keep()
        return StorageError(self._fault(exc))

    def _store_there(self) -> bool:
        return (self.store.path / "zarr.json").exists()

    def _fault(self, exc: OSError) -> str:
        if not self._store_there():
            return (f"cannot write to {self.job.out}: {exc.strerror or exc}; the folder or its {STORE_NAME} is gone, "
                    f"and the run with it: predict again (with --overwrite if anything is left there)")
        return (f"cannot write to {self.job.out}: {exc.strerror or exc}; {self.kept_count} of {len(self.kept)} frames "
                f"are kept there: free space or restore the folder, then the same command with --resume completes "
                f"the run")

    @property
    def kept_count(self) -> int:
        """Frames kept so far (what a resume reuses)."""
        return int((self.kept & ~self.todo).sum())

    def __enter__(self) -> StoreRun:
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is None or not self._store_there():   # nothing to keep where the folder vanished
            return
        for step in (self.keep, self.store.mark_partial):   # keep what was predicted; never a complete-looking store
            with contextlib.suppress(Exception):
                step()

    # --- completing ----------------------------------------------------------------------------------------
    def complete(self, write_outputs: Callable[[StackSum, Localizations], None]) -> None:
        """After :meth:`predict`: keep the last frames, store the accumulated images, ``write_outputs(sums,
        localizations in frame order)`` (skipped when a complete run only had damaged frames redone), mark the
        store complete and drop the checkpoint."""
        if self.todo.any():
            raise ValueError(f"{int(self.todo.sum())} frames are still to predict")
        try:
            self.keep()
            if not self.final:
                self.store.write_sums(self.sums.total.astype(np.float32), self.sums.std.astype(np.float32),
                                      self.sums.frames)
                locs = Localizations.concat(self.locs)
                write_outputs(self.sums, locs.take(np.argsort(locs.frame, kind="stable")))
            self.store.finish()
        except OSError as exc:
            raise self._failed(exc) from None
        shutil.rmtree(self.job.out / CHECKPOINT, ignore_errors=True)
