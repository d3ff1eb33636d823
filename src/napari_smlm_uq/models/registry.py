"""Model files and the registry of bundled weights.

A model file is a ``torch.save`` dict ``{"format", "config", "phi", "psi"}`` of plain state dicts,
loaded with ``torch.load(weights_only=True)`` (no code runs on load). ``weights/registry.json`` names
each bundled model with its file and sha256 (the config is in the file); bundled files are verified
before loading.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..io.files import InputError, atomic_path
from .deepstorm import DeepSTORM
from .diffusion import Schedule
from .unet import UNet

FORMAT = "napari-smlm-uq/1"
WEIGHTS_DIR = Path(__file__).parent / "weights"
REGISTRY = WEIGHTS_DIR / "registry.json"
DEFAULT_MODEL = "default"


@dataclass
class Models:
    """phi, psi (None for a phi-only model), the training schedule and calibration of the uncertainty."""

    phi: DeepSTORM
    psi: UNet | None
    schedule: Schedule = field(default_factory=lambda: Schedule.named("default"))
    name: str = "untitled"
    calibration: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def config(self) -> dict:
        return {"phi": self.phi.config, "psi": self.psi.config if self.psi else None,
                "schedule": self.schedule.config(), "calibration": self.calibration, "info": self.info}

    @property
    def sampler_steps(self) -> int:
        """Diffusion steps per sample psi is made for: 1 for a psi distilled to one step
        (``info["sampler"]``, benchmarks/distill_psi.py), else 2."""
        return int(self.info.get("sampler", {}).get("steps", 2))

    def to(self, device: torch.device | str) -> Models:
        """Move to ``device`` in eval mode, channels-last (2-3x faster convolutions on CPU with bf16)."""
        for net in (self.phi, self.psi):
            if net is not None:
                net.to(device, memory_format=torch.channels_last).eval()
        return self


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _kwargs(section: dict) -> dict:
    """A config section (JSON lists) as constructor keywords (tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}


def build(config: dict, name: str = "untitled") -> Models:
    """Fresh (randomly initialised) networks from a config."""
    psi = UNet(**_kwargs(config["psi"])) if config.get("psi") else None
    return Models(DeepSTORM(**_kwargs(config["phi"])), psi, Schedule(**config["schedule"]), name,
                  dict(config.get("calibration") or {}), dict(config.get("info") or {}))


def save(models: Models, path: str | os.PathLike) -> str:
    """Write a model file atomically; returns its sha256."""
    state = {"format": FORMAT, "config": models.config(), "name": models.name,
             "phi": {k: v.detach().cpu() for k, v in models.phi.state_dict().items()},
             "psi": {k: v.detach().cpu() for k, v in models.psi.state_dict().items()} if models.psi else None}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return sha256(path)


def _read_registry() -> dict:
    return json.loads(REGISTRY.read_text()) if REGISTRY.exists() else {}


def bundled_names() -> list[str]:
    return list(_read_registry())


def resolve(name_or_path: str | os.PathLike) -> tuple[Path, str | None]:
    """A bundled model name -> (file, expected sha256); a path -> (path, None)."""
    registry = _read_registry()
    if str(name_or_path) in registry:
        entry = registry[str(name_or_path)]
        return WEIGHTS_DIR / entry["file"], entry["sha256"]
    path = Path(name_or_path)
    if path.is_file():
        return path, None
    raise InputError(f"unknown model {str(name_or_path)!r}: neither a bundled model "
                     f"({', '.join(registry) or 'none installed'}) nor an existing file")


def load(name_or_path: str | os.PathLike = DEFAULT_MODEL, device: str | torch.device = "cpu") -> Models:
    """Load a bundled model by name (hash verified) or a model file by path, safely."""
    path, expected = resolve(name_or_path)
    if expected is not None and sha256(path) != expected:
        raise InputError(f"model file {path} is corrupted (sha256 mismatch); reinstall napari-smlm-uq")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path}: not a napari-smlm-uq model file ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else "?"
        raise InputError(f"{path}: not a napari-smlm-uq model file (format {found})")
    models = build(state["config"], str(state.get("name") or Path(path).stem))
    try:
        models.phi.load_state_dict(state["phi"])
        if models.psi is not None and state.get("psi") is not None:
            models.psi.load_state_dict(state["psi"])
    except RuntimeError as exc:
        raise InputError(f"{path}: weights do not match their config ({str(exc).splitlines()[0]})") from None
    if state.get("psi") is None:
        models.psi = None
    return models.to(device)


def tiny_config() -> dict:
    """A very small architecture for tests and quick experiments."""
    return {"phi": {"channels": 8, "up_channels": 8, "dilations": [1, 2]},
            "psi": {"base": 8, "mults": [1, 2, 2], "num_res": 1, "cond_channels": 2},
            "schedule": Schedule.named("default").config()}


def default_config() -> dict:
    """The architecture of the bundled weights (phi's super-resolution part at 16 channels since its
    distillation, docs/models.md)."""
    return {"phi": DeepSTORM(up_channels=16).config, "psi": UNet(16).config,
            "schedule": Schedule.named("default").config()}
