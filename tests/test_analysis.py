"""The functions behind the headline uncertainty numbers, on cases computed by hand."""
from __future__ import annotations

import numpy as np
import pytest

from napari_smlm_uq.analysis import metrics
from napari_smlm_uq.analysis.evaluation import pixel_report, true_kdes
from napari_smlm_uq.physics.kde import KERNEL_INTEGRAL
from napari_smlm_uq.physics.simulate import Emitters

# ten localizations; the false positives (F) have scores 0.9, 0.8 and 0.05
IS_TP = np.array([1, 0, 1, 0, 1, 0, 1, 1, 1, 1], bool)
SCORE = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.05, 0.4, 0.5, 0.6, 0.7])


@pytest.mark.parametrize(("drop", "expected"), [(0.1, 100 / 3), (0.2, 200 / 3), (0.5, 200 / 3), (1.0, 100.0),
                                                (0.0, 0.0)])
def test_false_positives_removed(drop, expected):
    # drop 0.5 removes scores 0.9 0.8 0.7 0.6 0.5: two of the three false positives
    assert metrics.false_positives_removed(IS_TP, SCORE, drop) == pytest.approx(expected)


def test_false_positives_removed_nan_counts_as_most_uncertain_and_no_fp_is_nan():
    score = SCORE.copy()
    score[0] = np.nan  # a true positive with no uncertainty is dropped first
    assert metrics.false_positives_removed(IS_TP, score, 0.1) == 0.0
    assert metrics.false_positives_removed(IS_TP, score, 0.2) == pytest.approx(100 / 3)
    assert np.isnan(metrics.false_positives_removed(np.ones(4, bool), np.arange(4.0), 0.5))


def test_normalised_errors_pools_both_axes_and_skips_unknown_uncertainty():
    loc = np.array([[1.0, 2.0], [3.0, 3.0], [0.0, 9.0], [5.0, 5.0]])
    truth = np.array([[0.0, 0.0], [3.0, 5.0], [0.0, 0.0], [0.0, 0.0]])
    uncertainty = np.array([2.0, 1.0, np.nan, 0.0])
    np.testing.assert_allclose(metrics.normalised_errors(loc, truth, uncertainty), [0.5, 1.0, 0.0, -2.0])


def test_pixel_report_when_the_std_ranks_the_errors_right_and_wrong():
    truth = np.arange(1.0, 21.0)
    mean = np.zeros(20)  # errors 1 ... 20
    good = pixel_report(mean, truth.copy(), truth)
    assert good["spearman"] == pytest.approx(1.0) and good["ause"] == pytest.approx(0.0)
    assert good["coverage_2std"] == 1.0 and good["std_scale_for_95pct"] == pytest.approx(0.5)  # error / std = 1
    bad = pixel_report(mean, 21.0 - truth, truth)
    assert bad["spearman"] == pytest.approx(-1.0) and bad["ause"] > 0
    assert bad["coverage_2std"] == 0.7  # t <= 2 (21 - t) for t <= 14
    # error / std = t / (21 - t), increasing: the 95th percentile sits 0.05 of the way from 19/2 to 20/1
    assert bad["std_scale_for_95pct"] == pytest.approx((9.5 + 0.05 * 10.5) / 2)


def test_true_kdes_put_each_emitter_in_its_frame_at_the_sr_position_of_its_raw_centre():
    emitters = Emitters(frame=np.array([1, 5]), row=np.array([2.0, 4.0]), col=np.array([3.0, 4.0]),
                        photons=np.array([1000.0, 1000.0]))
    kdes = true_kdes(emitters, range(0, 3), (8, 8))
    assert kdes.shape == (3, 32, 32) and kdes.dtype == np.float32
    assert not kdes[0].any() and not kdes[2].any()  # frame 5 is outside the range
    assert kdes[1].sum() == pytest.approx(KERNEL_INTEGRAL, rel=1e-3)
    rows, cols = np.indices(kdes[1].shape)
    centroid = (float((rows * kdes[1]).sum() / kdes[1].sum()), float((cols * kdes[1]).sum() / kdes[1].sum()))
    # raw pixel centre r sits on SR coordinate (r + 1/2) * 4 - 1/2 (docs/physics.md)
    assert centroid == pytest.approx((9.5, 13.5), abs=1e-3)
