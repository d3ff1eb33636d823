"""Which camera a run uses: per value, the command line (or the widget), then the file's metadata, then
the estimate from the data (physics/camera_estimation.py), then the defaults; an sCMOS map replaces all
three. The given camera is checked against the data: background noise measured outside 0.67-1.5x what the
camera predicts gives a warning naming both and the estimate."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..defaults import CAMERA_FIELDS
from ..physics.camera import Camera
from ..physics.camera_estimation import (
    MAX_FRAMES,
    MIN_FRAMES,
    NOISE_AGREEMENT,
    CameraEstimate,
    EstimateError,
    estimate_camera,
    noise_ratio,
)

UNITS = {"offset": "ADU", "gain": "ADU/e-", "read_noise": "e- rms"}


@dataclass
class CameraChoice:
    """The camera chosen, where each value came from, the estimate (if one was made), the measured /
    predicted background noise (NaN: not measured), lines to show the user and the disagreement warning."""

    camera: Camera
    sources: dict[str, str]
    estimate: CameraEstimate | None = None
    noise_ratio: float = float("nan")
    messages: list[str] = field(default_factory=list)
    warning: str | None = None
    refusal: str | None = None   # why the data could not give the missing values (the defaults were used)

    @property
    def doubts(self) -> list[str]:
        """The lines a user must see before a run: the noise disagreement, a refused estimate, an offset that
        photon transfer could not tell."""
        doubt = self.estimate.doubt if self.estimate and self.sources.get("offset") != "command line" else None
        warning = self.warning and self.warning.removeprefix("warning: ")
        return [line for line in (warning, self.refusal, doubt and f"camera: {doubt}") if line]

    def as_dict(self) -> dict:
        """For summary.json: scalar values (a map's median), sources, the estimate and the noise check."""
        values = {k: float(np.median(getattr(self.camera, k))) for k in CAMERA_FIELDS}
        return values | {"kind": self.camera.kind, "excess_noise": self.camera.excess_noise, "sources": self.sources,
                         "estimate": self.estimate.as_dict() if self.estimate else None,
                         "noise_ratio": self.noise_ratio, "warning": self.warning, "refusal": self.refusal}


def _describe(camera: Camera, sources: dict[str, str]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {float(np.median(getattr(camera, k))):.4g} {UNITS[k]} ({sources[k]})"
                     for k in CAMERA_FIELDS)


def choose_camera(frames, given: dict, metadata: dict, kind: str = "ccd", camera_map: Camera | None = None,
                  map_name: str = "camera map") -> CameraChoice:
    """The camera for ``frames`` (``(T, H, W)`` ADU array-like; the first :data:`MAX_FRAMES` are read).
    ``given``: offset/gain/read_noise from the user (None: not given); ``metadata``: from the file."""
    frames = frames[:MAX_FRAMES]
    if camera_map is not None:
        choice = CameraChoice(camera_map, dict.fromkeys(CAMERA_FIELDS, map_name))
    else:
        choice = _from_values(frames, given, metadata, kind)
    choice.messages.insert(0, f"camera: {_describe(choice.camera, choice.sources)}"
                              + (f", {kind}" if kind != "ccd" else ""))
    if len(frames) >= MIN_FRAMES:
        choice.noise_ratio = noise_ratio(frames, choice.camera)
        _check_agreement(choice, frames, given, metadata)
    return choice


def _from_values(frames, given: dict, metadata: dict, kind: str) -> CameraChoice:
    known = {k: given[k] if given.get(k) is not None else metadata.get(k) for k in CAMERA_FIELDS}
    sources = {k: "command line" if given.get(k) is not None else "file metadata"
               for k in CAMERA_FIELDS if known[k] is not None}
    estimate, messages, refusal = None, [], None
    if len(sources) < len(CAMERA_FIELDS):
        try:
            estimate = estimate_camera(frames, kind, known["offset"], known["read_noise"])
            messages.append(f"{estimate.source}: {estimate.describe()}; " + "; ".join(estimate.notes))
        except EstimateError as exc:
            refusal = f"no camera estimate: {exc}; the missing values are the defaults"
            messages.append(refusal)
    defaults = Camera()
    for k in CAMERA_FIELDS:
        if k not in sources:
            known[k] = getattr(estimate if estimate else defaults, k)
            measured = estimate is not None and np.isfinite(getattr(estimate, f"{k}_se"))
            sources[k] = "estimated from the data" if measured else "default" if estimate is None else "assumed"
    return CameraChoice(Camera(known["offset"], known["gain"], known["read_noise"], kind), sources, estimate,
                        messages=messages, refusal=refusal)


def _check_agreement(choice: CameraChoice, frames, given: dict, metadata: dict) -> None:
    low, high = NOISE_AGREEMENT
    if low <= choice.noise_ratio <= high:
        return
    if choice.estimate is None:
        try:
            known = {k: given.get(k) if given.get(k) is not None else metadata.get(k) for k in ("offset", "read_noise")}
            choice.estimate = estimate_camera(frames, choice.camera.kind, known["offset"], known["read_noise"])
        except EstimateError:
            pass
    e = choice.estimate
    suggestion = (f"; the estimate from the data: {e.describe()} (--gain {e.gain:.3g} --offset {e.offset:.4g} "
                  f"--read-noise {e.read_noise:.2g})") if e else ""
    choice.warning = (f"warning: the background noise of the data is {choice.noise_ratio:.2f}x what the camera "
                      f"({_describe(choice.camera, choice.sources)}) predicts{suggestion}")
    choice.messages.append(choice.warning)
