"""How much of psi's tile grid shows in a per-pixel std map (for tests/test_seams.py and benchmarks/seams.py).

Background blocks (``block`` SR pixels square, no signal in the mean KDE) are taken at two kinds of place
of the nominal tile grid: inside the tiles (centred on each tile's own, non-overlapped part) and on the
overlaps (centred on a strip shared by two tiles, in one axis or both). If each tile sets its own std
level, the medians of inside blocks scatter more than those of overlap blocks, which mix two levels:
the ratio of their variances is 1 without any trace of the tiles and grows with the patchwork.
"""
from __future__ import annotations

import numpy as np

from napari_smlm_uq.inference.tiling import tile_starts

BACKGROUND_KDE = 0.1  # a block whose mean KDE exceeds this anywhere holds signal (KDE peak of an emitter ~0.6)


def block_centres(size: int, tile: int, overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres (SR px) of the tiles' own parts and of the overlap strips along one axis of ``size`` pixels."""
    starts = tile_starts(size, tile, overlap)
    ends = [s + tile for s in starts]
    inside = [(a + b) / 2 for a, b in zip([0, *ends[:-1]], [*starts[1:], size])]
    shared = [(b + e) / 2 for b, e in zip(starts[1:], ends[:-1])]
    return np.array(inside), np.array(shared)


def _block_medians(std: np.ndarray, mean: np.ndarray, centres: list[tuple[float, float]], block: int) -> np.ndarray:
    half = block // 2
    out = []
    for r, c in centres:
        r0, c0 = int(round(r)) - half, int(round(c)) - half
        if r0 < 0 or c0 < 0 or r0 + block > std.shape[0] or c0 + block > std.shape[1]:
            continue
        if mean[r0:r0 + block, c0:c0 + block].max() <= BACKGROUND_KDE:
            out.append(np.median(std[r0:r0 + block, c0:c0 + block]))
    return np.array(out)


def tile_seam_ratio(std: np.ndarray, mean: np.ndarray, tile: int = 64, overlap: int = 16, block: int = 16) -> float:
    """Variance of background-block medians inside tiles over that of blocks on the overlaps, for one
    ``(4H, 4W)`` std map (or the median over a ``(T, 4H, 4W)`` stack). NaN without enough blocks."""
    if std.ndim == 3:
        return float(np.nanmedian([tile_seam_ratio(s, m, tile, overlap, block) for s, m in zip(std, mean)]))
    (ri, rs), (ci, cs) = block_centres(std.shape[0], tile, overlap), block_centres(std.shape[1], tile, overlap)
    inside = [(r, c) for r in ri for c in ci]
    shared = [(r, c) for r in rs for c in np.concatenate([ci, cs])] + [(r, c) for r in ri for c in cs]
    a, b = _block_medians(std, mean, inside, block), _block_medians(std, mean, shared, block)
    if len(a) < 3 or len(b) < 3 or np.var(b) == 0:
        return float("nan")
    return float(np.var(a) / np.var(b))
