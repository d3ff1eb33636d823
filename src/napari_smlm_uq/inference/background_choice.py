"""Which background estimate a run normalises around (preprocessing.background), chosen from the data when
the user does not say: ``local`` when the background varies across the field by more than
:data:`VARIATION_THRESHOLD`, else the model's own (the one it was trained with; ``frame`` for the bundled
model). The variation is measured on the stack itself: the median of each 8x8-pixel tile of every frame
(the tiles of the ``local`` estimate, in shifted photo-electrons), a low quantile of it over the first
frames (molecules add light to a tile in some frames, the background is there in all), and the ratio of the
95th to the 5th percentile over the tiles. The threshold is measured in benchmarks/real_acquisitions.py
(part ``background_choice``, docs/real-data.md)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..io.files import InputError
from ..physics.camera import Camera
from ..physics.camera_estimation import MAX_FRAMES
from .preprocessing import BACKGROUND_ESTIMATES, block_medians, shifted_photoelectrons

VARIATION_THRESHOLD = 1.25  # p95 / p5 of the tiles' background above which ``local`` is chosen
TEMPORAL_QUANTILE = 0.1     # of each tile's median over frames: the median is biased by dense blinking
BATCH = 16                  # frames per block-median call
MODEL_OWN = "the model's own"


@dataclass
class BackgroundChoice:
    """The estimate chosen (None: the model's own), where it came from (``given``, ``from the data``), the
    measured variation (p95 / p5 of the tiles' background), the median tile background (photo-electrons
    per pixel, incl. the read-noise shift) and why."""

    estimate: str | None
    source: str
    variation: float
    level: float
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return f"background estimate: {self.estimate or MODEL_OWN} ({self.reason})"


def tile_background(frames, camera: Camera, max_frames: int = MAX_FRAMES) -> np.ndarray:
    """The background of ``(T, H, W)`` ADU frames (array-like; the first ``max_frames`` are read) per
    8x8-pixel tile: the :data:`TEMPORAL_QUANTILE` over frames of the tiles' medians, shifted photo-electrons
    ``(h, w)``."""
    frames = frames[:max_frames]
    tiles = [block_medians(shifted_photoelectrons(np.asarray(frames[i:i + BATCH]), camera))[:, 0].numpy()
             for i in range(0, len(frames), BATCH)]
    return np.quantile(np.concatenate(tiles), TEMPORAL_QUANTILE, axis=0)   # torch.quantile caps the input size


def variation(tiles: np.ndarray) -> float:
    """p95 / p5 of the tiles' background (>= 1 photo-electron, as preprocessing.background clamps it)."""
    low, high = np.percentile(np.maximum(tiles, 1.0), [5, 95])
    return float(high / low)


def choose_background(frames, camera: Camera, model_estimate: str | None = None,
                      given: str | None = None) -> BackgroundChoice:
    """The estimate for ``frames`` (``(T, H, W)`` ADU) with ``camera``: ``given`` (the user's; ``auto`` or
    None: choose) if any, else ``local`` above :data:`VARIATION_THRESHOLD`, else ``model_estimate`` (the
    one the model was trained with; None when not known: the pipeline then uses the model's own)."""
    if given not in (None, "auto", *BACKGROUND_ESTIMATES):
        raise InputError(f"background must be auto, {' or '.join(BACKGROUND_ESTIMATES)} (got {given!r})")
    tiles = tile_background(frames, camera)
    ratio, level = variation(tiles), float(np.median(tiles))
    varies = f"the background varies {ratio:.2f}x across the field (p95/p5 of 8x8-px tiles)"
    if given in BACKGROUND_ESTIMATES:
        return BackgroundChoice(given, "given", ratio, level, f"given; {varies}")
    if ratio > VARIATION_THRESHOLD:
        return BackgroundChoice("local", "from the data", ratio, level,
                                f"chosen from the data: {varies}, more than {VARIATION_THRESHOLD:g}x")
    own = MODEL_OWN + (f" ({model_estimate})" if model_estimate else "")
    return BackgroundChoice(model_estimate, "from the data", ratio, level,
                            f"chosen from the data: {varies}, at most {VARIATION_THRESHOLD:g}x: {own}")
