"""Numerical checks of the physics (simulation, camera, KDE targets, CRLB) and of the metrics.

Every test compares against an independent number: a closed form, a statistical bound, or a
computation written here from docs/physics.md rather than taken from the package.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import erf

from napari_smlm_uq.analysis import metrics
from napari_smlm_uq.physics import kde
from napari_smlm_uq.physics.camera import Camera
from napari_smlm_uq.physics.crlb import crlb, crlb_in_frame, crlb_nm, fisher_information, pair_lateral_crlb
from napari_smlm_uq.physics.simulate import (
    Emitters,
    SimulationSettings,
    expected_photons,
    simulate,
)

SQRT2 = np.sqrt(2.0)


def pixel_fractions(n_pixels: int, mu: float, sigma: float) -> np.ndarray:
    """Independent pixel-integrated 1D Gaussian: pixel k covers [k - 1/2, k + 1/2] (docs/physics.md, sections 1-2)."""
    k = np.arange(n_pixels, dtype=np.float64)
    return 0.5 * (erf((k + 0.5 - mu) / (SQRT2 * sigma)) - erf((k - 0.5 - mu) / (SQRT2 * sigma)))


def omega_model(shape, rows, cols, photons, sigma, background) -> np.ndarray:
    """omega[r, c] = b + sum_j N_j D(r; row_j) D(c; col_j), written from the equation of docs/physics.md (section 2)."""
    out = np.full(shape, float(background))
    for r, c, n in zip(rows, cols, photons):
        out += n * np.outer(pixel_fractions(shape[0], r, sigma), pixel_fractions(shape[1], c, sigma))
    return out


# ================================================================================================
# Simulation and camera
# ================================================================================================

def test_expected_photons_matches_the_image_equation():
    em = Emitters(frame=np.array([0, 0, 1]), row=np.array([3.2, 9.9, 6.5]), col=np.array([4.7, 11.1, 0.0]),
                  photons=np.array([1000.0, 2500.0, 700.0]))
    sigma, background = np.array([1.0, 1.6]), np.array([20.0, 3.5])
    omega = expected_photons(em, 2, (14, 16), sigma, background)
    assert omega.shape == (2, 14, 16)
    np.testing.assert_allclose(omega[0], omega_model((14, 16), [3.2, 9.9], [4.7, 11.1], [1000, 2500], 1.0, 20.0),
                               rtol=1e-12)
    np.testing.assert_allclose(omega[1], omega_model((14, 16), [6.5], [0.0], [700], 1.6, 3.5), rtol=1e-12)
    # an emitter far from the edges puts all its photons in the frame
    one = expected_photons(Emitters(np.array([0]), np.array([7.3]), np.array([8.6]), np.array([2000.0])),
                           1, (16, 16), np.array([1.0]), np.array([0.0]))
    assert one.sum() == pytest.approx(2000.0, rel=1e-6)
    # centroid = true position, rows and columns not swapped
    r, c = np.indices((16, 16))
    assert (one[0] * r).sum() / one.sum() == pytest.approx(7.3, abs=1e-4)
    assert (one[0] * c).sum() / one.sum() == pytest.approx(8.6, abs=1e-4)


CAMERAS = {
    "ccd gain 1": lambda rng, shape: Camera(offset=100.0, gain=1.0, read_noise=1.5),
    "emccd-like gain 4.3": lambda rng, shape: Camera(offset=400.0, gain=4.3, read_noise=2.0),
    "scmos maps": lambda rng, shape: Camera(offset=rng.uniform(90.0, 110.0, shape), gain=rng.uniform(0.5, 3.0, shape),
                                            read_noise=rng.uniform(0.3, 3.0, shape)),
}


@pytest.mark.parametrize("camera_name", list(CAMERAS))
def test_camera_noise_statistics(camera_name):
    """Mean of ``e`` is omega and the variance of ``e + r^2`` is ``omega + r^2`` (docs/physics.md, section 3),
    pixel by pixel."""
    rng = np.random.default_rng(42)
    shape, frames = (16, 16), 4000
    cam = CAMERAS[camera_name](rng, shape).validate()
    em = Emitters(np.array([0]), np.array([7.3]), np.array([8.6]), np.array([2000.0]))
    omega1 = expected_photons(em, 1, shape, np.array([1.0]), np.array([20.0]))[0]
    omega = np.broadcast_to(omega1, (frames, *shape))
    adu = cam.expose(omega, rng)
    assert adu.shape == (frames, *shape) and adu.dtype == np.float64
    r2 = np.broadcast_to(np.asarray(cam.read_noise, dtype=np.float64) ** 2, shape)

    # the ADU mean is g * omega + o
    np.testing.assert_allclose(adu.mean(0), np.asarray(cam.gain) * omega1 + np.asarray(cam.offset),
                               rtol=0.02 if camera_name != "ccd gain 1" else 0.01)

    z = cam.shifted_photoelectrons(adu).astype(np.float64)
    var_true = omega1 + r2
    # mean: per-pixel z-scores of the frame average
    z_mean = (z.mean(0) - var_true) / np.sqrt(var_true / frames)
    n = z_mean.size
    assert np.abs(z_mean).max() < 5.0
    assert abs(np.sum(z_mean**2) / n - 1.0) < 5 * np.sqrt(2.0 / n)  # chi-square / dof
    assert abs(z_mean.mean()) < 5 / np.sqrt(n)
    # variance: Var(s^2) = (mu4 - kappa2^2) / T with cumulants kappa2 = omega + r^2, kappa4 = omega
    s2 = z.var(0, ddof=1)
    z_var = (s2 - var_true) / np.sqrt((omega1 + 2 * var_true**2) / frames)
    assert np.abs(z_var).max() < 5.0
    assert abs(np.sum(z_var**2) / n - 1.0) < 5 * np.sqrt(2.0 / n)
    # the mean and variance of e + r^2 are equal (the Poisson-Normal premise)
    np.testing.assert_allclose(s2 / z.mean(0), 1.0, atol=0.15)
    # to_photoelectrons is the unshifted e: its mean is omega
    np.testing.assert_allclose(cam.to_photoelectrons(adu).mean(0), omega1, atol=6 * np.sqrt(var_true / frames).max())


def test_camera_validation():
    with pytest.raises(ValueError, match="gain"):
        Camera(gain=0.0).validate()
    with pytest.raises(ValueError, match="read noise"):
        Camera(read_noise=-1.0).validate()
    with pytest.raises(ValueError, match="offset"):
        Camera(offset=np.nan).validate()


def test_simulate_is_reproducible_for_a_seed():
    settings = SimulationSettings(frames=4, size=16, density=5.0, seed=7)
    a, b = simulate(settings), simulate(settings)
    np.testing.assert_array_equal(a.adu, b.adu)
    np.testing.assert_array_equal(a.omega, b.omega)
    for name in ("frame", "row", "col", "photons"):
        np.testing.assert_array_equal(getattr(a.emitters, name), getattr(b.emitters, name))
    c = simulate(SimulationSettings(frames=4, size=16, density=5.0, seed=8))
    assert a.adu.shape == c.adu.shape == (4, 16, 16)
    assert not np.array_equal(a.adu, c.adu)
    assert len(a.emitters) != len(c.emitters) or not np.array_equal(a.emitters.row, c.emitters.row)


def test_simulated_omega_is_consistent_with_its_ground_truth():
    stack = simulate(SimulationSettings(frames=3, size=(12, 20), density=8.0, photons=(500.0, 5000.0),
                                        background=15.0, psf_sigma=1.2, seed=3))
    assert stack.adu.shape == stack.omega.shape == (3, 12, 20)
    for t in range(3):
        em = stack.emitters.in_frame(t)
        np.testing.assert_allclose(stack.omega[t], omega_model((12, 20), em.row, em.col, em.photons, 1.2, 15.0),
                                   rtol=1e-10)
    p = stack.emitters.photons
    assert p.min() >= 500.0 and p.max() <= 5000.0


@pytest.mark.parametrize("density, pixel_size", [(4.0, 160.0), (25.0, 100.0), ((1.0, 4.0), 100.0)])
def test_emitter_density(density, pixel_size):
    frames, size = 1000, 16
    s = SimulationSettings(frames=frames, size=size, density=density, pixel_size=pixel_size, seed=11)
    em = simulate(s).emitters
    area_um2 = (size * pixel_size / 1000.0) ** 2
    mean_density = density if np.isscalar(density) else (density[1] - density[0]) / np.log(density[1] / density[0])
    counts = np.bincount(em.frame, minlength=frames)
    expected = mean_density * area_um2
    assert abs(counts.mean() - expected) < 5 * counts.std() / np.sqrt(frames)
    assert counts.mean() == pytest.approx(expected, rel=0.06)
    if np.isscalar(density):  # Poisson counts: variance = mean
        assert counts.var() == pytest.approx(counts.mean(), rel=0.15)
    # uniform over the field [-1/2, size - 1/2]
    for coord in (em.row, em.col):
        assert coord.min() >= -0.5 and coord.max() <= size - 0.5
        assert coord.mean() == pytest.approx((size - 1) / 2, abs=5 * size / np.sqrt(12 * len(coord)))


# ================================================================================================
# KDE targets on the SR grid
# ================================================================================================

def test_sr_grid_convention():
    f = kde.UPSAMPLING
    assert f == 4
    m = np.arange(12)
    np.testing.assert_allclose(kde.sr_to_raw(m), (m + 0.5) / 4 - 0.5)
    np.testing.assert_allclose(kde.raw_to_sr(kde.sr_to_raw(m)), m)
    # raw pixel 0 spans [-1/2, 1/2] and contains SR pixels 0..3, whose centres are -3/8, -1/8, 1/8, 3/8
    np.testing.assert_allclose(kde.sr_to_raw(np.arange(4)), [-0.375, -0.125, 0.125, 0.375])
    # napari: raw layer scale p; SR layer scale p/f, translate -(1 - 1/f)/2 p. World positions agree.
    p = 100.0
    np.testing.assert_allclose(m * p / f - (1 - 1 / f) / 2 * p, kde.sr_to_raw(m) * p)
    assert kde.grid_offset(1 / f) == kde.sr_to_raw(0.0) == -0.375


@pytest.mark.parametrize("ratio", [0.25, 0.5, 1.0, 2.0, 10.0 / 3.0])
def test_grid_offset_centres_a_grid_of_any_pixel_size_on_the_raw_one(ratio):
    """Pixel ``k`` of a grid of pixels ``ratio`` raw pixels wide covers ``[k ratio - 1/2, (k + 1) ratio - 1/2)``
    raw px: its centre is ``k ratio + grid_offset(ratio)``."""
    k = np.arange(7)
    np.testing.assert_allclose(k * ratio + kde.grid_offset(ratio), (k * ratio - 0.5 + (k + 1) * ratio - 0.5) / 2)


@pytest.mark.parametrize("pos", [(10.3, 20.7), (5.05, 5.55), (17.84, 3.12), (25.49, 25.51)])
def test_kde_peak_is_at_the_true_position(pos):
    row, col = pos
    y = kde.render_kde(np.array([row]), np.array([col]), (32, 32))
    assert y.shape == (128, 128) and y.dtype == np.float32
    r, c = np.unravel_index(np.argmax(y), y.shape)
    assert r == int(np.rint(kde.raw_to_sr(row)))
    assert c == int(np.rint(kde.raw_to_sr(col)))
    if pos == (10.3, 20.7):  # rows and columns differ: (10.8 * 4 - 0.5, 21.2 * 4 - 0.5) = (42.7, 84.3)
        assert (r, c) == (43, 84)
    # the KDE's centroid is the sub-pixel position on the SR grid
    rr, cc = np.indices(y.shape)
    assert (y * rr).sum() / y.sum() == pytest.approx(kde.raw_to_sr(row), abs=1e-3)
    assert (y * cc).sum() / y.sum() == pytest.approx(kde.raw_to_sr(col), abs=1e-3)


def test_kde_grid_offset_at_raw_origin():
    """An emitter at raw (0, 0) sits at SR (1.5, 1.5): the corner shared by SR pixels 1 and 2."""
    y = kde.render_kde(np.array([0.0]), np.array([0.0]), (8, 8)).astype(np.float64)
    block = y[1:3, 1:3]
    np.testing.assert_allclose(block, block[0, 0], rtol=1e-6)
    assert y.max() == pytest.approx(block[0, 0], rel=1e-6)
    assert block[0, 0] == pytest.approx(kde.PEAK_CORNER, rel=1e-6)
    # mirror symmetry about SR coordinate 1.5: pixel 1 + k <-> 2 - k ... and 0 <-> 3
    np.testing.assert_allclose(y[0:4, 0:4], y[0:4, 0:4][::-1, ::-1], rtol=1e-6)
    np.testing.assert_allclose(y[0, 1], y[3, 1], rtol=1e-6)
    assert y[0, 0] < y[1, 1] and y[3, 3] < y[2, 2]


def test_kde_peak_heights_closed_form():
    s = kde.KERNEL_SIGMA
    centre = 2 * np.pi * s**2 * erf(0.5 / (SQRT2 * s)) ** 2         # SR pixel [-1/2, 1/2]^2 around the emitter
    corner = 2 * np.pi * s**2 * (0.5 * erf(1.0 / (SQRT2 * s))) ** 2  # SR pixel [0, 1]^2 from the emitter
    assert pytest.approx(centre, rel=1e-12) == kde.PEAK_CENTRE
    assert pytest.approx(corner, rel=1e-12) == kde.PEAK_CORNER
    assert kde.PEAK_CORNER < kde.PEAK_CENTRE < 1.0  # the continuous kernel peaks at exactly 1
    assert pytest.approx(0.92131, abs=1e-5) == kde.PEAK_CENTRE

    on_centre = kde.sr_to_raw(40.0)  # emitter on the centre of SR pixel 40
    y = kde.render_kde(np.array([on_centre]), np.array([kde.sr_to_raw(57.0)]), (24, 24))
    assert np.unravel_index(np.argmax(y), y.shape) == (40, 57)
    assert y.max() == pytest.approx(kde.PEAK_CENTRE, rel=1e-6)

    at_corner = kde.sr_to_raw(40.5)  # emitter on the corner of SR pixels 40, 41 (rows) and 20, 21 (cols)
    y = kde.render_kde(np.array([at_corner]), np.array([kde.sr_to_raw(20.5)]), (24, 24))
    np.testing.assert_allclose(y[40:42, 20:22], kde.PEAK_CORNER, rtol=1e-6)
    assert y.max() == pytest.approx(kde.PEAK_CORNER, rel=1e-6)

    # any position: the sampled peak lies between the two
    rng = np.random.default_rng(0)
    for row, col in rng.uniform(4, 20, (20, 2)):
        peak = kde.render_kde(np.array([row]), np.array([col]), (24, 24)).max()
        assert kde.PEAK_CORNER - 1e-6 <= peak <= kde.PEAK_CENTRE + 1e-6


def test_kde_integral_and_counting():
    assert pytest.approx(2 * np.pi * kde.KERNEL_SIGMA**2) == kde.KERNEL_INTEGRAL
    rng = np.random.default_rng(5)
    # one emitter: the integral is the kernel integral wherever it sits (away from the edges). render_kde
    # takes no photon count, so the height and the integral cannot depend on brightness.
    for row, col in rng.uniform(3, 29, (10, 2)):
        y = kde.render_kde(np.array([row]), np.array([col]), (32, 32))
        assert y.astype(np.float64).sum() == pytest.approx(kde.KERNEL_INTEGRAL, rel=1e-5)
    # several emitters, overlapping or not: count = sum / KERNEL_INTEGRAL
    for n in (1, 7, 30):
        rows, cols = rng.uniform(3, 29, n), rng.uniform(3, 29, n)
        y = kde.render_kde(rows, cols, (32, 32))
        assert y.astype(np.float64).sum() / kde.KERNEL_INTEGRAL == pytest.approx(n, rel=1e-5)
    # an emitter on the frame edge loses part of its kernel
    edge = kde.render_kde(np.array([-0.5]), np.array([10.0]), (32, 32)).sum()
    assert edge / kde.KERNEL_INTEGRAL == pytest.approx(0.5, abs=0.01)


def test_model_space_mapping():
    y = np.array([0.0, 0.25, 0.5, 1.0, 1.7])
    z = kde.to_model(y)
    np.testing.assert_allclose(z, [-1.0, -0.5, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(kde.from_model(z[:4]), y[:4])
    rows, cols = np.array([5.2, 5.9, 12.0]), np.array([8.1, 8.3, 2.0])
    zz = kde.to_model(kde.render_kde(rows, cols, (16, 16)))
    assert zz.min() >= -1.0 and zz.max() <= 1.0


# ================================================================================================
# Cramer-Rao lower bound
# ================================================================================================

def test_crlb_standard_settings():
    assert crlb_nm(2000, 20, 1.0, 100, 1.5) == pytest.approx(2.94, abs=0.005)
    b = crlb(2000, 20, 1.0, 1.5)
    assert b[0] == pytest.approx(b[1], rel=1e-12)  # centred emitter: x and y bounds equal
    assert b[2] == pytest.approx(51.17, abs=0.05)  # photons
    assert b[3] == pytest.approx(0.4755, abs=5e-4)  # background per pixel


def test_crlb_shot_noise_limit_scaling():
    """b = 0, r = 0: bound = sigma_a / sqrt(N) with sigma_a^2 = sigma^2 + 1/12 px^2 (Mortensen 2010)."""
    for sigma in (1.0, 1.3):
        sigma_a = np.sqrt(sigma**2 + 1.0 / 12.0)
        scaled = [crlb(n, 0.0, sigma, 0.0)[0] * np.sqrt(n) for n in (500, 1000, 2000, 5000, 20000, 50000)]
        np.testing.assert_allclose(scaled, scaled[0], rtol=1e-9)
        assert scaled[0] == pytest.approx(sigma_a, rel=0.01)
    assert crlb_nm(2000, 0.0, 1.0, 100, 0.0) == pytest.approx(100 * np.sqrt(1 + 1 / 12) / np.sqrt(2000), rel=0.01)


def test_crlb_in_frame_counts_only_the_pixels_recorded():
    """Inside the frame the bound is the box's; an emitter on the frame's edge (shot noise only) records half
    its photons: the bound along the edge grows by sqrt(2) (sigma_a / sqrt(N / 2)), across it by more."""
    inside = crlb_in_frame(2000, 20, 1.0, 32.0, 32.0, (64, 64), 1.5)
    np.testing.assert_allclose(inside, crlb(2000, 20, 1.0, 1.5), rtol=1e-9)
    full = crlb(2000, 1e-6, 1.0, 0.0)[0]
    edge = crlb_in_frame(2000, 1e-6, 1.0, 32.0, -0.5, (64, 64))
    assert edge[1] == pytest.approx(np.sqrt(2) * full, rel=0.02)
    assert edge[0] > 1.5 * full
    corner = crlb_in_frame(2000, 20, 1.0, 0.0, 63.0, (64, 64), 1.5)
    assert corner[0] > inside[0] and corner[1] > inside[1]


def test_crlb_grows_with_background_and_read_noise():
    backgrounds = [0.0, 0.5, 2.0, 5.0, 20.0, 100.0, 500.0]
    bounds = [crlb_nm(2000, b, 1.0, 100, 1.5) for b in backgrounds]
    assert np.all(np.diff(bounds) > 0)
    noise = [crlb_nm(2000, 20, 1.0, 100, r) for r in (0.0, 1.0, 3.0, 10.0)]
    assert np.all(np.diff(noise) > 0)
    photons = [crlb_nm(n, 20, 1.0, 100, 1.5) for n in (200, 500, 2000, 20000)]
    assert np.all(np.diff(photons) < 0)


def test_crlb_rejects_bad_input():
    with pytest.raises(ValueError, match="photons"):
        crlb(0, 20, 1.0)
    with pytest.raises(ValueError):
        crlb(2000, -1, 1.0)
    with pytest.raises(ValueError):
        crlb(2000, 20, 0.0)


def test_fisher_matrix_matches_finite_differences():
    n0, b0, sigma, r, roi = 1500.0, 12.0, 1.2, 1.7, 11
    for u0, v0 in [(5.0, 5.0), (5.31, 4.62), (4.2, 6.45)]:  # u = column, v = row
        theta = np.array([u0, v0, n0, b0])

        def omega(th):
            return omega_model((roi, roi), [th[1]], [th[0]], [th[2]], sigma, th[3])

        steps = np.array([1e-5, 1e-5, 1e-3, 1e-5])
        grads = []
        for i, h in enumerate(steps):
            e = np.zeros(4)
            e[i] = h
            grads.append(((omega(theta + e) - omega(theta - e)) / (2 * h)).ravel())
        grads = np.array(grads)
        fd = (grads / (omega(theta).ravel() + r**2)) @ grads.T
        analytic = fisher_information(n0, b0, sigma, r, roi, position=(u0, v0))
        np.testing.assert_allclose(analytic, fd, rtol=1e-6, atol=1e-9 * np.abs(fd).max())
        if (u0, v0) == (5.0, 5.0):
            np.testing.assert_allclose(analytic, fisher_information(n0, b0, sigma, r, roi), rtol=1e-12)
    # asymmetric position: the x (column) and y (row) entries are not interchangeable
    f = fisher_information(n0, b0, sigma, r, roi, position=(5.31, 4.62))
    g = fisher_information(n0, b0, sigma, r, roi, position=(4.62, 5.31))
    np.testing.assert_allclose(f[0, 0], g[1, 1], rtol=1e-10)
    np.testing.assert_allclose(f[0, 2], g[1, 2], rtol=1e-10)


def test_two_emitters_fitted_jointly_part_their_information_only_where_their_light_overlaps():
    """The joint Fisher matrix of two emitters: far apart, each one's position bound is its own (one emitter
    in the same box), and the matrix is that of the finite-difference model; as they merge their
    positions' bound grows without limit (the pair's lateral bound: 8 px apart = single, 1 px apart > 4x,
    0.3 px apart > 30x)."""
    n0, b0, sigma, r, roi = 2000.0, 20.0, 1.0, 1.5, 31
    position = np.array([[8.0, 15.0], [22.0, 15.3]])
    joint = np.linalg.inv(fisher_information(np.full(2, n0), b0, sigma, r, roi, position))
    alone = np.linalg.inv(fisher_information(n0, b0, sigma, r, roi, position=(8.0, 15.0)))
    np.testing.assert_allclose(np.diag(joint)[:2], np.diag(alone)[:2], rtol=1e-3)

    def omega(th):   # th: u1, v1, N1, u2, v2, N2, b
        return omega_model((roi, roi), [th[1], th[4]], [th[0], th[3]], [th[2], th[5]], sigma, th[6])

    theta = np.array([14.2, 15.0, n0, 15.4, 15.5, 1500.0, b0])
    steps = np.array([1e-5, 1e-5, 1e-3, 1e-5, 1e-5, 1e-3, 1e-5])
    grads = np.array([((omega(theta + h * e) - omega(theta - h * e)) / (2 * h)).ravel()
                      for h, e in zip(steps, np.eye(7))])
    fd = (grads / (omega(theta).ravel() + r**2)) @ grads.T
    analytic = fisher_information(theta[[2, 5]], b0, sigma, r, roi, theta[[0, 1, 3, 4]].reshape(2, 2))
    np.testing.assert_allclose(analytic, fd, rtol=1e-6, atol=1e-9 * np.abs(fd).max())
    single = np.sqrt(2) * crlb(n0, b0, sigma, r)[0]
    assert pair_lateral_crlb(8.0, n0, b0, sigma, r) == pytest.approx(single, rel=0.01)
    assert pair_lateral_crlb(1.0, n0, b0, sigma, r) > 4 * single
    assert pair_lateral_crlb(0.3, n0, b0, sigma, r) > 30 * single


def _fit_mle(data: np.ndarray, r2: float, sigma: float) -> np.ndarray:
    """Poisson maximum likelihood fit of (x, y, N, b) to ``data = e + r^2`` with model ``omega + r^2``."""
    roi = data.shape[0]
    k = np.arange(roi, dtype=np.float64)

    def d_and_dd(mu):
        d = 0.5 * (erf((k + 0.5 - mu) / (SQRT2 * sigma)) - erf((k - 0.5 - mu) / (SQRT2 * sigma)))
        dd = (np.exp(-((k - 0.5 - mu) ** 2) / (2 * sigma**2)) - np.exp(-((k + 0.5 - mu) ** 2) / (2 * sigma**2)))
        return d, dd / (np.sqrt(2 * np.pi) * sigma)

    def nll(p):  # p = (x, y, log N, log b): unconstrained and well scaled
        x, y, n, b = p[0], p[1], np.exp(p[2]), np.exp(p[3])
        (dx, ddx), (dy, ddy) = d_and_dd(x), d_and_dd(y)
        m = b + n * np.outer(dy, dx) + r2
        w = 1.0 - data / m
        grad = [(w * n * np.outer(dy, ddx)).sum(), (w * n * np.outer(ddy, dx)).sum(),
                (w * np.outer(dy, dx)).sum() * n, w.sum() * b]
        return float((m - data * np.log(m)).sum()), np.array(grad)

    edge = np.concatenate([data[0], data[-1], data[1:-1, 0], data[1:-1, -1]]) - r2
    bg = max(float(np.median(edge)), 1.0)
    w = np.clip(data - r2 - bg, 0.0, None)
    start = [(w.sum(0) * k).sum() / w.sum(), (w.sum(1) * k).sum() / w.sum(), np.log(max(w.sum(), 100.0)), np.log(bg)]
    # BFGS (numpy only): L-BFGS-B's compiled core is ~30x slower when OpenBLAS threads compete for busy CPUs
    res = minimize(nll, np.array(start), jac=True, method="BFGS", options={"gtol": 1e-4})
    assert res.success or np.abs(res.jac).max() < 1e-2, res.message  # curvature ~1e3/px^2: < 1e-5 px off
    return np.array([res.x[0], res.x[1], np.exp(res.x[2]), np.exp(res.x[3])])


@pytest.mark.slow
def test_mle_reaches_the_crlb():
    """An independent MLE on simulated ROIs attains the bound: RMSE within 10% of the CRLB."""
    n_fits, roi, photons, background, sigma, read_noise = 600, 11, 2000.0, 20.0, 1.0, 1.5
    rng = np.random.default_rng(2024)
    cam = Camera(offset=100.0, gain=1.0, read_noise=read_noise)
    truth = np.empty((n_fits, 4))
    truth[:, :2] = (roi - 1) / 2 + rng.uniform(-0.5, 0.5, (n_fits, 2))  # (x = column, y = row)
    truth[:, 2:] = photons, background
    fits, bounds = np.empty_like(truth), np.empty_like(truth)
    for i, (x, y, n, b) in enumerate(truth):
        omega = omega_model((roi, roi), [y], [x], [n], sigma, b)
        data = cam.shifted_photoelectrons(cam.expose(omega, rng)).astype(np.float64)
        fits[i] = _fit_mle(data, read_noise**2, sigma)
        bounds[i] = np.diag(np.linalg.inv(fisher_information(n, b, sigma, read_noise, roi, position=(x, y))))
    err = fits - truth
    rmse_xy = np.sqrt(np.mean(err[:, :2] ** 2))
    bound_xy = np.sqrt(np.mean(bounds[:, :2]))  # the bound averaged over the sub-pixel positions
    centred = crlb(photons, background, sigma, read_noise)[0]
    assert bound_xy == pytest.approx(centred, rel=0.01)
    assert rmse_xy / bound_xy == pytest.approx(1.0, abs=0.10)
    assert np.abs(err[:, :2].mean(0)).max() < 4 * bound_xy / np.sqrt(n_fits)  # unbiased
    for j in (2, 3):  # photons and background
        assert np.sqrt(np.mean(err[:, j] ** 2)) / np.sqrt(np.mean(bounds[:, j])) == pytest.approx(1.0, abs=0.15)


# ================================================================================================
# Metrics
# ================================================================================================

GT_XY = np.array([[1000.0, 1000.0], [3000.0, 1500.0], [2000.0, 4000.0], [500.0, 2500.0]])
GT_FRAME = np.array([1, 1, 2, 3])


def _check(s, jac, rmse, tp, fp, fn):
    assert s.jaccard == pytest.approx(jac)
    if np.isnan(rmse):
        assert np.isnan(s.rmse)
    else:
        assert s.rmse == pytest.approx(rmse, abs=1e-9)
    assert (s.tp, s.fp, s.fn) == (tp, fp, fn)
    expected_e = 100 - np.sqrt((100 - jac) ** 2 + (0 if np.isnan(rmse) else rmse) ** 2) if tp else 0.0
    assert s.efficiency == pytest.approx(expected_e)


def test_metrics_perfect_and_shifted():
    s = metrics.score(GT_FRAME, GT_XY, GT_FRAME, GT_XY)
    _check(s, 100.0, 0.0, 4, 0, 0)
    assert s.efficiency == 100.0 and s.precision == 100.0 and s.recall == 100.0
    s = metrics.score(GT_FRAME, GT_XY + np.array([3.0, 4.0]), GT_FRAME, GT_XY)
    _check(s, 100.0, 5.0, 4, 0, 0)
    assert s.efficiency == pytest.approx(95.0)
    # shuffled localization order changes nothing
    perm = np.array([2, 0, 3, 1])
    assert metrics.score(GT_FRAME[perm], GT_XY[perm] + [3.0, 4.0], GT_FRAME, GT_XY).as_dict() == s.as_dict()


def test_metrics_missed_and_false_positive():
    s = metrics.score(GT_FRAME[:3], GT_XY[:3], GT_FRAME, GT_XY)  # the 4th emitter is missed
    _check(s, 75.0, 0.0, 3, 0, 1)
    assert s.precision == 100.0 and s.recall == 75.0 and s.efficiency == pytest.approx(75.0)
    locs = np.vstack([GT_XY, [[4000.0, 4000.0]]])  # an extra localization far from everything
    s = metrics.score(np.append(GT_FRAME, 1), locs, GT_FRAME, GT_XY)
    _check(s, 80.0, 0.0, 4, 1, 0)
    assert s.precision == 80.0 and s.recall == 100.0


def test_metrics_competing_candidates():
    gt_f, gt = np.array([1]), np.array([[1000.0, 1000.0]])
    for locs in ([[1010.0, 1000.0], [1000.0, 1030.0]], [[1000.0, 1030.0], [1010.0, 1000.0]]):
        locs = np.array(locs)
        m = metrics.match(np.array([1, 1]), locs, gt_f, gt)
        assert len(m.loc_idx) == 1 and locs[m.loc_idx[0]].tolist() == [1010.0, 1000.0]
        _check(metrics.score(np.array([1, 1]), locs, gt_f, gt), 50.0, 10.0, 1, 1, 0)
    # optimal, not greedy: pairing the closest pair first (l0-g0) would leave l1 unmatched
    gt = np.array([[0.0, 0.0], [240.0, 0.0]])
    locs = np.array([[10.0, 0.0], [-200.0, 0.0]])
    m = metrics.match(np.array([1, 1]), locs, np.array([1, 1]), gt)
    assert sorted(zip(m.loc_idx.tolist(), m.gt_idx.tolist())) == [(0, 1), (1, 0)]
    _check(metrics.score(np.array([1, 1]), locs, np.array([1, 1]), gt), 100.0, np.sqrt((230**2 + 200**2) / 2), 2, 0, 0)


def test_metrics_tolerance_and_frames():
    gt_f, gt = np.array([1]), np.array([[1000.0, 1000.0]])
    _check(metrics.score([1], [[1249.0, 1000.0]], gt_f, gt), 100.0, 249.0, 1, 0, 0)
    _check(metrics.score([1], [[1000.0, 1250.0]], gt_f, gt), 100.0, 250.0, 1, 0, 0)  # the radius is inclusive
    s = metrics.score([1], [[1251.0, 1000.0]], gt_f, gt)
    _check(s, 0.0, np.nan, 0, 1, 1)
    assert s.efficiency == 0.0
    _check(metrics.score([1], [[1100.0, 1000.0]], gt_f, gt, tolerance=50.0), 0.0, np.nan, 0, 1, 1)
    # same position, other frame: no match
    _check(metrics.score([2], [[1000.0, 1000.0]], gt_f, gt), 0.0, np.nan, 0, 1, 1)
    f = np.array([1, 2])
    xy = np.array([[1000.0, 1000.0], [3000.0, 2000.0]])
    _check(metrics.score(f, xy + np.array([6.0, 8.0]), f[::-1], xy), 0.0, np.nan, 0, 2, 2)
    _check(metrics.score(f, xy + np.array([6.0, 8.0]), f, xy), 100.0, 10.0, 2, 0, 0)
    # empty inputs
    _check(metrics.score([], np.zeros((0, 2)), gt_f, gt), 0.0, np.nan, 0, 0, 1)
    _check(metrics.score([1], [[1000.0, 1000.0]], [], np.zeros((0, 2))), 0.0, np.nan, 0, 1, 0)


def test_efficiency_formula():
    assert metrics.efficiency(100.0, 0.0) == 100.0
    assert metrics.efficiency(100.0, 5.0) == pytest.approx(95.0)
    assert metrics.efficiency(70.0, 40.0) == pytest.approx(50.0)  # 3-4-5 triangle, scaled by 10


def test_uncertainty_metrics():
    rng = np.random.default_rng(9)
    n = 20000
    truth = rng.uniform(0, 1, n)
    std = rng.uniform(0.01, 0.2, n)
    mean = truth + std * rng.standard_normal(n)
    abs_err = np.abs(mean - truth)

    # coverage of mean +/- k std for Gaussian errors with the true std
    assert metrics.coverage(mean, std, truth) == pytest.approx(0.9545, abs=0.006)
    assert metrics.coverage(mean, std, truth, k=1.0) == pytest.approx(0.6827, abs=0.012)
    assert metrics.coverage(mean, 0.5 * std, truth) == pytest.approx(0.6827, abs=0.012)  # overconfident

    # perfect ranking: std ordered like the error -> model curve = oracle curve
    f, model, oracle = metrics.sparsification(abs_err, abs_err)
    assert f[0] == 0.0 and model[0] == 1.0 and oracle[0] == 1.0
    np.testing.assert_allclose(model, oracle)
    assert np.all(np.diff(oracle) <= 0)
    assert metrics.ause(abs_err, abs_err) == pytest.approx(0.0, abs=1e-12)
    assert metrics.ause(3 * abs_err + 1, abs_err) == pytest.approx(0.0, abs=1e-12)  # only the ranking counts
    assert metrics.spearman(abs_err, abs_err) == pytest.approx(1.0)

    # random std: flat model curve, AUSE well above 0, no rank correlation
    random_std = rng.uniform(0, 1, n)
    f, model, oracle = metrics.sparsification(random_std, abs_err)
    np.testing.assert_allclose(model, 1.0, atol=0.1)
    a_random = metrics.ause(random_std, abs_err)
    assert a_random > 0.3
    assert abs(metrics.spearman(random_std, abs_err)) < 0.03

    # the true std is informative: between the two, and positively correlated with the error
    a_true = metrics.ause(std, abs_err)
    assert 0.0 < a_true < a_random
    assert 0.2 < metrics.spearman(std, abs_err) < 0.9
    # an anti-correlated std is worse than random
    assert metrics.ause(-abs_err, abs_err) > a_random
