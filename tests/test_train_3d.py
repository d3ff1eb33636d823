"""Training on astigmatic simulations (``TrainSettings.z_calibration``, ``smlm-uq train --z-calibration``)."""
from __future__ import annotations

import numpy as np

from napari_smlm_uq import cli
from napari_smlm_uq.io.zcalibration import write_zcalibration
from napari_smlm_uq.models import registry
from napari_smlm_uq.physics.astigmatism import DefocusCurve, ZCalibration
from napari_smlm_uq.training import TrainSettings, train
from napari_smlm_uq.training_data import simulate_patches

# sigma 1 px at focus, foci 500 nm apart (tests/test_refine3d.py)
CAL = ZCalibration(
    DefocusCurve(1.0, -250.0, 400.0, 0.1, 0.05), DefocusCurve(1.05, 250.0, 380.0, -0.1, 0.05), (-550.0, 550.0), 100.0
)


def width_ratios(x: np.ndarray, half: int = 3) -> np.ndarray:
    """log(row width / column width) of the brightest spot of each patch: second moments over a window of
    ``2 half + 1`` px around its brightest pixel, background (median) removed; NaN where the window leaves the
    patch."""
    out = np.full(len(x), np.nan)
    k = np.arange(-half, half + 1, dtype=np.float64)
    for i, patch in enumerate(x[:, 0].astype(np.float64)):
        r, c = np.unravel_index(np.argmax(patch), patch.shape)
        if half <= r < patch.shape[0] - half and half <= c < patch.shape[1] - half:
            w = np.clip(patch[r - half:r + half + 1, c - half:c + half + 1] - np.median(patch), 0, None)
            rows, cols = w.sum(1), w.sum(0)
            var = [(p * (k - (p * k).sum() / p.sum()) ** 2).sum() / p.sum() for p in (rows, cols)]
            out[i] = 0.5 * np.log(var[0] / var[1])
    return out


def test_astigmatic_patches_keep_the_targets_and_elongate_the_spots():
    """Same seed: the same emitters (the KDE targets are identical, z is drawn last), but spots elongated along
    rows or columns by their z, where the 2D spots are round."""
    kwargs = {"photons": (5000.0, 5000.0), "background": (1.0, 1.0), "density": (0.2, 0.2), "pixel_size": 100.0,
              "psf_sigma": (1.0, 1.0), "edge_patches": 0.0, "structured": 0.0, "read_noise": (0.0, 0.0)}
    x2, kde2 = simulate_patches(np.random.default_rng(4), 256, TrainSettings(**kwargs))
    x3, kde3 = simulate_patches(np.random.default_rng(4), 256, TrainSettings(z_calibration=CAL, **kwargs))
    np.testing.assert_array_equal(kde2.numpy(), kde3.numpy())
    lit = kde2.numpy().reshape(256, -1).max(1) > 0
    round_, astigmatic = (width_ratios(x.numpy())[lit] for x in (x2, x3))
    assert np.nanstd(astigmatic) > 4 * np.nanstd(round_) and np.isfinite(astigmatic).sum() > 30


def test_training_with_a_z_calibration_keeps_it_in_the_model(tmp_path):
    s = TrainSettings(iterations=1, batch_size=2, val_size=2, pixel_size=100.0, out_dir=str(tmp_path / "t"),
                      config=registry.tiny_config(), device="cpu", z_calibration=CAL)
    *_, last = train(s)
    assert registry.load(last.model_path).info["trained_on"]["z_calibration"] == CAL.to_dict()


def test_train_refuses_a_calibration_of_another_pixel_size(tmp_path, capsys):
    cal = tmp_path / "cal.json"
    write_zcalibration(cal, CAL)
    out = tmp_path / "trained"
    code = cli.main(["train", "--out", str(out), "--tiny", "--iterations", "2", "--pixel-size", "160",
                     "--z-calibration", str(cal)])
    err = capsys.readouterr().err
    assert code == 2 and "measured with 100 nm pixels, the simulation has 160 nm pixels" in err
    assert not out.exists()
