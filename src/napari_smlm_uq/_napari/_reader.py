"""napari readers: a TIFF camera stack -> one lazily read image layer, scaled in nm; an output folder of the
prediction widget (or its ``results.zarr``) -> its result layers, the frame stacks read lazily from the store.

Plain multi-page TIFF, ImageJ hyperstacks (leading axes become frames) and OME-TIFF. Uncompressed
files are memory-mapped; compressed or tiled ones become a dask array of per-frame reads, so a stack of
many gigabytes is never read into memory. The pixel size (nm) comes from the file (100 nm when the file
does not say, noted in ``metadata["pixel_size_source"]``); camera settings found in the file are kept
in ``layer.metadata`` for the prediction widget, tagged as camera frames (``metadata["smlm_uq"] = "raw"``).
NaN or infinite pixels and a constant first frame are noted there and shown as a warning; a stack with no
finite pixel is refused.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..defaults import PIXEL_SIZE_NM
from ..io.files import InputError
from ..io.store import STORE_NAME
from ..io.tiff import PageReader, nonfinite_pixels, open_stack
from ._layers import TAG, PredictionResults, raw_geometry

SUFFIXES = (".tif", ".tiff")
SCAN_BYTES = 256 * 2**20   # a float stack's first 256 MB are checked for NaN when opened (a prediction checks all)


def _paths(path) -> list[str] | None:
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path or [])
    if not paths or not all(str(p).lower().endswith(SUFFIXES) for p in paths):
        return None
    return [str(p) for p in paths]


def napari_get_reader(path):
    """Return :func:`read_stacks` for ``.tif``/``.tiff`` paths, None for anything else."""
    return read_stacks if _paths(path) else None


def read_stacks(path) -> list[tuple]:
    """One image layer per TIFF file. Raises :class:`InputError` with a plain message for files that
    cannot be used (napari shows it)."""
    return [stack_layer(p) for p in _paths(path) or []]


def _lazy(data):
    if not isinstance(data, PageReader):
        return data  # a read-only memmap: napari reads only the frames it shows
    import dask
    import dask.array as da

    read = dask.delayed(data.__getitem__, pure=True)
    frames = [da.from_delayed(read(i), shape=data.shape[1:], dtype=data.dtype) for i in range(data.shape[0])]
    return da.stack(frames)


def _contrast(frame: np.ndarray) -> tuple[float, float]:
    """Contrast limits from the finite pixels of ``frame`` ((0, 1) where none is): napari cannot show NaN limits."""
    finite = np.asarray(frame, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, (0.5, 99.95))
    return float(lo), float(hi if hi > lo else lo + 1)


def _notes(path: str, data, first: np.ndarray) -> list[str]:
    """What the user should know about a stack napari can show but a prediction cannot use: NaN or infinite
    pixels (float stacks, read up to :data:`SCAN_BYTES`), a constant first frame. Raises :class:`InputError`
    for a stack with no finite pixel."""
    frames, notes = len(data), []
    scanned = max(1, min(frames, SCAN_BYTES // max(1, first.nbytes)))
    count, where = nonfinite_pixels(data, range(scanned))
    if count == scanned * first.size and scanned == frames:
        raise InputError(f"napari-smlm-uq could not open the stack: every pixel of {path} is NaN or infinite")
    if count:
        part = f"its {frames} frames" if scanned == frames else f"the first {scanned} of its {frames} frames"
        notes.append(f"{count} NaN or infinite pixel{'s' if count > 1 else ''} in {part} (the first in frame {where}): "
                     f"left out of the contrast limits; a prediction refuses them")
    finite = first[np.isfinite(first)]
    if finite.size and finite.min() == finite.max():
        notes.append(f"the first frame is constant ({float(finite[0]):g} everywhere): camera frames carry noise")
    return notes


def stack_layer(path: str) -> tuple:
    """``(data, kwargs, "image")`` for one TIFF stack."""
    try:
        stack = open_stack(path)
    except InputError as exc:
        raise InputError(f"napari-smlm-uq could not open the stack: {exc}") from None
    meta = dict(stack.metadata)
    if "pixel_size" in meta:
        meta["pixel_size_source"] = "file"
    else:
        meta["pixel_size"] = PIXEL_SIZE_NM
        meta["pixel_size_source"] = f"default ({PIXEL_SIZE_NM:g} nm): the file does not give a pixel size"
    meta["path"] = str(stack.path)
    meta[TAG] = "raw"
    data = _lazy(stack.data)
    try:
        first = np.asarray(stack.data[0])
    except Exception as exc:  # any page that cannot be decoded
        raise InputError(f"napari-smlm-uq could not read the first frame of {path} ({exc})") from None
    notes = _notes(path, stack.data, first)
    if notes:
        from napari.utils.notifications import show_warning

        meta["note"] = "; ".join(([meta["note"]] if "note" in meta else []) + notes)
        show_warning(f"{Path(path).name}: {'; '.join(notes)}.")
    kwargs = {"name": Path(path).stem, "metadata": meta, "contrast_limits": _contrast(first),
              "colormap": "gray", **raw_geometry(meta["pixel_size"], 3)}
    return data, kwargs, "image"


def _store_path(path) -> Path | None:
    """The ``results.zarr`` of a dropped folder or the store itself; None for anything else."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    path = Path(path)
    store = path if path.name == STORE_NAME else path / STORE_NAME
    return store if (store / "zarr.json").is_file() else None


def napari_get_results_reader(path):
    """Return :func:`read_results` for an output folder holding ``results.zarr`` (or the store), else None."""
    return read_results if _store_path(path) else None


def read_results(path) -> list[tuple]:
    """The result layers of a prediction's output folder, named after the stack predicted ("(partial)" when
    the run did not finish), placed where the run placed them."""
    try:
        results = PredictionResults.open(_store_path(path).parent)
    except InputError as exc:
        raise InputError(f"napari-smlm-uq could not open the results: {exc}") from None
    source = str(results.info.get("source") or results.path.name)
    source = Path(source).stem if source.lower().endswith(SUFFIXES) else source   # a cluster run: the TIFF
    return list(results.layer_data(source, partial=not results.store.complete).values())
