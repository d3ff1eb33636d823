"""The background estimate chosen from the data (inference/background_choice.py): a gradient -> local, a
flat field -> the model's own, with the variation measured through blinking molecules."""
from __future__ import annotations

import pytest

from napari_smlm_uq.inference.background_choice import (
    VARIATION_THRESHOLD,
    choose_background,
    tile_background,
    variation,
)
from napari_smlm_uq.inference.preprocessing import block_medians, shifted_photoelectrons
from napari_smlm_uq.physics.simulate import SimulationSettings, simulate


def movie(background_map: str | None, ratio: float = 6.0):
    return simulate(SimulationSettings(frames=30, size=48, density=1.0, photons=2000.0, background=20.0, on_time=3.0,
                                       background_map=background_map, background_ratio=ratio, seed=3))


def noiseless_variation(sim) -> float:
    """The variation of the expected background alone (no molecules, no noise), in the same units."""
    cam = sim.settings.camera
    return variation(tile_background(sim.omega.min(axis=0)[None] * cam.gain + cam.offset, cam))


def test_a_gradient_gives_local():
    sim = movie("gradient")
    choice = choose_background(sim.adu, sim.settings.camera, "frame")
    assert choice.estimate == "local" and choice.source == "from the data"
    # 6x from edge to edge; the tiles' centres (3.5 to 43.5 px of 48) and the read-noise shift (2.25 e-) give 3.4x
    assert choice.variation == pytest.approx(3.5, abs=0.15)
    assert choice.variation == pytest.approx(noiseless_variation(sim), rel=0.05)   # molecules do not bias it
    assert choice.level == pytest.approx(20.0 + 1.5**2, rel=0.05)   # the middle tiles: the mean level
    assert "varies 3.5" in choice.describe() and f"more than {VARIATION_THRESHOLD:g}x" in choice.reason


def test_a_flat_field_gives_the_models_own():
    sim = movie(None)
    choice = choose_background(sim.adu, sim.settings.camera, "frame")
    assert choice.estimate == "frame" and choice.variation < 1.1
    assert "the model's own (frame)" in choice.describe()
    assert choose_background(sim.adu, sim.settings.camera, "local").estimate == "local"
    assert choose_background(sim.adu, sim.settings.camera).estimate is None   # the pipeline uses the model's own


def test_a_mild_gradient_stays_with_the_frame_median():
    """1.2x edge to edge: within the range where the two estimates give the same E (docs/real-data.md)."""
    sim = movie("gradient", 1.2)
    choice = choose_background(sim.adu, sim.settings.camera, "frame")
    assert choice.estimate == "frame" and 1.1 < choice.variation < VARIATION_THRESHOLD


def test_a_given_estimate_is_kept_and_checked():
    sim = movie("gradient")
    choice = choose_background(sim.adu, sim.settings.camera, "frame", given="frame")
    assert choice.estimate == "frame" and choice.source == "given" and choice.variation > 3
    assert choose_background(sim.adu, sim.settings.camera, "frame", given="auto").estimate == "local"
    with pytest.raises(ValueError, match="background must be auto, frame or local"):
        choose_background(sim.adu, sim.settings.camera, given="median")


def test_dense_blinking_does_not_read_as_a_varying_background():
    """2 molecules on per um^2, on for 5 frames: the tiles' median over frames follows the molecules (1.65x
    on a flat field); their 10th percentile over frames stays below the threshold."""
    sim = simulate(SimulationSettings(frames=60, size=48, density=2.0, photons=2000.0, background=20.0, on_time=5.0,
                                      seed=3))
    cam = sim.settings.camera
    median = block_medians(shifted_photoelectrons(sim.adu, cam))[:, 0].median(dim=0).values.numpy()
    assert variation(median) > 1.5
    assert variation(tile_background(sim.adu, cam)) < VARIATION_THRESHOLD
    assert choose_background(sim.adu, cam, "frame").estimate == "frame"
