"""Calibration of the localization uncertainty per context (edge distance, neighbours)."""
from __future__ import annotations

import numpy as np
import pytest

from napari_smlm_uq.inference import localize
from napari_smlm_uq.inference.calibration import Calibration, context, frame_context
from napari_smlm_uq.physics import kde


def test_context_bins_edge_distance_neighbours_and_snr():
    shape = (20, 30)  # raw px; the frame edge lies half a pixel outside the outer pixel centres
    rows = np.array([0.0, 1.2, 10.0, 10.0, 12.5, 18.9, 10.0])
    cols = np.array([15.0, 15.0, 5.0, 7.0, 6.0, 20.0, 26.8])
    snr = np.array([10.0, 24.9, 25.0, 49.0, 50.0, 300.0, np.nan])
    edge, neighbours, snr_bin = context(rows, cols, snr, shape, radius=3.0, neighbour_bins=(1, 2))
    # distances to the edge: 0.5, 1.7, 5.5, 7.5, 6.5, 0.6, 2.7 px -> bins [0, 1), [1, 2), >= 2
    assert edge.tolist() == [0, 1, 2, 2, 2, 0, 2]
    # (10, 5), (10, 7), (12.5, 6) are within 3 px of each other: two neighbours each; (0, 15) and
    # (1.2, 15) are 1.2 px apart: one each; the others are alone
    assert neighbours.tolist() == [1, 1, 2, 2, 2, 0, 0]
    assert snr_bin.tolist() == [0, 0, 1, 1, 2, 2, 2]  # no SNR (no frame): the top bin


def test_frame_context_counts_neighbours_within_a_frame_only():
    rows, cols, snr = np.array([10.0, 11.0, 10.0]), np.array([10.0, 10.0, 10.5]), np.full(3, 60.0)
    _, same, _ = frame_context(np.array([0, 0, 0]), rows, cols, snr, (20, 20), neighbour_bins=(1, 2))
    _, split, _ = frame_context(np.array([0, 0, 1]), rows, cols, snr, (20, 20), neighbour_bins=(1, 2))
    assert same.tolist() == [2, 2, 2] and split.tolist() == [1, 1, 0]


def test_fit_recovers_the_spread_of_each_context():
    rng = np.random.default_rng(0)
    truth = np.array([[4.0, 4.5, 5.0], [2.0, 2.5, 3.0], [1.0, 1.5, 2.0]])[:, :, None] * np.array([2.0, 1.5, 1.0])
    counts = np.full((3, 3, 3), 300)
    counts[0, 2, 0] = 10     # too sparse: falls back to edge 0, SNR 0 pooled over neighbours
    counts[1, :, 2] = 10     # a whole (edge, SNR) pair too sparse: falls back to edge 1 pooled
    cells = np.repeat(np.arange(27), counts.ravel())
    bins = np.unravel_index(cells, counts.shape)
    z = rng.normal(0, truth[bins][:, None], (len(cells), 2))
    z[::97] = np.nan  # localizations held by a single sample have no uncertainty
    cal = Calibration.fit(z, bins)
    dense = counts >= 40
    np.testing.assert_allclose(cal.scales[dense], truth[dense], rtol=0.08)
    assert 8.0 < cal.scales[0, 2, 0] < 9.0     # spread of truth[0, :2, 0] = 8, 9 pooled
    assert 4.2 < cal.scales[1, 0, 2] < 4.8     # edge bin 1 pooled: rms of its dense contexts 4.48
    calibrated = z / cal.scales[bins][:, None]
    for e in range(3):
        assert np.nanstd(calibrated[bins[0] == e]) == pytest.approx(1.0, abs=0.06)
    with pytest.raises(ValueError, match="no matched"):
        Calibration.fit(np.full((3, 2), np.nan), (np.zeros(3, int),) * 3)


def test_calibration_round_trip_and_older_models():
    cal = Calibration(np.arange(1.0, 28.0).reshape(3, 3, 3))
    back = Calibration.from_dict(cal.to_dict())
    np.testing.assert_array_equal(back.scales, cal.scales)
    assert (back.edge_bins, back.radius, back.neighbour_bins, back.snr_bins) == \
        (cal.edge_bins, cal.radius, cal.neighbour_bins, cal.snr_bins)
    np.testing.assert_array_equal(Calibration.from_dict({}).scales, np.ones((3, 3, 3)))
    np.testing.assert_array_equal(Calibration.from_dict({"uncertainty_scale": 2.28}).scales, np.full((3, 3, 3), 2.28))


def test_localize_applies_the_scale_of_each_context():
    """Four emitters: one at the edge, an isolated one, a pair (one of middling SNR). Samples shift each
    by N(0, 0.1 px); the calibrated uncertainty is the raw one times its context's scale."""
    rng = np.random.default_rng(3)
    rows, cols, shape = np.array([0.3, 12.1, 12.3, 14.1]), np.array([9.1, 4.1, 14.1, 15.6]), (20, 20)
    mean = kde.render_kde(rows, cols, shape)
    samples = np.stack([kde.render_kde(rows + rng.normal(0, 0.1, 4), cols + rng.normal(0, 0.1, 4), shape)
                        for _ in range(16)])
    snr = np.full(shape, 80.0)
    snr[14, 15] = 30.0   # the pixel SNR map: one emitter of middling SNR (max over its 3x3 pixels)
    snr[13:16, 15:18] = np.minimum(snr[13:16, 15:18], 30.0)
    raw = localize.localize(mean, samples, 0, snr=snr)
    # scale 1 + 9 per edge bin + 3 per neighbour bin + 1 per SNR bin
    cal = Calibration(np.arange(1.0, 28.0).reshape(3, 3, 3), radius=3.0, neighbour_bins=(1, 2))
    scaled = localize.localize(mean, samples, 0, calibration=cal, snr=snr)
    expected = {(0.3, 9.1): 1 + 0 + 0 + 2, (12.1, 4.1): 1 + 18 + 0 + 2,
                (12.3, 14.1): 1 + 18 + 3 + 2, (14.1, 15.6): 1 + 18 + 3 + 1}
    nearest = [expected[min(expected, key=lambda k: np.hypot(k[0] - r, k[1] - c))] for r, c in zip(raw.row, raw.col)]
    assert len(raw) == 4
    np.testing.assert_allclose(scaled.uncertainty / raw.uncertainty, nearest)
    assert sorted(raw.snr) == [30.0, 80.0, 80.0, 80.0]
    assert np.all(np.isfinite(raw.uncertainty)) and np.all(raw.uncertainty < 0.2)
