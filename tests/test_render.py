"""Localizations rendered as Gaussians of their own uncertainty (analysis/render.py)."""
from __future__ import annotations

import numpy as np
import pytest

from napari_smlm_uq.analysis.render import napari_translate, render


def test_one_localization_is_a_normalised_gaussian_at_its_position():
    # x = 505 nm, y = 305 nm at 10 nm pixels: the centre of pixel (30, 50); sigma 20 nm = 2 px
    img = render([505.0], [305.0], [20.0], (1000.0, 1000.0), 10.0)
    assert img.shape == (100, 100) and img.dtype == np.float32
    assert img.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.unravel_index(img.argmax(), img.shape) == (30, 50)
    rows, cols = np.indices(img.shape)
    assert (img * rows).sum() / img.sum() == pytest.approx(30.0, abs=1e-3)
    var_c = (img * (cols - 50.0) ** 2).sum() / img.sum()
    assert np.sqrt(var_c) == pytest.approx(np.sqrt(2.0**2 + 1 / 12), rel=0.03)  # pixel-integrated: + 1/12 px^2


def test_weights_sum_and_narrow_sigma_lands_in_one_pixel():
    img = render([15.0, 15.0, 95.0], [15.0, 15.0, 45.0], [0.1, 0.1, 0.1], (100.0, 100.0), 10.0, weights=[2.0, 1.0, 4.0])
    assert img[1, 1] == pytest.approx(3.0, rel=1e-4) and img[4, 9] == pytest.approx(4.0, rel=1e-4)
    assert img.sum() == pytest.approx(7.0, rel=1e-4)


def test_border_and_bad_entries():
    # half of a Gaussian centred on the left edge falls inside; NaN and far-away entries are skipped
    img = render([0.0, np.nan, 1e6, 50.0], [50.0, 50.0, 50.0, np.nan], [10.0, 10.0, 10.0, 10.0], (100.0, 100.0), 5.0)
    assert img.sum() == pytest.approx(0.5, abs=2e-3)
    with pytest.raises(ValueError, match="pixel size"):
        render([1.0], [1.0], [1.0], (10.0, 10.0), 0.0)


def test_many_localizations_match_a_direct_sum():
    rng = np.random.default_rng(3)
    x, y, s = rng.uniform(0, 640, 300), rng.uniform(0, 480, 300), rng.uniform(12, 30, 300)
    img = render(x, y, s, (480.0, 640.0), 8.0)
    rows, cols = (np.indices(img.shape) + 0.5) * 8.0
    direct = sum(np.exp(-((rows - b) ** 2 + (cols - a) ** 2) / (2 * c**2)) * 64 / (2 * np.pi * c**2)
                 for a, b, c in zip(x, y, s))
    inner = (slice(8, -8), slice(8, -8))  # away from borders, the pixel-centre Gaussian is close to the integral
    np.testing.assert_allclose(img[inner], direct[inner], atol=0.03 * direct.max())


def test_napari_translate_matches_the_sr_grid():
    assert napari_translate(25.0, 100.0) == pytest.approx(-0.375 * 100.0)


def test_rendering_by_z_is_the_rendering_with_the_hue_of_each_z():
    """Red at the low end of the z range, green in its middle, blue at the top (and beyond: clipped); each
    localization's Gaussian keeps its shape in every channel; the image saturates its brightest pixels."""
    from napari_smlm_uq.analysis.render import render_z, z_colours, z_image

    np.testing.assert_allclose(z_colours([-500.0, 0.0, 500.0, 900.0], (-500.0, 500.0)),
                               [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]], atol=1e-12)
    x, y, z = [205.0, 505.0, 805.0], [305.0, 305.0, 305.0], [-500.0, 0.0, 250.0]
    channels = render_z(x, y, z, 20.0, (600.0, 1000.0), 10.0, (-500.0, 500.0))
    plain = render(x, y, 20.0, (600.0, 1000.0), 10.0)
    np.testing.assert_allclose(channels.sum(-1)[:, :65], plain[:, :65], atol=1e-6)   # red, then green alone
    np.testing.assert_allclose(channels[:, 65:], plain[:, 65:, None] * [0, 1, 1], atol=1e-6)   # z 250: cyan
    image = z_image(channels)
    assert image.max() == 1.0 and image.min() == 0.0
    np.testing.assert_allclose(image[30, 20], [1, 0, 0]) and np.testing.assert_allclose(image[30, 50], [0, 1, 0])
