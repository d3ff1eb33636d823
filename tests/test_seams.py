"""The seam ratio of a std map (analysis/seams.py) and psi's shifted tile grids (inference/tiling.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_smlm_uq.analysis.seams import block_centres, tile_seam_ratio
from napari_smlm_uq.inference.tiling import SampleTiles, TileGrid, tile_starts


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


@pytest.mark.parametrize("shift", [0, 5, 47])
def test_shifted_grids_cover_the_image_and_blend_to_identity(shift):
    starts = tile_starts(256, 64, 16, shift)
    assert starts[0] == 0 and starts[-1] == 192 and np.all(np.diff(starts) <= 48)
    x = torch.rand(3, 2, 256, 200)
    tiles = SampleTiles([TileGrid((256, 200), 64, 16, (shift, 2 * shift % 48)), TileGrid((256, 200), 64, 16),
                         TileGrid((256, 200), 64, 16, (7, 1))])
    torch.testing.assert_close(tiles.merge(tiles.split(x)), x)
    shared = SampleTiles.fixed((256, 200), 64, 16, 3)
    assert shared.shared and torch.equal(shared.split(x[:1]), shared.split(x[:1].expand(3, -1, -1, -1)))
    torch.testing.assert_close(shared.merge(shared.split(x)), x)


def test_random_shifts_come_from_the_generator():
    a = SampleTiles.shifted((256, 256), 64, 16, 4, torch.Generator().manual_seed(1))
    b = SampleTiles.shifted((256, 256), 64, 16, 4, torch.Generator().manual_seed(1))
    assert [g.slices for g in a.grids] == [g.slices for g in b.grids]
    assert len({str(g.slices) for g in a.grids}) > 1


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
