"""The zarr result store (io/store.py): round trip, NGFF metadata, partial runs and resume, refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest

from napari_smlm_uq.io.files import InputError
from napari_smlm_uq.io.store import (
    ENCODINGS,
    STORE_NAME,
    ResultStore,
    check_writable,
    estimated_bytes,
    frame_ranges,
)

RAW = (8, 12)  # raw pixels -> SR (32, 48)


def frame(i: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """KDE-like frames: zeros but for a few small bumps (mean), a positive std, a sample."""
    mean = np.zeros((32, 48), np.float32)
    mean[rng.integers(0, 32, 3), rng.integers(0, 48, 3)] = rng.uniform(0.2, 0.9, 3)
    return mean, (0.01 + 0.1 * mean).astype(np.float32), np.clip(mean + 0.05 * (i % 2), 0, 1).astype(np.float32)


def test_round_trip_in_any_order_with_ngff_metadata(tmp_path):
    rng = np.random.default_rng(0)
    store = ResultStore.create(tmp_path, 5, RAW, pixel_size=100.0, settings={"samples": 8}, encoding="float32")
    frames = {i: frame(i, rng) for i in (3, 0, 4, 1, 2)}
    for i, (m, s, x) in frames.items():
        store.write_frame(i, m, s, x)
    store.write_sums(sum(f[0] for f in frames.values()), np.sqrt(sum(f[1] ** 2 for f in frames.values())), 5)
    assert store.finish()
    back = ResultStore.open(tmp_path)
    assert back.complete and back.done_ranges() == [[0, 5]] and back.missing_ranges() == []
    for name, k in (("mean", 0), ("std", 1), ("sample", 2)):
        arr = back.group[name]
        assert arr.shape == (5, 32, 48) and arr.dtype == np.float32 and arr.chunks == (1, 32, 48)
        np.testing.assert_array_equal(arr[:], np.stack([frames[i][k] for i in range(5)]))
    lazy = back.lazy("mean")
    assert lazy.shape == (5, 32, 48) and lazy.chunksize == (1, 32, 48)
    np.testing.assert_array_equal(lazy[2].compute(), frames[2][0])
    np.testing.assert_allclose(back.group["sum"][:], sum(f[0] for f in frames.values()), rtol=1e-6)
    # NGFF 0.5: t/y/x axes, SR pixels of 25 nm, the SR grid shifted by -(1 - 1/4)/2 raw pixels = -37.5 nm
    attrs = json.loads((tmp_path / STORE_NAME / "zarr.json").read_text())["attributes"]
    ms = {m["name"]: m for m in attrs["ome"]["multiscales"]}
    assert attrs["ome"]["version"] == "0.5" and set(ms) == {"mean", "std", "sample", "sum", "sum_std"}
    assert [a["name"] for a in ms["std"]["axes"]] == ["t", "y", "x"] and ms["std"]["datasets"][0]["path"] == "std"
    scale, translation = ms["mean"]["datasets"][0]["coordinateTransformations"]
    assert scale["scale"] == [1.0, 25.0, 25.0] and translation["translation"] == [0.0, -37.5, -37.5]
    assert back.napari_transform() == {"scale": (25.0, 25.0), "translate": (-37.5, -37.5)}


def test_partial_store_lists_its_frames_and_resumes(tmp_path):
    rng = np.random.default_rng(1)
    store = ResultStore.create(tmp_path, 10, RAW, 100.0, frames_per_chunk=3, settings={"seed": 0})
    for i in (0, 1, 2, 5, 6, 9):
        store.write_frame(i, *frame(i, rng))
    assert not store.finish()  # interrupted: partial, with its frame ranges
    again = ResultStore.open(tmp_path, mode="r+")
    assert not again.complete and again.meta["done_ranges"] == [[0, 3], [5, 7], [9, 10]]
    assert again.missing_ranges() == [[3, 5], [7, 9]]
    assert again.matches(10, RAW, {"seed": 0}) and not again.matches(10, RAW, {"seed": 1})
    kept = again.group["mean"][5].copy()
    for a, b in again.missing_ranges():
        for i in range(a, b):
            again.write_frame(i, *frame(i, rng))
    assert again.finish() and again.done_ranges() == [[0, 10]]
    np.testing.assert_array_equal(again.group["mean"][5], kept)  # finished frames untouched
    with pytest.raises(IndexError):
        again.write_frame(10, *frame(0, rng))


def test_refuses_foreign_old_and_existing_stores(tmp_path):
    import zarr

    zarr.open_group(tmp_path / "other" / STORE_NAME, mode="w").create_array("x", shape=(3,), dtype="f4")
    with pytest.raises(InputError, match="not written by napari-smlm-uq"):
        ResultStore.open(tmp_path / "other")
    old = ResultStore.create(tmp_path / "old", 2, RAW, 100.0)
    old._update(version=0)
    with pytest.raises(InputError, match="format version 0"):
        ResultStore.open(tmp_path / "old")
    with pytest.raises(InputError, match="exists already"):
        ResultStore.create(tmp_path / "old", 2, RAW, 100.0)
    assert (tmp_path / "old" / STORE_NAME / "mean").is_dir()  # nothing removed
    with pytest.raises(InputError, match="no result store"):
        ResultStore.open(tmp_path / "missing")


def test_unwritable_folder_and_full_disk_are_refused_before_work(tmp_path):
    (tmp_path / "file").write_text("x")  # a folder below a file cannot be made, even by root
    with pytest.raises(InputError, match="cannot write to the output folder"):
        ResultStore.create(tmp_path / "file" / "below", 2, RAW, 100.0)
    with pytest.raises(InputError, match="not enough free disk space"):
        check_writable(tmp_path, needed_bytes=1 << 62)
    assert not (tmp_path / STORE_NAME).exists()


def test_float16_store_error_is_bounded(tmp_path):
    rng = np.random.default_rng(2)
    store = ResultStore.create(tmp_path, 1, RAW, 100.0, encoding="float16")
    mean, std, sample = frame(0, rng)
    std = std * rng.uniform(0.01, 1.0, std.shape).astype(np.float32)
    store.write_frame(0, mean, std, sample)
    back = store.group["std"][0].astype(np.float32)
    assert store.group["std"].dtype == np.float16
    # float16 keeps 11 significant bits: relative error <= 2^-11 for normal numbers (>= 6.1e-5)
    assert np.all(np.abs(back - std) <= 2.0**-11 * std + 2.0**-25)


def test_frame_ranges():
    assert frame_ranges(np.array([1, 1, 0, 1, 0, 0, 1], bool)) == [[0, 2], [3, 4], [6, 7]]
    assert frame_ranges(np.zeros(3, bool)) == []


def test_compact_store_floors_the_background_within_its_bound(tmp_path):
    """The default encoding: |mean|, |sample| < 0.03 stored as 0, the std there as std + |mean| / 2 rounded up
    to 0.015 steps, the rest float16; psi-like background noise (~0.005 KDE units) then costs almost nothing, and
    stored mean +/- 2 std holds every value the exact mean +/- 2 std held."""
    rng = np.random.default_rng(4)
    noise = rng.gamma(4.0, 1.2e-3, (3, 2, 32, 48)).astype(np.float32)     # a background like psi's
    noise[:, :, 10:14, 20:24] += rng.uniform(0.0, 0.9, (3, 2, 4, 4)).astype(np.float32)   # an emitter
    mean, std, sample = noise
    sizes = {}
    for name in ("float32", "compact"):
        store = ResultStore.create(tmp_path / name, 2, RAW, 100.0, encoding=name)
        for i in range(2):
            store.write_frame(i, mean[i], std[i], sample[i])
        sizes[name] = sum(p.stat().st_size for k in ("mean", "std", "sample")
                          for p in (store.path / k / "c").rglob("*") if p.is_file())
    back = ResultStore.open(tmp_path / "compact")
    assert back.encoding is ENCODINGS["compact"]
    assert back.meta["encoding"] == {"name": "compact", "dtype": "float16", "floor": 0.03, "compressor": "zstd level 3",
                                     "std_where_floored": "std + |mean| / 2 rounded up to a multiple of 0.015"}
    m, s, x = (back.group[k][:].astype(np.float32) for k in ("mean", "std", "sample"))
    assert back.group["mean"].dtype == np.float16
    low = mean < 0.03
    assert low.mean() > 0.9 and np.all(m[low] == 0) and np.all(x[sample < 0.03] == 0)
    np.testing.assert_allclose(m[~low], mean[~low], rtol=2.0**-11)                # float16 above the floor
    np.testing.assert_allclose(s[low], np.ceil((std[low] + mean[low] / 2) / 0.015) * 0.015, rtol=2.0**-11)
    np.testing.assert_allclose(s[~low], std[~low], rtol=2.0**-11)
    truth = mean + rng.uniform(-2, 2, mean.shape) * std                             # held by mean +/- 2 std ...
    assert np.all(np.abs(truth - m) <= 2 * s * (1 + 2.0**-10) + 1e-6)              # ... and by the stored ones
    assert sizes["compact"] < sizes["float32"] / 20
    assert estimated_bytes(10_000, (256, 256)) <= 10e9   # the free-space check asks no more than the target
    with pytest.raises(InputError, match="encoding must be one of compact, float16, float32"):
        ResultStore.create(tmp_path / "bad", 2, RAW, 100.0, encoding="jpeg")
