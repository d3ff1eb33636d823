"""Post-processing of 3D localizations: blinks merged in 3D (closed forms, molecules stacked in z, the
merged z against the truth), drift corrected in x and y with z passed through, and the merged table's
round trip through Picasso's HDF5 (z, lpz) and the command line."""
from __future__ import annotations

import numpy as np
import pytest
from localization_simulation import simulate_localizations
from scipy.special import erfc

from napari_smlm_uq import cli
from napari_smlm_uq.io.files import InputError
from napari_smlm_uq.io.picasso import read_locs, write_locs
from napari_smlm_uq.io.tables import read_localizations, write_localizations
from napari_smlm_uq.postprocess import merge, workflow

Z_GAP = 300.0   # nm between the two molecules of a stacked pair


def stacked_pairs(pairs: int = 150, frames: int = 600, seed: int = 0) -> dict[str, np.ndarray]:
    """Pairs of molecules at the same x, y (1 nm apart), ``Z_GAP`` apart in z, pairs 1 um apart; each
    molecule blinks about every 60 frames for 3 frames on average (blinks of a pair often overlap or
    follow each other); lateral uncertainty 5-15 nm, axial 2.5x; each localization scattered by them."""
    rng = np.random.default_rng(seed)
    site = np.repeat(np.arange(pairs), 2)
    truth = np.c_[1000.0 * (site % 12), 1000.0 * (site // 12) + np.tile([0.0, 1.0], pairs),
                  rng.uniform(-400, 100, pairs).repeat(2) + np.tile([0.0, Z_GAP], pairs)]
    blinks = rng.poisson(frames / 60, len(truth))
    molecule = np.repeat(np.arange(len(truth)), blinks)
    start, length = rng.integers(0, frames, len(molecule)), rng.geometric(1 / 3, len(molecule))
    blink = np.repeat(np.arange(len(molecule)), length)
    frame = start[blink] + np.arange(len(blink)) - np.repeat(np.cumsum(length) - length, length)
    sigma = rng.uniform(5.0, 15.0, len(blink))
    sigmas = np.c_[sigma, sigma, 2.5 * sigma]
    xyz = truth[molecule[blink]] + sigmas * rng.standard_normal((len(blink), 3))
    return {"frame": frame, "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "sigma": sigma, "sigma_z": sigmas[:, 2],
            "molecule": molecule[blink], "truth": truth[molecule[blink]]}


@pytest.fixture(scope="module")
def pairs() -> dict[str, np.ndarray]:
    return stacked_pairs()


def mixing(index: np.ndarray, molecule: np.ndarray) -> int:
    """Events holding localizations of more than one molecule."""
    return int(np.sum(np.bincount(index, weights=molecule % 2) % np.bincount(index) != 0))


def test_3d_gate_misses_what_the_2d_gate_misses():
    """The chi-square tails: 2D exp(-k^2/2), 3D erfc(r/sqrt 2) + sqrt(2/pi) r exp(-r^2/2)."""
    for k in (1.0, 3.0, 5.0):
        r = merge.radius_3d(k)
        assert erfc(r / np.sqrt(2)) + np.sqrt(2 / np.pi) * r * np.exp(-r * r / 2) == pytest.approx(np.exp(-k * k / 2))
    assert merge.radius_3d(3.0) == pytest.approx(3.334, abs=1e-3)


def test_one_molecule_merges_to_the_inverse_variance_z():
    """Five frames of one molecule: one event, z the inverse-variance mean, uncertainty 1/sqrt(sum 1/s^2);
    a localization with an unknown z (NaN uncertainty) links laterally and adds nothing to z."""
    s, sz = np.array([5.0, 8.0, 6.0, 10.0, 7.0]), np.array([15.0, 25.0, 18.0, 30.0, np.nan])
    z = np.array([101.0, 80.0, 95.0, 130.0, -200.0])
    ev = merge.merge(np.arange(5), np.array([0.0, 3.0, -2.0, 4.0, 1.0]), np.zeros(5), s, z=z, sigma_z=sz)
    w = 1 / sz[:4] ** 2
    assert len(ev) == 1 and ev.frames[0] == 5
    assert ev.z[0] == pytest.approx(np.sum(w * z[:4]) / w.sum())
    assert ev.sigma_z[0] == pytest.approx(1 / np.sqrt(w.sum()))
    assert ev.sigma[0] == pytest.approx(1 / np.sqrt(np.sum(1 / s ** 2)))
    alone = merge.merge(np.arange(2), np.zeros(2), np.zeros(2), np.ones(2), z=np.array([10.0, 30.0]),
                        sigma_z=np.full(2, np.nan))
    assert len(alone) == 1 and alone.z[0] == 20.0 and np.isnan(alone.sigma_z[0])   # no z weight: the plain mean


def test_molecules_stacked_in_z_stay_apart():
    """Same x, y, 300 nm apart in z, the second blinking right after the first: one event in 2D, two in 3D."""
    frame, xy, s = np.arange(6), np.zeros(6), np.full(6, 8.0)
    z, sz = np.r_[np.full(3, -150.0), np.full(3, 150.0)] + np.array([3, -5, 4, -2, 6, -1.0]), np.full(6, 20.0)
    assert len(merge.merge(frame, xy, xy, s)) == 1
    ev = merge.merge(frame, xy, xy, s, z=z, sigma_z=sz)
    assert ev.index.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_allclose(ev.z, [z[:3].mean(), z[3:].mean()])
    np.testing.assert_allclose(ev.sigma_z, 20.0 / np.sqrt(3))


def test_merging_in_3d_against_the_truth(pairs):
    """Stacked pairs: 2D merging mixes the molecules of a pair, 3D never; the merged z and x scatter around
    the truth by their merged uncertainties; 2D tables merge as before (no z given: no z out)."""
    p = pairs
    flat = merge.merge(p["frame"], p["x"], p["y"], p["sigma"])
    ev = merge.merge(p["frame"], p["x"], p["y"], p["sigma"], z=p["z"], sigma_z=p["sigma_z"])
    assert flat.z is None and mixing(flat.index, p["molecule"]) > 50
    assert mixing(ev.index, p["molecule"]) == 0
    assert np.mean(ev.frames) > 2.5   # blinks are merged, not left apart
    z_score = (ev.z - ev.mean_of(p["truth"][:, 2])) / ev.sigma_z
    x_score = (ev.x - ev.mean_of(p["truth"][:, 0])) / ev.sigma
    assert 0.9 <= np.std(z_score) <= 1.1 and 0.9 <= np.std(x_score) <= 1.1


def test_workflow_merges_3d_columns_and_refuses_bad_z_uncertainties(pairs):
    p = pairs
    table = {"frame": p["frame"] + 1.0, "x [nm]": p["x"], "y [nm]": p["y"], "uncertainty [nm]": p["sigma"],
             "z [nm]": p["z"], "uncertainty z [nm]": p["sigma_z"]}
    result = workflow.run(table, workflow.Settings(merge=True))
    ev = merge.merge(p["frame"], p["x"], p["y"], p["sigma"], z=p["z"], sigma_z=p["sigma_z"])
    np.testing.assert_array_equal(result.table["z [nm]"], ev.z)
    np.testing.assert_array_equal(result.table["uncertainty z [nm]"], ev.sigma_z)
    bad = {**table, "uncertainty z [nm]": np.where(np.arange(len(p["z"])) == 3, 0.0, p["sigma_z"])}
    with pytest.raises(InputError, match="'uncertainty z \\[nm\\]' must be > 0"):
        workflow.run(bad, workflow.Settings(merge=True))


def test_drift_corrects_x_and_y_and_passes_z_through():
    """A 200 nm drift in x and y (the stage moves no z here): corrected x, y near the truth; z and its
    uncertainty exactly as they were."""
    sim = simulate_localizations(frames=1000, field_um=6.0, density=0.5, molecules=800, seed=3)
    rng = np.random.default_rng(3)
    z, sz = rng.uniform(-400, 400, len(sim)), rng.uniform(10, 40, len(sim))
    table = {"frame": sim.frame + 1.0, "x [nm]": sim.x, "y [nm]": sim.y, "uncertainty [nm]": sim.sigma,
             "z [nm]": z, "uncertainty z [nm]": sz}
    result = workflow.run(table, workflow.Settings(drift=True, rcc_segment=250, segment=100))
    for axis, truth in (("x [nm]", sim.x_true), ("y [nm]", sim.y_true)):
        # scatter about the truth: 53 and 64 nm with the drift in, 6.6 and 5.9 after (3.7 nm from the noise)
        assert np.std(table[axis] - truth) > 50.0 and np.std(result.table[axis] - truth) < 10.0
    np.testing.assert_array_equal(result.table["z [nm]"], z)
    np.testing.assert_array_equal(result.table["uncertainty z [nm]"], sz)


def test_merged_3d_table_round_trips_through_picasso_and_the_command_line(pairs, tmp_path, capsys):
    """``smlm-uq postprocess --merge --picasso`` on a 3D CSV: the merged z in the CSV and in Picasso's z and
    lpz (nm), and the HDF5 read back gives every column (float32)."""
    p = pairs
    write_localizations(tmp_path / "locs.csv", {"frame": p["frame"] + 1, "x [nm]": p["x"] + 5000.0,
                                                "y [nm]": p["y"] + 5000.0, "uncertainty [nm]": p["sigma"],
                                                "z [nm]": p["z"], "uncertainty z [nm]": p["sigma_z"]})
    assert cli.main(["postprocess", str(tmp_path / "locs.csv"), "--merge", "--picasso", "--out",
                     str(tmp_path / "out")]) == 0
    assert "linked in 3D" in capsys.readouterr().out
    merged = read_localizations(tmp_path / "out" / "localizations.csv")
    ev = merge.merge(p["frame"], p["x"], p["y"], p["sigma"], z=p["z"], sigma_z=p["sigma_z"])
    np.testing.assert_allclose(merged["z [nm]"], ev.z, atol=1e-3)   # the CSV keeps 4 decimals
    back = read_locs(tmp_path / "out" / "locs.hdf5")
    for key, values in merged.items():
        if key != "id":
            np.testing.assert_allclose(back[key], values, rtol=1e-6, atol=1e-3, err_msg=key)
    assert set(back) >= {"z [nm]", "uncertainty z [nm]", "frames"}
    write_locs(tmp_path / "again.hdf5", back, 100.0)
    np.testing.assert_array_equal(read_locs(tmp_path / "again.hdf5")["uncertainty z [nm]"], back["uncertainty z [nm]"])
