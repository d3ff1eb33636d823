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
from dataclasses import dataclass, field, replace
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
from .preprocessing import BACKGROUND_ESTIMATES, normalise, pixel_snr, psi_condition, shifted_photoelectrons
from .refine import Refiner
from .streams import frame_generator
from .tiling import SampleTiles, chunked, phi_tiled

PSI_TILE = 64        # SR pixels: the training patch size
PSI_OVERLAP = 16     # SR pixels
PHI_TILE = 128       # raw pixels
TILE_BATCH = {"cpu": 16, "cuda": 512}   # psi tiles per call: cache-sized on a CPU, filling a GPU


def never() -> bool:
    """The default ``should_stop``: run to the end."""
    return False


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
    tile_batch: int | None = None   # psi tiles per network call; None: 16 on a CPU, 512 on a GPU
    threshold: float = DEFAULT_THRESHOLD
    seed: int = 0
    tile_shift: bool = False  # psi's tile grid moved at random for every step and sample
    frame_norm: bool = True   # psi's GroupNorm statistics over each image's tiles, not per tile (no seams)
    schedule: str | None = None   # inference noise levels from a named schedule; None: the model's own
    background: str | None = None  # "frame" or "local" (preprocessing.normalise); None: the model's own
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
        if self.background not in (None, *BACKGROUND_ESTIMATES):
            raise ValueError(f"background must be one of {', '.join(BACKGROUND_ESTIMATES)} (got {self.background!r})")
        if self.frame_batch < 1 or (self.tile_batch is not None and self.tile_batch < 1):
            raise ValueError("batch sizes must be >= 1")
        if self.frame_norm and self.tile_shift:
            raise ValueError("frame_norm needs the fixed tile grid: turn tile_shift off")
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
    notes: tuple[str, ...] = ()   # messages for the user (an out-of-memory retry before this frame)


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

    def merge(self, other: "StackSum") -> None:
        """Add the sums of other frames (a chunk predicted elsewhere)."""
        if other.total is None:
            return
        if self.total is None:
            self.total, self.variance = np.zeros_like(other.total), np.zeros_like(other.variance)
        self.total += other.total
        self.variance += other.variance
        self.frames += other.frames

    @property
    def std(self) -> np.ndarray | None:
        return None if self.variance is None else np.sqrt(self.variance)


def tile_batch(s: PredictSettings, device: torch.device) -> int:
    """psi tiles per network call: the settings' value, else the device's default."""
    return s.tile_batch or TILE_BATCH.get(device.type, TILE_BATCH["cpu"])


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


def background_estimate(models: Models, s: PredictSettings) -> str:
    """The background estimate of preprocessing.normalise: the settings', else the one the model was trained with."""
    return s.background or models.info.get("trained_on", {}).get("background_estimate", "frame")


def run_phi(phi: DeepSTORM, frames: np.ndarray, s: PredictSettings, device: torch.device,
            estimate: str = "frame") -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised inputs ``(B, 1, H, W)`` and phi's model-space KDEs ``(B, 1, 4H, 4W)`` (float32).
    On CPU one frame at a time: larger batches leave the cache and run 1.4x slower (benchmarks.md)."""
    x = normalise(shifted_photoelectrons(frames, s.camera), estimate).to(device)
    with _autocast(device, s.bf16):
        z = chunked(lambda t: phi_tiled(phi, t, PHI_TILE, phi.receptive_radius), x,
                    max_batch=1 if device.type == "cpu" else s.frame_batch)
    return x, z.float()


def sample_frame(models: Models, x: torch.Tensor, z_phi: torch.Tensor, s: PredictSettings, device: torch.device,
                 generator: torch.Generator, should_stop: Callable[[], bool] = never) -> torch.Tensor | None:
    """``s.samples`` model-space KDE samples ``(n, 1, 4H, 4W)`` of one frame (``x``: ``(1, 1, H, W)``),
    or None when ``should_stop()`` turned true between diffusion steps."""
    z = sample_frames(models, x, z_phi, s, device, [generator], should_stop)
    return None if z is None else z[0]


def sample_frames(models: Models, x: torch.Tensor, z_phi: torch.Tensor, s: PredictSettings, device: torch.device,
                  generators: list[torch.Generator], should_stop: Callable[[], bool] = never) -> torch.Tensor | None:
    """Samples ``(B, n, 1, 4H, 4W)`` of ``B`` frames (``x``: ``(B, 1, H, W)``) in one psi batch, frame ``b``
    drawing from ``generators[b]`` exactly as :func:`sample_frame` would (same samples, fewer launches);
    None when ``should_stop()`` turned true between diffusion steps."""
    b, n, shape = len(x), s.samples, tuple(z_phi.shape[-2:])
    cond = psi_condition(x, z_phi).repeat_interleave(n, dim=0)
    fixed = SampleTiles.fixed(shape, PSI_TILE, PSI_OVERLAP, b * n)
    cond_tiles = fixed.split(cond).contiguous(memory_format=torch.channels_last)

    def tiles_of_step() -> SampleTiles:
        if not s.tile_shift:
            return fixed
        return SampleTiles([g for gen in generators for g in
                            SampleTiles.shifted(shape, PSI_TILE, PSI_OVERLAP, n, gen).grids])

    per_image = len(fixed.grids[0].slices) if s.frame_norm else 1  # psi chunks hold whole images then
    max_batch = per_image * max(1, tile_batch(s, device) // per_image)

    def eps_fn(y: torch.Tensor, sqrt_gamma: torch.Tensor) -> torch.Tensor:
        tiles = tiles_of_step()
        c = cond_tiles if tiles is fixed else tiles.split(cond).contiguous(memory_format=torch.channels_last)
        sg = sqrt_gamma[:1].repeat(len(c))
        models.psi.pool_norm_statistics(per_image)
        try:
            with _autocast(device, s.bf16):
                eps = chunked(models.psi, tiles.split(y).contiguous(memory_format=torch.channels_last), c, sg,
                              max_batch=max_batch)
        finally:
            models.psi.pool_norm_statistics(1)
        return tiles.merge(eps)

    schedule = Schedule.named(s.schedule) if s.schedule else models.schedule
    gammas = schedule.inference_gammas(s.steps, s.start)
    start = (z_phi if s.start < 1 else torch.zeros_like(z_phi)).repeat_interleave(n, dim=0)
    y = ancestral_sampler(eps_fn, start.contiguous(), gammas, generators, should_stop)
    return None if y is None else y.reshape(b, n, *y.shape[1:])


def _frame_result(index: int, x: torch.Tensor, z_phi: torch.Tensor, snr: np.ndarray, models: Models,
                  s: PredictSettings, device: torch.device, generator: torch.Generator, calibration: Calibration,
                  should_stop: Callable[[], bool]) -> FrameResult | None:
    """One frame's result from its normalised input and phi's output (None when stopped mid-frame)."""
    t0 = time.perf_counter()
    if s.samples:
        z = sample_frame(models, x, z_phi, s, device, generator, should_stop)
        if z is None:
            return None
        y = from_model(z[:, 0]).cpu().numpy()
        mean, std, sample = y.mean(0), y.std(0, ddof=1), y[0]
    else:
        y, mean = None, from_model(z_phi[0, 0]).cpu().numpy()
        std, sample = np.zeros_like(mean), mean
    locs = localize(mean, y, index, s.threshold, calibration, snr)
    return FrameResult(index, mean.astype(np.float32), std.astype(np.float32), sample.astype(np.float32), locs,
                       time.perf_counter() - t0)


def _predict_frames(stack, frames: range, models: Models, s: PredictSettings, device: torch.device,
                    should_stop: Callable[[], bool]) -> Generator[FrameResult, None, None]:
    """:func:`predict` without the out-of-memory retry."""
    phi = models.phi.fused()
    calibration = Calibration.from_dict(models.calibration)
    refiner = Refiner(s.camera, excess=s.camera.excess_noise) if s.refine else None
    with torch.inference_mode():
        for b0 in range(frames.start, frames.stop, s.frame_batch):
            if should_stop():
                return
            t0 = time.perf_counter()
            batch = np.asarray(stack[b0:min(b0 + s.frame_batch, frames.stop)])
            x, z_phi = run_phi(phi, batch, s, device, background_estimate(models, s))
            snr = pixel_snr(x).cpu().numpy()
            per_frame_phi = (time.perf_counter() - t0) / len(batch)
            for i in range(len(batch)):
                if i and should_stop():  # between frames of a batch too (phi alone never checks mid-frame)
                    return
                r = _frame_result(b0 + i, x[i:i + 1], z_phi[i:i + 1], snr[i, 0], models, s, device,
                                  frame_generator(s.seed, b0 + i, device), calibration, should_stop)
                if r is None:
                    return
                if refiner is not None:
                    t1 = time.perf_counter()
                    r.localizations = refiner(r.localizations, batch[i])
                    r.seconds += time.perf_counter() - t1
                r.seconds += per_frame_phi
                yield r


def smaller_batches(s: PredictSettings) -> PredictSettings | None:
    """Settings with halved tile and frame batches, or None when both are already 1."""
    if s.tile_batch == 1 and s.frame_batch == 1:
        return None
    return replace(s, tile_batch=max(1, s.tile_batch // 2), frame_batch=max(1, s.frame_batch // 2))


def predict(stack, models: Models, settings: PredictSettings, frames: range | None = None,
            should_stop: Callable[[], bool] = never) -> Generator[FrameResult, None, None]:
    """Yield a :class:`FrameResult` per frame of ``frames`` (default: all) of ``stack`` (``(T, H, W)`` ADU, any
    array-like: frames are read batch by batch). Stops cleanly (no partial frame) when ``should_stop()`` turns
    true. On a GPU out-of-memory error, halves the tile and frame batches and goes on from the frame that
    failed; the next result's ``notes`` say so."""
    s = settings.validate()
    frames = range(len(stack)) if frames is None else frames
    if frames.step != 1 or frames.start < 0 or frames.stop > len(stack):
        raise ValueError(f"frames must be a contiguous range within 0..{len(stack)} (got {frames})")
    device = s.torch_device()
    s = replace(s, tile_batch=tile_batch(s, device))
    models.to(device)
    if s.samples and models.psi is None:
        raise ValueError(f"model {models.name!r} has no diffusion model (psi); use samples = 0")
    notes: list[str] = []
    while len(frames):
        try:
            for r in _predict_frames(stack, frames, models, s, device, should_stop):
                frames = range(r.index + 1, frames.stop)
                r.notes, notes = tuple(notes), []
                yield r
            return
        except torch.cuda.OutOfMemoryError:
            s = smaller_batches(s)
            if s is None:
                raise
            torch.cuda.empty_cache()
            notes.append(f"Out of GPU memory: retrying with tile batch {s.tile_batch}, frame batch {s.frame_batch}.")
