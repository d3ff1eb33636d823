"""The "Post-process" dock widget on a prediction-style localizations layer and on a table file."""
from __future__ import annotations

import localization_simulation as simulation
import numpy as np
import pytest
from napari_helpers import PLUGIN

from napari_smlm_uq._napari._layers import points_data
from napari_smlm_uq.io.tables import write_localizations
from napari_smlm_uq.localizations import Localizations

POSTPROCESS = "Post-process"
P = 100.0


@pytest.fixture(scope="module")
def sim():
    return simulation.simulate_localizations(frames=600, field_um=4.0, density=0.5, molecules=400, seed=31)


def add_localizations(viewer, sim, name="raw localizations"):
    """A points layer as the prediction widget makes it (world nm, ThunderSTORM features)."""
    n = len(sim)
    locs = Localizations(sim.frame, sim.y / P - 0.5, sim.x / P - 0.5, sim.sigma / P, np.ones(n), np.full(n, 5.0))
    coords, features = points_data(locs, P)
    return viewer.add_points(coords, features=features, name=name, ndim=3, metadata={"pixel_size": P})


def dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, POSTPROCESS)
    widget.rcc_segment.value, widget.segment.value = 150, 50
    return widget


@pytest.mark.slow
def test_widget_corrects_merges_and_plots(make_napari_viewer, sim):
    viewer = make_napari_viewer()
    layer = add_localizations(viewer, sim)
    hidden = np.zeros(len(sim), bool)
    hidden[::10] = True  # as the threshold widget hides uncertain localizations
    layer.shown = ~hidden
    widget = dock(viewer)
    widget.source.value = layer
    widget.drift.value = widget.merge.value = widget.frc.value = True
    widget.run_button.clicked.emit()
    result = widget.result
    assert result is not None, widget.summary.value
    assert result.table["frames"].sum() == (~hidden).sum()
    err = np.stack([result.drift.x, result.drift.y], axis=1) - sim.drift
    assert np.sqrt(np.mean(np.sum((err - err.mean(0)) ** 2, axis=1))) < 10.0
    assert {"raw localizations post-processed", "raw localizations rendered"} <= {lay.name for lay in viewer.layers}
    rendered = viewer.layers["raw localizations rendered"].data
    assert rendered.sum() == pytest.approx(result.kept.sum(), rel=0.01)
    top, bottom = widget.figure.axes
    assert len(top.lines) == 2 and len(bottom.lines) == 3  # drift x, y; FRC all, filtered, 1/7
    assert widget.summary.value.startswith(f"{(~hidden).sum()} localizations -> ")


@pytest.mark.slow
def test_widget_keeps_positions_without_steps_and_reads_files(make_napari_viewer, sim, tmp_path):
    viewer = make_napari_viewer()
    layer = add_localizations(viewer, sim)
    widget = dock(viewer)
    widget.source.value = layer
    assert not (widget.drift.value or widget.merge.value or widget.frc.value)   # steps run when asked for
    widget.run_button.clicked.emit()
    out = viewer.layers["raw localizations post-processed"]
    assert np.allclose(out.data, layer.data)  # same world coordinates as the prediction's points

    widget.source.value = None
    widget.run_button.clicked.emit()
    assert widget.summary.value == "choose a localizations layer or a table file"
    path = tmp_path / "table.csv"
    write_localizations(path, {"frame": sim.frame + 1, "x [nm]": sim.x, "y [nm]": sim.y, "uncertainty [nm]": sim.sigma})
    widget.table_file.value = path
    widget.merge.value = True
    widget.run_button.clicked.emit()
    assert "table post-processed" in viewer.layers and widget.result.table["frames"].sum() == len(sim)
    widget.out_dir.value = tmp_path / "out"
    widget.save_button.clicked.emit()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["localizations.csv", "locs.hdf5", "locs.yaml"]
