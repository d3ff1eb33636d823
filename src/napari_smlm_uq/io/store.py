"""The result store of a prediction: ``DIR/results.zarr``, a zarr v3 group with OME-Zarr (NGFF 0.5) metadata.

Arrays (docs/store.md): ``mean``, ``std``, ``sample`` of shape ``(T, 4H, 4W)`` in KDE units, one chunk per
``frames_per_chunk`` frames, stored with an :class:`Encoding` (by default ``compact``: float16, values below a
floor stored as 0, zstd; ``float32`` is lossless) recorded in the attributes; ``done`` ``(T,)``
uint8 marks the frames written (chunked like the frames, so workers owning different chunks never write the
same file); ``sum`` and ``sum_std`` ``(4H, 4W)`` float32 hold the accumulated image and its std. SR pixels
are ``pixel_size / 4`` nm, their centres shifted by ``-(1 - 1/4) / 2`` raw pixels (docs/physics.md), so a
viewer reading the NGFF transforms places the SR arrays where the widget does. A store is ``complete`` only
once :meth:`ResultStore.finish` ran; until then it is partial and lists the finished frame ranges.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..physics.kde import UPSAMPLING, grid_offset
from .files import InputError

FORMAT = "napari-smlm-uq-results"
VERSION = 1
STORE_NAME = "results.zarr"
FRAME_ARRAYS = ("mean", "std", "sample")
IMAGE_ARRAYS = ("sum", "sum_std")


@dataclass(frozen=True)
class Encoding:
    """How the per-frame arrays are stored. ``floor`` (KDE units; 0: none): mean and sample values of
    magnitude below it are stored as 0; where the mean is, the std becomes ``std + |mean| / 2`` rounded up to a multiple
    of ``floor / 2``, so stored mean +/- 2 stored std holds every value that mean +/- 2 std held (``|v| <=
    |v - mean| + |mean|``), and psi's background compresses to almost nothing. ``compressor``: ``"blosc"`` (zstd 3,
    bit-shuffle: best for noisy floats) or ``"zstd"`` (zstd 3: best for runs of zeros). ``bound``: upper bytes per
    SR pixel and array on disk, for the free-space check before a run (docs/store.md: above the densest
    measured)."""

    name: str
    dtype: str
    floor: float
    compressor: str
    bound: float

    def apply(self, mean: np.ndarray, std: np.ndarray, sample: np.ndarray) -> tuple[np.ndarray, ...]:
        """The values stored for one frame (before the cast to ``dtype``)."""
        if not self.floor:
            return mean, std, sample
        low, step = np.abs(mean) < self.floor, self.floor / 2
        return (np.where(low, 0.0, mean), np.where(low, np.ceil((std + np.abs(mean) / 2) / step) * step, std),
                np.where(np.abs(sample) < self.floor, 0.0, sample))

    def codec(self):
        from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

        if self.compressor == "zstd":
            return ZstdCodec(level=3)
        return BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.bitshuffle)

    def describe(self) -> dict:
        """The store attribute ``encoding``: what a reader needs to know about the stored values."""
        return {"name": self.name, "dtype": self.dtype, "floor": self.floor,
                "std_where_floored": f"std + |mean| / 2 rounded up to a multiple of {self.floor / 2:g}",
                "compressor": "zstd level 3" if self.compressor == "zstd" else "blosc zstd level 3, bit-shuffle"}


# lossless, psi's background noise compresses little (71-81 % of the raw bytes); ``compact`` stores 0.3-0.8
# MB per 256x256 frame at 0.5-3 emitters/um^2 (measured on predicted frames, docs/store.md)
ENCODINGS = {e.name: e for e in (Encoding("compact", "float16", 0.03, "zstd", 0.3),
                                  Encoding("float16", "float16", 0.0, "blosc", 1.7),
                                  Encoding("float32", "float32", 0.0, "blosc", 3.4))}
DEFAULT_ENCODING = "compact"


def encoding_named(name: str) -> Encoding:
    if name not in ENCODINGS:
        raise InputError(f"result store encoding must be one of {', '.join(ENCODINGS)} (got {name!r})")
    return ENCODINGS[name]


def _zarr():
    try:
        import zarr
    except ImportError:
        raise InputError("the zarr result store needs the zarr package (pip install 'zarr>=3')") from None
    return zarr


def sr_transform(pixel_size: float, frame_axis: bool) -> list[dict]:
    """NGFF coordinate transformations of the SR grid in nm (``frame_axis``: a leading t axis of step 1)."""
    p = pixel_size / UPSAMPLING
    shift = grid_offset(1.0 / UPSAMPLING) * pixel_size
    lead = [1.0] if frame_axis else []
    return [{"type": "scale", "scale": [*lead, p, p]},
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


def estimated_bytes(frames: int, raw_shape: tuple[int, int], encoding: str = DEFAULT_ENCODING) -> int:
    """Upper estimate of a store's size on disk (bytes) for ``frames`` raw frames of ``raw_shape`` pixels."""
    sr = raw_shape[0] * raw_shape[1] * UPSAMPLING**2
    return int(frames * len(FRAME_ARRAYS) * sr * encoding_named(encoding).bound + 2 * sr * 4)


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
        self.group, self.path, self._writers = group, path, {}
        self.meta = dict(group.attrs[FORMAT])
        # stores written before encodings were recorded hold their values as given (float32 or float16)
        self.encoding = ENCODINGS.get(self.meta.get("encoding", {}).get("name"), ENCODINGS[str(group["mean"].dtype)])

    # --- creating and opening --------------------------------------------------------------------------
    @classmethod
    def create(cls, directory: str | os.PathLike, frames: int, raw_shape: tuple[int, int], pixel_size: float,
               encoding: str = DEFAULT_ENCODING, frames_per_chunk: int = 1, settings: dict | None = None,
               check_space: bool = True) -> ResultStore:
        """A new, empty (partial) store in ``directory``; refuses to replace an existing one. ``encoding``: a
        name of :data:`ENCODINGS` (``compact``: lossy as documented in docs/store.md; ``float32``: lossless);
        the stored arrays are plain floats any zarr reader understands."""
        if frames < 1 or min(raw_shape) < 1 or not pixel_size > 0:
            raise InputError(f"a result store needs frames >= 1, a frame shape and a pixel size > 0 nm "
                             f"(got {frames}, {raw_shape}, {pixel_size})")
        enc = encoding_named(encoding)
        path = Path(directory) / STORE_NAME
        if path.exists():
            raise InputError(f"{path} exists already: open it to resume, or choose another output folder")
        check_writable(directory, estimated_bytes(frames, raw_shape, encoding) if check_space else 0)
        zarr = _zarr()

        group = zarr.open_group(path, mode="w-", zarr_format=3)
        sr = (raw_shape[0] * UPSAMPLING, raw_shape[1] * UPSAMPLING)
        fpc = max(1, min(frames_per_chunk, frames))
        for name in FRAME_ARRAYS:
            group.create_array(name, shape=(frames, *sr), chunks=(fpc, *sr), dtype=enc.dtype, compressors=enc.codec(),
                               fill_value=0.0, dimension_names=("t", "y", "x"))
        for name in IMAGE_ARRAYS:
            group.create_array(name, shape=sr, chunks=sr, dtype="float32", compressors=ENCODINGS["float32"].codec(),
                               fill_value=0.0, dimension_names=("y", "x"))
        group.create_array("done", shape=(frames,), chunks=(fpc,), dtype="uint8", fill_value=0)
        group.attrs["ome"] = {"version": "0.5", "multiscales": ngff_multiscales(pixel_size)}
        group.attrs[FORMAT] = {"version": VERSION, "frames": frames, "raw_shape": list(raw_shape),
                               "pixel_size_nm": pixel_size, "complete": False, "accumulated_frames": 0,
                               "encoding": enc.describe(), "settings": settings or {}, "every_chunk_written": True}
        return cls(group, path)

    @classmethod
    def open(cls, directory: str | os.PathLike, mode: str = "r") -> ResultStore:
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
        for name, image in zip(FRAME_ARRAYS, self.encoding.apply(mean, std, sample)):
            self._written(name)[index] = image
        self._written("done")[index] = 1

    def _written(self, name: str):
        """Array ``name`` writing every chunk, even one of zeros (a missing chunk then means a damaged store);
        opened once (its metadata is not read again for every frame)."""
        if name not in self._writers:
            try:
                array = self.group[name]
            except KeyError:   # zarr's answer when the store's folder was removed under it
                raise FileNotFoundError(errno.ENOENT, f"array {name!r} is gone from the result store",
                                        str(self.path)) from None
            self._writers[name] = array.with_config({"write_empty_chunks": True})
        return self._writers[name]

    def write(self, result) -> None:
        """Store a ``FrameResult``-like object (``index``, ``mean``, ``std``, ``sample``)."""
        self.write_frame(result.index, result.mean, result.std, result.sample)

    def write_sums(self, total: np.ndarray, std: np.ndarray, frames: int) -> None:
        """Store the accumulated image (sum of means) and its std over ``frames`` frames."""
        self._written("sum")[...] = total
        self._written("sum_std")[...] = std
        self._update(accumulated_frames=int(frames))

    def finish(self) -> bool:
        """Mark the store complete if every frame is done; returns whether it is."""
        complete = bool(self.done().all())
        self._update(complete=complete, done_ranges=self.done_ranges())
        return complete

    # --- checking what is on disk ----------------------------------------------------------------------------
    def check(self) -> tuple[np.ndarray, np.ndarray]:
        """Boolean ``(T,)`` masks ``(marked, intact)``: frames marked done (or whose ``done`` chunk cannot be
        read), and of those the ones whose stored chunks are all there and readable (reads every done frame
        once). In stores that write every chunk (attribute ``every_chunk_written``; older ones leave chunks of
        zeros out) a missing chunk is damage."""
        marked, intact = np.zeros(self.frames, bool), np.zeros(self.frames, bool)
        step = self.group["done"].chunks[0]
        for index, start in enumerate(range(0, self.frames, step)):
            block = self._block("done", index, must_exist=False)
            marked[start:start + step] = True if block is None else block.astype(bool)
            intact[start:start + step] = False if block is None else block.astype(bool)
        for name in FRAME_ARRAYS:
            step = self.group[name].chunks[0]
            for index in np.unique(np.flatnonzero(intact) // step):
                if self._block(name, index, self.meta.get("every_chunk_written", False)) is None:
                    intact[index * step:(index + 1) * step] = False
        return marked, intact

    def sums_intact(self) -> bool:
        """Whether the accumulated images (stored once every frame is) are there and readable."""
        return all(self._block(name, 0, True) is not None for name in IMAGE_ARRAYS)

    def _block(self, name: str, index: int, must_exist: bool) -> np.ndarray | None:
        """Chunk ``index`` (along the first axis) of array ``name``, or None where it is missing (and
        ``must_exist``) or cannot be decoded."""
        array = self.group[name]
        key = array.metadata.encode_chunk_key((int(index),) + (0,) * (array.ndim - 1))
        if must_exist and not (self.path / name / key).exists():
            return None
        try:
            return array.blocks[int(index)]
        except Exception:   # a truncated or corrupted chunk file: whatever the codec raises
            return None

    def mark_partial(self, redo: np.ndarray | None = None) -> None:
        """Mark the store partial, listing its done frame ranges, after marking ``redo`` (boolean ``(T,)``)
        not done: frames to predict again."""
        if redo is not None and redo.any():
            done = self._written("done")
            for index in np.flatnonzero(redo):
                done[index] = 0
        self._update(complete=False, done_ranges=self.done_ranges())

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
