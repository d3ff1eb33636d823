"""The settings of a prediction (:class:`PredictSettings`: samples, steps, device, arithmetic, the camera and
pixel size, the refinement and its prior, a z calibration) and which device and arithmetic they mean."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

import numpy as np
import torch

from ..defaults import PIXEL_SIZE_NM
from ..io.files import InputError
from ..models.diffusion import Schedule
from ..models.registry import Models
from ..physics.astigmatism import ZCalibration
from ..physics.camera import Camera
from ..settings import check, option
from .localize import DEFAULT_THRESHOLD
from .preprocessing import BackgroundEstimate
from .refine import RefinerPrior

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS = get_args(Precision)
PRECISION_HELP = ("network arithmetic: bf16 autocast, fp32, or auto (bf16 where the GPU or CPU computes it natively: "
                  "1.5-2.3x faster at the same E and calibration; docs/benchmarks.md)")
DEVICE_HELP = "auto (CUDA when present), cpu, cuda or cuda:N"

def never() -> bool:
    """The default ``should_stop``: run to the end."""
    return False


@dataclass
class PredictSettings:
    """Inference settings. ``samples = 0`` runs phi alone. ``start`` is the preconditioned start as a
    fraction of the training schedule (1 = pure noise). ``pixel_size`` in nm; camera in ADU / e-."""

    samples: int = option(8, help="diffusion samples per frame (0: phi alone, no uncertainty)", low=0)
    steps: int | None = option(None, help="diffusion steps per sample (default: the model's own, 1 for a psi "
                               "distilled to one step, else 2; fewer is faster)", low=1)
    start: float = option(0.5, help="preconditioned start, fraction of the noise schedule (1: pure noise)", low=0.0,
                          open_low=True, high=1.0, step=0.05)
    camera: Camera = field(default_factory=Camera)
    pixel_size: float = option(PIXEL_SIZE_NM, help="raw pixel size in the sample plane", unit="nm", low=0.0,
                               open_low=True)
    device: str = option("auto", help=DEVICE_HELP)
    precision: Precision = option("auto", help=PRECISION_HELP)
    frame_batch: int = option(8, help="frames read and put through phi together (through psi too on a GPU)", low=1)
    tile_batch: int | None = option(None, help="psi tiles (or whole frames) per network call (default: as many as "
                                    "the device's pixel budget)", low=1)
    threshold: float = option(DEFAULT_THRESHOLD, help="KDE peak threshold", low=0.0, open_low=True)
    seed: int = option(0, help="random seed of the diffusion samples")
    schedule: str | None = option(None, help="inference noise levels from a named schedule (default: the model's "
                                  "training schedule; 'paper' for the paper's)")
    background: BackgroundEstimate | None = option(
        None, help="background estimate of the normalisation, frame or local (default: the model's own; chosen by "
        "the run)", flag="--background-estimate", cli=False, gui=False)
    refine: bool = option(True, help="maximum-likelihood refit of each localization on the raw pixels (refine.py)")
    residual_search: bool = option(False, help="with the refit, add the emitters the localizations missed where its "
                                   "residual holds a significant spot (residual_search.py; dense frames)")
    prior: RefinerPrior | None = None   # the refinement's PSF width and photons; None: learned from the stack
    # first. Not an option: a run learns it (a cluster run's driver learns it once for every chunk).
    z_calibration: ZCalibration | None = None   # astigmatic 3D refit (refine3d.py): z [nm]. Not an option: the
    # command line reads it from a file (--z-calibration CAL.json)

    def validate(self) -> PredictSettings:
        check(self)
        if self.samples == 1:
            raise InputError(f"samples must be 0 (phi alone) or >= 2 (got {self.samples})")
        if self.schedule is not None:
            Schedule.named(self.schedule)
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise InputError(f"device must be auto, cpu or cuda (got {self.device!r})")
        self.camera.validate()
        self._validate_z()
        return self

    def for_model(self, models: Models) -> PredictSettings:
        """These settings with the model's own diffusion steps where none are set."""
        return self if self.steps is not None else replace(self, steps=models.sampler_steps)

    def _validate_z(self) -> None:
        cal = self.z_calibration
        if cal is None:
            return
        if not self.refine:
            raise InputError("a z calibration needs the refinement (z comes from the fit on the raw pixels)")
        if not np.isclose(cal.pixel_size, self.pixel_size, rtol=1e-3):
            raise InputError(f"the z calibration was measured at {cal.pixel_size:g} nm per pixel, the stack has "
                             f"{self.pixel_size:g} nm: calibrate with beads imaged at the stack's pixel size")
        cal.validate()

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError("device cuda was asked for, but no CUDA GPU is available")
        return torch.device(self.device)

    def bf16(self, device: torch.device) -> bool:
        """Whether the networks run in bf16 autocast on ``device``."""
        return bf16_autocast(self.precision, device)


def bf16_autocast(precision: str, device: torch.device) -> bool:
    """Whether ``precision`` (one of PRECISIONS) means bf16 autocast on ``device`` (inference and training)."""
    return precision == "bf16" or (precision == "auto" and native_bf16(device))


@functools.cache
def native_bf16(device: torch.device) -> bool:
    """bf16 in hardware: a CUDA GPU from Ampere on, or a CPU with AVX512-BF16 or AMX (where phi ran 2.3x and
    the default pipeline 1.5x faster than in fp32, at the same E and calibration: benchmarks.md)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    return any(getattr(torch.cpu, name, lambda: False)()
               for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def available_devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


