"""Inference: frames -> preprocessing -> phi -> psi x n samples -> mean, std, one sample, localizations.

:func:`predict` is a generator yielding one :class:`FrameResult` per frame, so the CLI, the napari
worker and the tests share one code path; it reads frames batch by batch from any array-like (a
memory-mapped TIFF) and checks ``should_stop`` between diffusion steps.
"""
from __future__ import annotations

import ctypes
import functools
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Generator

import numpy as np
import torch

from ..localizations import Localizations
from ..models.deepstorm import DeepSTORM
from ..models.diffusion import Schedule, ancestral_sampler
from ..models.registry import Models
from ..physics.camera import Camera
from ..physics.kde import from_model
from .calibration import Calibration
from .localize import DEFAULT_THRESHOLD, localize
from .preprocessing import normalise, pixel_snr, psi_condition, shifted_photoelectrons
from .refine import Refiner
from .tiling import TileGrid, chunked, phi_tiled

PSI_TILE = 64        # SR pixels: the training patch size
PSI_OVERLAP = 16     # SR pixels
PHI_TILE = 128       # raw pixels


class Stopped(Exception):
    """Raised inside :func:`predict` when ``should_stop`` turns true mid-frame."""


@dataclass
class PredictSettings:
    """Inference settings. ``samples = 0`` runs phi alone. ``start`` is the preconditioned start as a
    fraction of the training schedule (1 = pure noise). ``pixel_size`` in nm; camera in ADU / e-."""

    samples: int = 8
    steps: int = 3
    start: float = 0.5
    camera: Camera = field(default_factory=Camera)
    pixel_size: float = 100.0
    device: str = "auto"
    bf16: bool = False   # bf16 autocast: slower than fp32 on the 2-core CPU measured (benchmarks.md)
    frame_batch: int = 8
    tile_batch: int = 16
    threshold: float = DEFAULT_THRESHOLD
    seed: int = 0
    schedule: str | None = None   # inference noise levels from a named schedule; None: the model's own
    refine: bool = True           # maximum-likelihood refit on the raw pixels (refine.py; benchmarks.md)

    def validate(self) -> "PredictSettings":
        if self.samples < 0 or self.samples == 1:
            raise ValueError(f"samples must be 0 (phi alone) or >= 2 (got {self.samples})")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1 (got {self.steps})")
        if not 0 < self.start <= 1:
            raise ValueError(f"start must be in (0, 1] (got {self.start})")
        if not self.pixel_size > 0:
            raise ValueError(f"pixel size must be > 0 nm (got {self.pixel_size})")
        if self.schedule is not None:
            Schedule.named(self.schedule)
        if self.frame_batch < 1 or self.tile_batch < 1:
            raise ValueError("batch sizes must be >= 1")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda (got {self.device!r})")
        self.camera.validate()
        return self

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("device cuda was asked for, but no CUDA GPU is available")
        return torch.device(self.device)


@dataclass
class FrameResult:
    """One frame: KDEs ``(4H, 4W)`` float32 in KDE units (``std`` zero and ``sample == mean`` with
    ``samples = 0``), its localizations, and timing."""

    index: int
    mean: np.ndarray
    std: np.ndarray
    sample: np.ndarray
    localizations: Localizations
    seconds: float


class StackSum:
    """The stack's super-resolved image: sum of per-frame means, and the root of summed variances."""

    def __init__(self):
        self.total: np.ndarray | None = None
        self.variance: np.ndarray | None = None
        self.frames = 0

    def add(self, result: FrameResult) -> None:
        if self.total is None:
            self.total, self.variance = np.zeros_like(result.mean, np.float64), np.zeros_like(result.mean, np.float64)
        self.total += result.mean
        self.variance += np.square(result.std, dtype=np.float64)
        self.frames += 1

    @property
    def std(self) -> np.ndarray | None:
        return None if self.variance is None else np.sqrt(self.variance)


def available_devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@functools.cache
def keep_freed_buffers() -> None:
    """Keep freed activation buffers (a few MB to tens of MB) in the process instead of returning them to
    the OS and page-faulting them back for the next frame: glibc only, at most 256 MB kept; phi 47 -> 63
    frames/s on the benchmark CPU (benchmarks.md). Once per process; a no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    libc.mallopt(-3, 64 << 20)   # M_MMAP_THRESHOLD (also stops its dynamic adjustment)


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def run_phi(phi: DeepSTORM, frames: np.ndarray, s: PredictSettings, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised inputs ``(B, 1, H, W)`` and phi's model-space KDEs ``(B, 1, 4H, 4W)`` (float32).
    On CPU one frame at a time: larger batches leave the cache and run 1.4x slower (benchmarks.md)."""
    x = normalise(shifted_photoelectrons(frames, s.camera)).to(device)
    with _autocast(device, s.bf16):
        z = chunked(lambda t: phi_tiled(phi, t, PHI_TILE, phi.receptive_radius), x,
                    max_batch=1 if device.type == "cpu" else s.frame_batch)
    return x, z.float()


def sample_frame(models: Models, x: torch.Tensor, z_phi: torch.Tensor, s: PredictSettings, device: torch.device,
                 generator: torch.Generator, should_stop: Callable[[], bool]) -> torch.Tensor:
    """``s.samples`` model-space KDE samples ``(n, 1, 4H, 4W)`` of one frame (``x``: ``(1, 1, H, W)``)."""
    grid = TileGrid(tuple(z_phi.shape[-2:]), PSI_TILE, PSI_OVERLAP)
    cond_tiles = grid.split(psi_condition(x, z_phi)).repeat(s.samples, 1, 1, 1).contiguous(memory_format=torch.channels_last)

    def eps_fn(y: torch.Tensor, sqrt_gamma: torch.Tensor) -> torch.Tensor:
        sg = sqrt_gamma[:1].repeat(len(cond_tiles))
        with _autocast(device, s.bf16):
            eps = chunked(models.psi, grid.split(y).contiguous(memory_format=torch.channels_last), cond_tiles, sg,
                          max_batch=s.tile_batch)
        return grid.merge(eps, s.samples)

    schedule = Schedule.named(s.schedule) if s.schedule else models.schedule
    gammas = schedule.inference_gammas(s.steps, s.start)
    start = z_phi.expand(s.samples, -1, -1, -1) if s.start < 1 else torch.zeros_like(z_phi).expand(s.samples, -1, -1, -1)
    sampler = ancestral_sampler(eps_fn, start.contiguous(), gammas, generator)
    while True:
        try:
            next(sampler)
        except StopIteration as done:
            return done.value
        if should_stop():
            sampler.close()
            raise Stopped


def predict(frames, models: Models, settings: PredictSettings, should_stop: Callable[[], bool] = lambda: False,
            first_index: int = 0) -> Generator[FrameResult, None, None]:
    """Yield a :class:`FrameResult` per frame of ``frames`` (``(T, H, W)`` ADU, any array-like).
    Stops cleanly (no partial frame) when ``should_stop()`` becomes true."""
    s = settings.validate()
    device = s.torch_device()
    models.to(device)
    if s.samples and models.psi is None:
        raise ValueError(f"model {models.name!r} has no diffusion model (psi); use samples = 0")
    keep_freed_buffers()
    phi = models.phi.fused()
    calibration = Calibration.from_dict(models.calibration)
    generator = torch.Generator(device=device).manual_seed(s.seed)
    refiner = Refiner(s.camera) if s.refine else None
    n = len(frames)
    with torch.inference_mode():
        for b0 in range(0, n, s.frame_batch):
            if should_stop():
                return
            t0 = time.perf_counter()
            batch = np.asarray(frames[b0:b0 + s.frame_batch])
            x, z_phi = run_phi(phi, batch, s, device)
            snr = pixel_snr(x).cpu().numpy()
            per_frame_phi = (time.perf_counter() - t0) / len(batch)
            for i in range(len(batch)):
                if i and should_stop():  # between frames of a batch too (phi alone never checks mid-frame)
                    return
                t1 = time.perf_counter()
                mean_z = z_phi[i:i + 1]
                if s.samples:
                    try:
                        z = sample_frame(models, x[i:i + 1], z_phi[i:i + 1], s, device, generator, should_stop)
                    except Stopped:
                        return
                    y = from_model(z[:, 0]).cpu().numpy()
                    mean, std, sample = y.mean(0), y.std(0, ddof=1), y[0]
                else:
                    y, mean = None, from_model(mean_z[0, 0]).cpu().numpy()
                    std, sample = np.zeros_like(mean), mean
                locs = localize(mean, y, b0 + i + first_index, s.threshold, calibration, snr[i, 0])
                if refiner is not None:
                    locs = refiner(locs, batch[i])
                yield FrameResult(b0 + i + first_index, mean.astype(np.float32), std.astype(np.float32),
                                  sample.astype(np.float32), locs, per_frame_phi + time.perf_counter() - t1)
