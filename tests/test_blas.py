"""The fits' linear algebra: OpenBLAS on one thread (napari_smlm_uq/blas.py) and the Cramér-Rao bounds."""
import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from napari_smlm_uq import blas
from napari_smlm_uq.physics.boxes import fit_frame
from napari_smlm_uq.physics.fit import ImagingModel, cramer_rao


def openblas_threads() -> set[int]:
    return {i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"}


def spot_fit():
    frame = np.random.default_rng(0).poisson(20.0, (16, 16)).astype(float)
    frame[8, 8] += 2000.0
    fitted, corner = fit_frame(frame, np.array([8.2]), np.array([7.9]), ImagingModel(1.0))
    return fitted.row[0, 0] + corner[0, 0], fitted.col[0, 0] + corner[0, 1]


@pytest.mark.parametrize("user_choice", [False, True])
def test_the_first_fit_sets_openblas_to_one_thread_unless_the_user_chose(monkeypatch, request, user_choice):
    if not openblas_threads():
        pytest.skip("numpy is not built on OpenBLAS here")
    blas.one_openblas_thread.cache_clear()   # as in a fresh process (and again after: the next fit sets it anew)
    request.addfinalizer(blas.one_openblas_thread.cache_clear)
    if user_choice:
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    else:
        monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    with threadpool_limits(limits=2, user_api="blas"):
        row, col = spot_fit()
        assert openblas_threads() == ({2} if user_choice else {1})
    assert abs(row - 8.0) < 0.3 and abs(col - 8.0) < 0.3


def test_cramer_rao_inverts_the_information_and_says_nan_without_any():
    a = np.array([[4.0, 1.0], [1.0, 2.0]])
    bounds = cramer_rao(np.stack([a, np.diag([100.0, 0.25]), np.zeros((2, 2))]))
    np.testing.assert_allclose(bounds[0], np.sqrt([2.0 / 7.0, 4.0 / 7.0]))    # the inverse: [[2, -1], [-1, 4]] / 7
    np.testing.assert_allclose(bounds[1], [0.1, 2.0], rtol=1e-6)
    assert np.isnan(bounds[2]).all()
    weak = cramer_rao(np.diag([1.0, 0.0])[None])   # a parameter without effect: a huge bound, not zero
    assert weak[0, 0] == pytest.approx(1.0) and weak[0, 1] > 1e4
