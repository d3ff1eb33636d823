"""Dock widget "Filter by uncertainty": hide what the model is unsure about.

Pick an SR mean and SR std layer of a prediction (and optionally its localizations): only layers that
the prediction widget made are offered (``metadata["smlm_uq"]``), so raw frames never are. A slider on the
std, absolute or relative to the mean (``std / (mean + eps)``), marks the uncertain SR pixels; the widget shows the mean
with those pixels zeroed (``<mean> filtered``), the uncertain region (``<mean> uncertain``), hides the
localizations that fall in it and reports the fractions of signal and localizations kept. For 3D localizations (a
z calibration) a second slider hides those whose z uncertainty is above it (:func:`within_z_uncertainty`; below
its top also those whose 3D fit was not kept, whose z uncertainty is NaN).

Everything is lazy, so a stack read from a result store of any length is never read whole: the two layers
are dask expressions computed by napari for the frame on screen; the slider's range and the signal kept come
from up to :data:`SAMPLE_FRAMES` frames spread over the stack; the uncertainty at each localization's pixel is
read once per choice of layers and mode, chunk by chunk in a thread, and then filtered at every slider move.
"""
from __future__ import annotations

import dask.array as da
import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSlider
from napari.layers import Image
from napari.utils.notifications import show_warning
from superqt.utils import qdebounced

from ..localizations import within_z_uncertainty
from ._layers import TAG, world_to_index
from ._widgets import layer_chooser, note
from ._workers import start_worker

EPS = 0.01          # KDE units (a kernel's peak is 1): keeps std / (mean + eps) finite on empty background
MODES = {"std (KDE units)": "absolute", "std / mean": "relative"}
STEPS = 1000
SAMPLE_FRAMES = 8   # frames read for the slider's range and the signal kept (all of a shorter stack)
Z_COLUMN = "uncertainty z [nm]"
NO_RESULTS = "No results yet: run 'Super-resolve with uncertainty' first; its mean and std layers are listed here."


class ThresholdWidget(Container):
    """Threshold the per-pixel uncertainty of a prediction; live filtered image and kept fractions.
    Only our SR mean, SR std and localization layers are offered; without them it does nothing."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        self.viewer = napari_viewer
        self.mean = layer_chooser(napari_viewer, ("mean",), "mean")
        self.std = layer_chooser(napari_viewer, ("std",), "std")
        self.points = layer_chooser(napari_viewer, ("localizations",), "localizations", nullable=True)
        self.mode = ComboBox(choices=list(MODES.items()), value="absolute", label="threshold on")
        self.slider = FloatSlider(value=1.0, min=0.0, max=1.0, step=1.0 / STEPS, label="max uncertainty",
                                  tooltip="SR pixels whose uncertainty is above this value are removed")
        self.z_slider = FloatSlider(value=1.0, min=0.0, max=1.0, label="max z uncertainty (nm)", visible=False,
                                    tooltip="3D localizations whose z uncertainty is above this value are hidden "
                                            "(below the top also those without one: their 3D fit was not kept)")
        self.kept = note(NO_RESULTS)
        super().__init__(widgets=[self.mean, self.std, self.points, self.mode, self.slider, self.z_slider, self.kept])

        self.signal_fraction = float("nan")
        self.points_fraction = float("nan")
        self._cache: tuple | None = None
        self._points_layer = None
        self._has_z = False   # whether the chosen localizations are 3D (the z slider shown)
        self._at_points: tuple | None = None   # (key, uncertainty at each localization, inside the mean's extent)
        self._reading = None                   # (key, worker) reading them
        self._schedule = qdebounced(self.apply, timeout=30, parent=self.native)  # deleted with the widget
        self.native.destroyed.connect(lambda *_: setattr(self, "_reading", None))  # a late read is dropped

        self.mean.changed.connect(self._mean_changed)
        self.std.changed.connect(lambda _: self._reset_range())
        self.points.changed.connect(self._points_changed)
        self.z_slider.changed.connect(lambda _: self._schedule())
        self.mode.changed.connect(lambda _: self._reset_range())
        self.slider.changed.connect(lambda _: self._schedule())
        self._mean_changed(self.mean.value)
        self._points_changed(self.points.value)

    # --- choosing layers -----------------------------------------------------------------------

    def _partner(self, mean, kind: str):
        source, partial = mean.metadata.get("source"), mean.metadata.get("partial")
        for layer in self.viewer.layers[::-1]:
            meta = layer.metadata
            if meta.get(TAG) == kind and meta.get("source") == source and meta.get("partial") == partial:
                return layer
        return None

    def _pair(self, mean, skip: tuple = ()) -> None:
        """Choose the std and localizations of the same prediction as ``mean`` (except layers in ``skip``)."""
        if mean is None:
            return
        for chooser, kind in ((self.std, "std"), (self.points, "localizations")):
            partner = self._partner(mean, kind)
            if partner is not None and not any(partner is layer for layer in skip):
                chooser.value = partner

    def _mean_changed(self, mean) -> None:
        self._pair(mean)
        self._reset_range()

    def _points_changed(self, points) -> None:
        """The z slider: shown for 3D localizations, from 0 to their largest z uncertainty (rounded up)."""
        features = getattr(points, "features", None)
        z = np.asarray(features[Z_COLUMN], float) if features is not None and Z_COLUMN in features else None
        self.z_slider.visible = self._has_z = z is not None
        if z is not None:
            finite = z[np.isfinite(z)]
            top = float(np.ceil(finite.max())) + 1.0 if len(finite) else 1.0
            with self.z_slider.changed.blocked():
                self.z_slider.min, self.z_slider.max, self.z_slider.step = 0.0, top, top / STEPS
                self.z_slider.value = top
        self._schedule()

    def z_limit(self) -> float | None:
        """The z uncertainty limit (nm); None (no z filter) at the slider's top or for 2D localizations."""
        return float(self.z_slider.value) if self._has_z and self.z_slider.value < self.z_slider.max else None

    def reset_choices(self, *_) -> None:
        """napari calls this on every layer change: partners of the chosen mean that just appeared (a
        prediction adds its layers one by one) are chosen; the user's other choices are kept."""
        offered = self.std.choices + self.points.choices
        super().reset_choices()
        self._pair(self.mean.value, skip=offered)

    # --- computing -----------------------------------------------------------------------------

    def _arrays(self):
        """``(mean, metric, sampled mean, sampled metric)`` of the chosen layers (cached): the first two lazy
        (dask, float32, one chunk per frame of a numpy stack), the others numpy arrays of
        :func:`sample_frames` (the whole image of a 2D layer); or None with a reason."""
        mean, std = self.mean.value, self.std.value
        if mean is None or std is None:
            return None, NO_RESULTS
        mode = self.mode.value
        key = (id(mean), id(std), id(mean.data), id(std.data), np.shape(mean.data), np.shape(std.data), mode)
        if self._cache is None or self._cache[0] != key:
            m, s = lazy(mean.data), lazy(std.data)
            if m.shape != s.shape:
                return None, f"'{mean.name}' {m.shape} and '{std.name}' {s.shape} differ in shape."
            metric = s if mode == "absolute" else s / (da.clip(m, 0, None) + np.float32(EPS))
            frames = sample_frames(len(m)) if m.ndim == 3 else slice(None)
            sampled_mean, sampled_metric = da.compute(da.clip(m[frames], 0, None), metric[frames])
            self._cache = (key, m, metric, sampled_mean, sampled_metric)
        return self._cache[1:], ""

    def _reset_range(self) -> None:
        arrays, _ = self._arrays()
        top = 1.0
        if arrays is not None:
            metric = arrays[3]
            top = float(np.max(metric)) if metric.size else 1.0
            top = top if top > 0 else 1.0
        decimals = max(2, int(np.ceil(-np.log10(top / STEPS))))
        top = float(np.ceil(top * 10**decimals) / 10**decimals)  # the slider's top keeps every pixel
        with self.slider.changed.blocked():
            self.slider.min, self.slider.max, self.slider.step = 0.0, top, top / STEPS
            self.slider.value = top
        self._schedule()

    def threshold(self) -> float:
        return float(self.slider.value)

    def apply(self) -> None:
        """Update the filtered and uncertain layers, the localizations shown and the kept fractions."""
        arrays, why = self._arrays()
        if arrays is None:
            self.kept.value = why
            return
        mean_arr, metric, sampled_mean, sampled_metric = arrays
        mean = self.mean.value
        uncertain = metric > self.threshold()
        filtered = da.where(uncertain, np.float32(0), mean_arr)
        total = float(sampled_mean.sum(dtype=np.float64))
        kept = float(sampled_mean[sampled_metric <= self.threshold()].sum(dtype=np.float64))
        self.signal_fraction = kept / total if total > 0 else 1.0
        geometry = {"scale": mean.scale, "translate": mean.translate, "units": mean.units,
                    "axis_labels": mean.axis_labels, "metadata": {
            **{k: v for k, v in mean.metadata.items() if k in ("source", "pixel_size", "frames", "partial")},
            "threshold": self.threshold(), "mode": self.mode.value}}
        self._show(f"{mean.name} filtered", filtered, "filtered", mean,
                   {"colormap": mean.colormap.name, "contrast_limits": mean.contrast_limits, **geometry})
        self._show(f"{mean.name} uncertain", uncertain.astype(np.uint8), "uncertain", mean,
                   {"colormap": "red", "contrast_limits": (0, 1), "blending": "additive", "opacity": 0.6, **geometry})
        self._filter_points(mean, metric)
        text = f"signal kept: {100 * self.signal_fraction:.1f} %"
        if mean_arr.ndim == 3 and len(sampled_mean) < len(mean_arr):
            text += f" (in {len(sampled_mean)} of {len(mean_arr)} frames)"
        if self._points_layer is not None:
            n = len(self._points_layer.data)
            if self.points_pending:
                text += f" · localizations: reading the uncertainty at {n}…"
            else:
                text += f" · localizations kept: {int(round(self.points_fraction * n))} / {n}"
                text += f" ({100 * self.points_fraction:.1f} %)" if n else ""
        self.kept.value = text

    def _show(self, name: str, data, kind: str, mean, kwargs: dict) -> None:
        """Update layer ``name`` or add it just above ``mean`` (so localizations above stay visible)."""
        kwargs["metadata"][TAG] = kind
        layers = self.viewer.layers
        if name in layers and isinstance(layers[name], Image):
            layer = layers[name]
            layer.data = data
            layer.scale, layer.translate, layer.metadata = kwargs["scale"], kwargs["translate"], kwargs["metadata"]
            return
        layer = self.viewer.add_image(data, name=name, **kwargs)
        if mean in layers:
            layers.move(layers.index(layer), layers.index(mean) + 1)

    @property
    def points_pending(self) -> bool:
        """Whether the uncertainty at the chosen localizations is still being read."""
        return self._reading is not None

    def _filter_points(self, mean, metric) -> None:
        """Hide the localizations whose SR pixel's uncertainty is above the threshold (read first, once)."""
        points = self.points.value
        old = self._points_layer
        if old is not None and old is not points and old in self.viewer.layers:
            old.shown = np.ones(len(old.data), bool)  # release the previous layer
        self._points_layer = points
        if points is None:
            self.points_fraction = float("nan")
            return
        if len(points.data) == 0:
            self.points_fraction = 1.0
            return
        world = np.asarray(points.data) * np.asarray(points.scale) + np.asarray(points.translate)
        if world.shape[1] < metric.ndim:
            show_warning(f"'{points.name}' has fewer dimensions than '{mean.name}'; localizations not filtered.")
            self.points_fraction = float("nan")
            return
        key = (self._cache[0], id(points), id(points.data), len(points.data), tuple(points.scale),
               tuple(points.translate))
        if self._at_points is None or self._at_points[0] != key:
            self._read_at_points(key, metric, *world_to_index(world, mean.scale, mean.translate, metric.shape))
            return
        _, values, inside = self._at_points
        hidden = inside & (values > self.threshold())
        if Z_COLUMN in points.features:
            hidden |= ~within_z_uncertainty(points.features[Z_COLUMN], self.z_limit())
        points.shown = ~hidden
        self.points_fraction = float((~hidden).mean())

    def _read_at_points(self, key: tuple, metric, idx: np.ndarray, inside: np.ndarray) -> None:
        """Read ``metric`` at ``idx`` in a thread (chunk by chunk: a stored stack is never read whole), then apply."""
        if self._reading is not None and self._reading[0] == key:
            return
        worker = start_worker(values_at, metric, idx)

        def done(values: np.ndarray) -> None:
            if self._reading is not None and self._reading[1] is worker:
                self._reading, self._at_points = None, (key, values, inside)
                self.apply()

        def failed(exc: BaseException) -> None:
            if self._reading is not None and self._reading[1] is worker:
                self._reading = None
                show_warning(f"Could not read the uncertainty at the localizations: {exc}")

        worker.returned.connect(done)
        worker.errored.connect(failed)
        self._reading = (key, worker)
        worker.start()


def lazy(data) -> da.Array:
    """A layer's data as a float32 dask array: a store-backed stack as it is chunked, a numpy stack one chunk
    per frame (nothing is read or copied here)."""
    array = data if isinstance(data, da.Array) else da.from_array(
        data, chunks=(1, *np.shape(data)[1:]) if np.ndim(data) == 3 else -1)
    return array.astype(np.float32)


def sample_frames(n: int) -> np.ndarray:
    """Up to :data:`SAMPLE_FRAMES` frame indices spread evenly over ``n`` frames, first and last included."""
    return np.unique(np.linspace(0, n - 1, min(n, SAMPLE_FRAMES)).round().astype(int))


def values_at(array: da.Array, idx: np.ndarray) -> np.ndarray:
    """``array`` at the integer indices ``idx`` ``(n, ndim)``, reading only the chunks that hold them."""
    return np.asarray(array.vindex[tuple(idx.T)].compute()) if len(idx) else np.zeros(0, array.dtype)
