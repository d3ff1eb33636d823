"""Stage drift from the localizations themselves: redundant cross-correlation (RCC, Wang et al. 2014)
of images rendered from time segments, refined on short segments by an intersection method in the
spirit of AIM (Ma et al. 2024): each localization is paired with its nearest neighbour from other
segments and each segment is moved to the inverse-variance weighted consensus. Or from fiducial markers.

A :class:`Drift` holds the drift (nm, x and y) of every frame and its standard error; the drift is
defined up to a constant (frame 0 is the origin) and is subtracted from the positions."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree

from ..analysis.render import histogram
from ..io.files import InputError

MIN_PER_SEGMENT = 20  # localizations a segment needs before its drift is estimated
MAX_IMAGE = 1024  # RCC image side at most, pixels (the pixel grows on large fields)
REJECT_NM = 30.0  # RCC drops pair shifts whose least-squares residual exceeds this
FLOOR_SIGMAS = 5.0  # the refinement radius never falls below this many combined uncertainties


@dataclass
class Drift:
    """Per-frame drift (``frames`` long): ``x``, ``y`` and their standard errors ``x_se``, ``y_se`` (nm);
    ``segment_frame``/``segment_xy`` are the per-segment estimates it was interpolated from."""

    x: np.ndarray
    y: np.ndarray
    x_se: np.ndarray
    y_se: np.ndarray
    method: str
    segment_frame: np.ndarray
    segment_xy: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def table(self) -> dict[str, np.ndarray]:
        """Columns of ``drift.csv``: frame (1-based), drift and its standard error (nm)."""
        return {"frame": np.arange(1, len(self) + 1), "x [nm]": self.x, "y [nm]": self.y,
                "x se [nm]": self.x_se, "y se [nm]": self.y_se}


def correct(frame: np.ndarray, x: np.ndarray, y: np.ndarray, sigma: np.ndarray | None,
            drift: Drift) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Positions minus the drift of their frame; the drift's standard error is added to ``sigma`` in
    quadrature (mean of the two axes' variances)."""
    f = np.asarray(frame, int)
    new_sigma = None if sigma is None else np.sqrt(sigma ** 2 + (drift.x_se[f] ** 2 + drift.y_se[f] ** 2) / 2)
    return x - drift.x[f], y - drift.y[f], new_sigma


def segment_index(frame: np.ndarray, n_frames: int, segment_frames: int) -> tuple[np.ndarray, int]:
    """Segment of each localization and the number of segments (the last one may be short)."""
    n_seg = int(np.ceil(n_frames / segment_frames))
    if n_seg < 2:
        raise InputError(f"drift needs at least 2 segments: {n_frames} frames at {segment_frames} frames per segment")
    return np.minimum(np.asarray(frame, int) // segment_frames, n_seg - 1), n_seg


def _check_counts(seg: np.ndarray, n_seg: int) -> None:
    counts = np.bincount(seg, minlength=n_seg)
    if counts.min() < MIN_PER_SEGMENT:
        raise InputError(f"drift cannot be estimated: segment {int(counts.argmin()) + 1} of {n_seg} holds "
                         f"{int(counts.min())} localizations (at least {MIN_PER_SEGMENT} needed); use longer segments")


def per_frame(centre: np.ndarray, xy: np.ndarray, se: np.ndarray, n_frames: int, method: str) -> Drift:
    """Interpolate per-segment drift ``xy`` (n, 2) and errors ``se`` (n, 2) at ``centre`` frames to every
    frame (monotone cubic; beyond the first/last centre the end segments' polynomials continue), with
    the drift of frame 0 as the origin."""
    f = np.arange(n_frames)
    curve = PchipInterpolator(centre, xy, axis=0, extrapolate=True)(f)
    xy, curve = xy - curve[0], curve - curve[0]
    err = np.stack([np.interp(f, centre, se[:, k]) for k in range(2)], axis=1)
    return Drift(curve[:, 0], curve[:, 1], err[:, 0], err[:, 1], method, centre, xy)


def _centres(frame: np.ndarray, seg: np.ndarray, n_seg: int) -> np.ndarray:
    return np.bincount(seg, weights=frame, minlength=n_seg) / np.bincount(seg, minlength=n_seg)


# --- redundant cross-correlation -------------------------------------------------------------------

def _peak(cc: np.ndarray) -> np.ndarray:
    """Sub-pixel (row, col) of the maximum of a correlation image (Gaussian fit through 3 points)."""
    r, c = np.unravel_index(np.argmax(cc), cc.shape)
    out = []
    for axis, (i, n) in enumerate(((r, cc.shape[0]), (c, cc.shape[1]))):
        if 0 < i < n - 1:
            idx = [(i + k, c) if axis == 0 else (r, i + k) for k in (-1, 0, 1)]
            lm, l0, lp = (np.log(max(cc[j], 1e-12)) for j in idx)
            den = lm - 2 * l0 + lp
            out.append(i + (0.5 * (lm - lp) / den if den < 0 else 0.0))
        else:
            out.append(float(i))
    return np.array(out)


def pair_shifts(images: list[np.ndarray], window: int) -> tuple[np.ndarray, np.ndarray]:
    """Shifts (pixels, (row, col)) of image j relative to image i for every pair i < j, from the peak of
    their cross-correlation within ``window`` pixels of zero."""
    spectra = [np.fft.rfft2(im) for im in images]
    shape = images[0].shape
    pairs, shifts = [], []
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            cc = np.fft.fftshift(np.fft.irfft2(spectra[j] * np.conj(spectra[i]), s=shape))
            r0, c0 = shape[0] // 2 - window, shape[1] // 2 - window
            crop = cc[r0:r0 + 2 * window + 1, c0:c0 + 2 * window + 1]
            shifts.append(_peak(crop) - window)
            pairs.append((i, j))
    return np.array(pairs), np.array(shifts)


def solve_positions(pairs: np.ndarray, shifts: np.ndarray, n: int, reject: float) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares positions (n, 2) of n segments from redundant pair shifts (segment 0 at the origin),
    dropping the worst pair while its residual exceeds ``reject`` and more pairs than segments remain;
    standard errors from the residual scatter of the pairs kept."""
    keep = np.ones(len(pairs), bool)
    while True:
        a = np.zeros((keep.sum() + 1, n))
        a[np.arange(keep.sum()), pairs[keep, 1]] = 1
        a[np.arange(keep.sum()), pairs[keep, 0]] -= 1
        a[-1, 0] = 1
        b = np.vstack([shifts[keep], np.zeros((1, 2))])
        pos = np.linalg.lstsq(a, b, rcond=None)[0]
        res = np.linalg.norm(shifts - (pos[pairs[:, 1]] - pos[pairs[:, 0]]), axis=1)
        worst = np.argmax(np.where(keep, res, -1))
        if res[worst] <= reject or keep.sum() <= n:
            break
        keep[worst] = False
    dof = max(keep.sum() - (n - 1), 1)
    scatter = np.sqrt(np.sum(res[keep] ** 2) / (2 * dof))
    cov = np.linalg.pinv(a.T @ a)
    se = scatter * np.sqrt(np.clip(np.diag(cov), 0, None))
    return pos, np.stack([se, se], axis=1)


def rcc(frame: np.ndarray, x: np.ndarray, y: np.ndarray, n_frames: int, segment_frames: int = 1000,
        pixel_nm: float = 20.0, max_drift_nm: float = 1000.0, blur_px: float = 1.0) -> Drift:
    """Drift by redundant cross-correlation of histogram images (``pixel_nm``, blurred by ``blur_px``)
    of consecutive segments of ``segment_frames`` frames; shifts beyond ``max_drift_nm`` are not searched."""
    seg, n_seg = segment_index(frame, n_frames, segment_frames)
    _check_counts(seg, n_seg)
    x0, y0 = x.min() - max_drift_nm, y.min() - max_drift_nm
    extent = (y.max() - y0 + max_drift_nm, x.max() - x0 + max_drift_nm)
    pixel = max(pixel_nm, max(extent) / MAX_IMAGE)
    images = [gaussian_filter(histogram(x[seg == s] - x0, y[seg == s] - y0, extent, pixel), blur_px)
              for s in range(n_seg)]
    window = int(min(np.ceil(max_drift_nm / pixel), min(images[0].shape) // 2 - 1))
    pairs, shifts = pair_shifts(images, window)
    pos, se = solve_positions(pairs, shifts, n_seg, reject=max(1.0, REJECT_NM / pixel))
    xy, err = pos[:, ::-1] * pixel, se * pixel
    return per_frame(_centres(frame, seg, n_seg), xy, err, n_frames, "rcc")


# --- intersection refinement (AIM-like) ------------------------------------------------------------

def _segment_step(c: np.ndarray, seg: np.ndarray, var: np.ndarray, n_seg: int,
                  radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per segment: weighted mean offset of its localizations from every localization of another segment
    within ``radius`` nm (weights 1/(sigma_i^2 + sigma_j^2)), its standard error and the number of pairs."""
    pairs = cKDTree(c).query_pairs(radius, output_type="ndarray")
    pairs = pairs[seg[pairs[:, 0]] != seg[pairs[:, 1]]]
    i, j = np.concatenate([pairs[:, 0], pairs[:, 1]]), np.concatenate([pairs[:, 1], pairs[:, 0]])
    d = c[i] - c[j]
    w = 1.0 / (var[i] + var[j])
    s = seg[i]
    wsum = np.bincount(s, weights=w, minlength=n_seg)
    safe = np.where(wsum > 0, wsum, 1.0)
    step = np.stack([np.bincount(s, weights=w * d[:, k], minlength=n_seg) for k in range(2)], axis=1) / safe[:, None]
    return step, _clustered_se(c[i], s, w[:, None] * (d - step[s]), n_seg, 2 * radius) / safe[:, None], \
        np.bincount(s, minlength=n_seg)


def _clustered_se(xy: np.ndarray, seg: np.ndarray, wr: np.ndarray, n_seg: int, cell: float) -> np.ndarray:
    """sqrt of the per-segment sum over spatial cells (``cell`` nm) of the squared summed weighted residuals
    ``wr`` (n, 2): pairs of one molecule are correlated, cells of distinct molecules are not."""
    ij = np.floor(xy / cell).astype(np.int64)
    ij -= ij.min(axis=0)
    span = ij.max(axis=0) + 1
    _, cluster = np.unique((seg * span[0] + ij[:, 0]) * span[1] + ij[:, 1], return_inverse=True)
    owner = np.zeros(cluster.max() + 1, int)
    owner[cluster] = seg
    sums = [np.bincount(cluster, weights=wr[:, k]) ** 2 for k in range(2)]
    return np.stack([np.sqrt(np.bincount(owner, weights=v, minlength=n_seg)) for v in sums], axis=1)


def refine(frame: np.ndarray, x: np.ndarray, y: np.ndarray, sigma: np.ndarray, start: Drift,
           segment_frames: int = 200, radius_nm: float = 60.0, iterations: int = 5,
           max_points: int = 100_000, seed: int = 0) -> Drift:
    """Refine ``start`` on segments of ``segment_frames``: pair each localization with every localization
    of other segments within a radius shrinking from ``radius_nm`` to FLOOR_SIGMAS combined uncertainties,
    and move each segment to the inverse-variance weighted consensus, ``iterations`` times. At most
    ``max_points`` localizations (a random subset) take part: dense data need no more."""
    n_frames = len(start)
    seg, n_seg = segment_index(frame, n_frames, segment_frames)
    _check_counts(seg, n_seg)
    if len(x) > max_points:
        pick = np.sort(np.random.default_rng(seed).choice(len(x), max_points, replace=False))
        frame, x, y, sigma, seg = frame[pick], x[pick], y[pick], np.asarray(sigma)[pick], seg[pick]
    base = np.stack([x - start.x[frame], y - start.y[frame]], axis=1)
    var = np.asarray(sigma, float) ** 2
    floor = FLOOR_SIGMAS * np.sqrt(2 * np.median(var))
    delta, se = np.zeros((n_seg, 2)), np.zeros((n_seg, 2))
    for it in range(iterations):
        radius = max(radius_nm * 0.5 ** it, floor)
        step, se, pairs = _segment_step(base - delta[seg], seg, var, n_seg, radius)
        if np.any(pairs < MIN_PER_SEGMENT // 2):
            raise InputError(f"drift cannot be refined: segment {int(pairs.argmin()) + 1} of {n_seg} has "
                             f"{int(pairs.min())} pairs with other segments; use longer segments")
        delta += step * (n_seg - 1) / n_seg
        delta -= delta[0]
    centre = _centres(frame, seg, n_seg)
    start_at = np.stack([np.interp(centre, np.arange(n_frames), v) for v in (start.x, start.y)], axis=1)
    return per_frame(centre, start_at + delta, se, n_frames, f"{start.method}+intersection")


def estimate(frame: np.ndarray, x: np.ndarray, y: np.ndarray, sigma: np.ndarray, n_frames: int,
             rcc_segment: int = 1000, segment_frames: int = 200) -> Drift:
    """RCC on ``rcc_segment``-frame segments, refined on ``segment_frames``-frame segments."""
    return refine(frame, x, y, sigma, rcc(frame, x, y, n_frames, rcc_segment), segment_frames)


# --- fiducial markers ------------------------------------------------------------------------------

def fiducial(frame: np.ndarray, x: np.ndarray, y: np.ndarray, sigma: np.ndarray, markers_xy: np.ndarray,
             n_frames: int, radius_nm: float = 300.0) -> Drift:
    """Drift from fiducial markers near ``markers_xy`` (m, 2; x, y nm): localizations within
    ``radius_nm`` of a marker are its track; per frame, the inverse-variance weighted mean of the tracks'
    offsets from their own weighted mean position, with standard error 1/sqrt(sum of weights).
    Frames without a marker localization are interpolated."""
    markers = np.asarray(markers_xy, float).reshape(-1, 2)
    if len(markers) == 0:
        raise InputError("fiducial drift needs at least one marker position")
    dist, m = cKDTree(markers).query(np.stack([x, y], axis=1), distance_upper_bound=radius_nm)
    on = np.isfinite(dist)
    f, mk, w = np.asarray(frame, int)[on], m[on], 1.0 / np.asarray(sigma, float)[on] ** 2
    xy = np.stack([x[on], y[on]], axis=1)
    wm = np.bincount(mk, weights=w, minlength=len(markers))
    centre = np.stack([np.bincount(mk, weights=w * xy[:, k], minlength=len(markers)) for k in range(2)], axis=1)
    off = xy - centre[mk] / np.where(wm > 0, wm, 1)[mk, None]
    wf = np.bincount(f, weights=w, minlength=n_frames)
    seen = np.flatnonzero(wf > 0)
    if len(seen) < max(2, n_frames // 2):
        raise InputError(f"fiducial drift cannot be estimated: markers found in {len(seen)} of {n_frames} frames "
                         f"(within {radius_nm:g} nm of {len(markers)} marker(s))")
    mean = np.stack([np.bincount(f, weights=w * off[:, k], minlength=n_frames)[seen] / wf[seen] for k in range(2)], 1)
    se = np.repeat(1.0 / np.sqrt(wf[seen])[:, None], 2, axis=1)
    frames = np.arange(n_frames)
    curve = np.stack([np.interp(frames, seen, mean[:, k]) - mean[0, k] for k in range(2)], axis=1)
    err = np.stack([np.interp(frames, seen, se[:, k]) for k in range(2)], axis=1)
    return Drift(curve[:, 0], curve[:, 1], err[:, 0], err[:, 1], "fiducial", seen, mean)
