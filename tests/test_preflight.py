"""The checks of a stack before a run (analysis/preflight.py): its density from the pixels' temporal
statistics against the truth, the warnings beyond the training range and where spots merge into a
continuum, and ``smlm-uq predict`` printing them and keeping them in summary.json."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from napari_smlm_uq import cli
from napari_smlm_uq.analysis.preflight import estimate_density, preflight
from napari_smlm_uq.models import registry
from napari_smlm_uq.physics.camera import Camera
from napari_smlm_uq.physics.simulate import SimulationSettings, simulate


def movie(density: float, **kw):
    settings = SimulationSettings(frames=50, size=64, density=density, photons=(1000.0, 4000.0), background=20.0,
                                  background_map="gradient", seed=1)
    return simulate(SimulationSettings(**(settings.__dict__ | kw)))


@pytest.mark.parametrize("density, on_time, psf_sigma", [(0.3, None, 1.0), (1.0, None, 1.0), (3.0, None, 1.0),
                                                       (1.0, 3.0, 1.0), (3.0, 3.0, 1.0), (1.0, None, 1.5)])
def test_density_and_width_from_the_pixels_statistics(density, on_time, psf_sigma):
    per_px, width = estimate_density(movie(density, on_time=on_time, psf_sigma=psf_sigma).adu, Camera())
    assert per_px / 0.01 == pytest.approx(density, rel=0.3)   # 100-nm pixels
    assert width == pytest.approx(np.sqrt(psf_sigma**2 + 1 / 12), rel=0.04)   # the pixelated PSF's


def test_density_warnings_beyond_the_training_range_and_where_spots_merge():
    sparse = preflight(movie(1.0).adu, Camera(), 100.0)
    assert sparse.stack == [] and sparse.psf is not None and sparse.psf.sigma == pytest.approx(1.0, abs=0.05)
    dense = preflight(movie(10.0).adu, Camera(), 100.0)
    assert len(dense.stack) == 1 and "denser than the model's training range" in dense.stack[0]
    assert "trained up to 6 /um^2" in dense.stack[0] and 6.0 < dense.density < 10.5
    continuum = preflight(movie(25.0).adu, Camera(), 100.0)
    assert len(continuum.stack) == 1 and "too dense for the model" in continuum.stack[0]
    assert "beyond what the model resolves" in continuum.stack[0]
    assert f"about {continuum.density:.3g} emitters/um^2 or more" in continuum.stack[0] and continuum.density > 10.0


def test_predict_warns_of_a_continuum_before_the_run(tmp_path, capsys):
    stack = tmp_path / "dense.tif"
    tifffile.imwrite(stack, movie(25.0, size=32).adu.astype("uint16"))   # no metadata: the camera estimated
    torch.manual_seed(0)
    registry.save(registry.build(registry.tiny_config(), name="tiny"), tmp_path / "tiny.pt")
    code = cli.main([str(a) for a in ("predict", stack, "--out", tmp_path / "out", "--model", tmp_path / "tiny.pt",
                                      "--samples", "0", "--device", "cpu")])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    warning = next(i for i, line in enumerate(lines) if "too dense for the model" in line)
    done = next(i for i, line in enumerate(lines) if "frames in" in line)
    assert lines[warning].startswith("warning: ") and warning < done   # before the run
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert lines[warning].removeprefix("warning: ") in summary["warnings"]
    assert summary["preflight"]["density_per_um2"] > 8.0
