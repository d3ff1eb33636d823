"""The widgets' non-Qt parts: layer geometry, result accumulation, worker jobs (OOM retry, validation)."""
from __future__ import annotations

import numpy as np
import pytest
from napari_helpers import tiny_stack

from napari_smlm_uq._napari import _layers, _workers
from napari_smlm_uq.inference import pipeline
from napari_smlm_uq.physics.kde import sr_to_raw
from napari_smlm_uq.training import TrainSettings, validate_model


@pytest.mark.parametrize("p", [100.0, 107.0, 65.5])
def test_sr_geometry_puts_sr_centres_on_the_raw_grid(p):
    geo = _layers.RawGrid.for_pixel_size(p).sr(3, first_frame=5)
    raw = _layers.raw_geometry(p)["scale"]
    m = np.arange(0, 40, 3, dtype=float)
    sr_world = m * geo["scale"][-1] + geo["translate"][-1]
    raw_world = sr_to_raw(m) * raw[-1]
    np.testing.assert_allclose(sr_world, raw_world, atol=1e-9)
    assert geo["scale"][0] == 1.0 and geo["translate"][0] == 5.0
    # the SR image covers exactly the raw image: edge of SR pixel 0 == edge of raw pixel 0
    assert geo["translate"][-1] - geo["scale"][-1] / 2 == pytest.approx(-p / 2)


def test_world_to_index_round_trip():
    geo = _layers.RawGrid.for_pixel_size(80.0).sr(3, first_frame=2)
    idx = np.array([[0, 0, 0], [1, 10, 63], [2, 63, 5]])
    world = idx * np.asarray(geo["scale"]) + np.asarray(geo["translate"])
    got, inside = _layers.world_to_index(world, geo["scale"], geo["translate"], (3, 64, 64))
    np.testing.assert_array_equal(got, idx)
    assert inside.all()
    _, inside = _layers.world_to_index(world + [[5, 0, 0]] * 3, geo["scale"], geo["translate"], (3, 64, 64))
    assert not inside.any()


def test_camera_settings_defaults_and_found():
    cam = _layers.camera_settings({"pixel_size": 65, "gain": "bad", "offset": 0})
    assert cam["pixel_size"] == 65 and cam["offset"] == 0 and cam["gain"] == 1.0
    assert cam["found"] == ["pixel_size", "offset"]


def test_predict_job_turns_notes_into_notices(tiny_model_file, monkeypatch):
    model = tiny_model_file
    real = pipeline.predict

    def noted(*args, **kwargs):
        for i, r in enumerate(real(*args, **kwargs)):
            r.notes = ("retried",) if i == 1 else ()
            yield r

    monkeypatch.setattr(pipeline, "predict", noted)
    settings = pipeline.PredictSettings(samples=0, device="cpu")
    kept, closed = [], []

    def close():
        closed.append(len(kept))
        return "outcome"

    job = _workers.predict_job(tiny_stack(4, 16), str(model), settings, range(1, 4), lambda: False, kept.append, close)
    items = []
    with pytest.raises(StopIteration) as stop:
        while True:
            items.append(next(job))
    assert stop.value.value == "outcome" and closed == [3]   # closed once, after the last frame
    kinds = [type(i).__name__ if isinstance(i, _workers.Notice) else i.index for i in items]
    assert kinds == [1, "Notice", 2, 3] and items[1].text == "retried"
    # the worker keeps each result (the store's write) before it tells the viewer, which gets no arrays
    assert [r.index for r in kept] == [1, 2, 3]
    done = [i for i in items if isinstance(i, _workers.FrameDone)]
    assert [d.localizations for d in done] == [len(r.localizations) for r in kept]


def test_predict_job_closes_the_run_when_the_prediction_fails(tiny_model_file, monkeypatch):
    real = pipeline.predict

    def failing(*args, **kwargs):
        yield next(real(*args, **kwargs))
        raise OSError("No space left on device")

    monkeypatch.setattr(pipeline, "predict", failing)
    kept, closed = [], []
    settings = pipeline.PredictSettings(samples=0, device="cpu")
    job = _workers.predict_job(tiny_stack(4, 16), str(tiny_model_file), settings, range(4), lambda: False,
                               kept.append, lambda: closed.append(len(kept)))
    with pytest.raises(OSError, match="No space"):
        list(job)
    assert closed == [1]   # the frame done is written before the error reaches the widget


def test_validation_reports_scores_beside_the_crlb(tiny_model_file, tmp_path):
    model = tiny_model_file
    s = TrainSettings(photons=(1000.0, 4000.0), background=(10.0, 40.0), pixel_size=100.0, out_dir=str(tmp_path))
    m = validate_model(model, s, frames=2, size=16)
    assert m["photons"] == pytest.approx(2000.0) and m["background"] == pytest.approx(20.0)
    assert 0 < m["crlb"] < 50 and 0 <= m["jaccard"] <= 100 and m["frames"] == 2
    assert _workers.eta(10.0, 2, 4) == "0:10 left" and _workers.eta(1.0, 0, 4) == ""
