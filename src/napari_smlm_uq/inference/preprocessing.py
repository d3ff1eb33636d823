"""Camera frames -> network inputs, shared by training and inference.

ADU -> (effective) photo-electrons with the Poisson-Normal shift (``e + r^2``, docs/physics.md), then a
variance-stabilising normalisation: background-subtracted, divided by the shot-noise scale
``sqrt(background)``, compressed with ``asinh(v / 3)`` so that photon counts from hundreds to tens of
thousands share one input range. The background is the frame's median (``frame``, the bundled model's) or
a smooth local estimate (``local``: medians of 8x8-pixel blocks, bilinearly interpolated) that follows
illumination profiles and cells; a model records which one it was trained with. phi's input is that frame;
psi is conditioned on ``phi(x)`` and the bicubic-upsampled frame (align_corners=False matches the SR grid
of docs/physics.md section 4).
"""
from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F

from ..physics.camera import Camera
from ..physics.kde import UPSAMPLING

ASINH_SCALE = 3.0
BackgroundEstimate = Literal["frame", "local"]
BACKGROUND_ESTIMATES = get_args(BackgroundEstimate)
BLOCK = 8   # raw pixels: the local background's block size


def shifted_photoelectrons(adu: np.ndarray, camera: Camera) -> torch.Tensor:
    """``(T, H, W)`` ADU -> ``(T, 1, H, W)`` float32 ``e + r^2`` (photo-electrons)."""
    return torch.from_numpy(camera.shifted_photoelectrons(np.asarray(adu))).reshape(-1, 1, *np.shape(adu)[-2:])


def block_medians(e_shifted: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """``(B, 1, H, W)`` -> ``(B, 1, ceil(H / block), ceil(W / block))``: the median of each ``block`` x
    ``block`` tile (edge tiles padded by reflection)."""
    h, w = e_shifted.shape[-2:]
    ph, pw = -h % block, -w % block
    padded = F.pad(e_shifted, (0, pw, 0, ph), mode="reflect") if ph or pw else e_shifted
    b, c, hp, wp = padded.shape
    tiles = padded.reshape(b, c, hp // block, block, wp // block, block).permute(0, 1, 2, 4, 3, 5).flatten(-2)
    return tiles.median(dim=-1).values


def local_background(e_shifted: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """``(B, 1, H, W)`` -> a smooth background of the same shape: :func:`block_medians` bilinearly
    interpolated between tile centres."""
    h, w = e_shifted.shape[-2:]
    coarse = block_medians(e_shifted, block)
    size = (coarse.shape[-2] * block, coarse.shape[-1] * block)
    return F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)[..., :h, :w]


def background(e_shifted: torch.Tensor, estimate: str = "frame") -> torch.Tensor:
    """The background (photo-electrons, >= 1) that :func:`normalise` subtracts: the frame median
    ``(B, 1, 1, 1)`` or :func:`local_background` ``(B, 1, H, W)``."""
    if estimate == "local":
        return local_background(e_shifted).clamp(min=1.0)
    return e_shifted.flatten(1).median(dim=1).values.clamp(min=1.0)[:, None, None, None]


def normalise(e_shifted: torch.Tensor, estimate: str = "frame") -> torch.Tensor:
    """``(B, 1, H, W)`` shifted photo-electrons -> the network input, around the ``estimate`` background."""
    bg = background(e_shifted, estimate)
    return torch.asinh((e_shifted - bg) / bg.sqrt() / ASINH_SCALE)


def pixel_snr(x: torch.Tensor) -> torch.Tensor:
    """Undo :func:`normalise`'s compression: per pixel ``(e' - background) / sqrt(background)``, the
    signal over the background's shot noise (dimensionless)."""
    return ASINH_SCALE * torch.sinh(x)


def psi_condition(x_in: torch.Tensor, phi_out: torch.Tensor) -> torch.Tensor:
    """psi's conditioning channels ``(B, 2, 4H, 4W)``: ``phi(x)`` and the bicubic-upsampled input."""
    up = F.interpolate(x_in, scale_factor=UPSAMPLING, mode="bicubic", align_corners=False)
    return torch.cat([phi_out, up.to(phi_out.dtype)], dim=1)
