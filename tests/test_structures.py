"""Structured emitters (physics/structures.py): densities, worm-like chain statistics, cluster sizes, blinking."""
from dataclasses import replace

import numpy as np
import pytest
from scipy.spatial import cKDTree

from napari_smlm_uq.io.files import InputError
from napari_smlm_uq.physics.simulate import BLINK_MOLECULES, SimulationSettings, blink, simulate
from napari_smlm_uq.physics.structures import STRUCTURES, cluster_points, structure_points, worm_like_chains

SHAPE = (64, 64)
DENSITY_PX = 0.02          # molecules per pixel^2 (2 /um^2 at 100 nm pixels)
FILAMENTS = dict(filaments_px=0.001, length=50.0, persistence=20.0, cluster_size=10.0, cluster_radius=1.0)


def draw_fields(kind: str, n: int = 60, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [structure_points(rng, kind, SHAPE, DENSITY_PX, **FILAMENTS) for _ in range(n)]


@pytest.mark.parametrize("kind", STRUCTURES)
def test_mean_density_is_the_setting(kind):
    counts = np.array([len(p) for p in draw_fields(kind)])
    expected = DENSITY_PX * SHAPE[0] * SHAPE[1]                       # 81.9 molecules per field
    se = counts.std(ddof=1) / np.sqrt(len(counts))
    assert abs(counts.mean() - expected) < 4 * se, (counts.mean(), expected, se)
    assert se < 0.15 * expected   # the tolerance is tight enough to mean something
    if kind != "clusters":        # a Poisson number per field, as for uniform emitters
        assert counts.var(ddof=1) == pytest.approx(expected, rel=0.4)


def neighbours_within(points: list[np.ndarray], r: float) -> float:
    """Mean number of other molecules within ``r`` px of a molecule at least ``r`` from the field's edge."""
    counts = []
    for p in points:
        inner = ((p >= r - 0.5) & (p <= np.array(SHAPE) - 0.5 - r)).all(axis=1)
        counts += [len(found) - 1 for found in cKDTree(p).query_ball_point(p[inner], r)]
    return float(np.mean(counts))


def test_filaments_crowd_molecules_several_times_the_mean():
    r = 1.0
    uniform = neighbours_within(draw_fields("uniform", 200), r)
    filaments = neighbours_within(draw_fields("filaments", 200), r)
    poisson = DENSITY_PX * np.pi * r**2                                          # 0.063
    along = DENSITY_PX / (FILAMENTS["filaments_px"] * FILAMENTS["length"]) * 2 * r   # 0.8 on a straight stretch
    assert uniform == pytest.approx(poisson, rel=0.1)
    # a field's molecules share the contour inside it: fields crossed by fewer filaments crowd them more,
    # so the mean is above the value for the mean contour (1.14-1.25x over seeds 0-2)
    assert along + poisson < filaments < 1.4 * (along + poisson)
    assert filaments > 8 * uniform


def test_clusters_crowd_molecules_and_have_the_set_size_and_radius():
    rng = np.random.default_rng(3)
    centres, points, label = cluster_points(rng, (200, 200), 0.2, size=12.0, radius=1.5)
    sizes = np.bincount(label, minlength=len(centres))
    assert len(centres) > 500
    assert sizes.mean() == pytest.approx(12.0, abs=4 * np.sqrt(12.0 / len(centres)))
    assert sizes.var() == pytest.approx(12.0, rel=0.2)   # Poisson
    offsets = points - centres[label]
    assert offsets.std(axis=0) == pytest.approx([1.5, 1.5], rel=0.03)
    assert neighbours_within(draw_fields("clusters"), 1.0) > 5 * neighbours_within(draw_fields("uniform"), 1.0)


def test_worm_like_chain_tangents_decorrelate_with_the_persistence_length():
    persistence, length = 10.0, 40.0
    chains = worm_like_chains(np.random.default_rng(1), 3000, length, persistence)
    steps = np.diff(chains, axis=1)
    ds = np.linalg.norm(steps, axis=-1)
    np.testing.assert_allclose(ds, length / steps.shape[1])   # fixed contour steps
    theta = np.arctan2(steps[..., 0], steps[..., 1])
    for s in (2.0, 5.0, 10.0, 20.0, 39.0):
        k = int(round(s / ds[0, 0]))
        assert np.mean(np.cos(theta[:, k] - theta[:, 0])) == pytest.approx(np.exp(-s / (2 * persistence)), abs=0.03)
    end2 = np.sum((chains[:, -1] - chains[:, 0]) ** 2, axis=1)   # 2D WLC: 4 Lp L (1 - 2 Lp/L (1 - e^(-L/2Lp)))
    expected = 4 * persistence * length * (1 - 2 * persistence / length * (1 - np.exp(-length / (2 * persistence))))
    assert end2.mean() == pytest.approx(expected, rel=0.05)


def test_blinking_molecules_are_on_a_fifth_of_the_time_for_on_time_frames():
    on = blink(np.random.default_rng(2), 400, 500, on_time=3.0)
    assert on.mean() == pytest.approx(1 / BLINK_MOLECULES, abs=0.01)
    flips = np.diff(on.astype(int), axis=0)
    runs = on[1:].sum() / max((flips == 1).sum(), 1)     # frames on per switch-on
    assert runs == pytest.approx(3.0, rel=0.05)
    independent = blink(np.random.default_rng(2), 400, 500, on_time=BLINK_MOLECULES / (BLINK_MOLECULES - 1))
    assert np.corrcoef(independent[1:].ravel(), independent[:-1].ravel())[0, 1] == pytest.approx(0.0, abs=0.02)


def test_simulate_on_filaments_keeps_molecules_fixed_and_the_mean_density():
    settings = SimulationSettings(frames=40, size=64, density=1.0, structure="filaments", seed=5)
    um2 = (64 * 0.1) ** 2
    for seed in range(4):   # 41 emitters per frame on average; 8.2 x 41 molecules, a fifth on per frame
        gt = simulate(replace(settings, seed=seed)).emitters
        assert len(gt) / settings.frames / um2 == pytest.approx(1.0, abs=0.25)
    positions = np.column_stack([gt.row, gt.col])
    assert len(np.unique(positions, axis=0)) < 0.6 * len(positions)   # the same molecules come back


@pytest.mark.parametrize("change, message", [
    (dict(structure="membranes"), "structure must be one of uniform, filaments, clusters"),
    (dict(persistence_length=0.0), "persistence length must be > 0"),
    (dict(cluster_size=-1.0), "cluster size must be > 0"),
])
def test_bad_structure_settings_are_refused(change, message):
    with pytest.raises(InputError, match=message):
        SimulationSettings(**change).validate()


def test_structured_training_patches_have_the_mean_density_and_crowd():
    from napari_smlm_uq.training import TrainSettings
    from napari_smlm_uq.training_data import PATCH, structured_emitters

    s = TrainSettings(density=(4.0, 4.0))
    density_px = (0.04, 0.04)                                    # 4 /um^2 at 100 nm pixels
    rng = np.random.default_rng(4)
    gt = structured_emitters(rng, 2000, density_px, s)
    per_patch = np.bincount(gt.frame, minlength=2000)
    expected = 0.04 * PATCH**2                                   # 10.2 emitters per patch
    assert per_patch.mean() == pytest.approx(expected, abs=4 * per_patch.std() / np.sqrt(2000))
    assert per_patch.var() > 1.5 * expected    # half are clusters, their number per patch more spread than Poisson
    points = [np.column_stack([gt.row, gt.col])[gt.frame == t] for t in range(2000)]
    close = np.mean([len(cKDTree(p).query_pairs(1.0)) for p in points])   # pairs within 1 px per patch
    assert 2 * close / per_patch.mean() > 5 * 0.04 * np.pi      # neighbours within 1 px: over 5x uniform's
    with pytest.raises(InputError, match=r"structured must be in \[0, 1\]"):
        TrainSettings(structured=1.5).validate()


def test_filaments_that_never_reach_the_field_are_refused(tmp_path, capsys):
    from napari_smlm_uq.cli import main

    with pytest.raises(ValueError, match="no filament crossed the field in 100 draws"):
        structure_points(np.random.default_rng(0), "filaments", SHAPE, DENSITY_PX,
                         **{**FILAMENTS, "filaments_px": 1e-9})
    out = tmp_path / "s.tif"
    assert main(["simulate", str(out), "--frames", "2", "--structure", "filaments", "--filament-density", "1e-9"]) == 2
    assert "no filament crossed the field" in capsys.readouterr().err and not out.exists()
