"""Refinement of localizations on the raw pixels (inference/refine.py) and in the pipeline."""
from __future__ import annotations

import numpy as np
import pytest

from napari_smlm_uq.inference.pipeline import PredictSettings, predict
from napari_smlm_uq.inference.refine import DIFFUSION_WEIGHT, Refiner, extract_boxes, neighbour_slots, refine_frame
from napari_smlm_uq.localizations import Localizations
from napari_smlm_uq.models import registry
from napari_smlm_uq.physics.camera import Camera
from napari_smlm_uq.physics.crlb import crlb
from napari_smlm_uq.physics.psf import render_emitters
from napari_smlm_uq.physics.simulate import SimulationSettings, simulate

CAMERA = Camera(offset=100.0, gain=2.0, read_noise=1.5)
SIM = SimulationSettings(frames=8, size=32, density=1.0, photons=2000.0, background=20.0, psf_sigma=1.2,
                         camera=CAMERA, seed=77)


def truth_as_localizations(stack, rng, jitter: float) -> list[Localizations]:
    """Per frame, the true positions moved by ``jitter`` px (a deep localizer's error), uncertainty 0.1 px."""
    out = []
    for t in range(stack.settings.frames):
        g = stack.emitters.in_frame(t)
        n = len(g)
        out.append(Localizations(np.full(n, t), g.row + rng.normal(0, jitter, n), g.col + rng.normal(0, jitter, n),
                                 np.full(n, 0.1), np.ones(n), np.full(n, np.nan)))
    return out


def test_boxes_mask_pixels_outside_the_frame_and_slots_hold_neighbours():
    image = np.arange(36, dtype=float).reshape(6, 6)
    boxes, inside, corner = extract_boxes(image, np.array([0.2, 3.0]), np.array([5.4, 3.0]), 1)
    assert corner.tolist() == [[-1, 4], [2, 2]]
    assert inside[0].tolist() == [[False] * 3, [True, True, False], [True, True, False]]
    assert boxes[0, 1, :2].tolist() == [4.0, 5.0] and boxes[0, 0].sum() == 0
    assert np.array_equal(boxes[1], image[2:5, 2:5])
    slots, active = neighbour_slots(np.array([10.0, 11.0, 30.0]), np.array([10.0, 12.0, 10.0]), half=3, k=3)
    assert slots[:, 0].tolist() == [0, 1, 2] and slots[0, 1] == 1 and slots[1, 1] == 0
    assert active.tolist() == [[True, True, False], [True, True, False], [True, False, False]]


def test_refiner_brings_jittered_positions_to_the_bound_and_learns_the_width():
    stack = simulate(SIM)
    rng = np.random.default_rng(5)
    deep = truth_as_localizations(stack, rng, jitter=0.25)
    learner = Refiner(CAMERA)
    for t, loc in enumerate(deep):
        learner(loc, stack.adu[t])
    assert learner.width() == pytest.approx(1.2, abs=0.05)
    refiner = Refiner(CAMERA, psf_sigma=learner.width())
    refined = Localizations.concat([refiner(loc, stack.adu[t]) for t, loc in enumerate(deep)])
    gt = stack.emitters
    err = np.concatenate([refined.row - gt.row, refined.col - gt.col])
    bound = crlb(2000.0, 20.0, 1.2, 1.5)[0]
    assert np.median(np.abs(err)) < 2.0 * 0.6745 * bound            # the bulk near the bound (overlaps, edges)
    assert np.median(np.abs(err)) < 0.3 * 0.6745 * 0.25             # far below the jitter it started from
    # isolated spots report the bound; spots sharing their box add a share of the diffusion spread (0.1 px)
    assert 0.8 * bound < np.median(refined.uncertainty) < 1.2 * np.sqrt(bound**2 + DIFFUSION_WEIGHT * 0.1**2)
    assert refined.uncertainty.min() == pytest.approx(bound, rel=0.25)


def test_refiner_with_a_known_width_and_an_empty_frame():
    refiner = Refiner(CAMERA, psf_sigma=1.2)
    empty = refiner(Localizations.empty(), np.full((16, 16), 100.0))
    assert len(empty) == 0 and refiner.widths == []
    crowded = Localizations(np.zeros(2, int), np.array([5.0, 6.0]), np.array([5.0, 6.0]), np.full(2, 0.1), np.ones(2),
                            np.full(2, np.nan))
    learner = Refiner(CAMERA)   # no isolated spot to learn the width from: the default stays
    assert len(learner(crowded, np.random.default_rng(0).normal(120.0, 3.0, (16, 16)))) == 2
    assert learner.widths == [] and learner.width() == 1.0


def test_pipeline_refines_by_default():
    """The bundled phi on a small stack: refined positions differ from the KDE read-out and are closer
    to the truth; phi alone keeps no uncertainty."""
    stack = simulate(SimulationSettings(frames=3, size=32, density=0.5, seed=78))
    models = registry.load("default")
    runs = {r: [f.localizations for f in predict(stack.adu, models, PredictSettings(samples=0, device="cpu", refine=r))]
            for r in (False, True)}
    plain, refined = Localizations.concat(runs[False]), Localizations.concat(runs[True])
    assert len(plain) == len(refined) and not np.allclose(plain.row, refined.row)
    assert np.isnan(refined.uncertainty).all()
    gt = stack.emitters

    def error(locs):
        d = np.hypot(locs.row[:, None] - gt.row[None], locs.col[:, None] - gt.col[None])
        d[locs.frame[:, None] != gt.frame[None]] = np.inf
        return d.min(axis=1)
    assert np.median(error(refined)) < np.median(error(plain))


def test_a_box_with_a_missed_emitter_keeps_the_deep_position():
    """Two bright emitters 2.5 px apart, only one localized: the fit cannot explain the box (chi-square),
    so the deep position is kept; with both localized, both are refined."""
    rng = np.random.default_rng(9)
    rows, cols = np.array([10.2, 10.0]), np.array([10.1, 12.6])
    e = rng.poisson(render_emitters(rows, cols, np.array([3000.0, 6000.0]), (21, 21), 1.0) + 20.0).astype(float)
    alone = refine_frame(e, rows[:1] + 0.1, cols[:1] - 0.1, 1.0)
    assert not alone.ok[0] and alone.row[0] == pytest.approx(10.3)
    both = refine_frame(e, rows + 0.1, cols - 0.1, 1.0)
    assert both.ok.all() and np.abs(both.col - cols).max() < 0.1
    assert both.crowded.all() and not alone.crowded.any()   # the diffusion spread counts where spots overlap


def test_two_emitters_fitted_as_one_widen_the_uncertainty_to_their_offset():
    """Pairs 1.2 px apart localized once, at their centre, over 200 noisy boxes: the spot's width beyond the
    PSF's brings the reported uncertainty up to the offset from either emitter (per axis, on average),
    while single emitters of the same brightness keep their Cramer-Rao bound."""
    rng = np.random.default_rng(10)
    d, n, photons = 1.2, 200, 2000.0
    angle = rng.uniform(0, np.pi, n)
    centre = np.column_stack([rng.uniform(9.5, 10.5, n), rng.uniform(9.5, 10.5, n)])
    pair, single = [], []
    for (r, c), a in zip(centre, angle):
        dr, dc = 0.5 * d * np.sin(a), 0.5 * d * np.cos(a)
        mean = render_emitters(np.array([r - dr, r + dr]), np.array([c - dc, c + dc]), np.full(2, photons), (21, 21), 1.0)
        pair.append(refine_frame(rng.poisson(mean + 20.0).astype(float), np.array([r]), np.array([c]), 1.0))
        mean = render_emitters(np.array([r]), np.array([c]), np.array([photons]), (21, 21), 1.0)
        single.append(refine_frame(rng.poisson(mean + 20.0).astype(float), np.array([r]), np.array([c]), 1.0))
    pair_var = np.array([f.fisher[0] ** 2 + f.excess[0] for f in pair])
    offset_var = (d / 2) ** 2 / 2     # per axis: (d/2)^2 along the pair, 0 across it
    assert np.mean(pair_var) == pytest.approx(offset_var, rel=0.3)
    assert np.mean([f.fisher[0] ** 2 for f in pair]) < 0.1 * offset_var   # the bound alone: far too small
    assert np.mean([f.excess[0] > 0 for f in pair]) > 0.8
    bound = crlb(photons, 20.0, 1.0, 0.0)[0]
    single_unc = np.array([np.sqrt(f.fisher[0] ** 2 + f.excess[0]) for f in single])
    assert np.mean([f.excess[0] > 0 for f in single]) < 0.1
    assert np.median(single_unc) == pytest.approx(bound, rel=0.15)
