"""Dock widget "Post-process": drift correction, merging of blinks, FRC resolution and Picasso export
of localizations (a points layer from the prediction widget, whose features are ThunderSTORM columns, or
a table file: our CSV, ThunderSTORM's CSV or a Picasso HDF5). Localizations hidden by the "Filter by
uncertainty" widget are left out. Everything is computed by postprocess.workflow; this only presents it.
"""
from __future__ import annotations

from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton
from napari.layers import Points
from napari.utils.notifications import show_error, show_info

from ..analysis.render import napari_translate, render
from ..defaults import RENDER_PIXEL_NM
from ..io.files import InputError
from ..io.tables import read_table
from ..postprocess import workflow
from ._fields import SettingsForm
from ._widgets import more_settings, scrolling

MARGIN_NM = 500.0


def layer_table(layer: Points, only_shown: bool = True) -> dict[str, np.ndarray]:
    """The localizations table (ThunderSTORM columns) held in a points layer's features, without the
    points the threshold widget hides when ``only_shown``."""
    features = layer.features
    missing = [c for c in ("frame", "x [nm]", "y [nm]") if c not in features.columns]
    if missing:
        raise InputError(f"layer '{layer.name}' has no feature(s) {', '.join(missing)}: not a localizations layer")
    keep = np.asarray(layer.shown, bool) if only_shown else np.ones(len(features), bool)
    return {c: np.asarray(features[c], float)[keep] for c in features.columns
            if np.issubdtype(features[c].dtype, np.number)}


def marker_positions(layer: Points, pixel_nm: float) -> np.ndarray:
    """Fiducial markers (x, y nm, our table convention) from a points layer in world nm (row, col last)."""
    world = np.asarray(layer.data) * np.asarray(layer.scale) + np.asarray(layer.translate)
    return world[:, [-1, -2]] + 0.5 * pixel_nm


class PostprocessWidget(Container):
    """Choose localizations, the steps and their settings; run; see the drift and FRC curves."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        points = lambda _w: [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Points)]
        self.viewer = napari_viewer
        self.source = ComboBox(label="localizations", choices=points, nullable=True)
        self.table_file = FileEdit(label="or table file", mode="r", filter="*.csv *.hdf5 *.h5")
        self.fiducials = ComboBox(label="fiducial markers", choices=points, nullable=True, value=None)
        self.fields = SettingsForm(workflow.Settings)
        self.fields.attach(self)
        self.run_button = PushButton(text="Run")
        self.out_dir = FileEdit(label="save to folder", mode="d")
        self.save_button = PushButton(text="Save CSV, drift, FRC and Picasso files")
        self.summary = Label(value="")
        f = self.fields
        super().__init__(widgets=[self.source, self.table_file, self.fiducials, *f.take("pixel_size", "drift"),
                                  *f.take("rcc_segment", "segment", "merge", "max_gap", "frc", "max_uncertainty"),
                                  self.run_button, self.summary, self.out_dir, self.save_button])
        self.native.layout().insertWidget(self.index(self.run_button), more_settings(f.rest()))
        self.canvas, self.figure = _plot_canvas()
        self.native.layout().addWidget(self.canvas)
        scrolling(self)   # fits a laptop screen
        self.result: workflow.Result | None = None
        self.run_button.changed.connect(self.run)
        self.save_button.changed.connect(self.save)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self.reset_choices)

    def settings(self) -> workflow.Settings:
        fid = self.fiducials.value
        fiducials = None if fid is None else marker_positions(fid, self.pixel_size_nm())
        return self.fields.build(workflow.Settings, fiducials=fiducials)

    def pixel_size_nm(self) -> float:
        """The camera pixel (nm): the localizations layer's, else the input's, else the default."""
        layer, given = self.source.value, self.fields.build(workflow.Settings).camera_pixel
        return float(layer.metadata.get("pixel_size", given)) if layer is not None else given

    def table(self) -> tuple[dict[str, np.ndarray], str]:
        layer, path = self.source.value, Path(self.table_file.value)
        if layer is not None:
            return layer_table(layer), layer.name
        if path.is_file():
            return read_table(path, self.settings().pixel_size), path.stem
        raise InputError("choose a localizations layer or a table file")

    def run(self) -> None:
        try:
            table, name = self.table()
            self.result = workflow.run(table, self.settings())
        except InputError as exc:
            self.summary.value = str(exc)
            show_error(str(exc))
            return
        self.summary.value = "\n".join(workflow.summary_lines(len(table["frame"]), self.result))
        self._show(name)
        _plot(self.figure, self.result)
        self.canvas.draw_idle()

    def _show(self, name: str) -> None:
        """The corrected localizations as points and their Gaussian rendering (kept rows only)."""
        t, p = self.result.table, self.pixel_size_nm()
        world = np.stack([t["frame"] - 1, t["y [nm]"] - 0.5 * p, t["x [nm]"] - 0.5 * p], axis=1)
        kwargs = {"features": t, "size": 0.5 * p, "symbol": "ring", "face_color": "yellow", "border_width": 0.0,
                  "metadata": {"pixel_size": p, "kind": "post-processed"}}
        self._replace(f"{name} post-processed", "points", world, kwargs)
        kept = self.result.kept
        extent = (float(t["y [nm]"].max()) + MARGIN_NM, float(t["x [nm]"].max()) + MARGIN_NM)
        sigma = np.nan_to_num(t["uncertainty [nm]"][kept], nan=0.0)  # none (phi alone): a point per localization
        image = render(t["x [nm]"][kept], t["y [nm]"][kept], sigma, extent, RENDER_PIXEL_NM)
        shift = napari_translate(RENDER_PIXEL_NM, p)
        self._replace(f"{name} rendered", "image", image.astype(np.float32),
                      {"scale": (RENDER_PIXEL_NM, RENDER_PIXEL_NM), "translate": (shift, shift), "colormap": "hot",
                       "contrast_limits": (0.0, max(float(np.quantile(image, 0.999)), 1e-6))})

    def _replace(self, name: str, kind: str, data: np.ndarray, kwargs: dict) -> None:
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        getattr(self.viewer, f"add_{kind}")(data, name=name, **kwargs)

    def save(self) -> None:
        if self.result is None:
            show_error("run the post-processing first")
            return
        written = workflow.write(self.result, Path(self.out_dir.value), picasso=True, pixel_nm=self.pixel_size_nm())
        show_info(f"wrote {', '.join(p.name for p in written)} to {self.out_dir.value}")


def _plot_canvas():
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4, 4.5), tight_layout=True)
    figure.add_subplot(2, 1, 1)
    figure.add_subplot(2, 1, 2)
    canvas = FigureCanvasQTAgg(figure)
    canvas.setMinimumHeight(320)
    return canvas, figure


def _plot(figure, result: workflow.Result) -> None:
    """Drift (x, y with +/- 2 standard errors) against frame; FRC curves with the 1/7 threshold."""
    top, bottom = figure.axes
    top.clear()
    bottom.clear()
    d = result.drift
    if d is not None:
        f = np.arange(len(d))
        for values, se, label in ((d.x, d.x_se, "x"), (d.y, d.y_se, "y")):
            top.fill_between(f, values - 2 * se, values + 2 * se, alpha=0.3)
            top.plot(f, values, label=label)
        top.set_xlabel("frame")
        top.set_ylabel("drift [nm]")
        top.legend(fontsize=7)
    for curve, label in ((result.frc, "all"), (result.frc_kept, "filtered")):
        if curve is not None:
            bottom.plot(curve.frequency, curve.curve, label=f"{label}: {curve.resolution_nm:.1f} nm")
    if result.frc is not None:
        bottom.axhline(1 / 7, color="k", lw=0.8, ls="--")
        bottom.set_xlim(0, min(0.1, float(result.frc.frequency[-1])))
        bottom.set_xlabel("spatial frequency [1/nm]")
        bottom.set_ylabel("FRC")
        bottom.legend(fontsize=7)
