"""The astigmatic PSF (docs/3d.md): the defocus curves, the elliptical image, the 3D Cramer-Rao bound
against finite differences and the 2D closed form, and 3D simulation.

The expected image is written here from the equation (pixel-integrated Gaussian per axis, each with its
own width), not taken from the package.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from scipy.interpolate import make_interp_spline
from scipy.special import erf

from napari_smlm_uq.io.files import InputError
from napari_smlm_uq.io.tables import emitters_table, table_emitters
from napari_smlm_uq.io.zcalibration import read_zcalibration, write_zcalibration
from napari_smlm_uq.physics.astigmatism import (
    AstigmaticModel,
    DefocusCurve,
    SplineCurve,
    ZCalibration,
    crlb_3d,
    fisher_information_3d,
    z_from_widths,
)
from napari_smlm_uq.physics.camera import Camera
from napari_smlm_uq.physics.crlb import crlb, fisher_information
from napari_smlm_uq.physics.elliptical_fit import fit_elliptical
from napari_smlm_uq.physics.fit import damped_scoring
from napari_smlm_uq.physics.simulate import SimulationSettings, simulate

# sigma 1 px in each axis's focus, foci 500 nm apart, a little asymmetry (a, b) as in real lenses
CAL = ZCalibration(
    DefocusCurve(1.0, -250.0, 400.0, 0.1, 0.05), DefocusCurve(1.05, 250.0, 380.0, -0.1, 0.05), (-550.0, 550.0), 100.0
)


def fractions(n: int, mu: float, sigma: float) -> np.ndarray:
    k = np.arange(n, dtype=np.float64)
    return 0.5 * (erf((k + 0.5 - mu) / (np.sqrt(2) * sigma)) - erf((k - 0.5 - mu) / (np.sqrt(2) * sigma)))


def huang(z, sigma0, c, d, a=0.0, b=0.0):
    u = (z - c) / d
    return sigma0 * np.sqrt(1 + u**2 + a * u**3 + b * u**4)


def image(roi: int, x: float, y: float, z: float, n: float, b: float, cal: ZCalibration = CAL) -> np.ndarray:
    """b + N D(row; y, sigma_y(z)) D(col; x, sigma_x(z)), the widths from Huang et al.'s formula."""
    sx, sy = huang(z, **dataclasses.asdict(cal.x)), huang(z, **dataclasses.asdict(cal.y))
    return b + n * np.outer(fractions(roi, y, sy), fractions(roi, x, sx))


def test_defocus_curves_and_their_slopes():
    z = np.linspace(-600, 600, 13)
    np.testing.assert_allclose(CAL.x.sigma(z), huang(z, 1.0, -250.0, 400.0, 0.1, 0.05), rtol=1e-12)
    h = 1e-3
    np.testing.assert_allclose(CAL.y.slope(z), (CAL.y.sigma(z + h) - CAL.y.sigma(z - h)) / (2 * h), rtol=1e-6)
    assert CAL.x.sigma(-250.0) == pytest.approx(1.0) and CAL.x.slope(-250.0) == 0.0
    # without the higher-order terms the width grows by sqrt(2) one depth of focus away
    assert DefocusCurve(1.3, 100.0, 400.0).sigma(500.0) == pytest.approx(1.3 * np.sqrt(2))


def test_model_image_widths_and_jacobian():
    """The model's image is the equation's; its second moments are sigma^2 + 1/12 px^2 per axis (pixel
    integration); the Jacobian matches finite differences."""
    roi, theta = 41, np.array([[15.0, 20.2, 19.7, 380.0, 3000.0]])  # b, x, y, z, N
    model = AstigmaticModel(roi, 1, CAL)
    mu, jac = model(theta)
    np.testing.assert_allclose(mu[0], image(roi, 20.2, 19.7, 380.0, 3000.0, 15.0), rtol=1e-12)
    spot = mu[0] - 15.0
    k = np.arange(roi)
    for profile, sigma, centre in ((spot.sum(0), CAL.x.sigma(380.0), 20.2), (spot.sum(1), CAL.y.sigma(380.0), 19.7)):
        assert profile.sum() == pytest.approx(3000.0, rel=1e-9)
        assert (profile * (k - centre) ** 2).sum() / 3000.0 == pytest.approx(sigma**2 + 1 / 12, rel=1e-6)
    assert CAL.x.sigma(380.0) / CAL.y.sigma(380.0) > 1.5  # elongated along x above focus
    steps = np.array([1e-5, 1e-5, 1e-5, 1e-3, 1e-3])
    fd = np.array(
        [
            ((model(theta + h * e, False)[0] - model(theta - h * e, False)[0]) / (2 * h)).ravel()
            for h, e in zip(steps, np.eye(5))
        ]
    )
    np.testing.assert_allclose(jac[0], fd, rtol=1e-5, atol=1e-7 * np.abs(fd).max())


@pytest.mark.parametrize(("x", "y", "z"), [(7.0, 7.0, 0.0), (7.3, 6.6, -320.0), (6.8, 7.4, 450.0)])
def test_fisher_matrix_matches_finite_differences(x, y, z):
    """I = J^T diag(1 / (omega + r^2)) J with J by finite differences of the equation's image, in the order
    (x, y, z, N, b)."""
    n0, b0, r, roi = 2000.0, 20.0, 1.5, 15
    theta = np.array([x, y, z, n0, b0])
    steps = np.array([1e-5, 1e-5, 1e-3, 1e-3, 1e-5])
    grads = np.array(
        [
            ((image(roi, *(theta + h * e)) - image(roi, *(theta - h * e))) / (2 * h)).ravel()
            for h, e in zip(steps, np.eye(5))
        ]
    )
    fd = (grads / (image(roi, *theta).ravel() + r**2)) @ grads.T
    analytic = fisher_information_3d(n0, b0, z, CAL, r, roi, position=(x, y))
    np.testing.assert_allclose(analytic, fd, rtol=1e-5, atol=1e-9 * np.abs(fd).max())


def test_crlb_equals_the_2d_bound_where_the_widths_are_equal_and_z_is_known():
    """At the z where sigma_x = sigma_y the (x, y, N, b) block is the 2D Fisher matrix of that width, so
    with z known the bounds are the 2D ones; with z free x and y lose nothing when the curves are mirror
    images (z's image change is antisymmetric under x <-> y, the others' symmetric)."""
    z_eq = 0.0
    sym = ZCalibration(DefocusCurve(1.0, -200.0, 400.0), DefocusCurve(1.0, 200.0, 400.0), (-500.0, 500.0), 100.0)
    sigma = float(sym.x.sigma(z_eq))
    assert sigma == pytest.approx(float(sym.y.sigma(z_eq))) and sigma == pytest.approx(np.sqrt(1.25))
    for r, pos in ((0.0, None), (1.5, (6.3, 5.8))):
        info3 = fisher_information_3d(2000.0, 20.0, z_eq, sym, r, roi=13, position=pos)
        info2 = fisher_information(2000.0, 20.0, sigma, r, roi=13, position=pos)
        keep = [0, 1, 3, 4]
        np.testing.assert_allclose(info3[np.ix_(keep, keep)], info2, rtol=1e-10)
        np.testing.assert_allclose(
            np.sqrt(np.diag(np.linalg.inv(info3[np.ix_(keep, keep)]))),
            crlb(2000.0, 20.0, sigma, r, roi=13, position=pos),
            rtol=1e-8,
        )
    bounds = crlb_3d(2000.0, 20.0, z_eq, sym, 1.5, roi=13)
    np.testing.assert_allclose(bounds[[0, 1, 3, 4]], crlb(2000.0, 20.0, sigma, 1.5, roi=13), rtol=1e-6)


def test_z_bound_grows_as_the_astigmatism_vanishes():
    """At the crossing d sigma / dz = sigma0 gamma / d^2 for foci +-gamma apart: the z bound grows as
    1 / gamma (halving gamma doubles it, up to the O(gamma^2 / d^2) change of the width), and with no
    astigmatism the image carries no z information at the crossing at all."""

    def cal(gamma):
        return ZCalibration(DefocusCurve(1.0, -gamma, 400.0), DefocusCurve(1.0, gamma, 400.0), (-500.0, 500.0), 100.0)

    z_bound = [crlb_3d(2000.0, 20.0, 0.0, cal(g), 1.5)[2] for g in (40.0, 20.0, 10.0)]
    assert z_bound[1] / z_bound[0] == pytest.approx(2.0, rel=0.01)
    assert z_bound[2] / z_bound[1] == pytest.approx(2.0, rel=0.005)
    assert z_bound[2] > 250.0  # a quarter of the whole range: useless
    assert fisher_information_3d(2000.0, 20.0, 0.0, cal(0.0), 1.5)[2, 2] == 0.0
    # a usable astigmatism (foci 500 nm apart): tens of nm at 2000 photons, best near focus
    usable = [crlb_3d(2000.0, 20.0, z, CAL, 1.5)[2] for z in (-500.0, 0.0, 500.0)]
    assert 10.0 < usable[1] < 40.0 and usable[0] > usable[1] and usable[2] > usable[1]


def test_crlb_3d_rejects_bad_input():
    with pytest.raises(ValueError, match="photons"):
        crlb_3d(0.0, 20.0, 0.0, CAL)
    with pytest.raises(ValueError, match="background"):
        crlb_3d(100.0, -1.0, 0.0, CAL)


def test_z_from_widths_inverts_the_curves():
    z = np.array([-540.0, -400.0, -123.4, 0.0, 77.7, 333.3, 540.0])
    np.testing.assert_allclose(z_from_widths(*CAL.sigmas(z), CAL), z, atol=0.05)


def spline_calibration() -> ZCalibration:
    """CAL's curves as interpolating cubic splines (knots every 50 nm)."""
    z = np.arange(-600.0, 601.0, 50.0)
    splines = (make_interp_spline(z, curve.sigma(z), k=3) for curve in (CAL.x, CAL.y))
    return ZCalibration(*(SplineCurve(tuple(s.t), tuple(s.c)) for s in splines), CAL.z_range, 100.0)


def test_spline_curves_follow_their_points_and_slopes():
    cal, z = spline_calibration(), np.linspace(-550.0, 550.0, 23)
    assert cal.model == "spline" and CAL.model == "huang2008"
    np.testing.assert_allclose(cal.x.sigma(z), CAL.x.sigma(z), atol=2e-3)
    h = 1e-3
    np.testing.assert_allclose(
        cal.y.slope(z), (cal.y.sigma(z + h) - cal.y.sigma(z - h)) / (2 * h), rtol=1e-5, atol=1e-9
    )
    np.testing.assert_allclose(cal.y.slope(z), CAL.y.slope(z), atol=2e-4)  # px per nm
    np.testing.assert_allclose(
        crlb_3d(2000.0, 20.0, 120.0, cal, 1.5), crlb_3d(2000.0, 20.0, 120.0, CAL, 1.5), rtol=0.03
    )


@pytest.mark.parametrize(
    "cal", [dataclasses.replace(CAL, residuals={"huang_rms_px": 0.03}, source="beads.tif"), spline_calibration()]
)
def test_calibration_file_round_trip_and_bad_files(tmp_path, cal):
    path = tmp_path / "cal.json"
    write_zcalibration(path, cal)
    assert read_zcalibration(path) == cal
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(InputError, match="not a z calibration"):
        read_zcalibration(tmp_path / "other.json")
    broken = json.loads(path.read_text())
    broken["x"] = {"sigma0": 1.0, "c": 0.0, "d": -4.0}
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(InputError, match="d > 0"):
        read_zcalibration(tmp_path / "broken.json")
    with pytest.raises(InputError, match="no such file"):
        read_zcalibration(tmp_path / "missing.json")


def test_3d_simulation_renders_each_emitter_at_its_z():
    """The 2D simulation of a seed has the same emitters; the 3D one adds uniform z in the range and
    renders each through its own elliptical PSF; the truth table carries z [nm] only in 3D."""
    flat = simulate(SimulationSettings(frames=4, size=24, density=3.0, seed=5))
    s3 = simulate(
        SimulationSettings(frames=4, size=24, density=3.0, seed=5, z_calibration=CAL, z_range=(-400.0, 300.0))
    )
    e = s3.emitters
    np.testing.assert_array_equal(e.row, flat.emitters.row)
    np.testing.assert_array_equal(e.photons, flat.emitters.photons)
    assert flat.emitters.z is None and len(e) > 20
    assert e.z.min() >= -400.0 and e.z.max() <= 300.0 and np.ptp(e.z) > 400.0
    for t in range(4):
        expected = np.full((24, 24), 20.0)
        for r, c, z, n in zip(e.row[e.frame == t], e.col[e.frame == t], e.z[e.frame == t], e.photons[e.frame == t]):
            expected += image(24, c, r, z, n, 0.0)
        np.testing.assert_allclose(s3.omega[t], expected, rtol=1e-10)
    table = emitters_table(e, 100.0)
    assert "z [nm]" in table and "z [nm]" not in emitters_table(flat.emitters, 100.0)
    np.testing.assert_array_equal(table_emitters(table, 100.0).z, e.z)


def test_3d_simulation_settings_are_checked():
    with pytest.raises(ValueError, match="not within the calibration"):
        SimulationSettings(z_calibration=CAL, z_range=(-700.0, 0.0)).validate()
    with pytest.raises(ValueError, match="needs a z calibration"):
        SimulationSettings(z_range=(-100.0, 100.0)).validate()
    default = simulate(SimulationSettings(frames=3, size=16, density=10.0, z_calibration=CAL)).emitters.z
    assert default.min() >= -550.0 and default.max() <= 550.0


def test_maximum_likelihood_with_the_astigmatic_model_reaches_the_3d_bound():
    """Fitting x, y, z, N, b by maximum likelihood (the model's Jacobian in Fisher scoring, started from the
    elliptical fit's widths) attains the bound: rms errors within 10 % of the bound's rms for x, y and z
    at 2,000 photons, background 20, |z| <= 400 nm."""
    rng = np.random.default_rng(11)
    n, roi, r = 600, 15, 1.5
    truth = np.column_stack(
        [np.full(n, 20.0), 7.0 + rng.uniform(-0.5, 0.5, (n, 2)), rng.uniform(-400, 400, n), np.full(n, 2000.0)]
    )  # b, x, y, z, N
    omega = np.stack([image(roi, x, y, z, nn, b) for b, x, y, z, nn in truth])
    data = Camera().to_photoelectrons(Camera(read_noise=r).expose(omega, rng)).astype(np.float64)
    start = fit_elliptical(data, r)
    theta = np.column_stack(
        [
            start["background"],
            start["col"],
            start["row"],
            z_from_widths(start["sigma_x"], start["sigma_y"], CAL),
            start["photons"],
        ]
    )
    model = AstigmaticModel(roi, 1, CAL)

    def expected(t):
        mu, jac = model(t)
        return mu + r**2, jac

    def clip(t):
        return np.column_stack(
            [t[:, 0].clip(1e-3), t[:, 1:3].clip(-1, roi), t[:, 3].clip(*CAL.z_range), t[:, 4].clip(1)]
        )

    counts = np.clip(data + r**2, 0, None)
    fitted, *_ = damped_scoring(counts, np.ones_like(counts), np.ones(theta.shape, bool), theta, expected, clip, 30)
    bounds = np.array([crlb_3d(2000.0, 20.0, z, CAL, r, roi, (x, y)) for _, x, y, z, _ in truth])
    for column, bound in ((1, 0), (2, 1), (3, 2)):
        ratio = np.sqrt(np.mean((fitted[:, column] - truth[:, column]) ** 2)) / np.sqrt(np.mean(bounds[:, bound] ** 2))
        assert ratio == pytest.approx(1.0, abs=0.1)


def test_z_from_widths_in_chunks_equals_one_at_a_time():
    z = np.random.default_rng(3).uniform(-500.0, 500.0, 9000)  # over two chunks
    together = z_from_widths(*CAL.sigmas(z), CAL)
    np.testing.assert_allclose(together, z, atol=0.05)
    np.testing.assert_array_equal(
        together[[0, 4096, 8999]], [z_from_widths(*CAL.sigmas(v), CAL)[0] for v in z[[0, 4096, 8999]]]
    )
