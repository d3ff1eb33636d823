"""Overlapping tiles so memory stays bounded for large frames, without seams.

phi tiles are cropped with a margin wider than its receptive field (exactly equal to the untiled
result). psi tiles are blended every diffusion step with a linear ramp over the overlap, so the
noise prediction is one smooth field across the frame.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the fewest tiles of ``tile`` pixels covering ``[0, size)`` with at least ``overlap``
    overlap, evenly spread."""
    if size <= tile:
        return [0]
    n = int(np.ceil((size - overlap) / (tile - overlap)))
    return sorted({int(round(v)) for v in np.linspace(0, size - tile, n)})


def fitted_tile(size: int, tile: int, overlap: int, multiple: int = 16) -> int:
    """The smallest tile (a multiple of ``multiple`` pixels, at most ``tile``) that covers ``size`` pixels with
    as few tiles as ``tile`` would, overlapping by at least ``overlap``: no more pixels than needed."""
    if size <= tile:
        return size
    n = int(np.ceil((size - overlap) / (tile - overlap)))
    return min(tile, int(np.ceil((size + (n - 1) * overlap) / n / multiple)) * multiple)


def ramp(tile: int, overlap: int) -> np.ndarray:
    """1D blending weights: rising linearly over ``overlap`` pixels at both ends, never zero."""
    w = np.ones(tile)
    if overlap > 0:
        edge = (np.arange(overlap) + 0.5) / overlap
        w[:overlap], w[-overlap:] = edge, edge[::-1]
    return w


class TileGrid:
    """The tiles of an ``(H, W)`` image and their blending weights: tiles of at most ``tile`` pixels, as small
    as the same number of tiles allows (:func:`fitted_tile`)."""

    def __init__(self, shape: tuple[int, int], tile: int, overlap: int):
        th, tw = fitted_tile(shape[0], tile, overlap), fitted_tile(shape[1], tile, overlap)
        self.shape, self.size = shape, (th, tw)
        rows, cols = tile_starts(shape[0], th, overlap), tile_starts(shape[1], tw, overlap)
        self.slices = [(slice(r, r + th), slice(c, c + tw)) for r in rows for c in cols]
        wr, wc = ramp(th, overlap if th < shape[0] else 0), ramp(tw, overlap if tw < shape[1] else 0)
        self.weight = torch.from_numpy(np.outer(wr, wc)).float()
        norm = np.outer(1.0 / _coverage(wr, rows, shape[0]), 1.0 / _coverage(wc, cols, shape[1]))
        self.norm = torch.from_numpy(norm).float()

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B * n_tiles, C, th, tw)``, tiles of one image consecutive."""
        return torch.stack([x[..., r, c] for r, c in self.slices], dim=1).flatten(0, 1)

    def merge(self, tiles: torch.Tensor, batch: int) -> torch.Tensor:
        """Blend ``(B * n_tiles, C, th, tw)`` back into ``(B, C, H, W)``."""
        tiles = tiles.reshape(batch, len(self.slices), *tiles.shape[1:])
        out = torch.zeros(batch, tiles.shape[2], *self.shape, dtype=torch.float32, device=tiles.device)
        w = self.weight.to(tiles.device)
        for i, (r, c) in enumerate(self.slices):
            out[..., r, c] += tiles[:, i].float() * w
        return out * self.norm.to(tiles.device)


def _coverage(weight: np.ndarray, starts: list[int], size: int) -> np.ndarray:
    """Summed 1D blending weights of tiles at ``starts`` (the 2D sum is the outer product of two)."""
    total = np.zeros(size)
    for s in starts:
        total[s:s + len(weight)] += weight
    return total


def chunked(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor, max_batch: int) -> torch.Tensor:
    """Apply ``fn`` to the inputs in batches of at most ``max_batch`` along dimension 0."""
    n = inputs[0].shape[0]
    return torch.cat([fn(*(x[i:i + max_batch] for x in inputs)) for i in range(0, n, max_batch)])


def phi_tiled(phi: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, margin: int,
              factor: int = 4) -> torch.Tensor:
    """Run a fully convolutional upsampler on ``(B, 1, H, W)`` in cropped tiles of ``tile`` raw pixels
    plus ``margin`` on each side; identical to the untiled result when ``margin`` covers the receptive field."""
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        return phi(x)
    out = None
    for r in range(0, h, tile):
        for c in range(0, w, tile):
            r0, c0 = max(r - margin, 0), max(c - margin, 0)
            r1, c1 = min(r + tile + margin, h), min(c + tile + margin, w)
            y = phi(x[..., r0:r1, c0:c1])
            if out is None:
                out = torch.empty(*y.shape[:2], h * factor, w * factor, dtype=y.dtype, device=y.device)
            rr, cc = min(r + tile, h), min(c + tile, w)
            out[..., r * factor:rr * factor, c * factor:cc * factor] = \
                y[..., (r - r0) * factor:(rr - r0) * factor, (c - c0) * factor:(cc - c0) * factor]
    return out
