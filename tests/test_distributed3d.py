"""3D on a dask cluster: the z calibration travels in the settings to the chunks (the 3D refinement learns
no prior), the chunks keep z and its uncertainty, and ``smlm-uq predict --z-calibration --workers 2`` gives
the single process's z for the same frames."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_refine3d import CAL

from napari_smlm_uq import cli
from napari_smlm_uq.inference import distributed as dist
from napari_smlm_uq.inference.pipeline import PredictSettings, StackSum
from napari_smlm_uq.io.files import InputError
from napari_smlm_uq.io.store import ResultStore
from napari_smlm_uq.io.tables import read_localizations
from napari_smlm_uq.io.tiff import write_stack
from napari_smlm_uq.io.zcalibration import write_zcalibration
from napari_smlm_uq.localizations import Localizations
from napari_smlm_uq.physics.simulate import SimulationSettings, simulate

FRAMES = 6


def chunk_of(z: np.ndarray | None) -> dist.ChunkResult:
    n = 4
    locs = Localizations(np.full(n, 3), np.arange(n) + 0.25, np.arange(n) + 0.5, np.full(n, 0.1), np.ones(n),
                         np.full(n, 7.0), z, None if z is None else np.r_[12.0, np.nan, 30.0, 15.5])
    sums = StackSum()
    sums.total, sums.variance, sums.frames = np.ones((8, 8)), np.zeros((8, 8)), 2
    return dist.ChunkResult(range(3, 5), locs, sums, 1.5, ())


@pytest.mark.parametrize("z", [None, np.array([-310.0, 5.0, 120.5, 399.0])], ids=["2d", "3d"])
def test_a_kept_chunk_keeps_z_and_its_uncertainty(tmp_path, z):
    (tmp_path / dist.PARTS).mkdir()
    chunk = chunk_of(z)
    dist.keep_chunk(tmp_path, chunk)
    back = dist.read_chunk(tmp_path, chunk.frames).localizations
    for k in ("frame", "row", "col", "uncertainty", "detection", "snr", "z", "uncertainty_z"):
        want = getattr(chunk.localizations, k)
        if want is None:
            assert getattr(back, k) is None
        else:
            np.testing.assert_array_equal(getattr(back, k), want)


def test_a_3d_job_learns_no_prior():
    """The 3D refinement is settled from the first frame: the client reads nothing to learn a 2D prior for
    the chunks of a 3D job (a 2D job opens its stack to learn one)."""
    job = dist.StackJob(Path("never-read.tif"), range(4), (16, 16), PredictSettings(z_calibration=CAL), Path("out"))
    assert job.with_prior("default") is job
    with pytest.raises(InputError, match=r"never-read\.tif: no such file"):
        replace(job, settings=PredictSettings()).with_prior("default")


@pytest.mark.slow
def test_cluster_3d_run_gives_the_single_process_z(tmp_path, capsys):
    """A simulated astigmatic stack (foci +-250 nm, z in +-400 nm, 1 emitter/um^2): ``--workers 2`` in chunks
    of 2 frames gives every localization column of the one-process run, z and its uncertainty included."""
    movie = simulate(SimulationSettings(frames=FRAMES, size=24, density=1.0, seed=4, z_calibration=CAL,
                                        z_range=(-400.0, 400.0)))
    write_stack(tmp_path / "astig.tif", movie.adu.astype(np.uint16), 100.0)
    write_zcalibration(tmp_path / "cal.json", CAL)
    common = [str(tmp_path / "astig.tif"), "--samples", "0", "--device", "cpu", "--z-calibration",
              str(tmp_path / "cal.json"), "--offset", "100", "--gain", "1", "--read-noise", "1.5"]
    assert cli.main(["predict", *common, "--out", str(tmp_path / "one"), "--format", "tif"]) == 0
    code = cli.main(["predict", *common, "--out", str(tmp_path / "cluster"), "--workers", "2", "--chunk-frames", "2"])
    assert code == 0, capsys.readouterr().err
    one, cluster = (read_localizations(tmp_path / name / "localizations.csv") for name in ("one", "cluster"))
    assert np.isfinite(one["uncertainty z [nm]"]).sum() >= 10   # fitted z to compare
    assert np.ptp(one["z [nm]"]) > 300
    assert set(cluster) == set(one)
    for key in one:
        np.testing.assert_allclose(cluster[key], one[key], rtol=1e-5, atol=1e-3, err_msg=key)
    store = ResultStore.open(tmp_path / "cluster")
    assert store.complete and store.done_ranges() == [[0, FRAMES]]
    assert not (tmp_path / "cluster" / dist.PARTS).exists()
