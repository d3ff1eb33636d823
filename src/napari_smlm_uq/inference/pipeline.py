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
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..io.files import InputError
from ..localizations import Localizations
from ..models.deepstorm import DeepSTORM
from ..models.diffusion import Schedule, ancestral_sampler
from ..models.registry import Models
from ..physics.kde import UPSAMPLING, from_model
from .calibration import Calibration
from .localize import localize_peaks, peaks_of
from .overlap import HostWork, Timeline, host_threads, in_order
from .predict_settings import (
    DEVICE_HELP,
    PRECISION_HELP,
    PRECISIONS,
    Precision,
    PredictSettings,
    available_devices,
    bf16_autocast,
    native_bf16,
    never,
)
from .preprocessing import normalise, pixel_snr, psi_condition, shifted_photoelectrons
from .refine import Refiner, RefinerPrior
from .refine3d import Refiner3D
from .streams import frame_generator
from .tiling import TileGrid, chunked, phi_tiled

# re-exported: the settings module is where they live, this one is where callers have found them
__all__ = ["DEVICE_HELP", "PRECISIONS", "PRECISION_HELP", "FrameResult", "Precision", "PredictSettings", "StackSum",
           "available_devices", "bf16_autocast", "learn_prior", "native_bf16", "never", "predict"]

# psi runs on whole frames up to PSI_TILE SR pixels (256x256 raw px), with attention in windows of its
# training patch (64 SR px); larger frames in tiles blended over PSI_OVERLAP, GroupNorm statistics pooled over
# each frame's tiles (so a frame's tiles go through psi together). On the CPU too whole frames were 2x faster
# than 256-px tiles, with less memory (benchmarks.md).
PSI_TILE = 1024                          # SR pixels
PSI_OVERLAP = 32                         # SR pixels
PSI_WINDOW = 64                          # SR pixels: training_data.PATCH raw pixels
PSI_PIXELS = {"cpu": 256 * 256, "cuda": 1024 * 1024 * 16}   # SR pixels per psi call: cache-sized, filling a GPU
PHI_TILE = 256       # raw pixels: whole frames up to 256x256 (tiles of 128 cost 2x in margins: benchmarks.md)
# The refinement's prior (PSF width, single emitters' photons) is learned before the first frame on up to
# WARM_UP_FRAMES frames (phi alone), until WARM_UP_FITS isolated spots give it: the median width of 200 spots
# is known to ~1 % of their spread.
WARM_UP_FRAMES = 16
WARM_UP_FITS = 200


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

    def merge(self, other: StackSum) -> None:
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


def psi_grid(shape: tuple[int, int]) -> TileGrid:
    """psi's tiles of an SR image of ``shape`` (one tile, the whole image, up to PSI_TILE)."""
    return TileGrid(shape, PSI_TILE, PSI_OVERLAP)


def tile_batch(s: PredictSettings, device: torch.device, tile_pixels: int) -> int:
    """psi tiles per network call: the settings' value, else the device's pixel budget over a tile's pixels."""
    budget = PSI_PIXELS.get(device.type, PSI_PIXELS["cpu"])
    return s.tile_batch or max(1, budget // tile_pixels)


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
    with _autocast(device, s.bf16(device)):
        z = chunked(lambda t: phi_tiled(phi, t, PHI_TILE, phi.receptive_radius), x,
                    max_batch=1 if device.type == "cpu" else s.frame_batch)
    return x, z.float()


def sample_frames(models: Models, x: torch.Tensor, z_phi: torch.Tensor, s: PredictSettings, device: torch.device,
                  generators: list[torch.Generator], should_stop: Callable[[], bool] = never) -> torch.Tensor | None:
    """``s.samples`` model-space KDE samples ``(B, n, 1, 4H, 4W)`` of ``B`` frames (``x``: ``(B, 1, H, W)``) in
    one psi batch, frame ``b`` drawing from ``generators[b]`` (the same samples whatever the batch); None when
    ``should_stop()`` turned true between diffusion steps."""
    b, n, shape = len(x), s.samples, tuple(z_phi.shape[-2:])
    grid = psi_grid(shape)
    per_image = len(grid.slices)
    cond = grid.split(psi_condition(x, z_phi).repeat_interleave(n, dim=0)).contiguous(memory_format=torch.channels_last)
    max_batch = per_image * max(1, tile_batch(s, device, grid.size[0] * grid.size[1]) // per_image)

    def eps_fn(y: torch.Tensor, sqrt_gamma: torch.Tensor) -> torch.Tensor:
        level = sqrt_gamma[:1]   # one noise level for every tile and sample
        with models.psi.inference_layout(per_image, PSI_WINDOW), _autocast(device, s.bf16(device)):
            eps = chunked(lambda tiles, c: models.psi(tiles, c, level),
                          grid.split(y).contiguous(memory_format=torch.channels_last), cond, max_batch=max_batch)
        return grid.merge(eps, len(y))

    schedule = Schedule.named(s.schedule) if s.schedule else models.schedule
    gammas = schedule.inference_gammas(s.steps, s.start)
    start = (z_phi if s.start < 1 else torch.zeros_like(z_phi)).repeat_interleave(n, dim=0)
    y = ancestral_sampler(eps_fn, start.contiguous(), gammas, generators, should_stop)
    return None if y is None else y.reshape(b, n, *y.shape[1:])


@dataclass
class KdeStatistics:
    """Per-pixel statistics of ``B`` frames' KDE samples (KDE units, host arrays): ``mean``, ``std`` (ddof 1)
    and ``sample`` ``(B, 4H, 4W)``; the peaks (SR px, :func:`peaks_of`) of each frame's mean and, but for phi
    alone (None), of each of its samples."""

    mean: np.ndarray
    std: np.ndarray
    sample: np.ndarray
    peaks: list[np.ndarray]
    sample_peaks: list[list[np.ndarray]] | None


def kde_statistics(z: torch.Tensor | None, z_phi: torch.Tensor, threshold: float) -> KdeStatistics:
    """Statistics and peaks of model-space samples ``(B, n, 1, 4H, 4W)``, taken on their device, or of phi's
    output ``(B, 1, 4H, 4W)`` alone (``z`` None: std 0, the sample is the mean)."""
    if z is None:
        mean = from_model(z_phi[:, 0])
        host = mean.cpu().numpy()
        return KdeStatistics(host, np.zeros_like(host), host, peaks_of(mean, threshold), None)
    y = from_model(z[:, :, 0])
    b, n = y.shape[:2]
    mean, std = y.mean(1), y.std(1, correction=1)
    found = peaks_of(torch.cat([mean, y.flatten(0, 1)]), threshold)
    return KdeStatistics(*(t.float().cpu().numpy() for t in (mean, std, y[:, 0])), found[:b],
                         [found[b + i * n:b + (i + 1) * n] for i in range(b)])


def frame_result(index: int, stats: KdeStatistics, i: int, raw: np.ndarray, snr: np.ndarray, s: PredictSettings,
                 calibration: Calibration, refiner: Refiner | None, seconds: float) -> FrameResult:
    """Frame ``index`` (item ``i`` of ``stats``, raw frame ``raw`` in ADU): localized, refined on the raw
    pixels when ``refiner`` is given; ``seconds`` of network time, plus this host work."""
    t0 = time.perf_counter()
    sample_peaks = None if stats.sample_peaks is None else stats.sample_peaks[i]
    locs = localize_peaks(stats.peaks[i], sample_peaks, index, stats.mean.shape[1:], calibration, snr)
    if refiner is not None:
        locs = refiner(locs, raw)
    return FrameResult(index, stats.mean[i], stats.std[i], stats.sample[i], locs,
                       seconds + time.perf_counter() - t0)


def warm_up_frames(n: int, frames: range) -> list[int]:
    """The frames the prior is learned on: from the run's first frame on, then the stack's earlier ones
    (a short run or a late chunk learns from the same acquisition), at most :data:`WARM_UP_FRAMES`."""
    return (list(range(frames.start, n)) + list(range(frames.start)))[:WARM_UP_FRAMES]


def learn_prior(stack, models: Models, s: PredictSettings, frames: range | None = None,
                should_stop: Callable[[], bool] = never) -> RefinerPrior:
    """The refinement's prior for ``frames`` of ``stack`` (``(T, H, W)`` ADU, any array-like), learned before
    the first frame is refined: phi alone localizes the :func:`warm_up_frames` until :data:`WARM_UP_FITS`
    isolated spots are fitted with a free width (refine.Refiner.learn_width); the PSF width is their median,
    the single emitters' photons those of the spots no wider than it (refine.Refiner.learned)."""
    s = s.validate()
    device = s.torch_device()
    models.to(device)
    phi, calibration = models.phi.fused(), Calibration.from_dict(models.calibration)
    refiner = Refiner(s.camera, excess=s.camera.excess_noise)
    read_variance = np.asarray(s.camera.read_noise, float) ** 2
    with torch.inference_mode():
        for index in warm_up_frames(len(stack), range(len(stack)) if frames is None else frames):
            if should_stop() or len(refiner.widths) >= WARM_UP_FITS:
                break
            raw = np.asarray(stack[index:index + 1])
            x, z_phi = run_phi(phi, raw, s, device, background_estimate(models, s))
            stats = kde_statistics(None, z_phi, s.threshold)
            snr = pixel_snr(x)[0, 0].cpu().numpy()
            locs = localize_peaks(stats.peaks[0], None, index, stats.mean.shape[1:], calibration, snr)
            refiner.learn_width(s.camera.to_photoelectrons(raw[0]).astype(np.float64), locs, read_variance)
    return refiner.learned()


def psi_frames(s: PredictSettings, device: torch.device) -> int:
    """Frames per psi batch: the frame batch on a GPU; one on a CPU, where larger batches leave the cache."""
    return s.frame_batch if device.type == "cuda" else 1


def _network_passes(stack, frames: range, models: Models, s: PredictSettings, device: torch.device, host: HostWork,
                    timeline: Timeline, should_stop: Callable[[], bool]) -> Iterator[list[Future]]:
    """The network passes over ``frames``, a psi batch at a time: each batch's host work (localization and
    refinement) submitted to ``host`` in frame order; the futures of each batch."""
    phi = models.phi.fused()
    calibration = Calibration.from_dict(models.calibration)
    refiner = None if not s.refine else Refiner(s.camera, excess=s.camera.excess_noise, prior=s.prior,
                                                 search=s.residual_search)
    if s.z_calibration is not None:
        refiner = Refiner3D(s.camera, s.z_calibration, s.camera.excess_noise)
    per_psi = psi_frames(s, device)
    # inference mode only between the yields: a generator suspended inside it would leave its consumer's
    # thread (a napari worker, later a training job) in inference mode
    for b0 in range(frames.start, frames.stop, s.frame_batch):
        t0 = time.perf_counter()
        with timeline.span("read"):
            batch = np.asarray(stack[b0:min(b0 + s.frame_batch, frames.stop)])
        with timeline.span("network"), torch.inference_mode():
            x, z_phi = run_phi(phi, batch, s, device, background_estimate(models, s))
            snr = pixel_snr(x).cpu().numpy()
        per_frame = (time.perf_counter() - t0) / len(batch)
        for i0 in range(0, len(batch), per_psi):
            if should_stop():
                return
            t1, part = time.perf_counter(), slice(i0, min(i0 + per_psi, len(batch)))
            with timeline.span("network"), torch.inference_mode():
                z = None
                if s.samples:
                    gens = [frame_generator(s.seed, b0 + i, device) for i in range(part.start, part.stop)]
                    z = sample_frames(models, x[part], z_phi[part], s, device, gens, should_stop)
                    if z is None:
                        return
                stats = kde_statistics(z, z_phi[part], s.threshold)
            seconds = per_frame + (time.perf_counter() - t1) / (part.stop - part.start)
            with torch.inference_mode():
                futures = [host.submit(refiner is None or refiner.settled, frame_result, b0 + i, stats,
                                       i - part.start, batch[i], snr[i, 0], s, calibration, refiner, seconds)
                           for i in range(part.start, part.stop)]
            yield futures


def _predict_frames(stack, frames: range, models: Models, s: PredictSettings, device: torch.device,
                    should_stop: Callable[[], bool], timeline: Timeline) -> Generator[FrameResult, None, None]:
    """:func:`predict` without the out-of-memory retry: the network passes run ahead of the host work
    (in frame order until the refiner has settled, then in a pool on a GPU) and of the caller (overlap.py)."""
    with HostWork(host_threads(device.type)) as host:
        yield from in_order(
            lambda stop: _network_passes(stack, frames, models, s, device, host, timeline, stop), should_stop, timeline)


def smaller_batches(s: PredictSettings, device: torch.device, tile_pixels: int) -> PredictSettings | None:
    """Settings with halved tile and frame batches (psi tiles of ``tile_pixels`` SR pixels), or None when both
    are already 1."""
    tiles = tile_batch(s, device, tile_pixels)
    if tiles == 1 and s.frame_batch == 1:
        return None
    return replace(s, tile_batch=max(1, tiles // 2), frame_batch=max(1, s.frame_batch // 2))


def predict(stack, models: Models, settings: PredictSettings, frames: range | None = None,
            should_stop: Callable[[], bool] = never, timeline: Timeline | None = None
            ) -> Generator[FrameResult, None, None]:
    """Yield a :class:`FrameResult` per frame of ``frames`` (default: all) of ``stack`` (``(T, H, W)`` ADU, any
    array-like: frames are read batch by batch). Stops cleanly (no partial frame) when ``should_stop()`` turns
    true. On a GPU out-of-memory error, halves the tile and frame batches and goes on from the frame that
    failed; the next result's ``notes`` say so. The refinement's prior is learned first (:func:`learn_prior`)
    unless the settings carry it. ``timeline`` records where the wall time went (overlap.py)."""
    s, timeline = settings.validate().for_model(models), timeline or Timeline()
    frames = range(len(stack)) if frames is None else frames
    if frames.step != 1 or frames.start < 0 or frames.stop > len(stack):
        raise ValueError(f"frames must be a contiguous range within 0..{len(stack)} (got {frames})")
    device = s.torch_device()
    models.to(device)
    if s.samples and models.psi is None:
        raise InputError(f"model {models.name!r} has no diffusion model (psi); use samples = 0")
    if s.refine and s.prior is None and s.z_calibration is None and len(frames):   # the 3D refit learns no prior
        s = replace(s, prior=learn_prior(stack, models, s, frames, should_stop))
    notes: list[str] = []
    while len(frames):
        try:
            for r in _predict_frames(stack, frames, models, s, device, should_stop, timeline):
                frames = range(r.index + 1, frames.stop)
                r.notes, notes = tuple(notes), []
                yield r
            return
        except torch.cuda.OutOfMemoryError:
            grid = psi_grid((UPSAMPLING * stack.shape[1], UPSAMPLING * stack.shape[2]))
            s = smaller_batches(s, device, grid.size[0] * grid.size[1])
            if s is None:
                raise
            torch.cuda.empty_cache()
            notes.append(f"Out of GPU memory: retrying with tile batch {s.tile_batch}, frame batch {s.frame_batch}.")
