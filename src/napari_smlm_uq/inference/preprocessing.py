"""Camera frames -> network inputs, shared by training and inference.

ADU -> photo-electrons with the Poisson-Normal shift (``e + r^2``, docs/physics.md section 3), then a per-frame
variance-stabilising normalisation: background-subtracted (the frame median), divided by the shot-noise
scale ``sqrt(median)``, compressed with ``asinh(v / 3)`` so that photon counts from hundreds to tens of
thousands share one input range. phi's input is that frame; psi is conditioned on ``phi(x)`` and the
bicubic-upsampled frame (align_corners=False matches the SR grid of docs/physics.md section 4).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..physics.camera import Camera
from ..physics.kde import UPSAMPLING

ASINH_SCALE = 3.0


def shifted_photoelectrons(adu: np.ndarray, camera: Camera) -> torch.Tensor:
    """``(T, H, W)`` ADU -> ``(T, 1, H, W)`` float32 ``e + r^2`` (photo-electrons)."""
    return torch.from_numpy(camera.shifted_photoelectrons(np.asarray(adu))).reshape(-1, 1, *np.shape(adu)[-2:])


def normalise(e_shifted: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` shifted photo-electrons -> the network input (per-frame statistics)."""
    med = e_shifted.flatten(1).median(dim=1).values.clamp(min=1.0)[:, None, None, None]
    return torch.asinh((e_shifted - med) / med.sqrt() / ASINH_SCALE)


def pixel_snr(x: torch.Tensor) -> torch.Tensor:
    """Undo :func:`normalise`'s compression: per pixel ``(e' - median) / sqrt(median)``, the signal over
    the background's shot noise (dimensionless)."""
    return ASINH_SCALE * torch.sinh(x)


def psi_condition(x_in: torch.Tensor, phi_out: torch.Tensor) -> torch.Tensor:
    """psi's conditioning channels ``(B, 2, 4H, 4W)``: ``phi(x)`` and the bicubic-upsampled input."""
    up = F.interpolate(x_in, scale_factor=UPSAMPLING, mode="bicubic", align_corners=False)
    return torch.cat([phi_out, up.to(phi_out.dtype)], dim=1)
