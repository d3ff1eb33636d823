"""Picasso HDF5/YAML export and import, ThunderSTORM tables, and ``smlm-uq postprocess``."""
from __future__ import annotations

import json

import h5py
import localization_simulation as simulation
import numpy as np
import pytest
import yaml

from napari_smlm_uq import cli
from napari_smlm_uq.io import picasso
from napari_smlm_uq.io.files import InputError
from napari_smlm_uq.io.tables import read_localizations, read_table, write_localizations


def our_table() -> dict[str, np.ndarray]:
    return {"frame": np.array([1.0, 2.0, 5.0]), "x [nm]": np.array([150.0, 1234.5, 999.0]),
            "y [nm]": np.array([70.0, 220.0, 3000.0]), "uncertainty [nm]": np.array([5.0, 7.0, 9.0]),
            "detection": np.array([1.0, 0.5, 0.25]), "peak snr": np.array([3.0, 4.0, 5.0]),
            "frames": np.array([1.0, 3.0, 2.0]), "intensity [photon]": np.array([100.0, 200.0, 300.0])}


def test_picasso_file_layout_and_round_trip(tmp_path):
    table = our_table()
    picasso.write_locs(tmp_path / "locs.hdf5", table, 100.0, source="in.csv")
    with h5py.File(tmp_path / "locs.hdf5") as fh:
        locs = fh["locs"][()]
        embedded = json.loads(fh["metadata"][()])
    assert locs.dtype.names[:9] == ("frame", "x", "y", "photons", "sx", "sy", "bg", "lpx", "lpy")
    assert locs["frame"].tolist() == [0, 1, 4] and locs.dtype["frame"] == np.uint32
    assert locs["x"] == pytest.approx([1.0, 11.845, 9.49])  # pixel centres at integers
    assert locs["lpx"] == pytest.approx([0.05, 0.07, 0.09]) and locs["n"].tolist() == [1.0, 3.0, 2.0]
    with open(tmp_path / "locs.yaml") as fh:
        info = list(yaml.safe_load_all(fh))
    assert info == embedded
    assert (info[0]["Width"], info[0]["Height"], info[0]["Frames"], info[1]["Pixelsize"]) == (12, 30, 5, 100.0)
    back = read_table(tmp_path / "locs.hdf5")
    for column, values in table.items():
        assert back[column] == pytest.approx(values, rel=1e-6), column
    (tmp_path / "locs.yaml").unlink()  # the embedded metadata is enough, as for Picasso 0.11
    assert read_table(tmp_path / "locs.hdf5")["x [nm]"] == pytest.approx(table["x [nm]"], rel=1e-6)


def test_picasso_import_errors(tmp_path):
    with pytest.raises(InputError, match="needs the column 'uncertainty"):
        picasso.write_locs(tmp_path / "a.hdf5", {k: v for k, v in our_table().items() if k != "uncertainty [nm]"}, 100)
    with h5py.File(tmp_path / "b.hdf5", "w") as fh:
        fh.create_dataset("other", data=np.zeros(3))
    with pytest.raises(InputError, match="no 'locs' dataset"):
        read_table(tmp_path / "b.hdf5")
    (tmp_path / "c.hdf5").write_text("not hdf5")
    with pytest.raises(InputError, match="not an HDF5 file"):
        read_table(tmp_path / "c.hdf5")


def test_thunderstorm_uncertainty_xy_is_read_as_our_uncertainty(tmp_path):
    path = tmp_path / "ts.csv"
    path.write_text('"id","frame","x [nm]","y [nm]","sigma [nm]","intensity [photon]","offset [photon]",'
                    '"bkgstd [photon]","uncertainty_xy [nm]"\n1,1,100.5,200.25,110,900,12,3,7.5\n')
    table = read_table(path)
    assert table["uncertainty [nm]"].tolist() == [7.5] and "uncertainty_xy [nm]" not in table


def run_main(capsys, *args) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def simulated_csv(tmp_path_factory):
    sim = simulation.simulate_localizations(frames=1200, field_um=5.0, density=0.5, molecules=600, seed=11)
    path = tmp_path_factory.mktemp("pp") / "locs.csv"
    write_localizations(path, {"frame": sim.frame + 1, "x [nm]": sim.x, "y [nm]": sim.y,
                               "uncertainty [nm]": sim.sigma, "intensity [photon]": sim.photons})
    return path, sim


def test_postprocess_command_writes_every_output(tmp_path, capsys, simulated_csv):
    path, sim = simulated_csv
    code, out, err = run_main(capsys, "postprocess", path, "--drift", "--merge", "--frc", "--picasso",
                              "--rcc-segment", 300, "--segment", 100, "--out", tmp_path / "out")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["localizations.csv", "drift.csv", "frc.json", "locs.hdf5", "locs.yaml"])
    locs = read_localizations(tmp_path / "out" / "localizations.csv")
    assert locs["frames"].sum() == len(sim) and locs["intensity [photon]"].sum() == pytest.approx(
        sim.photons.sum(), rel=1e-5)
    drift = read_localizations(tmp_path / "out" / "drift.csv")
    assert len(drift["frame"]) == 1200 and {"x se [nm]", "y se [nm]"} <= set(drift)
    err_x = drift["x [nm]"] - sim.drift[:, 0]
    assert np.std(err_x) < 5.0
    frc = json.loads((tmp_path / "out" / "frc.json").read_text())
    assert frc["filtered"]["resolution_nm"] < frc["all"]["resolution_nm"] == frc["resolution_nm"]
    assert read_table(tmp_path / "out" / "locs.hdf5")["frames"] == pytest.approx(locs["frames"])
    assert f"{len(sim)} localizations -> {len(locs['frame'])} rows" in out
    code, _, err = run_main(capsys, "postprocess", path, "--merge", "--out", tmp_path / "out")
    assert code == 2 and "already holds results" in err and err.count("\n") == 1


@pytest.mark.parametrize("content, message", [
    ('"id","frame","x [nm]","y [nm]","uncertainty [nm]"\n', "holds no localizations"),
    ('"frame","x [nm]"\n1,2\n', "missing column(s) 'y [nm]'"),
    ('"frame","x [nm]","y [nm]","uncertainty [nm]"\n1,2,3,4\n1,5,6,7\n', "in one frame"),
])
def test_postprocess_bad_tables_end_in_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    code, _, err = run_main(capsys, "postprocess", path, "--drift", "--out", tmp_path / "out")
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_postprocess_drift_that_cannot_be_estimated(tmp_path, capsys):
    sim = simulation.simulate_localizations(frames=1000, field_um=3.0, density=0.01, molecules=100, seed=12)
    path = tmp_path / "sparse.csv"
    write_localizations(path, {"frame": sim.frame + 1, "x [nm]": sim.x, "y [nm]": sim.y, "uncertainty [nm]": sim.sigma})
    code, _, err = run_main(capsys, "postprocess", path, "--drift", "--rcc-segment", 100, "--out", tmp_path / "out")
    assert code == 2 and "drift cannot be estimated" in err
    assert not (tmp_path / "out" / "localizations.csv").exists()


def test_postprocess_with_fiducial_markers(tmp_path, capsys):
    rng = np.random.default_rng(13)
    frames, markers = 300, np.array([[800.0, 900.0], [2500.0, 1800.0]])
    truth = simulation.smooth_drift(frames, 120.0)
    f = np.repeat(np.arange(frames), 2)
    xy = markers[np.tile([0, 1], frames)] + truth[f] + 2.0 * rng.standard_normal((2 * frames, 2))
    path = tmp_path / "fiducials.csv"
    write_localizations(path, {"frame": f + 1, "x [nm]": xy[:, 0], "y [nm]": xy[:, 1],
                               "uncertainty [nm]": np.full(2 * frames, 2.0)})
    code, out, err = run_main(capsys, "postprocess", path, "--drift", "--fiducial", 790, 910, "--fiducial", 2510, 1790,
                              "--out", tmp_path / "out")
    assert code == 0, err
    assert "drift (fiducial)" in out
    drift = read_localizations(tmp_path / "out" / "drift.csv")
    err_x = drift["x [nm]"] - truth[:, 0]
    assert np.std(err_x) < 2.0 and drift["x se [nm]"] == pytest.approx(np.full(frames, np.sqrt(2.0)), rel=1e-3)
