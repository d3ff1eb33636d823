"""Layer geometry (docs/physics.md, sections 1 and 4) and result accumulation for the widgets; numpy only, no Qt.

World coordinates are nm with raw pixel centres at ``index * p``: the raw layer has ``scale = (1, p, p)``
on ``(frame, row, col)``; SR layers have ``scale = (1, p/f, p/f)`` and ``translate = (first frame,
-(1 - 1/f)/2 p, -(1 - 1/f)/2 p)`` so that SR pixel ``m`` is centred on raw coordinate
``(m + 1/2)/f - 1/2``; points hold world coordinates directly (``frame, row * p, col * p``).
When the raw layer is placed otherwise (another reader, a translate), :class:`RawGrid` follows it, so
the results always overlay the layer they came from.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..inference.pipeline import FrameResult, StackSum
from ..io.tables import localizations_table
from ..localizations import Localizations
from ..physics.camera import Camera
from ..physics.kde import UPSAMPLING

F = UPSAMPLING
DEFAULT_PIXEL_SIZE = 100.0
CAMERA_DEFAULTS = {k: float(getattr(Camera(), k)) for k in ("offset", "gain", "read_noise")}  # 100 ADU, 1, 1.5 e-
SUFFIXES = {"mean": " SR mean", "sample": " SR sample", "std": " SR std", "sum": " SR sum",
            "localizations": " localizations"}
PARTIAL = " (partial)"
TAG = "smlm_uq"  # layer.metadata key saying what a layer holds: "raw", "mean", "sample", "std", "sum",
#                  "localizations", "ground truth", "filtered", "uncertain"
AXIS_LABELS = ("frame", "y", "x")
UNITS = ("pixel", "nm", "nm")


@dataclass(frozen=True)
class RawGrid:
    """Where raw ``(T, H, W)`` frames sit in the world: the raw layer's per-axis ``scale`` and
    ``translate`` (frame, row, col), axis labels and units."""

    scale: tuple = (1.0, DEFAULT_PIXEL_SIZE, DEFAULT_PIXEL_SIZE)
    translate: tuple = (0.0, 0.0, 0.0)
    axis_labels: tuple = AXIS_LABELS
    units: tuple = UNITS

    @classmethod
    def for_pixel_size(cls, pixel_size: float) -> "RawGrid":
        p = float(pixel_size)
        return cls((1.0, p, p))

    @classmethod
    def of_layer(cls, layer) -> "RawGrid":
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
        k = (1.0 - 1.0 / f) / 2.0
        scale = (st, sy / f, sx / f)
        translate = (tt + first_frame * st, ty - k * sy, tx - k * sx)
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
    for key, default in (("pixel_size", DEFAULT_PIXEL_SIZE), *CAMERA_DEFAULTS.items()):
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


class PredictionResults:
    """Per-frame results gathered on the main thread into preallocated ``(T, fH, fW)`` arrays.

    ``first_frame`` is the index of the first raw frame predicted; frames arrive in order. ``grid`` places
    the raw frames in the world (default: ``scale = (1, p, p)``, as the reader does)."""

    def __init__(self, n_frames: int, raw_shape: tuple[int, int], pixel_size: float, first_frame: int = 0,
                 info: dict | None = None, grid: RawGrid | None = None):
        h, w = raw_shape
        shape = (n_frames, F * h, F * w)
        self.mean = np.zeros(shape, np.float32)
        self.sample = np.zeros(shape, np.float32)
        self.std = np.zeros(shape, np.float32)
        self.total = StackSum()
        self.locs: list[Localizations] = []
        self.pixel_size, self.first_frame, self.n_frames = float(pixel_size), int(first_frame), int(n_frames)
        self.done = 0
        self.seconds = 0.0
        self.info = dict(info or {})
        self.grid = grid or RawGrid.for_pixel_size(pixel_size)

    @staticmethod
    def bytes_needed(n_frames: int, raw_shape: tuple[int, int]) -> int:
        """Memory for the three ``(T, fH, fW)`` float32 stacks."""
        return 3 * int(n_frames) * F * F * int(raw_shape[0]) * int(raw_shape[1]) * 4

    @property
    def complete(self) -> bool:
        return self.done == self.n_frames

    def add(self, result: FrameResult) -> None:
        i = result.index - self.first_frame
        if i != self.done:
            raise ValueError(f"frame {result.index} arrived out of order (expected {self.first_frame + self.done})")
        self.mean[i], self.sample[i], self.std[i] = result.mean, result.sample, result.std
        self.total.add(result)
        self.locs.append(result.localizations)
        self.done += 1
        self.seconds += result.seconds

    def names(self, source: str, partial: bool | None = None) -> dict[str, str]:
        partial = (not self.complete) if partial is None else partial
        return {k: source + suffix + (PARTIAL if partial else "") for k, suffix in SUFFIXES.items()}

    def layer_data(self, source: str, partial: bool | None = None) -> dict[str, tuple]:
        """napari layer-data tuples ``(data, kwargs, type)`` by kind (mean, sample, std, sum,
        localizations); arrays are views of the first ``done`` frames (nothing is copied)."""
        partial = (not self.complete) if partial is None else partial
        names, n, p = self.names(source, partial), self.done, self.pixel_size
        meta = {"source": source, "pixel_size": p, "sr_pixel_size": p / F, "upsampling": F,
                "frames": (self.first_frame, self.first_frame + n), "partial": partial, **self.info}
        stack, flat = self.grid.sr(3, self.first_frame), self.grid.sr(2)
        std_top = float(np.percentile(self.std[:n], 99.9)) if n else 0.0
        out = {
            "mean": (self.mean[:n], {**stack, "colormap": "magma", "contrast_limits": (0.0, 1.0)}, "image"),
            "sample": (self.sample[:n], {**stack, "colormap": "magma", "contrast_limits": (0.0, 1.0)}, "image"),
            "std": (self.std[:n], {**stack, "colormap": "viridis", "contrast_limits": (0.0, max(std_top, 1e-6))},
                    "image"),
        }
        total = self.total.total if self.total.total is not None else np.zeros(self.mean.shape[1:])
        top = float(np.percentile(total, 99.9)) if total.size else 0.0
        out["sum"] = (total.astype(np.float32),
                      {**flat, "colormap": "inferno", "contrast_limits": (0.0, max(top, 1e-6))}, "image")
        coords, features = points_data(Localizations.concat(self.locs), p, self.grid)
        out["localizations"] = (coords, {"features": features, "size": 0.5 * self.grid.scale[-1], "symbol": "ring",
                                         "face_color": "cyan", "border_width": 0.0, "ndim": 3,
                                         **self.grid.axes(3)}, "points")
        for kind, (_, kwargs, _) in out.items():
            kwargs["name"] = names[kind]
            kwargs["metadata"] = {**meta, TAG: kind}
        return out
