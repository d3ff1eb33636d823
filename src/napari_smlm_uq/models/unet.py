"""psi: conditional U-Net noise predictor (Ho 2020 backbone, SR3/WaveGrad conditioning).

Input channels: the noisy KDE ``y_t``, ``phi(x)`` and the bicubic-upsampled frame, concatenated.
The continuous noise level enters as a sinusoidal embedding of ``sqrt(gamma)``. Self-attention
runs at the coarsest level (16x16 for the 64x64 SR training tiles; over larger images, within windows of
the training size: :meth:`UNet.inference_layout`). Output: predicted noise.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


def noise_level_embedding(sqrt_gamma: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Transformer sinusoidal embedding of ``scale * sqrt(gamma)``: ``(B,) -> (B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=sqrt_gamma.device) / half)
    args = scale * sqrt_gamma.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class TileGroupNorm(nn.GroupNorm):
    """GroupNorm (same parameters) whose statistics can be pooled over ``tiles`` consecutive batch items,
    the tiles of one image: the normalisation then no longer depends on one tile's content."""

    tiles: int = 1

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None,
                shift: torch.Tensor | None = None) -> torch.Tensor:
        """``scale``, ``shift`` ``(C,)``: a modulation ``y * (1 + scale) + shift`` shared by the whole batch,
        folded into the affine parameters (no extra pass over the activations)."""
        weight, bias = self.weight, self.bias
        if scale is not None:
            weight, bias = weight * (1 + scale), bias * (1 + scale) + shift
        if self.tiles == 1:
            return F.group_norm(x, self.num_groups, weight, bias, self.eps)
        b, c, h, w = x.shape
        t = self.tiles
        # an image's tiles stacked into one tall image (a free view of a channels-last batch), normalised natively
        tall = x.reshape(b // t, t, c, h, w).permute(0, 2, 1, 3, 4).reshape(b // t, c, t * h, w)
        y = F.group_norm(tall, self.num_groups, weight, bias, self.eps)
        return y.reshape(b // t, c, t, h, w).permute(0, 2, 1, 3, 4).reshape(b, c, h, w)


def _norm(c: int) -> nn.GroupNorm:
    return TileGroupNorm(min(8, c), c)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``emb`` ``(B, E)``, or ``(1, E)`` for one noise level shared by the batch (inference)."""
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        scale, shift = self.emb(emb).chunk(2, dim=1)
        if len(emb) == 1:
            h = self.norm2(h, scale[0], shift[0])
        else:
            h = self.norm2(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        return self.conv2(F.silu(h, inplace=True)).add_(self.skip(x))


def window_starts(size: int, window: int) -> list[int]:
    """Starts of the fewest ``window``-pixel windows covering ``[0, size)``, evenly spread (overlapping when
    ``size`` is not a multiple of ``window``)."""
    if size <= window:
        return [0]
    n = math.ceil(size / window)
    return [round(i * (size - window) / (n - 1)) for i in range(n)]


def windowed(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, window: int) -> torch.Tensor:
    """``fn`` applied to ``window`` x ``window`` windows of ``(B, C, H, W)``: one reshape when they tile the
    image exactly, else overlapping windows averaged where they overlap."""
    b, c, h, w = x.shape
    if h % window == 0 and w % window == 0:
        nh, nw = h // window, w // window
        parts = x.reshape(b, c, nh, window, nw, window).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, window, window)
        y = fn(parts)
        return y.reshape(b, nh, nw, c, window, window).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
    wh, ww = min(window, h), min(window, w)
    corners = [(r, q) for r in window_starts(h, window) for q in window_starts(w, window)]
    y = fn(torch.cat([x[..., r:r + wh, q:q + ww] for r, q in corners]))
    out, count = torch.zeros_like(x), torch.zeros(h, w, dtype=x.dtype, device=x.device)
    for i, (r, q) in enumerate(corners):
        out[..., r:r + wh, q:q + ww] += y[i * b:(i + 1) * b]
        count[r:r + wh, q:q + ww] += 1
    return out / count


class Attention(nn.Module):
    """Self-attention over an image's pixels, or within ``window`` x ``window`` windows (0: the whole image)."""

    window: int = 0

    def __init__(self, c: int, heads: int = 4):
        super().__init__()
        self.heads, self.norm = heads, _norm(c)
        self.qkv, self.out = nn.Conv2d(c, 3 * c, 1), nn.Conv2d(c, c, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.window and max(x.shape[-2:]) > self.window:
            return windowed(self._attend, x, self.window)
        return self._attend(x)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        y = F.scaled_dot_product_attention(q, k, v)  # (b, heads, hw, c/heads)
        return x + self.out(y.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """``forward(y_t, cond, sqrt_gamma)``: ``(B,1,S,S)``, ``(B,2,S,S)``, ``(B,)`` -> predicted noise ``(B,1,S,S)``;
    ``sqrt_gamma`` ``(1,)``: one noise level for the whole batch (sampling; each block's modulation then
    rides on its GroupNorm's affine parameters instead of a pass over the activations).

    ``S`` must be divisible by ``2 ** (len(mults) - 1)``."""

    def __init__(self, base: int = 16, mults: tuple[int, ...] = (1, 2, 2), num_res: int = 2, cond_channels: int = 2):
        super().__init__()
        self.config = {"base": base, "mults": list(mults), "num_res": num_res, "cond_channels": cond_channels}
        emb_dim = 4 * base
        self.emb_dim = emb_dim
        self.embed = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.inp = nn.Conv2d(1 + cond_channels, base, 3, padding=1)
        chans, skips = [base * m for m in mults], [base]
        self.down, c = nn.ModuleList(), base
        for i, co in enumerate(chans):
            for _ in range(num_res):
                self.down.append(ResBlock(c, co, emb_dim))
                c = co
                skips.append(c)
            if i < len(chans) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid = nn.ModuleList([ResBlock(c, c, emb_dim), Attention(c), ResBlock(c, c, emb_dim)])
        self.up = nn.ModuleList()
        for i, co in reversed(list(enumerate(chans))):
            for _ in range(num_res + 1):
                self.up.append(ResBlock(c + skips.pop(), co, emb_dim))
                c = co
            if i == len(chans) - 1:
                self.up.append(Attention(c))
            if i > 0:
                upsample = nn.Upsample(scale_factor=2, mode="nearest")
                self.up.append(nn.Sequential(upsample, nn.Conv2d(c, c, 3, padding=1)))
        self.out = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, 1, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @property
    def coarsest_factor(self) -> int:
        """Downsampling from the input to the coarsest level, where attention runs."""
        return 2 ** (len(self.config["mults"]) - 1)

    @contextmanager
    def inference_layout(self, tiles_per_image: int = 1, window: int = 0) -> Iterator[None]:
        """Within the block: every GroupNorm's statistics taken over ``tiles_per_image`` consecutive batch items
        (the tiles of one image), and attention within ``window``-pixel windows of the input (0: over the whole
        image); the training layout (per item, whole image) is restored after."""
        norms = [m for m in self.modules() if isinstance(m, TileGroupNorm)]
        attentions = [m for m in self.modules() if isinstance(m, Attention)]
        for m in norms:
            m.tiles = tiles_per_image
        for m in attentions:
            m.window = window // self.coarsest_factor
        try:
            yield
        finally:
            for m in norms:
                m.tiles = 1
            for m in attentions:
                m.window = 0

    def forward(self, y_t: torch.Tensor, cond: torch.Tensor, sqrt_gamma: torch.Tensor) -> torch.Tensor:
        emb = self.embed(noise_level_embedding(sqrt_gamma, self.emb_dim))   # (1, E) when the batch shares one level
        h = self.inp(torch.cat([y_t, cond], dim=1))
        hs = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        for layer in self.up:
            h = layer(torch.cat([h, hs.pop()], dim=1), emb) if isinstance(layer, ResBlock) else layer(h)
        return self.out(h)
