"""The result store of a prediction: ``DIR/results.zarr``, a zarr v3 group with OME-Zarr (NGFF 0.5) metadata.

Arrays (docs/store.md): ``mean``, ``std``, ``sample`` of shape ``(T, 4H, 4W)`` in KDE units, one chunk per
``frames_per_chunk`` frames, Blosc/zstd-compressed (the per-frame KDEs are mostly zeros); ``done`` ``(T,)``
uint8 marks the frames written (chunked like the frames, so workers owning different chunks never write the
same file); ``sum`` and ``sum_std`` ``(4H, 4W)`` float32 hold the accumulated image and its std. SR pixels
are ``pixel_size / 4`` nm, their centres shifted by ``-(1 - 1/4) / 2`` raw pixels (docs/physics.md), so a
viewer reading the NGFF transforms places the SR arrays where the widget does. A store is ``complete`` only
once :meth:`ResultStore.finish` ran; until then it is partial and lists the finished frame ranges.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .files import InputError

FORMAT = "napari-smlm-uq-results"
VERSION = 1
STORE_NAME = "results.zarr"
FRAME_ARRAYS = ("mean", "std", "sample")
IMAGE_ARRAYS = ("sum", "sum_std")
UPSAMPLING = 4  # SR pixels per raw pixel (physics/kde.py; io/ must not import the models)
# measured on predicted 64x64 frames of the benchmark movies (docs/store.md): under 3 % of the raw bytes
COMPRESSED_FRACTION_BOUND = 0.1


def _zarr():
    try:
        import zarr
    except ImportError:
        raise InputError("the zarr result store needs the zarr package (pip install 'zarr>=3')") from None
    return zarr


def sr_transform(pixel_size: float, frame_axis: bool) -> list[dict]:
    """NGFF coordinate transformations of the SR grid in nm (``frame_axis``: a leading t axis of step 1)."""
    p = pixel_size / UPSAMPLING
    shift = -(1.0 - 1.0 / UPSAMPLING) / 2.0 * pixel_size
    lead = [1.0] if frame_axis else []
    return [{"type": "scale", "scale": lead + [p, p]},
            {"type": "translation", "translation": [0.0] * len(lead) + [shift, shift]}]


def ngff_multiscales(pixel_size: float) -> list[dict]:
    """One single-level NGFF multiscale per array: the frame stacks (t, y, x), the accumulated images (y, x)."""
    space = [{"name": "y", "type": "space", "unit": "nanometer"}, {"name": "x", "type": "space", "unit": "nanometer"}]
    time = [{"name": "t", "type": "time"}]

    def entry(name: str, frame_axis: bool) -> dict:
        return {"name": name, "axes": (time if frame_axis else []) + space,
                "datasets": [{"path": name, "coordinateTransformations": sr_transform(pixel_size, frame_axis)}]}
    return [entry(n, True) for n in FRAME_ARRAYS] + [entry(n, False) for n in IMAGE_ARRAYS]


def frame_ranges(done: np.ndarray) -> list[list[int]]:
    """Half-open ``[start, stop)`` ranges of the true entries of a boolean vector."""
    edges = np.diff(np.concatenate([[0], np.asarray(done, np.int8), [0]]))
    return [[int(a), int(b)] for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))]


def estimated_bytes(frames: int, raw_shape: tuple[int, int], dtype: str = "float32") -> int:
    """Upper estimate of a store's size on disk (bytes) for ``frames`` raw frames of ``raw_shape`` pixels."""
    sr = raw_shape[0] * raw_shape[1] * UPSAMPLING**2 * np.dtype(dtype).itemsize
    return int(frames * len(FRAME_ARRAYS) * sr * COMPRESSED_FRACTION_BOUND + 2 * sr * 2)


def check_writable(directory: str | os.PathLike, needed_bytes: int = 0) -> None:
    """Raise :class:`InputError` before any work if ``directory`` cannot be created or written, or its disk
    has less than ``needed_bytes`` free."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as exc:
        raise InputError(f"cannot write to the output folder {directory}: {exc.strerror or exc}") from None
    free = shutil.disk_usage(directory).free
    if free < needed_bytes:
        raise InputError(f"not enough free disk space in {directory}: {free / 1e9:.2f} GB free, "
                         f"about {needed_bytes / 1e9:.2f} GB needed")


class ResultStore:
    """Per-frame results of one prediction on disk; frames may be written in any order."""

    def __init__(self, group, path: Path):
        self.group, self.path = group, path
        self.meta = dict(group.attrs[FORMAT])

    # --- creating and opening --------------------------------------------------------------------------
    @classmethod
    def create(cls, directory: str | os.PathLike, frames: int, raw_shape: tuple[int, int], pixel_size: float,
               dtype: str = "float32", frames_per_chunk: int = 1, settings: dict | None = None,
               check_space: bool = True) -> "ResultStore":
        """A new, empty (partial) store in ``directory``; refuses to replace an existing one."""
        if frames < 1 or min(raw_shape) < 1 or not pixel_size > 0:
            raise InputError(f"a result store needs frames >= 1, a frame shape and a pixel size > 0 nm "
                             f"(got {frames}, {raw_shape}, {pixel_size})")
        if np.dtype(dtype) not in (np.float32, np.float16):
            raise InputError(f"result dtype must be float32 or float16 (got {dtype})")
        path = Path(directory) / STORE_NAME
        if path.exists():
            raise InputError(f"{path} exists already: open it to resume, or choose another output folder")
        check_writable(directory, estimated_bytes(frames, raw_shape, dtype) if check_space else 0)
        zarr = _zarr()
        from zarr.codecs import BloscCodec, BloscShuffle

        group = zarr.open_group(path, mode="w-", zarr_format=3)
        sr = (raw_shape[0] * UPSAMPLING, raw_shape[1] * UPSAMPLING)
        codec = BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.bitshuffle)
        fpc = max(1, min(frames_per_chunk, frames))
        for name in FRAME_ARRAYS:
            group.create_array(name, shape=(frames, *sr), chunks=(fpc, *sr), dtype=dtype, compressors=codec,
                               fill_value=0.0, dimension_names=("t", "y", "x"))
        for name in IMAGE_ARRAYS:
            group.create_array(name, shape=sr, chunks=sr, dtype="float32", compressors=codec, fill_value=0.0,
                               dimension_names=("y", "x"))
        group.create_array("done", shape=(frames,), chunks=(fpc,), dtype="uint8", fill_value=0)
        group.attrs["ome"] = {"version": "0.5", "multiscales": ngff_multiscales(pixel_size)}
        group.attrs[FORMAT] = {"version": VERSION, "frames": frames, "raw_shape": list(raw_shape),
                               "pixel_size_nm": pixel_size, "complete": False, "accumulated_frames": 0,
                               "settings": settings or {}}
        return cls(group, path)

    @classmethod
    def open(cls, directory: str | os.PathLike, mode: str = "r") -> "ResultStore":
        """An existing store (``mode`` ``"r"`` or ``"r+"`` to resume); a clear error for anything else."""
        path = Path(directory)
        path = path if path.name.endswith(".zarr") else path / STORE_NAME
        if not path.exists():
            raise InputError(f"no result store at {path}")
        zarr = _zarr()
        try:
            group = zarr.open_group(path, mode=mode)
        except Exception as exc:
            raise InputError(f"{path}: not a readable zarr group ({type(exc).__name__})") from None
        meta = group.attrs.get(FORMAT)
        if not isinstance(meta, dict):
            raise InputError(f"{path} was not written by napari-smlm-uq (no {FORMAT!r} attribute); nothing changed")
        if meta.get("version") != VERSION:
            raise InputError(f"{path} has result-store format version {meta.get('version')}; this napari-smlm-uq "
                             f"reads version {VERSION}: predict again into a new folder")
        return cls(group, path)

    # --- state ------------------------------------------------------------------------------------------
    @property
    def frames(self) -> int:
        return int(self.meta["frames"])

    @property
    def complete(self) -> bool:
        return bool(self.meta["complete"])

    def done(self) -> np.ndarray:
        """Boolean ``(T,)``: frames written."""
        return self.group["done"][:].astype(bool)

    def done_ranges(self) -> list[list[int]]:
        return frame_ranges(self.done())

    def missing_ranges(self) -> list[list[int]]:
        """The ``[start, stop)`` frame ranges a resume still has to predict."""
        return frame_ranges(~self.done())

    def matches(self, frames: int, raw_shape: tuple[int, int], settings: dict) -> bool:
        """Whether this store belongs to the same input and settings (safe to resume into)."""
        return (self.frames == frames and tuple(self.meta["raw_shape"]) == tuple(raw_shape)
                and self.meta.get("settings", {}) == settings)

    # --- writing ----------------------------------------------------------------------------------------
    def write_frame(self, index: int, mean: np.ndarray, std: np.ndarray, sample: np.ndarray) -> None:
        """Store one frame's KDEs ``(4H, 4W)``, then mark it done (a crash in between leaves it missing)."""
        if not 0 <= index < self.frames:
            raise IndexError(f"frame {index} outside the store's 0..{self.frames - 1}")
        for name, image in zip(FRAME_ARRAYS, (mean, std, sample)):
            self.group[name][index] = image
        self.group["done"][index] = 1

    def write(self, result) -> None:
        """Store a ``FrameResult``-like object (``index``, ``mean``, ``std``, ``sample``)."""
        self.write_frame(result.index, result.mean, result.std, result.sample)

    def write_sums(self, total: np.ndarray, std: np.ndarray, frames: int) -> None:
        """Store the accumulated image (sum of means) and its std over ``frames`` frames."""
        self.group["sum"][...] = total
        self.group["sum_std"][...] = std
        self._update(accumulated_frames=int(frames))

    def finish(self) -> bool:
        """Mark the store complete if every frame is done; returns whether it is."""
        complete = bool(self.done().all())
        self._update(complete=complete, done_ranges=self.done_ranges())
        return complete

    def _update(self, **changes) -> None:
        self.meta.update(changes)
        self.group.attrs[FORMAT] = self.meta

    # --- reading ----------------------------------------------------------------------------------------
    def lazy(self, name: str):
        """A dask array of one array of the store, read chunk by chunk on demand (for napari layers)."""
        import dask.array as da

        return da.from_zarr(self.group[name])

    def napari_transform(self) -> dict:
        """``scale`` and ``translate`` (nm) of the SR arrays for napari layers (y, x)."""
        scale, translation = sr_transform(float(self.meta["pixel_size_nm"]), False)
        return {"scale": tuple(scale["scale"]), "translate": tuple(translation["translation"])}
