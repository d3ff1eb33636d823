"""Jobs run in napari thread workers: plain generators over the core's generators.

They never touch layers or notifications: they yield results and :class:`Notice` objects, and the
widgets update the viewer on the main thread.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch

from .. import training
from ..analysis.metrics import score
from ..inference import pipeline
from ..io.tables import emitters_table, localizations_table, table_xy
from ..localizations import Localizations
from ..models import registry
from ..physics.camera import Camera
from ..physics.crlb import crlb_nm
from ..physics.simulate import SimulationSettings, simulate


@dataclass
class Notice:
    """A message for the user (shown as a napari warning on the main thread)."""

    text: str


def start_worker(job: Callable, *args, **kwargs):
    """A napari generator worker (not started) running ``job(*args, **kwargs)``. Errors go to the
    widget's ``errored`` handler, not to napari's traceback dialog."""
    from napari.qt.threading import thread_worker

    return thread_worker(job, ignore_errors=True, start_thread=False)(*args, **kwargs)


def predict_job(frames, model: str, settings: pipeline.PredictSettings, should_stop: Callable[[], bool],
                first_index: int = 0):
    """Load ``model`` (bundled name or file), then yield a :class:`FrameResult` per frame. On CUDA
    out-of-memory, halve the tile and frame batches and go on from the frame that failed."""
    models = registry.load(model)
    s, done = settings, 0
    while True:
        try:
            for result in pipeline.predict(frames[done:], models, s, should_stop, first_index + done):
                done += 1
                yield result
            return
        except torch.cuda.OutOfMemoryError:
            if s.tile_batch == 1 and s.frame_batch == 1:
                raise
            torch.cuda.empty_cache()
            s = replace(s, tile_batch=max(1, s.tile_batch // 2), frame_batch=max(1, s.frame_batch // 2))
            yield Notice(f"Out of GPU memory: retrying with tile batch {s.tile_batch}, frame batch {s.frame_batch}.")


def typical(lo: float, hi: float) -> float:
    """The median of the simulator's draw over ``(lo, hi)``: log-uniform when ``lo > 0``."""
    return math.sqrt(lo * hi) if lo > 0 else 0.5 * (lo + hi)


def validation_settings(s: training.TrainSettings, frames: int = 8, size: int = 32) -> tuple[SimulationSettings, dict]:
    """A small validation stack drawn with the training ranges, and the typical values for the CRLB."""
    mid = {"photons": typical(*s.photons), "background": typical(*s.background),
           "psf_sigma": 0.5 * sum(s.psf_sigma), "density": 0.5 * sum(s.density),
           "read_noise": 0.5 * sum(s.read_noise)}
    sim = SimulationSettings(frames=frames, size=size, density=max(mid["density"], 0.5), photons=tuple(s.photons),
                             background=tuple(s.background), psf_sigma=tuple(s.psf_sigma), pixel_size=s.pixel_size,
                             camera=Camera(offset=100.0, gain=1.0, read_noise=mid["read_noise"]), seed=s.seed + 7)
    return sim, mid


def validate_model(model_path, s: training.TrainSettings, frames: int = 8, size: int = 32) -> dict:
    """Localize a fresh simulated stack with phi alone (samples = 0): JAC/RMSE/E beside the CRLB."""
    sim_settings, mid = validation_settings(s, frames, size)
    sim = simulate(sim_settings)
    models = registry.load(model_path)
    ps = pipeline.PredictSettings(samples=0, camera=sim_settings.camera, pixel_size=s.pixel_size, device="cpu",
                                  bf16=False)
    locs = [r.localizations for r in pipeline.predict(sim.adu, models, ps)]
    found = localizations_table(Localizations.concat(locs), s.pixel_size)
    truth = emitters_table(sim.emitters, s.pixel_size)
    scores = score(found["frame"], table_xy(found), truth["frame"], table_xy(truth))
    bound = crlb_nm(mid["photons"], mid["background"], mid["psf_sigma"], s.pixel_size, mid["read_noise"])
    return {**scores.as_dict(), "crlb": bound, "frames": frames, "size": size, "emitters": int(len(sim.emitters)),
            "photons": mid["photons"], "background": mid["background"], "density": sim_settings.density}


def train_and_validate_job(settings: training.TrainSettings, should_stop: Callable[[], bool]):
    """Train, then (unless nothing was saved) validate the last good model; yields Progress, then a
    ``dict`` of validation metrics; returns the model path."""
    path = yield from training.train(settings, should_stop)
    if path is not None:
        yield Notice("validating")
        yield validate_model(path, settings)
    return path


def eta(elapsed: float, done: int, total: int) -> str:
    """``m:ss left`` from the mean time per unit so far."""
    if done <= 0 or total <= done:
        return ""
    left = elapsed / done * (total - done)
    return f"{int(left // 60)}:{int(left % 60):02d} left"


def as_frames(data) -> object:
    """``(T, H, W)`` view of a layer's data (a 2D image becomes one frame), without reading it."""
    return data[None] if np.ndim(data) == 2 else data
