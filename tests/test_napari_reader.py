"""The npe2 manifest, the TIFF reader and the sample data."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from napari_helpers import PLUGIN

from napari_smlm_uq._napari._reader import napari_get_reader, read_stacks
from napari_smlm_uq._napari._sample_data import simulated_stack
from napari_smlm_uq.io.files import InputError


def test_manifest_validates_and_points_into_napari_subpackage():
    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution(PLUGIN)
    pm.validate_imports()
    assert pm.name == PLUGIN
    python_names = [c.python_name for c in pm.contributions.commands]
    assert python_names and all(n.startswith("napari_smlm_uq._napari.") for n in python_names)
    assert {w.display_name for w in pm.contributions.widgets} == {
        "Super-resolve with uncertainty", "Filter by uncertainty", "Train on simulated data", "Post-process",
        "Calibrate z from beads"}
    assert [s.display_name for s in pm.contributions.sample_data] == ["Simulated SMLM stack"]


@pytest.mark.slow
def test_core_does_not_import_napari_or_qt():
    import subprocess
    import sys

    code = ("import sys, napari_smlm_uq.cli, napari_smlm_uq.inference.pipeline, napari_smlm_uq.training, "
            "napari_smlm_uq.postprocess.workflow, napari_smlm_uq.io.picasso; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt6', 'PyQt5', 'superqt')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def read(path):
    reader = napari_get_reader(str(path))
    assert reader is not None
    layers = reader(str(path))
    assert len(layers) == 1
    return layers[0]


def test_plain_multipage_tiff(tmp_path):
    data = np.arange(4 * 12 * 10, dtype=np.uint16).reshape(4, 12, 10)
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, data, photometric="minisblack")
    array, kwargs, kind = read(path)
    assert kind == "image" and array.shape == (4, 12, 10) and array.dtype == np.uint16
    assert kwargs["scale"] == (1.0, 100.0, 100.0)
    assert kwargs["metadata"]["pixel_size"] == 100.0
    assert "default" in kwargs["metadata"]["pixel_size_source"]
    np.testing.assert_array_equal(np.asarray(array), data)
    assert kwargs["name"] == "plain"


def test_imagej_hyperstack_with_camera_metadata(tmp_path):
    data = np.random.default_rng(0).integers(90, 400, (3, 2, 16, 20), dtype=np.uint16)  # T, C, Y, X
    path = tmp_path / "hyper.tiff"
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.107, 1 / 0.107),
                     metadata={"axes": "TCYX", "unit": "um", "offset": 98.0, "gain": 2.5, "read_noise": 1.2})
    array, kwargs, _ = read(path)
    assert array.shape == (6, 16, 20) and array.dtype == np.uint16
    assert kwargs["scale"] == pytest.approx((1.0, 107.0, 107.0))
    meta = kwargs["metadata"]
    assert meta["pixel_size_source"] == "file"
    assert (meta["offset"], meta["gain"], meta["read_noise"]) == (98.0, 2.5, 1.2)
    np.testing.assert_array_equal(np.asarray(array), data.reshape(6, 16, 20))


def test_compressed_ome_tiff_is_read_lazily(tmp_path):
    import dask.array as da

    data = np.random.default_rng(1).integers(0, 1000, (5, 16, 16), dtype=np.uint16)
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, data, ome=True, compression="zlib", metadata={"axes": "TYX", "PhysicalSizeX": 0.16,
                                                                         "PhysicalSizeXUnit": "µm",
                                                                         "PhysicalSizeY": 0.16})
    array, kwargs, _ = read(path)
    assert isinstance(array, da.Array) and array.chunksize == (1, 16, 16)
    assert array.shape == (5, 16, 16) and array.dtype == np.uint16
    assert kwargs["scale"] == pytest.approx((1.0, 160.0, 160.0))
    np.testing.assert_array_equal(array[3].compute(), data[3])


def test_uncompressed_stack_is_memory_mapped(tmp_path):
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.zeros((3, 16, 16), np.uint16), photometric="minisblack")
    array, _, _ = read(path)
    assert isinstance(array, np.memmap)


def test_not_a_tiff_is_not_ours(tmp_path):
    assert napari_get_reader(str(tmp_path / "locs.csv")) is None
    assert napari_get_reader([str(tmp_path / "a.tif"), str(tmp_path / "b.png")]) is None


@pytest.mark.slow
def test_broken_tiff_gives_a_clear_message(tmp_path, make_napari_viewer):
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, np.ones((4, 32, 32), np.uint16), photometric="minisblack")
    broken = tmp_path / "broken.tif"
    broken.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(InputError, match=r"could not open the stack: .*broken.tif: truncated"):
        napari_get_reader(str(broken))(str(broken))
    text = tmp_path / "fake.tif"
    text.write_text("hello")
    with pytest.raises(InputError, match="not a readable TIFF"):
        napari_get_reader(str(text))(str(text))
    # through napari: the message reaches the user
    viewer = make_napari_viewer()
    with pytest.raises(Exception) as info:
        viewer.open(str(broken), plugin=PLUGIN)
    assert "truncated" in str(info.value) or "truncated" in str(info.value.__cause__)
    assert len(viewer.layers) == 0
    viewer.open(str(good), plugin=PLUGIN)
    assert viewer.layers["good"].scale[1] == 100.0


@pytest.mark.slow
def test_sample_data_aligns_truth_with_image(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "simulated_stack")
    image, truth = viewer.layers["simulated stack"], viewer.layers["ground truth"]
    assert image.data.shape == (20, 64, 64) and tuple(image.scale) == (1.0, 100.0, 100.0)
    assert image.metadata["pixel_size"] == 100.0 and image.metadata["read_noise"] == 1.5
    assert len(truth.data) > 0 and list(truth.features.columns) == ["frame", "photons"]
    np.testing.assert_array_equal(truth.features["frame"], truth.data[:, 0] + 1)
    # a bright emitter lies on the brightest pixel nearby in its frame (world coordinates shared)
    (data, _, _), _ = simulated_stack()
    k = int(np.argmax(truth.features["photons"]))
    t, r, c = image.world_to_data(truth.data[k])
    t, r, c = int(t), int(round(r)), int(round(c))
    patch = data[t, max(r - 2, 0):r + 3, max(c - 2, 0):c + 3].astype(float)
    assert patch.max() - data[t, r, c] < 0.35 * (patch.max() - np.median(data[t]))


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_three_frame_stack_saved_as_planar_colour_is_read_as_frames(tmp_path, dtype):
    """tifffile stores a (3, H, W) array as one page of 3 planar samples; 16-bit and float are frames."""
    stack = (np.arange(3 * 16 * 20).reshape(3, 16, 20) % 1000 + 100).astype(dtype)
    path = tmp_path / "three.tif"
    # what `tifffile.imwrite(path, stack)` writes today (it warns that the default will change)
    tifffile.imwrite(path, stack, photometric="rgb", planarconfig="separate")
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].samplesperpixel == 3  # the case this test is about
    data, kwargs, kind = read_stacks(str(path))[0]
    assert kind == "image" and data.shape == (3, 16, 20)
    np.testing.assert_array_equal(np.asarray(data), stack)
    assert "3 samples per page" in kwargs["metadata"]["note"]


@pytest.mark.parametrize("shape", [(3, 16, 20), (16, 20, 3), (16, 20, 4)])
def test_eight_bit_colour_is_refused(tmp_path, shape):
    path = tmp_path / "colour.tif"
    tifffile.imwrite(path, np.zeros(shape, np.uint8), photometric="rgb")
    with pytest.raises(InputError, match="colour"):
        read_stacks(str(path))


def test_interleaved_sixteen_bit_samples_are_refused(tmp_path):
    path = tmp_path / "interleaved.tif"
    tifffile.imwrite(path, np.zeros((16, 20, 3), np.uint16), photometric="rgb", planarconfig="contig")
    with pytest.raises(InputError, match="interleaved"):
        read_stacks(str(path))
