"""Post-processing against simulated truth: rendering, drift (RCC, intersection refinement, fiducials),
merging of blinks, FRC, and the workflow's checks of bad tables."""
from __future__ import annotations

import localization_simulation as simulation
import numpy as np
import pytest

from napari_smlm_uq.analysis import render
from napari_smlm_uq.io.files import InputError
from napari_smlm_uq.postprocess import drift, frc, merge, workflow


def drift_rms(estimate: drift.Drift, truth: np.ndarray) -> float:
    """RMS (nm, 2D) of the estimated minus the true drift, the unobservable constant offset removed."""
    err = np.stack([estimate.x, estimate.y], axis=1) - truth
    err -= err.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(err ** 2, axis=1))))


def test_render_keeps_counts_and_blurs_by_each_uncertainty():
    x, y = np.array([500.0, 1500.0]), np.array([500.0, 500.0])
    image = render.render(x, y, np.array([20.0, 40.0]), (1000.0, 2000.0), 2.0)
    assert image.sum() == pytest.approx(2.0, rel=1e-6)
    centres = (np.arange(image.shape[1]) + 0.5) * 2.0
    for half, sigma in ((slice(0, 500), 20.0), (slice(500, 1000), 40.0)):
        profile = image[:, half].sum(axis=0)
        c = centres[half]
        mean = np.sum(profile * c) / profile.sum()
        assert np.sqrt(np.sum(profile * (c - mean) ** 2) / profile.sum()) == pytest.approx(sigma, rel=0.03)
    counts = render.histogram(np.array([1.0, 3.0, 3.5, -1.0]), np.array([1.0, 1.0, 1.0, 1.0]), (4.0, 4.0), 2.0)
    assert counts.tolist() == [[1.0, 2.0], [0.0, 0.0]]


@pytest.mark.slow
def test_rcc_and_refinement_recover_a_200_nm_drift():
    sim = simulation.simulate_localizations(frames=2000, field_um=6.0, density=0.5, molecules=1000, seed=1)
    coarse = drift.rcc(sim.frame, sim.x, sim.y, 2000, segment_frames=400)
    fine = drift.refine(sim.frame, sim.x, sim.y, sim.sigma, coarse, segment_frames=100)
    assert np.ptp(sim.drift[:, 0]) > 150
    assert drift_rms(coarse, sim.drift) < 30.0  # 5 segments: the path within a segment is averaged away
    assert drift_rms(fine, sim.drift) < 5.0
    assert drift_rms(fine, sim.drift) < 0.5 * drift_rms(coarse, sim.drift)
    assert fine.x[0] == pytest.approx(0.0, abs=1e-9) and fine.y[0] == pytest.approx(0.0, abs=1e-9)
    # statistical standard errors: below the actual errors, which include the interpolation within segments
    rms_axis = drift_rms(fine, sim.drift) / np.sqrt(2)
    assert 0.1 < np.median(fine.x_se) / rms_axis < 1.0
    x, _, sigma = drift.correct(sim.frame, sim.x, sim.y, sim.sigma, fine)
    assert np.all(sigma >= sim.sigma)
    assert np.std(x - sim.x_true) < np.std(sim.x - sim.x_true) / 3


def test_refinement_beats_rcc_alone_on_sparse_data():
    sim = simulation.simulate_localizations(frames=3000, field_um=10.0, density=0.05, molecules=1000, seed=2)
    coarse = drift.rcc(sim.frame, sim.x, sim.y, 3000, segment_frames=500)
    fine = drift.refine(sim.frame, sim.x, sim.y, sim.sigma, coarse, segment_frames=150)
    assert drift_rms(fine, sim.drift) < 0.5 * drift_rms(coarse, sim.drift)


def test_drift_refuses_segments_with_too_few_localizations():
    sim = simulation.simulate_localizations(frames=1000, field_um=3.0, density=0.01, molecules=100, seed=3)
    with pytest.raises(InputError, match="drift cannot be estimated: segment"):
        drift.rcc(sim.frame, sim.x, sim.y, 1000, segment_frames=100)
    with pytest.raises(InputError, match="at least 2 segments"):
        drift.rcc(sim.frame, sim.x, sim.y, 1000, segment_frames=1000)


def test_fiducial_drift_and_its_standard_error():
    rng = np.random.default_rng(4)
    frames, sigma = 500, 3.0
    truth = simulation.smooth_drift(frames, 150.0)
    markers = np.array([[1000.0, 2000.0], [4000.0, 1500.0]])
    f = np.repeat(np.arange(frames), 2)
    xy = markers[np.tile([0, 1], frames)] + truth[f] + sigma * rng.standard_normal((2 * frames, 2))
    est = drift.fiducial(f, xy[:, 0], xy[:, 1], np.full(len(f), sigma), markers + 20.0, frames)
    err = np.stack([est.x, est.y], axis=1) - truth
    err -= err.mean(axis=0)
    assert est.x_se == pytest.approx(np.full(frames, sigma / np.sqrt(2)))
    assert np.std(err[:, 0]) / est.x_se[0] == pytest.approx(1.0, abs=0.15)
    with pytest.raises(InputError, match="markers found in 0 of"):
        drift.fiducial(f, xy[:, 0], xy[:, 1], np.full(len(f), sigma), markers + 5000.0, frames)


def test_merge_closed_form_and_gap():
    frame = np.array([0, 1, 3, 9])
    x = np.array([0.0, 1.0, 0.5, 0.0])
    ev = merge.merge(frame, x, np.zeros(4), np.array([1.0, 1.0, 2.0, 1.0]), np.array([10.0, 20, 30, 40]), max_gap=1)
    assert ev.frames.tolist() == [3, 1] and ev.first.tolist() == [0, 9]
    assert ev.x[0] == pytest.approx((0 + 1 + 0.5 / 4) / 2.25)
    assert ev.sigma[0] == pytest.approx(1 / np.sqrt(2.25))
    assert ev.photons.tolist() == [60.0, 40.0]
    assert len(merge.merge(frame, x, np.zeros(4), np.ones(4), max_gap=0)) == 3


def test_merged_precision_matches_combined_uncertainty():
    sim = simulation.simulate_localizations(frames=1000, field_um=6.0, density=0.5, molecules=1000, drift_nm=0.0,
                                            seed=5)
    ev = merge.merge(sim.frame, sim.x, sim.y, sim.sigma, sim.photons)
    true_events = len(np.unique(sim.event))
    assert abs(len(ev) - true_events) < 0.05 * true_events
    assert ev.frames.sum() == len(sim) and ev.photons.sum() == pytest.approx(sim.photons.sum())
    z = np.concatenate([(ev.x - ev.mean_of(sim.x_true)) / ev.sigma, (ev.y - ev.mean_of(sim.y_true)) / ev.sigma])
    assert 0.8 <= np.std(z) <= 1.25


def test_frc_matches_the_expected_curve_and_improves_with_the_uncertainty_filter():
    sim = simulation.simulate_localizations(frames=2000, field_um=5.0, density=1.0, molecules=800, photons=250,
                                            photon_spread=1.2, drift_nm=0.0, seed=6)
    half = frc.halves(sim.frame, "blocks", 100)
    measured = frc.frc(sim.x, sim.y, half)
    expected = frc.expected(sim.x_true, sim.y_true, sim.sigma, half)
    assert measured.resolution_nm == pytest.approx(expected.resolution_nm, rel=0.15)
    keep = sim.sigma <= 1.5 * np.median(sim.sigma)
    filtered = frc.frc(sim.x[keep], sim.y[keep], half[keep])
    assert filtered.resolution_nm < measured.resolution_nm
    assert frc.frc(sim.x, sim.y, frc.halves(sim.frame, "random")).resolution_nm == pytest.approx(
        measured.resolution_nm, rel=0.15)


def test_frc_of_unrelated_halves_is_zero_and_of_identical_halves_one():
    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 4000, size=(20000, 2))
    half = np.arange(20000) < 10000
    noise = frc.frc(xy[:, 0], xy[:, 1], half, pixel_nm=20.0)
    high = noise.curve[len(noise.curve) // 4:]  # below that, the square outline both halves share correlates
    assert abs(np.mean(high)) < 0.01 and np.std(high) < 0.1
    same = frc.frc(np.tile(xy[:10000, 0], 2), np.tile(xy[:10000, 1], 2), half, pixel_nm=20.0)
    assert np.allclose(same.curve, 1.0) and np.isnan(same.resolution_nm)


def table_of(sim: simulation.SimulatedLocalizations) -> dict[str, np.ndarray]:
    return {"frame": sim.frame + 1.0, "x [nm]": sim.x, "y [nm]": sim.y, "uncertainty [nm]": sim.sigma,
            "intensity [photon]": sim.photons, "detection": np.ones(len(sim))}


def test_workflow_runs_every_step_and_reports():
    sim = simulation.simulate_localizations(frames=1200, field_um=5.0, density=0.5, molecules=600, seed=8)
    result = workflow.run(table_of(sim), workflow.Settings(True, True, True, rcc_segment=300, segment=100))
    assert set(result.table) >= {"frame", "x [nm]", "y [nm]", "uncertainty [nm]", "frames", "intensity [photon]",
                                 "detection"}
    assert result.table["frames"].sum() == len(sim)
    assert drift_rms(result.drift, sim.drift) < 10.0
    assert result.frc_kept.resolution_nm < result.frc.resolution_nm
    assert result.max_uncertainty == pytest.approx(1.5 * np.median(result.table["uncertainty [nm]"]))
    lines = workflow.summary_lines(len(sim), result)
    assert lines[0] == f"{len(sim)} localizations -> {len(result.table['frame'])} rows" and "FRC" in lines[-1]


@pytest.mark.parametrize("change, message", [
    (lambda t: {k: v[:0] for k, v in t.items()}, "holds no localizations"),
    (lambda t: {k: v for k, v in t.items() if k != "uncertainty [nm]"}, r"no 'uncertainty \[nm\]' column"),
    (lambda t: {**t, "frame": np.ones_like(t["frame"])}, "in one frame"),
    (lambda t: {**t, "uncertainty [nm]": np.where(np.arange(len(t["frame"])) == 3, np.nan, t["uncertainty [nm]"])},
     "must be > 0 and finite"),
])
def test_workflow_rejects_bad_tables(change, message):
    sim = simulation.simulate_localizations(frames=100, field_um=3.0, density=0.5, molecules=100, seed=9)
    with pytest.raises(InputError, match=message):
        workflow.run(change(table_of(sim)), workflow.Settings(drift=True, merge=True, frc=True))
