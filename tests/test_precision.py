"""The precision check without ground truth (consecutive-frame pairs, NeNA, z std), the blinking
simulator and background maps, and the local background estimate of preprocessing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_smlm_uq.analysis.precision import (
    consecutive_frame_precision,
    consecutive_pairs,
    nena,
)
from napari_smlm_uq.inference.preprocessing import background, normalise
from napari_smlm_uq.localizations import Localizations
from napari_smlm_uq.physics.simulate import SimulationSettings, background_map, simulate


def localizations(frame, row, col, uncertainty) -> Localizations:
    n = len(frame)
    return Localizations(np.asarray(frame), np.asarray(row, float), np.asarray(col, float),
                         np.broadcast_to(np.asarray(uncertainty, float), (n,)).copy(), np.ones(n), np.full(n, np.nan))


def test_pairs_are_unambiguous_mutual_neighbours():
    #          frame 0: a lone molecule, two close ones;  frame 1: the lone one moved 0.2 px, one of the close ones
    locs = localizations([0, 0, 0, 1, 1, 2], [5.0, 20.0, 20.5, 5.2, 20.2, 40.0],
                         [5.0, 20.0, 20.0, 5.0, 20.0, 40.0], 0.1)
    i, j = consecutive_pairs(locs, radius=1.0)
    assert list(zip(i, j)) == [(0, 3)]   # 20.2 has two neighbours within 1 px in frame 0: ambiguous


@pytest.mark.slow
def test_nena_and_z_std_on_simulated_pairs():
    rng = np.random.default_rng(0)
    n, sigma = 4000, 0.08                      # raw px per axis
    truth = rng.uniform(0, 500, (n, 2))
    first, second = truth + sigma * rng.standard_normal((n, 2)), truth + sigma * rng.standard_normal((n, 2))
    frame = np.repeat(np.arange(n), 1)         # molecule k on in frames 2k and 2k+1, far apart from the others
    f = np.concatenate([2 * frame, 2 * frame + 1])
    xy = np.concatenate([first, second])
    check = consecutive_frame_precision(localizations(f, xy[:, 1], xy[:, 0], sigma), pixel_size=100.0)
    assert check.pairs == n
    assert check.nena_nm == pytest.approx(8.0, rel=0.04) and check.nena_se_nm < 0.2
    assert check.z_std_x == pytest.approx(1.0, rel=0.04)                           # d / sqrt(2 sigma^2): std 1
    assert check.z_robust_x == pytest.approx(1.0, rel=0.05) and check.z_robust_y == pytest.approx(1.0, rel=0.05)
    halved = consecutive_frame_precision(localizations(f, xy[:, 1], xy[:, 0], sigma / 2), pixel_size=100.0)
    assert halved.z_std_y == pytest.approx(2.0, rel=0.04)                          # uncertainty too small by 2
    assert halved.z_robust_y == pytest.approx(2.0, rel=0.05)
    # 3 % of the pairs are two different molecules 0.5 px apart in x and y (|z| about 4.4): the std rises by a
    # quarter, the robust std stays
    swap = rng.uniform(size=n) < 0.03
    moved = second + np.where(swap[:, None], 0.5 * np.sign(rng.standard_normal((n, 2))), 0.0)
    mixed = consecutive_frame_precision(localizations(f, *np.concatenate([first, moved])[:, ::-1].T, sigma), 100.0)
    assert mixed.pairs > 0.99 * n and mixed.z_std_x > 1.2 and mixed.z_std_y > 1.2
    assert mixed.z_robust_x == pytest.approx(1.0, rel=0.05) and mixed.z_robust_y == pytest.approx(1.0, rel=0.05)


def test_nena_ignores_a_share_of_random_pairs():
    rng = np.random.default_rng(1)
    true = np.hypot(*(0.1 * np.sqrt(2) * rng.standard_normal((2, 3000))))
    random = 1.0 * np.sqrt(rng.uniform(0, 1, 300))     # uniform over the disc of radius 1
    sigma, _ = nena(np.concatenate([true[true < 1], random]), radius=1.0)
    assert sigma == pytest.approx(0.1, rel=0.05)


def test_blinking_molecules_stay_put_and_vary_in_photons():
    sim = simulate(SimulationSettings(frames=300, size=32, density=1.0, photons=2000.0, on_time=4.0, seed=2))
    e = sim.emitters
    positions = np.unique(np.column_stack([e.row, e.col]), axis=0)
    assert len(positions) < len(e) / 5                                  # the same molecules, many frames each
    on_per_frame = len(e) / 300
    assert on_per_frame == pytest.approx(1.0 * 32 * 32 * 0.01, rel=0.2)  # density of molecules on, per um^2
    key = e.row * 1e6 + e.col
    lengths = [np.diff(np.flatnonzero(np.diff(np.r_[0, np.isin(np.arange(300), e.frame[key == k]), 0]))).tolist()[::2]
               for k in np.unique(key)[:40]]
    assert np.mean(np.concatenate(lengths)) == pytest.approx(4.0, rel=0.25)   # mean on-time in frames
    same = key == key[0]
    assert np.std(e.photons[same]) > 0.1 * np.mean(e.photons[same])


def test_default_simulation_unchanged_by_the_new_options():
    s = simulate(SimulationSettings(frames=3, size=16, seed=5))   # numbers from before blinking and maps existed
    assert len(s.emitters) == 6 and s.adu.sum() == pytest.approx(101752.97124581787, rel=1e-12)
    assert s.adu[1, 3, :4] == pytest.approx([118.91326702, 131.71547116, 119.17744656, 121.69836908])


@pytest.mark.parametrize("kind", ["gradient", "illumination", "cells"])
def test_background_maps(kind):
    m = background_map(kind, (40, 60), 6.0, np.random.default_rng(0))
    assert m.mean() == pytest.approx(1.0) and m.max() / m.min() == pytest.approx(6.0)
    sim = simulate(SimulationSettings(frames=2, size=(40, 60), density=0.0, background=20.0, background_map=kind,
                                      seed=1))
    assert sim.omega[1].mean() == pytest.approx(20.0) and sim.omega[1].max() / sim.omega[1].min() == pytest.approx(6.0)


def test_local_background_follows_a_gradient():
    cols = torch.arange(64, dtype=torch.float32)
    ramp = (10.0 + 50.0 * cols / 63).expand(1, 1, 48, 64).clone()
    local, frame = background(ramp, "local"), background(ramp, "frame")
    inner = (local - ramp)[..., 4:-4, 4:-4].abs().max()
    assert inner < 0.5                                    # bilinear between 8 px tile medians: exact for a ramp inside
    assert frame.shape == (1, 1, 1, 1) and float(frame) == pytest.approx(35.0, abs=1.0)
    assert normalise(ramp, "local")[..., 4:-4, 4:-4].abs().max() < 0.05


def test_random_pairs_give_no_nena():
    """Pairs spread uniformly over the link disc (no molecule seen twice): NeNA is not determined."""
    from napari_smlm_uq.analysis.precision import PrecisionCheck, nena

    rng = np.random.default_rng(0)
    d = np.sqrt(rng.uniform(0, 1, 40))   # uniform over the unit disc: density 2 d
    assert np.isnan(nena(d)[0])
    assert "NeNA not determined" in PrecisionCheck(40, *nena(d), 1.0, 1.0, 1.0, 1.0).describe()


def test_pairs_no_closer_than_chance_do_not_test_the_uncertainty():
    """Two frames whose spots are 0-1 px apart at random (two different molecules, not one seen twice): no
    NeNA, and no z figures, which would otherwise read as badly calibrated uncertainties."""
    from napari_smlm_uq.analysis.precision import consecutive_frame_precision

    rng = np.random.default_rng(1)
    grid = np.stack(np.meshgrid(np.arange(10) * 5.0, np.arange(10) * 5.0), -1).reshape(-1, 2)
    r, a = np.sqrt(rng.uniform(0, 1, 100)), rng.uniform(0, 2 * np.pi, 100)   # uniform over the link disc
    second = grid + np.column_stack([r * np.cos(a), r * np.sin(a)])
    rows, cols = np.concatenate([grid[:, 0], second[:, 0]]), np.concatenate([grid[:, 1], second[:, 1]])
    locs = Localizations(np.repeat([0, 1], 100), rows, cols, np.full(200, 0.01), np.ones(200), np.full(200, np.nan))
    check = consecutive_frame_precision(locs, 100.0)
    assert check.pairs == 100 and np.isnan(check.nena_nm)
    assert np.isnan([check.z_std_x, check.z_std_y, check.z_robust_x, check.z_robust_y]).all()
    assert "no check of the uncertainties" in check.describe() and "d/sqrt" not in check.describe()
