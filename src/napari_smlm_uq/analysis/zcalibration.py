"""Astigmatic z calibration from a bead z-stack (docs/3d.md).

Beads are the bright isolated spots of the stack's maximum projection; each is followed from frame to
frame (drift) and fitted in every frame with an elliptical pixel-integrated Gaussian (analysis/bead_fits.py,
plot in analysis/zcalibration_plot.py). Each bead's z is the stage z (frame x step) minus its own focus, where
sigma_x = sigma_y; one pair of Huang et al. 2008 defocus curves is then fitted to all beads at once,
each bead's z offset refined with them (robust loss), beads that do not follow the common curves are
dropped, and z = 0 is put where the fitted curves cross. Least-squares cubic splines are fitted to the
same points and both models are scored on beads held out; the Huang curves are written unless the
splines are clearly better (docs/3d.md). The calibration holds where sigma_x / sigma_y is monotone.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy.interpolate import make_lsq_spline
from scipy.ndimage import median_filter
from scipy.optimize import brentq, least_squares

from ..defaults import PIXEL_SIZE_NM
from ..io.files import InputError
from ..physics.astigmatism import Curve, DefocusCurve, SplineCurve, ZCalibration
from ..physics.camera import Camera
from ..physics.elliptical_fit import MIN_SIGMA
from ..settings import check, option
from .bead_fits import Beads, bead_focus, find_beads, fit_beads
from .zcalibration_plot import plot_calibration

ROBUST_SCALE = 3.0  # normalized residual where the robust (soft L1) loss of the first joint fit turns linear
NO_ASTIGMATISM = (
    "the stack shows no astigmatism, or its focus lies outside the stack, or it covers too little z around its focus"
)
SPLINE_KNOTS = 100.0  # nm between spline knots: 5-10 z steps, smooth over one bead's frame-to-frame scatter
SPLINE_PREFERENCE = 0.9  # the spline is written when its held-out rms is below 0.9x the Huang curves'
MIN_ELONGATION = 1.2  # sigma_x / sigma_y (or its inverse) each side of focus: far above a bead fit's 1-3 % noise


@dataclass
class ZCalibrationSettings:
    """How a bead stack is calibrated; units in the comments. Camera values left None come from the file's
    metadata, else from :class:`Camera`'s defaults."""

    step: float | None = option(None, help="focus step between frames (z grows with the frame index); required",
                                unit="nm", low=0.0, open_low=True)
    pixel_size: float | None = option(None, help="raw pixel size (default: the file's, else "
                                      f"{PIXEL_SIZE_NM:g})", unit="nm", low=0.0, open_low=True)
    offset: float | None = option(None, help="camera offset (default: the file's, else the camera default)",
                                  unit="ADU", low=0.0)
    gain: float | None = option(None, help="camera gain (default: the file's, else the camera default)",
                                unit="ADU/e-", low=0.0, open_low=True)
    read_noise: float | None = option(None, help="read noise (default: the file's, else the camera default)",
                                      unit="e- rms", low=0.0)
    box: int = option(17, help="side of each bead's fit box (odd)", unit="px", low=9)
    min_beads: int = option(3, help="fewer usable beads: refused", low=2)
    min_snr: float = option(20.0, help="a bead's peak in the max projection above the median, in noise sds",
                            low=0.0, open_low=True, label="min SNR")
    max_drift: float = option(3.0, help="how far a bead may move over the stack", unit="px", low=0.0)
    reject: float = option(3.0, help="a bead is dropped when its residual rms is this times the median bead's",
                           low=1.0, open_low=True)

    def validate(self) -> ZCalibrationSettings:
        if self.step is None:
            raise InputError("the z step between frames (nm) is required: it cannot be read from a bead stack")
        check(self)
        if self.box % 2 == 0:
            raise InputError(f"box must be an odd number of pixels (got {self.box})")
        return self


@dataclass
class ZCalibrationResult:
    """A calibration, the beads it came from, both models' (x, y) curves on its z scale, the time taken."""

    calibration: ZCalibration
    beads: Beads
    huang: tuple[DefocusCurve, DefocusCurve]
    splines: tuple[SplineCurve, SplineCurve]
    seconds: float


_CURVE = ("sigma0", "c", "d", "a", "b")


def _curve(p: np.ndarray) -> DefocusCurve:
    return DefocusCurve(*map(float, p))


def _start_curve(z: np.ndarray, s: np.ndarray) -> np.ndarray:
    i = np.argmin(median_filter(s[np.argsort(z)], 5, mode="nearest"))
    return np.array([max(np.sort(s)[len(s) // 20], MIN_SIGMA), np.sort(z)[i], 400.0, 0.0, 0.0])


def _fit_curve(z: np.ndarray, s: np.ndarray, err: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Huang curve parameters fitted to (z, width, error) points."""
    lower, upper = [1e-3, -np.inf, 10.0, -np.inf, -np.inf], [np.inf] * 5
    res = least_squares(lambda p: (_curve(p).sigma(z) - s) / err, np.clip(start, lower, upper), bounds=(lower, upper))
    return res.x


def _joint_fit(beads: Beads, z0: np.ndarray, use: np.ndarray, robust: bool) -> tuple[np.ndarray, np.ndarray]:
    """Both curves and a z offset per used bead (the first one's fixed at 0) fitted to all valid widths;
    returns the 10 curve parameters and the beads' offsets (nm)."""
    j_idx, t_idx = np.nonzero(beads.valid & use[:, None])
    z = z0[j_idx, t_idx]
    sx, sy = beads.sigma_x[j_idx, t_idx], beads.sigma_y[j_idx, t_idx]
    ex, ey = beads.error_x[j_idx, t_idx], beads.error_y[j_idx, t_idx]
    used = np.nonzero(use)[0]
    slot = np.searchsorted(used, j_idx)

    def residuals(p: np.ndarray) -> np.ndarray:
        shift = np.concatenate([[0.0], p[10:]])[slot]
        return np.concatenate(
            [(_curve(p[:5]).sigma(z + shift) - sx) / ex, (_curve(p[5:10]).sigma(z + shift) - sy) / ey]
        )

    start = np.concatenate(
        [
            _fit_curve(z, sx, ex, _start_curve(z, sx)),
            _fit_curve(z, sy, ey, _start_curve(z, sy)),
            np.zeros(len(used) - 1),
        ]
    )
    lower = np.array([1e-3, -np.inf, 10.0, -np.inf, -np.inf] * 2 + [-np.inf] * (len(used) - 1))
    res = least_squares(
        residuals,
        np.clip(start, lower, np.inf),
        bounds=(lower, np.inf),
        loss="soft_l1" if robust else "linear",
        f_scale=ROBUST_SCALE,
        tr_solver="lsmr",
    )
    offsets = np.zeros(len(use))
    offsets[used] = np.concatenate([[0.0], res.x[10:]])
    return res.x[:10], offsets


def _bead_rms(beads: Beads, z: np.ndarray, curves: np.ndarray) -> np.ndarray:
    """Each bead's rms normalized residual (both axes) against the curves; NaN without valid frames."""
    rx = (_curve(curves[:5]).sigma(z) - beads.sigma_x) / beads.error_x
    ry = (_curve(curves[5:]).sigma(z) - beads.sigma_y) / beads.error_y
    sq = np.where(beads.valid, rx**2 + ry**2, 0.0).sum(axis=1) / np.maximum(2 * beads.valid.sum(axis=1), 1)
    return np.where(beads.valid.any(axis=1), np.sqrt(sq), np.nan)


def _crossing(x: DefocusCurve, y: DefocusCurve, lo: float, hi: float) -> float:
    """z (nm) in [lo, hi] where the two curves cross nearest the middle of the range."""
    grid = np.linspace(lo, hi, 2001)
    diff = x.sigma(grid) - y.sigma(grid)
    cross = np.nonzero(np.sign(diff[:-1]) * np.sign(diff[1:]) <= 0)[0]
    if len(cross) == 0:
        raise InputError(f"sigma_x and sigma_y do not cross: {NO_ASTIGMATISM}")
    i = cross[np.argmin(np.abs(grid[cross] - (lo + hi) / 2))]
    return brentq(lambda v: float(x.sigma(v) - y.sigma(v)), grid[i], grid[i + 1]) if diff[i] != 0 else float(grid[i])


def valid_range(x: DefocusCurve, y: DefocusCurve, lo: float, hi: float) -> tuple[float, float]:
    """The widest interval around z = 0 within [lo, hi] (nm) where sigma_x / sigma_y is monotone (1 nm grid)."""
    grid = np.arange(np.floor(lo), np.ceil(hi) + 1.0)
    slope = np.diff(x.sigma(grid) / y.sigma(grid))
    i0 = int(np.clip(np.searchsorted(grid, 0.0) - 1, 0, len(slope) - 1))
    same = np.sign(slope) == np.sign(slope[i0])
    left = i0 - np.argmin(same[i0::-1]) + 1 if not same[: i0 + 1].all() else 0
    right = i0 + np.argmin(same[i0:]) if not same[i0:].all() else len(slope)
    return float(grid[left]), float(grid[right])


def spline_curves(
    z: np.ndarray, sx: np.ndarray, sy: np.ndarray, ex: np.ndarray, ey: np.ndarray
) -> tuple[SplineCurve, ...]:
    """Per-axis weighted least-squares cubic splines, knots every :data:`SPLINE_KNOTS` nm over the points."""
    order = np.argsort(z, kind="stable")
    z = z[order]
    inner = np.arange(z[0] + SPLINE_KNOTS / 2, z[-1] - SPLINE_KNOTS / 2, SPLINE_KNOTS)
    inner += (z[-1] - SPLINE_KNOTS / 2 - inner[-1]) / 2 if len(inner) else 0.0  # centred in the data
    knots = np.concatenate([[z[0]] * 4, inner, [z[-1]] * 4])
    fits = (make_lsq_spline(z, s[order], knots, k=3, w=1.0 / e[order]) for s, e in ((sx, ex), (sy, ey)))
    return tuple(SplineCurve(tuple(f.t), tuple(f.c)) for f in fits)


def compare_models(beads: Beads, curves: np.ndarray) -> dict:
    """rms width residuals (px) of the Huang curves and of the splines, on the points they were fitted to
    and on held-out beads (each kept bead predicted from curves fitted to the others)."""
    use = beads.valid & beads.kept[:, None]
    z, sx, sy, ex, ey = (a[use] for a in (beads.z, beads.sigma_x, beads.sigma_y, beads.error_x, beads.error_y))
    bead = np.nonzero(use)[0]
    spline_x, spline_y = spline_curves(z, sx, sy, ex, ey)
    rms = lambda r: float(np.sqrt(np.mean(np.concatenate(r) ** 2)))
    out = {
        "huang_rms_px": rms([_curve(curves[:5]).sigma(z) - sx, _curve(curves[5:]).sigma(z) - sy]),
        "spline_rms_px": rms([spline_x.sigma(z) - sx, spline_y.sigma(z) - sy]),
    }
    held_h, held_s = [], []
    for j in np.unique(bead):
        tr, te = bead != j, bead == j
        px, py = _fit_curve(z[tr], sx[tr], ex[tr], curves[:5]), _fit_curve(z[tr], sy[tr], ey[tr], curves[5:])
        held_h += [_curve(px).sigma(z[te]) - sx[te], _curve(py).sigma(z[te]) - sy[te]]
        kx, ky = spline_curves(z[tr], sx[tr], sy[tr], ex[tr], ey[tr])
        inside = (z[te] >= z[tr].min()) & (z[te] <= z[tr].max())  # a spline does not extrapolate
        held_s += [(kx.sigma(z[te]) - sx[te])[inside], (ky.sigma(z[te]) - sy[te])[inside]]
    out.update(huang_heldout_rms_px=rms(held_h), spline_heldout_rms_px=rms(held_s))
    return out


def _align(beads: Beads, settings: ZCalibrationSettings) -> np.ndarray:
    """Put every bead on one z scale (z = 0 where the Huang curves cross; sets ``beads.z``), drop beads
    without a crossing, without :data:`MIN_ELONGATION` each side of it (a round spot: a blob, a hot pixel)
    or off the common curves (sets ``beads.kept``); returns the 10 curve parameters."""
    stage = np.arange(beads.valid.shape[1]) * settings.step
    focus = np.array(
        [
            bead_focus(stage[v], sx[v], sy[v]) if v.sum() > 2 else None
            for v, sx, sy in zip(beads.valid, beads.sigma_x, beads.sigma_y)
        ],
        dtype=object,
    )
    ratio = np.log(beads.sigma_x / beads.sigma_y)
    elongation = np.log(MIN_ELONGATION)
    elongated = (np.where(beads.valid, ratio, -np.inf).max(axis=1) > elongation) & (
        np.where(beads.valid, ratio, np.inf).min(axis=1) < -elongation
    )
    crossing = np.array([f is not None for f in focus]) & elongated
    where = [f"bead at x {c:.0f}, y {r:.0f} px" for r, c in zip(beads.row, beads.col)]
    beads.notes = [
        f"{where[j]}: its widths do not cross, or its spot stays within {MIN_ELONGATION:g}x as long as wide on one side"
        for j in np.nonzero(~crossing)[0]
    ]
    if not crossing.any():
        raise InputError(
            f"in no bead do sigma_x and sigma_y cross with the spot {MIN_ELONGATION:g}x longer than "
            f"wide on both sides: {NO_ASTIGMATISM}"
        )
    _require(crossing, settings, "whose widths cross")
    z0 = stage[None, :] - np.where(crossing, focus, 0.0).astype(float)[:, None]
    curves, offsets = _joint_fit(beads, z0, crossing, robust=True)
    rms = _bead_rms(beads, z0 + offsets[:, None], curves)
    limit = settings.reject * max(float(np.nanmedian(rms[crossing])), 1.0)
    kept = crossing & (rms <= limit)
    for j in np.nonzero(crossing & ~kept)[0]:
        beads.notes.append(
            f"{where[j]}: off the common curves (rms residual {rms[j]:.1f} error units, limit {limit:.1f})"
        )
    _require(kept, settings, "that follow the common curves")
    curves, offsets = _joint_fit(beads, z0, kept, robust=False)
    z = z0 + offsets[:, None]
    zc = _crossing(_curve(curves[:5]), _curve(curves[5:]), *_coverage(z, beads.valid, kept))
    curves[[1, 6]] -= zc
    beads.z, beads.kept = z - zc, kept
    return curves


def _coverage(z: np.ndarray, valid: np.ndarray, kept: np.ndarray) -> tuple[float, float]:
    """The z span (nm) of the median kept bead's usable frames."""
    return tuple(float(np.median([f(z[j][valid[j]]) for j in np.nonzero(kept)[0]])) for f in (np.min, np.max))


def _shifted(curve: Curve, dz: float) -> Curve:
    """``curve`` moved by ``-dz`` nm along z."""
    if isinstance(curve, DefocusCurve):
        return replace(curve, c=curve.c - dz)
    return SplineCurve(tuple(np.asarray(curve.knots) - dz), curve.coefficients)


def calibrate(
    stack: np.ndarray, settings: ZCalibrationSettings, pixel_size: float, read_noise: float, source: str = ""
) -> ZCalibrationResult:
    """Calibrate from a bead stack ``(T, H, W)`` in photo-electrons; :class:`InputError` when it has too
    few usable beads or no astigmatism. The Huang curves are kept unless the splines predict held-out
    beads clearly better (:data:`SPLINE_PREFERENCE`)."""
    settings.validate()
    started = time.perf_counter()
    stack = np.asarray(stack, np.float64)
    rows, cols = find_beads(stack, settings)
    if len(rows) < settings.min_beads:
        raise InputError(
            f"{len(rows)} isolated bead(s) found (at least {settings.min_beads} needed): "
            f"beads are spots {settings.min_snr:g} noise sds above the background, "
            f"{settings.box} px apart and that far from the edges"
        )
    beads = fit_beads(stack, rows, cols, read_noise, settings)
    curves = _align(beads, settings)
    use = beads.valid & beads.kept[:, None]
    huang = _curve(curves[:5]), _curve(curves[5:])
    splines = spline_curves(*(a[use] for a in (beads.z, beads.sigma_x, beads.sigma_y, beads.error_x, beads.error_y)))
    residuals = {"beads_found": len(rows), "beads_used": int(beads.kept.sum()), **compare_models(beads, curves)}
    lo, hi = _coverage(beads.z, beads.valid, beads.kept)
    x, y = huang
    if residuals["spline_heldout_rms_px"] < SPLINE_PREFERENCE * residuals["huang_heldout_rms_px"]:
        zc = _crossing(*splines, lo, hi)  # z = 0 where the curves written cross
        huang, splines = tuple(_shifted(c, zc) for c in huang), tuple(_shifted(c, zc) for c in splines)
        beads.z, lo, hi = beads.z - zc, lo - zc, hi - zc
        x, y = splines
    z_range = valid_range(x, y, lo, hi)
    _check_astigmatism(x, y, z_range)
    cal = ZCalibration(x, y, z_range, pixel_size, residuals, source).validate()
    return ZCalibrationResult(cal, beads, huang, splines, time.perf_counter() - started)


def _check_astigmatism(x: DefocusCurve, y: DefocusCurve, z_range: tuple[float, float]) -> None:
    """Refuse curves whose width ratio does not reach :data:`MIN_ELONGATION` on both sides of focus."""
    ratio = np.log(x.sigma(np.array(z_range)) / y.sigma(np.array(z_range)))
    if ratio.min() > -np.log(MIN_ELONGATION) or ratio.max() < np.log(MIN_ELONGATION):
        raise InputError(
            f"sigma_x / sigma_y is only {np.exp(ratio[0]):.2f} at {z_range[0]:.0f} nm and "
            f"{np.exp(ratio[1]):.2f} at {z_range[1]:.0f} nm ({MIN_ELONGATION:g}x either way needed "
            f"on both sides of focus): {NO_ASTIGMATISM}"
        )


def _require(ok: np.ndarray, settings: ZCalibrationSettings, what: str) -> None:
    if ok.sum() < settings.min_beads:
        raise InputError(f"only {ok.sum()} of {len(ok)} beads {what} (at least {settings.min_beads} needed)")


def calibrate_file(
    path: str | os.PathLike, settings: ZCalibrationSettings, out: str | os.PathLike
) -> ZCalibrationResult:
    """Calibrate from a bead stack TIFF (ADU); writes ``out`` (JSON) and its plot beside it (``.png``),
    nothing when the stack cannot be calibrated. Camera values and pixel size not set are the file's."""
    from ..io.tiff import open_stack

    out = checked_output(out, settings)
    stack = open_stack(path)
    result = calibrate_adu(stack.data, stack.metadata, settings, Path(path).name)
    save_calibration(result, out)
    return result


def checked_output(out: str | os.PathLike, settings: ZCalibrationSettings) -> Path:
    """``out`` as a path, once the settings and the name (``.json``) are checked: before any work."""
    settings.validate()
    out = Path(out)
    if out.suffix.lower() != ".json":
        raise InputError(f"the calibration file must end in .json (got {out.name})")
    return out


def calibrate_adu(adu: np.ndarray, metadata: dict, settings: ZCalibrationSettings, source: str) -> ZCalibrationResult:
    """Calibrate from a bead stack ``(T, H, W)`` in ADU (a file's or a napari layer's); camera values and pixel
    size not set in ``settings`` come from ``metadata``, else from the defaults."""
    settings.validate()
    default = Camera()
    pick = lambda value, key, fallback: value if value is not None else metadata.get(key, fallback)
    camera = Camera(
        pick(settings.offset, "offset", default.offset),
        pick(settings.gain, "gain", default.gain),
        pick(settings.read_noise, "read_noise", default.read_noise),
    ).validate()
    electrons = camera.to_photoelectrons(np.asarray(adu)).astype(np.float64)
    if electrons.ndim != 3 or len(electrons) < 5:
        raise InputError(f"{source}: {len(electrons) if electrons.ndim == 3 else 1} frame(s); a bead z-stack needs "
                         "at least 5")
    pixel_size = float(pick(settings.pixel_size, "pixel_size", PIXEL_SIZE_NM))
    return calibrate(electrons, settings, pixel_size, float(camera.read_noise), source=source)


def save_calibration(result: ZCalibrationResult, out: str | os.PathLike) -> None:
    """Write the calibration (JSON) and its plot beside it (``.png``), each atomically."""
    from ..io.zcalibration import write_zcalibration

    plot_calibration(result, Path(out).with_suffix(".png"))
    write_zcalibration(out, result.calibration)
