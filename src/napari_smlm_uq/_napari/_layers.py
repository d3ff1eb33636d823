"""Layer geometry (docs/physics.md, sections 1 and 4) and a run's results as layers for the widgets; numpy only,
no Qt.

World coordinates are nm with raw pixel centres at ``index * p``: the raw layer has ``scale = (1, p, p)``
on ``(frame, row, col)``; SR layers have ``scale = (1, p/f, p/f)`` and ``translate = (first frame,
-(1 - 1/f)/2 p, -(1 - 1/f)/2 p)`` so that SR pixel ``m`` is centred on raw coordinate
``(m + 1/2)/f - 1/2``; points hold world coordinates directly (``frame, row * p, col * p``).
3D localizations (a z calibration) get z (nm) as a leading axis, ``(z, frame, row, col)``: :func:`points_3d`.
When the raw layer is placed otherwise (another reader, a translate), :class:`RawGrid` follows it, so
the results always overlay the layer they came from.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..analysis.render import render, render_z, z_colours, z_image
from ..defaults import CAMERA_FIELDS, PIXEL_SIZE_NM, RENDER_PIXEL_NM
from ..inference.run import RunResults
from ..io.store import DEFAULT_ENCODING, ResultStore
from ..io.tables import localizations_table, px_to_nm
from ..localizations import Localizations
from ..physics.camera import Camera
from ..physics.kde import UPSAMPLING, grid_offset
from ._view3d import prepare_3d

F = UPSAMPLING
CAMERA_DEFAULTS = {k: float(getattr(Camera(), k)) for k in CAMERA_FIELDS}  # 100 ADU, 1, 1.5 e-
SUFFIXES = {"mean": " SR mean", "sample": " SR sample", "std": " SR std", "sum": " SR sum",
            "sum std": " SR sum std", "rendered": " rendered", "localizations": " localizations"}
SUFFIXES_3D = {"rendered z": " rendered by z"}   # 3D runs (a z calibration) add these
PARTIAL = " (partial)"
TAG = "smlm_uq"  # layer.metadata key saying what a layer holds: "raw", "mean", "sample", "std", "sum",
#                  "sum std", "rendered", "rendered z", "localizations", "ground truth", "filtered", "uncertain"
AXIS_LABELS = ("frame", "y", "x")
UNITS = ("pixel", "nm", "nm")
Z_COLOURS = 64   # entries of the z colour map of points (analysis/render.z_colours)


@dataclass(frozen=True)
class RawGrid:
    """Where raw ``(T, H, W)`` frames sit in the world: the raw layer's per-axis ``scale`` and
    ``translate`` (frame, row, col), axis labels and units."""

    scale: tuple = (1.0, PIXEL_SIZE_NM, PIXEL_SIZE_NM)
    translate: tuple = (0.0, 0.0, 0.0)
    axis_labels: tuple = AXIS_LABELS
    units: tuple = UNITS

    @classmethod
    def for_pixel_size(cls, pixel_size: float) -> RawGrid:
        p = float(pixel_size)
        return cls((1.0, p, p))

    @classmethod
    def of_layer(cls, layer) -> RawGrid:
        """The grid of a napari image layer (a 2D layer gets a frame axis of scale 1)."""
        lead = 3 - layer.ndim
        scale = (1.0,) * lead + tuple(float(v) for v in layer.scale)
        translate = (0.0,) * lead + tuple(float(v) for v in layer.translate)
        return cls(scale, translate, ("frame",) * lead + tuple(layer.axis_labels),
                   ("pixel",) * lead + tuple(layer.units))

    def axes(self, ndim: int) -> dict:
        return {"axis_labels": tuple(self.axis_labels[-ndim:]), "units": tuple(self.units[-ndim:])}

    def raw(self, ndim: int = 3) -> dict:
        """Layer keywords of the raw frames (``ndim`` 3, or 2 for a single frame)."""
        return {"scale": tuple(self.scale[-ndim:]), "translate": tuple(self.translate[-ndim:]), **self.axes(ndim)}

    def sr(self, ndim: int = 3, first_frame: int = 0, f: int = F) -> dict:
        """Layer keywords of an SR layer ``(T, fH, fW)`` from raw frame ``first_frame`` on (or ``(fH, fW)``)."""
        st, sy, sx = self.scale
        tt, ty, tx = self.translate
        k = grid_offset(1.0 / f)
        scale = (st, sy / f, sx / f)
        translate = (tt + first_frame * st, ty + k * sy, tx + k * sx)
        return {"scale": scale[-ndim:], "translate": translate[-ndim:], **self.axes(ndim)}

    def world(self, frame: np.ndarray, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        """World coordinates ``(n, 3)`` of raw-pixel positions (pixel centres at integers)."""
        data = np.stack([np.asarray(frame, float), np.asarray(row, float), np.asarray(col, float)], axis=1)
        return (data * np.asarray(self.scale) + np.asarray(self.translate)).reshape(-1, 3)


def layer_kind(layer) -> str | None:
    """What a napari layer holds: its :data:`TAG` when we made it (reader, sample, results); else
    ``"raw"`` for an untagged grayscale image of integer data (camera counts from another reader), else
    None (an RGB image, float data of unknown meaning, other layer types)."""
    tag = layer.metadata.get(TAG)
    if tag is not None:
        return str(tag)
    from napari.layers import Image

    if isinstance(layer, Image) and not layer.rgb and np.issubdtype(np.dtype(layer.dtype), np.integer):
        return "raw"
    return None


def raw_geometry(pixel_size: float, ndim: int = 3) -> dict:
    """Layer keywords (scale, axis labels, units) of a raw ``(T, H, W)`` (or ``(H, W)``) layer."""
    return RawGrid.for_pixel_size(pixel_size).raw(ndim)


def camera_settings(metadata: dict | None) -> dict:
    """Pixel size (nm) and camera settings from a layer's metadata, with defaults for what is missing;
    ``found`` lists the keys the metadata held."""
    metadata = metadata or {}
    out, found = {}, []
    for key, default in (("pixel_size", PIXEL_SIZE_NM), *CAMERA_DEFAULTS.items()):
        value = metadata.get(key)
        try:
            value = float(value)
            ok = np.isfinite(value) and (value > 0 or key in ("offset", "read_noise"))
        except (TypeError, ValueError):
            ok = False
        out[key] = value if ok else default
        if ok:
            found.append(key)
    out["found"] = found
    return out


def points_data(locs: Localizations, pixel_size: float, grid: RawGrid | None = None) -> tuple[np.ndarray, dict]:
    """World coordinates ``(n, 3)`` (frame, row, col: nm with the default grid) and features
    (ThunderSTORM columns: frame 1-based, x/y/uncertainty in nm, detection, peak snr)."""
    grid = grid or RawGrid.for_pixel_size(pixel_size)
    return grid.world(locs.frame, locs.row, locs.col), localizations_table(locs, float(pixel_size))


def points_3d(world: np.ndarray, z: np.ndarray, z_range: tuple[float, float]) -> tuple[np.ndarray, dict]:
    """Data ``(n, 4)`` and layer keywords of 3D localizations at ``world`` ``(n, 3)`` (frame, row, col) and
    ``z`` (nm), coloured by z over ``z_range`` (nm) as :func:`render.z_colours` colours the rendering.

    z is the leading axis, so the image layers (frame, row, col) line up with the last three. Its data are
    squeezed into less than one data unit (``scale`` on z = 4 x the z span, ``translate`` = its centre), so a 2D
    view, which shows the points within half a data unit of the z slider, shows them at every z; the world z
    (nm) is exact, so the 3D view (z, row, col) places them right. ``projection_mode="all"``: widening the frame
    slider's margins (right-click it) shows the localizations of several frames (_view3d.py)."""
    lo, hi = z_range
    z = np.nan_to_num(np.asarray(z, np.float64), nan=0.5 * (lo + hi))
    span = max(float(np.ptp(z)) if len(z) else 0.0, hi - lo, 1.0)
    centre, squeeze = 0.5 * (lo + hi), 4.0 * span
    data = np.column_stack([(z - centre) / squeeze, world]) if len(z) else np.zeros((0, 4))
    from napari.utils.colormaps import Colormap

    colours = np.column_stack([z_colours(np.linspace(lo, hi, Z_COLOURS), z_range), np.ones(Z_COLOURS)])
    return data, {"scale": (squeeze, 1.0, 1.0, 1.0), "translate": (centre, 0.0, 0.0, 0.0), "projection_mode": "all",
                  "face_color": "z [nm]", "face_colormap": Colormap(colours, name="z (red to blue)"),
                  "face_contrast_limits": (float(lo), float(hi)), "ndim": 4}


def world_to_data(coords: np.ndarray, scale, translate) -> np.ndarray:
    """Data (pixel) coordinates of world ``coords`` ``(n, d)`` for a layer with ``len(scale)`` axes
    (the last ones of ``coords``)."""
    coords = np.atleast_2d(np.asarray(coords, dtype=float))
    nd = len(scale)
    return (coords[:, -nd:] - np.asarray(translate, dtype=float)) / np.asarray(scale, dtype=float)


def world_to_index(coords: np.ndarray, scale, translate, shape) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the pixels holding world ``coords`` ``(n, d)`` in a layer of ``shape`` (its last
    ``len(shape)`` axes), clipped into the array, and a mask of the points inside the layer's extent."""
    data = world_to_data(coords, scale, translate).reshape(-1, len(shape))
    hi = np.asarray(shape) - 0.5
    inside = np.all((data >= -0.5) & (data <= hi), axis=1)
    idx = np.clip(np.floor(data + 0.5), 0, np.asarray(shape) - 1).astype(np.int64)
    return idx, inside


class PredictionResults(RunResults):
    """A run's results (inference/run.py) as napari layers: the KDE stacks read lazily from the store, chunk by
    chunk; the accumulated images and localizations from memory, with their rendering at ``render_pixel`` nm.
    ``grid`` places the raw frames in the world (default: ``scale = (1, p, p)``, as the reader does); it is
    kept in the store's settings so that a reopened folder overlays the same raw layer."""

    def __init__(self, store: ResultStore, render_pixel: float = RENDER_PIXEL_NM):
        super().__init__(store)
        grid = store.meta.get("settings", {}).get("grid")
        self.grid = RawGrid(tuple(grid["scale"]), tuple(grid["translate"])) if grid else RawGrid.for_pixel_size(
            self.pixel_size)
        self.render_pixel = float(render_pixel)
        self.rendered = render([], [], 1.0, self.rendered_extent(), self.render_pixel)
        self.rendered_z: np.ndarray | None = None   # render_z's channels, once 3D localizations come
        self._unrendered: list[Localizations] = []

    @classmethod
    def create(cls, folder: str | Path, n_frames: int, raw_shape: tuple[int, int], pixel_size: float,
               first_frame: int = 0, info: dict | None = None, grid: RawGrid | None = None,
               render_pixel: float = RENDER_PIXEL_NM, encoding: str = DEFAULT_ENCODING) -> PredictionResults:
        """:meth:`RunResults.create`, keeping ``grid`` in the store."""
        grid = grid or RawGrid.for_pixel_size(pixel_size)
        info = {**(info or {}), "grid": {"scale": list(grid.scale), "translate": list(grid.translate)}}
        return super().create(folder, n_frames, raw_shape, pixel_size, first_frame, info, encoding,
                              render_pixel=render_pixel)

    @classmethod
    def open(cls, folder: str | Path, render_pixel: float = RENDER_PIXEL_NM, mode: str = "r") -> PredictionResults:
        return super().open(folder, mode, render_pixel=render_pixel)

    def add_localizations(self, locs: Localizations) -> None:
        with self._locs_lock:
            self.locs.append(locs)
            self._unrendered.append(locs)

    def render_pending(self) -> np.ndarray:
        """The rendering (``render_pixel`` nm pixels), with the localizations added since the last call drawn
        as Gaussians of their uncertainty (one render pixel when they have none: no samples)."""
        with self._locs_lock:
            pending, self._unrendered = self._unrendered, []
        locs = Localizations.concat(pending)
        if len(locs):
            p = self.pixel_size
            sigma = np.where(np.isfinite(locs.uncertainty), locs.uncertainty * p, self.render_pixel)
            x, y, extent = px_to_nm(locs.col, p), px_to_nm(locs.row, p), self.rendered_extent()
            self.rendered += render(x, y, sigma, extent, self.render_pixel)
            if locs.is_3d:
                channels = render_z(x, y, locs.z, sigma, extent, self.render_pixel, self.z_range(locs.z))
                self.rendered_z = channels if self.rendered_z is None else self.rendered_z + channels
        return self.rendered

    def z_range(self, z: np.ndarray | None = None) -> tuple[float, float]:
        """The z (nm) of the colour scale: the calibration's valid range (``info["z_range"]``, kept in the store),
        else the 1-99 % range of the first 3D localizations ``z`` rendered (rounded out to 50 nm), then kept."""
        if "z_range" not in self.info:
            z = np.zeros(0) if z is None else z
            finite = z[np.isfinite(z)]
            lo, hi = np.percentile(finite, [1, 99]) if len(finite) else (-500.0, 500.0)
            self.info["z_range"] = [50.0 * np.floor(lo / 50), 50.0 * max(np.ceil(hi / 50), np.floor(lo / 50) + 1)]
        return tuple(float(v) for v in self.info["z_range"])

    def rendered_extent(self) -> tuple[float, float]:
        return (self.raw_shape[0] * self.pixel_size, self.raw_shape[1] * self.pixel_size)

    def rendered_geometry(self) -> dict:
        """Layer keywords placing the rendering on the raw grid: pixel ``k`` covers raw pixels
        ``[k q/p - 1/2, (k + 1) q/p - 1/2)`` (docs/physics.md)."""
        ratio = self.render_pixel / self.pixel_size
        (_, sy, sx), (_, ty, tx) = self.grid.scale, self.grid.translate
        k = grid_offset(ratio)
        return {"scale": (sy * ratio, sx * ratio), "translate": (ty + k * sy, tx + k * sx),
                **self.grid.axes(2)}

    def names(self, source: str, partial: bool | None = None) -> dict[str, str]:
        partial = (not self.complete) if partial is None else partial
        return {k: source + suffix + (PARTIAL if partial else "") for k, suffix in {**SUFFIXES, **SUFFIXES_3D}.items()}

    def layer_data(self, source: str, partial: bool | None = None) -> dict[str, tuple]:
        """napari layer-data tuples ``(data, kwargs, type)`` by kind (mean, sample, std: dask arrays of the
        first ``done`` frames read from the store; sum, sum std, rendered and localizations from memory)."""
        partial = (not self.complete) if partial is None else partial
        names, p = self.names(source, partial), self.pixel_size
        n = self.done if self.in_order else self.n_frames
        meta = {**self.info, "source": source, "pixel_size": p, "sr_pixel_size": p / F, "upsampling": F,
                "store": str(self.path), "frames": (self.first_frame, self.first_frame + n), "partial": partial}
        stack, flat = self.grid.sr(3, self.first_frame), self.grid.sr(2)
        empty = np.zeros((F * self.raw_shape[0], F * self.raw_shape[1]))
        total = self.total.total if self.total.total is not None else empty
        total_std = self.total.std if self.total.std is not None else np.zeros_like(total)
        images = {"mean": (self.store.lazy("mean")[:n], stack, "magma", 1.0),
                  "sample": (self.store.lazy("sample")[:n], stack, "magma", 1.0),
                  "std": (self.store.lazy("std")[:n], stack, "viridis", None),
                  "sum": (total.astype(np.float32), flat, "inferno", None),
                  "sum std": (total_std.astype(np.float32), flat, "viridis", None),
                  "rendered": (self.render_pending().copy(), self.rendered_geometry(), "hot", None)}
        # cache=False: napari's dask cache would keep every stored frame shown, up to 1/4 of the RAM (benchmarks.md)
        out = {kind: (array, {**geometry, "colormap": cmap, "contrast_limits": (0.0, top or upper_limit(array)),
                              "cache": False}, "image")
               for kind, (array, geometry, cmap, top) in images.items()}
        if self.rendered_z is not None:
            out["rendered z"] = (z_image(self.rendered_z), {**self.rendered_geometry(), "rgb": True}, "image")
        locs = self.localizations()
        coords, features = points_data(locs, p, self.grid)
        look = {"face_color": "cyan", "ndim": 3, **self.grid.axes(3)}
        if locs.is_3d:
            coords, look = points_3d(coords, locs.z, self.z_range(locs.z))
            look.update(axis_labels=("z", *self.grid.axis_labels), units=("nm", *self.grid.units))
        out["localizations"] = (coords, {"features": features, "size": 0.5 * self.grid.scale[-1], "symbol": "ring",
                                         "border_width": 0.0, **look}, "points")
        for kind, (_, kwargs, _) in out.items():
            kwargs["name"] = names[kind]
            kwargs["metadata"] = {**meta, TAG: kind}
        return out


def show_layers(viewer, layers: dict, data: dict) -> None:
    """Add the layers of ``data`` (:meth:`PredictionResults.layer_data`) to ``viewer``, or update those in
    ``layers`` (by kind; new ones are added there) that are still in the viewer."""
    for kind, (array, kwargs, layer_type) in data.items():
        layer = layers.get(kind)
        if layer is not None and layer in viewer.layers and layer.ndim != kwargs.get("ndim", layer.ndim):
            viewer.layers.remove(layer)   # localizations that became 3D (a first frame without any)
        if layer is None or layer not in viewer.layers:
            add = viewer.add_points if layer_type == "points" else viewer.add_image
            layers[kind] = add(array, **kwargs)
            if kwargs.get("ndim") == 4:   # 3D localizations: the dims for them, once (the user may change them)
                prepare_3d(viewer)
            continue
        if layer_type == "points":
            if "translate" in kwargs:   # 3D: z's squeeze follows the z span
                layer.scale, layer.translate = kwargs["scale"], kwargs["translate"]
            layer.data = array
            layer.features = kwargs["features"]
            layer.size, layer.symbol, layer.face_color = kwargs["size"], kwargs["symbol"], kwargs["face_color"]
            if "face_contrast_limits" in kwargs:   # 3D: the z colour scale stays the calibration's range
                layer.face_contrast_limits = kwargs["face_contrast_limits"]
        else:
            layer.data = array
            layer.contrast_limits = kwargs.get("contrast_limits", (0.0, 1.0))   # an RGB rendering's: (0, 1)
        layer.metadata = kwargs["metadata"]
        layer.name = kwargs["name"]


def upper_limit(array) -> float:
    """A contrast limit: the 99.9th percentile (of the last frame for a stack, so a long lazy stack is not read)."""
    frame = np.asarray(array[-1] if np.ndim(array) == 3 and len(array) else array)
    return max(float(np.percentile(frame, 99.9)) if frame.size else 0.0, 1e-6)
