"""The seam ratio of a std map (tests/seam_ratio.py) and what removes psi's tile grid (models/unet.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from seam_ratio import block_centres, tile_seam_ratio

from napari_smlm_uq.inference.tiling import TileGrid


def test_block_centres_of_the_256_px_grid():
    # tiles at 0, 48, 96, 144, 192: overlaps [48, 64), [96, 112) ... and the tiles' own parts between them
    inside, shared = block_centres(256, 64, 16)
    np.testing.assert_array_equal(shared, [56, 104, 152, 200])
    np.testing.assert_array_equal(inside, [24, 80, 128, 176, 232])


def test_ratio_is_one_without_tiles_and_large_for_a_patchwork():
    rng = np.random.default_rng(0)
    mean = np.zeros((256, 256))
    flat = np.stack([rng.gamma(20.0, 1e-3, (256, 256)) for _ in range(8)])
    assert tile_seam_ratio(flat, np.zeros_like(flat)) == pytest.approx(1.0, abs=0.6)
    # each tile its own level, blended over the overlaps as psi's noise predictions are
    grid = TileGrid((256, 256), 64, 16)
    levels = torch.from_numpy(rng.uniform(0.5, 2.0, (len(grid.slices), 1, 1, 1))).float()
    tiles = grid.split(torch.from_numpy(flat[:1]).float()[:, None]) * levels
    patch = grid.merge(tiles, 1)[0, 0].numpy()
    assert tile_seam_ratio(patch, mean) > 2.0
    bright = mean.copy()
    bright[:, :] = 1.0  # no background anywhere: no blocks, no ratio
    assert np.isnan(tile_seam_ratio(patch, bright))


def test_pooled_group_norm_equals_group_norm_over_the_tiles_side_by_side():
    from napari_smlm_uq.models.unet import TileGroupNorm

    torch.manual_seed(0)
    norm = TileGroupNorm(4, 8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    tiles = torch.randn(6, 8, 5, 5) * torch.arange(1, 7).float()[:, None, None, None]  # 2 images x 3 tiles
    torch.testing.assert_close(norm(tiles), torch.nn.functional.group_norm(tiles, 4, norm.weight, norm.bias))
    norm.tiles = 3
    side_by_side = torch.cat([tiles[0::3], tiles[1::3], tiles[2::3]], dim=-1)  # each image's tiles in a row
    expected = torch.nn.functional.group_norm(side_by_side, 4, norm.weight, norm.bias)
    torch.testing.assert_close(norm(tiles)[0::3], expected[..., :5])
    torch.testing.assert_close(norm(tiles)[2::3], expected[..., 10:])


def test_windowed_attention_stays_within_its_windows():
    from napari_smlm_uq.models.unet import Attention, windowed

    torch.manual_seed(0)
    att = Attention(8, heads=2)
    with torch.no_grad():
        att.out.weight.normal_()
    x = torch.randn(2, 8, 32, 48)
    att.window = 16
    y = att(x)
    blocks = [att._attend(x[..., r:r + 16, c:c + 16]) for r in (0, 16) for c in (0, 16, 32)]
    torch.testing.assert_close(y[..., 16:32, 32:48], blocks[5])  # exact windows: a reshape, no averaging
    torch.testing.assert_close(y[..., :16, :16], blocks[0])
    x2 = x.clone()
    x2[..., 0, 0] += 5.0  # a change in the first window leaves the others alone
    y2 = att(x2)
    assert (y2[..., :16, :16] - y[..., :16, :16]).abs().max() > 1e-3
    torch.testing.assert_close(y2[..., 16:, :], y[..., 16:, :])
    torch.testing.assert_close(y2[..., :, 16:], y[..., :, 16:])
    # a size that is no multiple of the window: overlapping windows (0 and 4 of 20), averaged on the overlap
    z = windowed(lambda t: t * t.mean(dim=(-2, -1), keepdim=True), x[..., :20, :16], 16)
    a, b = (x[..., r:r + 16, :16] * x[..., r:r + 16, :16].mean(dim=(-2, -1), keepdim=True) for r in (0, 4))
    torch.testing.assert_close(z[..., :4, :], a[..., :4, :])
    torch.testing.assert_close(z[..., 4:16, :], (a[..., 4:, :] + b[..., :12, :]) / 2)
    torch.testing.assert_close(z[..., 16:, :], b[..., 12:, :])


def test_inference_layout_is_restored():
    from napari_smlm_uq.models.unet import Attention, TileGroupNorm, UNet

    psi = UNet(base=8, mults=(1, 2, 2), num_res=1)
    with psi.inference_layout(3, 64):
        assert {m.window for m in psi.modules() if isinstance(m, Attention)} == {16}  # 64 px at 1/4 resolution
        assert {m.tiles for m in psi.modules() if isinstance(m, TileGroupNorm)} == {3}
    assert {m.window for m in psi.modules() if isinstance(m, Attention)} == {0}
    assert {m.tiles for m in psi.modules() if isinstance(m, TileGroupNorm)} == {1}
