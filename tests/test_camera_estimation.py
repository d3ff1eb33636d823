"""The camera from the data: EMCCD noise, photon transfer on simulated blinking movies with varying
backgrounds (CCD, EMCCD, sCMOS maps), flat fields, too few frames, camera map files, the camera choice
for predict and its disagreement warning, and the real sCMOS frames (skipped without ../shared/data)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy.ndimage import gaussian_filter

from napari_smlm_uq.inference.camera_choice import choose_camera
from napari_smlm_uq.io.camera_map import read_camera_map
from napari_smlm_uq.io.files import InputError
from napari_smlm_uq.physics.camera import Camera
from napari_smlm_uq.physics.camera_estimation import EstimateError, estimate_camera
from napari_smlm_uq.physics.simulate import SimulationSettings, simulate

ROOT = Path(__file__).resolve().parents[1]
SHARED = [Path(os.environ["SMLM_UQ_SHARED_DATA"])] if "SMLM_UQ_SHARED_DATA" in os.environ else []
SHARED = next((p for p in [*SHARED, ROOT.parent / "shared" / "data", Path("/work/shared/data")] if p.is_dir()), None)


def movie(camera: Camera, frames: int = 100, background_map: str | None = "gradient", seed: int = 3) -> np.ndarray:
    return simulate(SimulationSettings(frames=frames, size=48, density=1.0, photons=2000.0, background=20.0,
                                       on_time=3.0, background_map=background_map, camera=camera, seed=seed)).adu


def test_emccd_excess_noise_doubles_the_shot_noise_variance():
    rng = np.random.default_rng(0)
    omega = np.full((200_000,), 30.0)
    adu = Camera(500.0, 10.0, 0.0, "emccd").expose(omega, rng)
    assert adu.mean() == pytest.approx(500 + 10 * 30, rel=2e-3)
    assert adu.var() == pytest.approx(2 * 10**2 * 30, rel=0.02)          # F^2 g^2 omega
    e = Camera(500.0, 10.0, 0.0, "emccd").to_photoelectrons(adu)          # effective photo-electrons
    assert e.mean() == pytest.approx(15.0, rel=3e-3) and e.var() == pytest.approx(15.0, rel=0.02)


@pytest.mark.parametrize("name, camera", [
    ("ccd", Camera(100.0, 2.0, 1.5)),
    ("emccd", Camera(500.0, 20.0, 0.5, "emccd")),
    ("scmos map", Camera(np.random.default_rng(1).normal(100, 1, (48, 48)),
                         np.random.default_rng(2).normal(2.1, 0.1, (48, 48)),
                         np.random.default_rng(3).uniform(1, 2, (48, 48)), "scmos")),
])
def test_photon_transfer_on_blinking_movies_with_a_gradient(name, camera):
    est = estimate_camera(movie(camera), camera.kind, read_noise=float(np.median(camera.read_noise)))
    gain, offset = float(np.median(camera.gain)), float(np.median(camera.offset))
    assert est.gain * est.excess_noise == pytest.approx(gain * camera.excess_noise, rel=0.10)   # issue target
    assert abs(est.offset - offset) < gain                                                      # within 1 e- of ADU
    assert est.gain_se < 0.05 * est.gain and "photon transfer" in est.source


def test_known_offset_gives_the_read_noise():
    est = estimate_camera(movie(Camera(100.0, 2.0, 2.5)), offset=100.0)
    assert est.read_noise == pytest.approx(2.5, abs=0.4) and np.isfinite(est.read_noise_se)
    assert np.isnan(est.offset_se) and "offset 100 ADU given" in est.notes[0]


def test_flat_field_says_the_offset_was_not_determined():
    adu = movie(Camera(100.0, 3.0, 1.5), background_map=None)
    est = estimate_camera(adu)
    assert "flat background" in est.source and "could not be determined" in est.notes[0]
    assert est.gain == pytest.approx(3.0, rel=0.1)   # the default offset happens to be the true one here
    assert estimate_camera(adu, offset=100.0).notes[0] == "offset 100 ADU given"


def test_too_few_frames():
    with pytest.raises(EstimateError, match=r"5 frames are too few.*at least 10"):
        estimate_camera(movie(Camera(), frames=5))


def test_camera_map_file(tmp_path):
    planes = np.stack([np.full((16, 16), 90.0), np.full((16, 16), 5.0), np.full((16, 16), 2.0)]).astype(np.float32)
    tifffile.imwrite(tmp_path / "map.tif", planes, photometric="minisblack")
    np.save(tmp_path / "map.npy", planes)
    for name in ("map.tif", "map.npy"):
        cam = read_camera_map(tmp_path / name, (16, 16))
        assert cam.kind == "scmos" and np.allclose(cam.read_noise, np.sqrt(5.0) / 2.0) and np.allclose(cam.offset, 90.0)
    with pytest.raises(InputError, match=r"\(3, 8, 8\) needed"):
        read_camera_map(tmp_path / "map.npy", (8, 8))
    for plane, value, word in ((2, 0.0, "gain plane"), (1, -1.0, "variance plane"), (0, np.nan, "NaN")):
        bad = planes.copy()
        bad[plane, 3, 4] = value
        np.save(tmp_path / "bad.npy", bad)
        with pytest.raises(InputError, match=word):
            read_camera_map(tmp_path / "bad.npy", (16, 16))


def test_choice_order_and_disagreement_warning():
    adu = movie(Camera(100.0, 4.0, 1.5))
    choice = choose_camera(adu, {"offset": None, "gain": 2.0, "read_noise": None}, {"read_noise": 1.5})
    assert choice.sources == {"offset": "estimated from the data", "gain": "command line",
                              "read_noise": "file metadata"}
    assert choice.camera.gain == 2.0 and choice.estimate is not None
    assert choice.warning is None and 0.67 < choice.noise_ratio < 1.5   # 2x the gain: noise only 1.4x
    wrong = choose_camera(adu, {"offset": 100.0, "gain": 1.0, "read_noise": 1.5}, {})
    assert wrong.estimate is not None and not 0.67 <= wrong.noise_ratio <= 1.5
    assert "1 ADU/e- (command line)" in wrong.warning and "--gain 3.98" in wrong.warning
    chosen = choose_camera(adu, {}, {})
    assert chosen.sources == {"offset": "estimated from the data", "gain": "estimated from the data",
                              "read_noise": "assumed"} and chosen.warning is None
    assert chosen.camera.gain == pytest.approx(4.0, rel=0.1)


def emccd_flicker(background_map: str | None = None) -> np.ndarray:
    """An EMCCD stack (EM gain 40, offset 200 ADU) whose background jumps between 3 and 15 photons from frame
    to frame: the case where photon transfer once put the offset at 394 ADU, above the data's 5th percentile."""
    return simulate(SimulationSettings(frames=100, size=64, density=1.0, photons=3000.0, background=(3.0, 15.0),
                                       camera=Camera(200.0, 40.0, 1.5, "emccd"), background_map=background_map,
                                       background_ratio=5.0, seed=1)).adu


def test_a_background_changing_between_frames_is_no_shot_noise():
    est = estimate_camera(emccd_flicker("gradient"), "emccd")
    assert est.gain == pytest.approx(40.0, rel=0.05) and "photon transfer" in est.source


def test_the_offset_never_lies_above_the_data():
    adu = emccd_flicker()   # a flat field: photon transfer's line is too short to tell the offset
    low = np.percentile(adu, 5)
    est = estimate_camera(adu, "emccd")
    assert est.offset <= low and "could not tell the offset" in est.source
    assert "above 5 % of the pixels" in est.notes[0] and "--offset" in est.notes[0]
    # the background noise it predicts is the data's: the network's input is right
    assert choose_camera(adu, {}, {}, "emccd").noise_ratio == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("background_map", [None, "gradient"])
def test_a_stack_without_shot_noise_cannot_tell_the_camera(background_map):
    noise_free = simulate(SimulationSettings(frames=40, size=48, density=1.0, background=(10.0, 30.0),
                                             background_map=background_map, seed=2)).omega * 2.0 + 100.0
    why = "do not fluctuate like photon counts" if background_map is None else "neighbouring pixels fluctuate together"
    with pytest.raises(EstimateError, match=f"cannot be told from the data: .*{why}.*--offset and --gain"):
        estimate_camera(noise_free)
    choice = choose_camera(noise_free, {}, {})
    assert choice.estimate is None and set(choice.sources.values()) == {"default"}
    assert "cannot be told from the data" in choice.messages[1]
    assert "the missing values are the defaults" in choice.messages[1] and choice.messages[1] in choice.doubts


def test_a_smoothed_stack_or_emitters_everywhere_cannot_tell_the_camera():
    smoothed = gaussian_filter(movie(Camera(100.0, 2.0, 1.5)), (0, 1.0, 1.0))   # denoised: noise shared by neighbours
    with pytest.raises(EstimateError, match=r"neighbouring pixels fluctuate together \(correlation 0\.[6-9]"):
        estimate_camera(smoothed)
    dense = simulate(SimulationSettings(frames=50, size=32, density=25.0, photons=(1000.0, 4000.0), seed=1)).adu
    with pytest.raises(EstimateError, match="emitters everywhere"):   # once gain 150 ADU/e- for 1, offset 211 for 100
        estimate_camera(dense)


@pytest.mark.skipif(SHARED is None, reason="../shared/data is absent")
def test_real_scmos_gain_within_15_percent_of_its_calibration():
    folder = SHARED / "real-scmos-storm"
    est = estimate_camera(tifffile.imread(folder / "sample.tif"), "scmos")
    _, variance, gain = (np.median(p) for p in tifffile.imread(folder / "calib_offset_variance_gain.tif"))
    assert est.gain == pytest.approx(gain, rel=0.15)
    # the default read noise put the offset above the data: capped, the read noise follows (1.13 e- calibrated)
    assert est.offset <= 100.0 == np.percentile(tifffile.imread(folder / "sample.tif"), 5)
    assert est.read_noise == pytest.approx(np.sqrt(variance) / gain, rel=0.25)
