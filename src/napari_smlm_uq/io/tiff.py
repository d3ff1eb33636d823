"""TIFF stacks in (memory-mapped or page by page, with metadata) and out, atomically.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from ..defaults import CAMERA_FIELDS
from .files import InputError, atomic_path, partial_path

_UNIT_TO_NM = {"nm": 1.0, "nanometer": 1.0, "um": 1000.0, "µm": 1000.0, "\\u00B5m": 1000.0, "micron": 1000.0,
               "micrometer": 1000.0, "mm": 1e6, "cm": 1e7}


@dataclass
class Stack:
    """A lazily read ``(T, H, W)`` stack. ``data`` is a memmap or a page reader; ``metadata`` holds
    ``pixel_size`` (nm) and camera settings found in the file."""

    path: Path
    data: np.ndarray | PageReader
    metadata: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)


class PageReader:
    """Array-like over the pages of a TIFF that cannot be memory-mapped (compressed, tiled). One file
    handle is kept open (reads are serialised by a lock, so napari's threads can share it)."""

    def __init__(self, path: Path, shape: tuple[int, int, int], dtype: np.dtype):
        self.path, self.shape, self.dtype, self.ndim = path, shape, np.dtype(dtype), 3
        self._tif: tifffile.TiffFile | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        frames = np.arange(self.shape[0])[key[0]]
        with self._lock:
            if self._tif is None:
                self._tif = tifffile.TiffFile(self.path)
            pages = self._tif.series[0].pages
            out = np.stack([pages[int(i)].asarray() for i in np.atleast_1d(frames)]).reshape(-1, *self.shape[1:])
        out = out[0] if np.ndim(frames) == 0 else out
        return out[(slice(None),) * (np.ndim(frames) > 0) + key[1:]] if len(key) > 1 else out

    def close(self) -> None:
        with self._lock:
            if self._tif is not None:
                self._tif.close()
                self._tif = None

    def __del__(self) -> None:
        self.close()

    def __array__(self, dtype=None, copy=None):
        arr = self[:]
        return arr.astype(dtype) if dtype is not None else arr


def _pixel_size_nm(tif: tifffile.TiffFile) -> float | None:
    """Pixel size in nm from OME, ImageJ or the resolution tags; None when the file does not say."""
    if tif.is_ome and tif.ome_metadata:
        import xml.etree.ElementTree as ET

        for el in ET.fromstring(tif.ome_metadata).iter():
            if el.tag.endswith("Pixels") and "PhysicalSizeX" in el.attrib:
                unit = el.attrib.get("PhysicalSizeXUnit", "µm")
                return float(el.attrib["PhysicalSizeX"]) * _UNIT_TO_NM.get(unit, 1000.0)
    page = tif.pages[0]
    res = page.tags.get("XResolution")
    if res is None:
        return None
    num, den = res.value
    if num == 0 or (num, den) == (1, 1) or (num, den) == (72, 1):
        return None
    unit = (tif.imagej_metadata or {}).get("unit")
    if unit is None:
        resunit = page.tags.get("ResolutionUnit")
        unit = {3: "cm"}.get(int(resunit.value) if resunit else 0)
    if unit is None:
        return None
    return den / num * _UNIT_TO_NM.get(str(unit), 1000.0)


def read_metadata(tif: tifffile.TiffFile) -> dict:
    """Pixel size (nm) and camera settings (offset ADU, gain, read noise e-) stored in the file."""
    meta: dict = {}
    size = _pixel_size_nm(tif)
    if size:
        meta["pixel_size"] = float(size)
    ij = tif.imagej_metadata or {}
    for key in CAMERA_FIELDS:
        if key in ij:
            meta[key] = float(ij[key])
    return meta


@contextmanager
def _tifffile_complaints() -> Iterator[list[str]]:
    """Collect tifffile's logged warnings (corrupt pages, bad metadata) instead of printing them."""
    logger, messages = logging.getLogger("tifffile"), []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage().split("\n")[-1].strip())

    handler, propagate = _Collect(logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _samples_as_frames(path: Path, page, series) -> dict:
    """Pages of several samples: 8-bit RGB(A) is a colour image (refused); 16-bit or float samples
    stored plane by plane are camera frames (``tifffile.imwrite`` stores a ``(3, H, W)`` stack so), noted
    in the returned metadata."""
    samples = page.samplesperpixel
    if samples == 1:
        return {}
    if series.dtype.itemsize == 1 and samples in (3, 4):
        raise InputError(f"{path}: colour (RGB) image; a stack of grayscale camera frames is needed")
    if page.planarconfig != tifffile.PLANARCONFIG.SEPARATE:
        raise InputError(f"{path}: {samples} interleaved samples per pixel; a stack of grayscale camera frames "
                         "is needed")
    return {"note": f"{samples} samples per page ({series.dtype}, stored as colour planes) read as camera frames"}


def open_stack(path: str | os.PathLike) -> Stack:
    """Open a TIFF stack without reading it: ``(T, H, W)`` (all leading axes become frames).

    Raises :class:`InputError` for files that are not TIFFs, truncated, RGB or too small."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    with _tifffile_complaints() as complaints:
        tif = None
        try:
            tif = tifffile.TiffFile(path)
            series = tif.series[0]
        except Exception as exc:  # tifffile raises several types for non-TIFF or corrupt headers
            if tif is not None:  # opened, but no image series (e.g. a header-only file): do not leak it
                tif.close()
            raise InputError(f"{path}: not a readable TIFF file ({exc})") from None
    if complaints:
        tif.close()
        raise InputError(f"{path}: truncated or corrupt TIFF ({complaints[0]})")
    with tif:
        shape, dtype = tuple(series.shape), series.dtype
        meta = _samples_as_frames(path, tif.pages[0], series)
        if len(shape) < 2:
            raise InputError(f"{path}: not an image")
        meta.update(read_metadata(tif))
        expected = int(np.prod(shape)) * dtype.itemsize
        offset = series.dataoffset
        size_ok = offset is not None and offset + expected <= path.stat().st_size
        if offset is not None and not size_ok:
            raise InputError(f"{path}: truncated TIFF (file shorter than its {shape} {dtype} image data)")
        frames = (int(np.prod(shape[:-2])), *shape[-2:])
    if min(frames[1:]) < 8:
        raise InputError(f"{path}: frames of {frames[1]}x{frames[2]} pixels; at least 8x8 are needed")
    if offset is not None:
        data = tifffile.memmap(path, mode="r", series=0).reshape(frames)
    else:
        data = PageReader(path, frames, dtype)
        try:
            data[frames[0] - 1]
        except Exception as exc:
            raise InputError(f"{path}: truncated or corrupt TIFF ({exc})") from None
    return Stack(path, data, meta)


def nonfinite_pixels(data, frames: range | None = None, chunk: int = 64) -> tuple[int, int | None]:
    """NaN or infinite pixels in ``frames`` (default: all) of a ``(T, H, W)`` stack, read ``chunk`` frames at a
    time: their number and the first frame holding one (None where there is none; integer data holds none)."""
    frames = range(len(data)) if frames is None else frames
    if np.dtype(data.dtype).kind not in "fc":
        return 0, None
    count, first = 0, None
    for start in range(frames.start, frames.stop, chunk):
        bad = ~np.isfinite(np.asarray(data[start:min(start + chunk, frames.stop)]))
        if first is None and bad.any():
            first = start + int(np.flatnonzero(bad.reshape(len(bad), -1).any(1))[0])
        count += int(bad.sum())
    return count, first


def check_finite(data, frames: range | None = None) -> None:
    """Raise :class:`InputError` for NaN or infinite pixels in ``frames`` of a stack: predictions need finite
    camera counts."""
    count, first = nonfinite_pixels(data, frames)
    if count:
        raise InputError(f"the stack holds {count} NaN or infinite pixel{'s' if count > 1 else ''} (the first in "
                         f"frame {first}); predicting needs finite camera counts (ADU): replace them, e.g. by the "
                         f"frame's median, or choose frames without them")


def imagej_kwargs(pixel_size_nm: float, **extra) -> dict:
    """tifffile keywords that store the pixel size (and extra metadata) ImageJ-style."""
    um = pixel_size_nm / 1000.0
    return {"imagej": True, "resolution": (1.0 / um, 1.0 / um), "metadata": {"unit": "um", "axes": "TYX", **extra}}


def write_stack(path: str | os.PathLike, data: np.ndarray, pixel_size_nm: float, **extra) -> None:
    """Write a ``(T, H, W)`` stack with its pixel size (nm) in ImageJ metadata, atomically."""
    data = np.asarray(data)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, data.reshape(-1, *data.shape[-2:]), **imagej_kwargs(pixel_size_nm, **extra))


class StackWriter:
    """Streaming ``(T, H, W)`` float32 TIFF writer: frames appended as made; ``NAME.partial`` until
    :meth:`close` renames it into place. Used as a context manager, an exception discards the file."""

    def __init__(self, path: str | os.PathLike, pixel_size_nm: float, **extra):
        self.path = Path(path)
        self._tmp = partial_path(self.path)
        self._writer = tifffile.TiffWriter(self._tmp, bigtiff=True)
        per_cm = 1e7 / pixel_size_nm
        self._kwargs = {"resolution": (per_cm, per_cm), "resolutionunit": 3, "metadata": None, "contiguous": True}
        self._extra = json.dumps({"pixel_size_nm": pixel_size_nm, **extra})

    def write(self, frames: np.ndarray) -> None:
        for frame in np.asarray(frames, dtype=np.float32).reshape(-1, *np.shape(frames)[-2:]):
            self._writer.write(frame, description=self._extra, **self._kwargs)
            self._extra = None

    def close(self) -> None:
        self._writer.close()
        os.replace(self._tmp, self.path)

    def discard(self) -> None:
        self._writer.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> StackWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.discard() if exc_type else self.close()
