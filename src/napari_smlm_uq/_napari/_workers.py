"""Jobs run in napari thread workers: plain generators over the core's generators.

They never touch layers or notifications: they yield results (or, for a prediction, :class:`FrameDone`
after keeping the frame) and :class:`Notice` objects, and the widgets update the viewer on the main thread.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import training
from ..analysis.psf_estimate import estimate_psf
from ..inference import pipeline
from ..inference.camera_choice import choose_camera
from ..models import registry


@dataclass
class Notice:
    """A message for the user (shown as a napari warning on the main thread)."""

    text: str


def start_worker(job: Callable, *args, **kwargs):
    """A napari generator worker (not started) running ``job(*args, **kwargs)``. Errors go to the
    widget's ``errored`` handler, not to napari's traceback dialog."""
    from napari.qt.threading import thread_worker

    return thread_worker(job, ignore_errors=True, start_thread=False)(*args, **kwargs)


@dataclass
class FrameDone:
    """A frame predicted and kept by the worker: its index, localization count and network seconds."""

    index: int
    localizations: int
    seconds: float


def predict_job(stack, model: str, settings: pipeline.PredictSettings, frames: range, should_stop: Callable[[], bool],
                keep: Callable[[pipeline.FrameResult], None], close: Callable[[], object]):
    """Load ``model`` (bundled name or file), then for each frame of ``frames`` call ``keep(result)`` here, in
    the worker's thread (the result store's write and sums: the viewer's thread only draws, at any frame
    rate), and yield a :class:`FrameDone`, preceded by a :class:`Notice` for each of its notes (an
    out-of-memory retry). However it ends, ``close()`` runs here too (writing what was done); its value is
    returned."""
    try:
        for result in pipeline.predict(stack, registry.load(model), settings, frames, should_stop):
            yield from (Notice(note) for note in result.notes)
            keep(result)
            yield FrameDone(result.index, len(result.localizations), result.seconds)
    finally:
        outcome = close()
    return outcome


def cluster_job(scheduler: str, job, model: str, chunk_frames: int, should_stop: Callable[[], bool],
                keep_stack: Callable, close: Callable[[], object]):
    """Predict ``job`` (an ``inference.distributed.StackJob`` whose store the widget created) on the dask
    scheduler at ``scheduler``: yields its ChunkDone events, then StackDone (after ``keep_stack(sums,
    localizations)`` here) or StackFailed; the workers write the frames into the store. ``close()`` as in
    :func:`predict_job`."""
    from ..inference import distributed

    try:
        client = distributed.connect(scheduler)
        try:
            for item in distributed.predict_on_cluster(client, [job], model, chunk_frames, resume=True,
                                                       should_stop=should_stop):
                if isinstance(item, distributed.StackDone):
                    keep_stack(item.sums, item.localizations)
                yield item
        finally:
            distributed.close(client)
    finally:
        outcome = close()
    return outcome


def train_and_validate_job(settings: training.TrainSettings, should_stop: Callable[[], bool]):
    """Train, then (unless nothing was saved) validate the last good model; yields Progress, then a
    ``dict`` of validation metrics; returns the model path."""
    path = yield from training.train(settings, should_stop)
    if path is not None:
        yield Notice("validating")
        yield training.validate_model(path, settings)
    return path


def inspect_job(frames, metadata: dict):
    """The camera (from ``metadata``, else estimated: inference/camera_choice.py) and the PSF sigma, photons
    and background of the isolated spots of ``(T, H, W)`` ADU ``frames`` fitted with it; returns both."""
    choice = choose_camera(frames, {}, metadata)
    return choice, estimate_psf(frames, choice.camera, excess=choice.camera.excess_noise)


def eta(elapsed: float, done: int, total: int) -> str:
    """``m:ss left`` from the mean time per unit so far."""
    if done <= 0 or total <= done:
        return ""
    left = elapsed / done * (total - done)
    return f"{int(left // 60)}:{int(left % 60):02d} left"


def as_frames(data) -> object:
    """``(T, H, W)`` view of a layer's data (a 2D image becomes one frame), without reading it."""
    return data[None] if np.ndim(data) == 2 else data
