"""psi: conditional U-Net noise predictor (Ho 2020 backbone, SR3/WaveGrad conditioning).

Input channels: the noisy KDE ``y_t``, ``phi(x)`` and the bicubic-upsampled frame, concatenated.
The continuous noise level enters as a sinusoidal embedding of ``sqrt(gamma)``. Self-attention
runs at the coarsest level (16x16 for the 64x64 SR training tiles). Output: predicted noise.
"""
from __future__ import annotations

import math

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tiles == 1:
            return super().forward(x)
        b, c, h, w = x.shape
        t = self.tiles
        # an image's tiles stacked into one tall image (a free view of a channels-last batch), normalised natively
        tall = x.reshape(b // t, t, c, h, w).permute(0, 2, 1, 3, 4).reshape(b // t, c, t * h, w)
        y = F.group_norm(tall, self.num_groups, self.weight, self.bias, self.eps)
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
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, c: int, heads: int = 4):
        super().__init__()
        self.heads, self.norm = heads, _norm(c)
        self.qkv, self.out = nn.Conv2d(c, 3 * c, 1), nn.Conv2d(c, c, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        y = F.scaled_dot_product_attention(q, k, v)  # (b, heads, hw, c/heads)
        return x + self.out(y.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """``forward(y_t, cond, sqrt_gamma)``: ``(B,1,S,S)``, ``(B,2,S,S)``, ``(B,)`` -> predicted noise ``(B,1,S,S)``.

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
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)))
        self.out = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, 1, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def pool_norm_statistics(self, tiles: int) -> None:
        """Take every GroupNorm's statistics over ``tiles`` consecutive batch items (1: per item, as trained)."""
        for m in self.modules():
            if isinstance(m, TileGroupNorm):
                m.tiles = tiles

    def forward(self, y_t: torch.Tensor, cond: torch.Tensor, sqrt_gamma: torch.Tensor) -> torch.Tensor:
        emb = self.embed(noise_level_embedding(sqrt_gamma, self.emb_dim))
        h = self.inp(torch.cat([y_t, cond], dim=1))
        hs = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.out(h)
