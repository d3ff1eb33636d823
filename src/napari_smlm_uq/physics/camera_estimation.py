"""The camera from the data: offset, gain and read noise by the photon-transfer method.

For every pixel, the temporal mean ``m`` and variance ``v`` of its background (ADU) follow
``v = g F^2 (m - o) + (g r)^2`` (docs/physics.md, "Camera"), a line across pixels whose background levels
differ: slope ``g F^2`` (the effective gain) and intercept ``-g F^2 o'``, where
``o' = o - g r^2 / F^2`` is the level at which the Poisson-shifted signal ``e + r^2`` is zero. The
network's input needs only ``g F^2`` and ``o'``; splitting ``o'`` into offset and read noise needs one of
them from elsewhere (the file, the user, or the default read noise), and the estimate says which.

Blinking molecules add variance that is not the background's: ``method`` picks how per-pixel statistics
resist them (benchmarks/real_acquisitions.py measures each): ``plain`` (none), ``clipped`` (iterative
3-sigma clipping per pixel), ``masked`` (pixel-frames within 2 px of a bright spot left out),
``differences`` (the variance from clipped consecutive-frame differences, which also cancels slow
drifts) and ``masked-differences`` (the default: differences of consecutive frames that are both clear of
bright spots; the only one within 5 % on both simulated blinking movies and the real sCMOS frames). The
differences are taken less each difference frame's median, so a background that changes between frames
(bleaching, laser flicker) does not count as shot noise.

Photon transfer assumes shot-noise-limited pixels, so the estimate checks itself against the data: the pixels must
fluctuate independently of their neighbours (shot noise does), the offset never lies above the data's 5th
percentile, the variance must be linear in the mean and the background it implies physical. Where the line fails,
the offset is the given or default one and the gain matches the background noise (what the network's input needs);
where the pixels do not fluctuate like photon counts at all (processed, rescaled or noise-free stacks) the estimate
says it cannot tell and names the options to give.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import maximum_filter
from scipy.stats import norm

from .camera import Camera

MIN_FRAMES = 10          # fewer: no estimate (the 20, lowered so that 11-frame real stacks work)
MAX_FRAMES = 200         # frames used (the first ones): enough for < 1 % statistical error
MAX_PIXELS = 1 << 16     # pixels used (a regular sub-grid of larger frames)
FLAT_SLOPE_ERROR = 0.05  # relative standard error of the slope above which the field counts as flat
METHODS = ("plain", "clipped", "masked", "differences", "masked-differences")
DEFAULT_METHOD = "masked-differences"
#: read noise (e- rms) assumed when neither it nor the offset is known: an EMCCD's, referred to its input,
#: is far below 1 e- at usual EM gains
ASSUMED_READ_NOISE = {"ccd": Camera().read_noise, "scmos": Camera().read_noise, "emccd": 0.0}
NOISE_AGREEMENT = (0.67, 1.5)   # measured / predicted background noise (ADU rms) counted as agreement
LOW_PERCENTILE = 5.0    # the offset lies below this percentile of the pixels read (read noise aside: see the checks)
# max / min over the mean's deciles of measured / fitted variance: photon transfer is a line (1.0-1.3 on our
# simulated movies and the real sCMOS frames; 2-40 on rescaled noise-free stacks)
LINEARITY = 1.5
MAX_CORRELATION = 0.6   # of neighbouring pixels' fluctuations: 0.0-0.43 on our simulated movies (blinking molecules'
                        # shoulders the most) and the real sCMOS frames; 0.76-0.77 where spots merge (6-25 /um^2)
BACKGROUND_RANGE = (0.05, 1e4)  # effective photo-electrons per pixel a background can have (SMLM: 1-500)
ADVICE = "give --offset and --gain (and --camera-kind) from the camera's data sheet or its calibration"


class EstimateError(ValueError):
    """The data cannot give a camera estimate (too few frames, no background signal)."""


def _truncated_variance(k: float) -> float:
    """Variance of a unit normal truncated at +/- k (the bias of k-sigma clipping)."""
    return 1.0 - 2.0 * k * norm.pdf(k) / (2.0 * norm.cdf(k) - 1.0)


def _robust_scale(x: np.ndarray, centre: np.ndarray) -> np.ndarray:
    return 1.4826 * np.median(np.abs(x - centre), axis=0)


def _clipped(x: np.ndarray, k: float, iterations: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel (axis 0) mean, bias-corrected variance and the kept mask after iterative k-sigma clipping."""
    centre = np.median(x, axis=0)
    scale = _robust_scale(x, centre)
    for _ in range(iterations):
        keep = np.abs(x - centre) <= k * np.maximum(scale, 1e-6)
        n = np.maximum(keep.sum(axis=0), 2)
        centre = np.where(keep, x, 0.0).sum(axis=0) / n
        scale = np.sqrt(np.where(keep, (x - centre) ** 2, 0.0).sum(axis=0) / (n - 1) / _truncated_variance(k))
    return centre, scale**2, keep


def _bright_spots(x: np.ndarray, k: float = 3.0) -> np.ndarray:
    """Pixel-frames within 2 px of a pixel ``k`` robust standard deviations above its temporal median."""
    centre = np.median(x, axis=0)
    return maximum_filter(x - centre > k * _robust_scale(x, centre), size=(1, 5, 5))


def _steady_differences(x: np.ndarray, clear: np.ndarray | None = None) -> np.ndarray:
    """Consecutive-frame differences ``(T - 1, H, W)`` less each difference frame's median over its ``clear``
    pixels (all by default): a background that changes between frames (bleaching, laser flicker) moves every
    pixel alike and is no shot noise."""
    d = np.diff(x, axis=0)
    clear = np.ones(d.shape, bool) if clear is None else clear
    shift = np.array([np.median(f[c]) if c.any() else 0.0 for f, c in zip(d, clear)])
    return d - shift[:, None, None]


@dataclass
class PixelStatistics:
    """Per-pixel background mean (ADU), variance (ADU^2) and degrees of freedom, for pixels ``index``
    (flat indices into the frame); ``low``: the :data:`LOW_PERCENTILE` of every pixel-frame read (ADU);
    ``correlation``: of neighbouring pixels' fluctuations (:func:`neighbour_correlation`)."""

    mean: np.ndarray
    variance: np.ndarray
    dof: np.ndarray
    index: np.ndarray
    low: float = float("nan")
    correlation: float = float("nan")


def pixel_statistics(frames: np.ndarray, method: str = DEFAULT_METHOD) -> PixelStatistics:
    """Temporal statistics of ``(T, H, W)`` ADU frames, resisting blinking molecules by ``method``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)} (got {method!r})")
    x = np.asarray(frames, dtype=np.float64)
    t, h, w = x.shape
    stride = int(np.ceil(np.sqrt(h * w / MAX_PIXELS)))
    index = (np.arange(h)[::stride, None] * w + np.arange(w)[None, ::stride]).ravel()
    bright = _bright_spots(x)
    if method == "plain":
        mean, var, dof = x.mean(axis=0), x.var(axis=0, ddof=1), np.full((h, w), t - 1.0)
    elif method == "clipped":
        mean, var, keep = _clipped(x, 3.0)
        dof = keep.sum(axis=0) - 1.0
    elif method == "masked":
        n = (~bright).sum(axis=0)
        mean = np.where(bright, 0.0, x).sum(axis=0) / np.maximum(n, 1)
        var = np.where(bright, 0.0, (x - mean) ** 2).sum(axis=0) / np.maximum(n - 1, 1)
        dof = n - 1.0
    elif method == "masked-differences":
        n = (~bright).sum(axis=0)
        mean = np.where(bright, 0.0, x).sum(axis=0) / np.maximum(n, 1)
        pair = ~(bright[1:] | bright[:-1])
        pairs = pair.sum(axis=0)
        var = np.where(pair, _steady_differences(x, pair) ** 2, 0.0).sum(axis=0) / np.maximum(pairs, 1) / 2.0
        dof = pairs * 2.0 / 3.0
    else:
        mean = _clipped(x, 3.0)[0]
        _, diff_var, keep = _clipped(_steady_differences(x), 4.0)
        var, dof = diff_var / 2.0, keep.sum(axis=0) * 2.0 / 3.0   # overlapping differences: ~2/3 of the dof
    pick = lambda a: a.ravel()[index]
    ok = pick(dof) >= 2
    low = float(np.percentile(x.reshape(t, -1)[:, index], LOW_PERCENTILE))
    correlation = neighbour_correlation(x, ~(bright[1:] | bright[:-1]))
    return PixelStatistics(pick(mean)[ok], pick(var)[ok], pick(dof)[ok], index[ok], low, correlation)


def neighbour_correlation(x: np.ndarray, clear: np.ndarray) -> float:
    """The correlation of adjacent pixels' frame-to-frame changes (:func:`_steady_differences`) where both are
    ``clear`` of bright spots: 0 for shot and read noise, which every pixel draws alone; emitters everywhere
    (spots that merge) or a smoothed, denoised or interpolated stack share it between neighbours."""
    d = np.where(clear, _steady_differences(x, clear), 0.0)
    products = squares = 0.0
    for a, b in ((d[:, 1:], d[:, :-1]), (d[:, :, 1:], d[:, :, :-1])):
        products += float(np.sum(a * b))
        squares += float(np.sqrt(np.sum(a**2 * (b != 0)) * np.sum(b**2 * (a != 0))))
    return products / squares if squares > 0 else float("nan")


@dataclass
class TransferFit:
    """``variance = slope x mean + intercept`` (ADU^2 against ADU) with standard errors; ``n`` pixels kept."""

    slope: float
    intercept: float
    slope_se: float
    intercept_se: float
    covariance: float
    n: int

    @property
    def zero_level(self) -> float:
        """``o' = -intercept / slope`` (ADU): where the shifted photo-electrons ``e + r^2`` are zero."""
        return -self.intercept / self.slope

    @property
    def zero_level_se(self) -> float:
        o = self.zero_level
        var = (self.intercept_se**2 + o**2 * self.slope_se**2 + 2 * o * self.covariance) / self.slope**2
        return float(np.sqrt(max(var, 0.0)))


def fit_transfer(stats: PixelStatistics, reject: float = 5.0, iterations: int = 4) -> TransferFit:
    """Weighted least-squares line through the pixels' (mean, variance), each weighted by the inverse
    variance of its variance estimate (``2 v^2 / dof``); pixels more than ``reject`` of those standard
    deviations off the line (hot pixels, molecules that stayed on) are left out."""
    m, v, dof = stats.mean, stats.variance, stats.dof
    edges = np.quantile(m, np.linspace(0, 1, 21))
    bins = np.clip(np.searchsorted(edges, m, side="right") - 1, 0, 19)
    centres = np.array([(np.median(m[bins == b]), np.median(v[bins == b])) for b in range(20) if np.any(bins == b)])
    slope, intercept = np.polyfit(centres[:, 0], centres[:, 1], 1) if len(centres) > 1 else (0.0, float(np.median(v)))
    keep = np.ones(len(m), bool)
    for _ in range(iterations):
        predicted = np.maximum(slope * m + intercept, 1e-6)
        sd = predicted * np.sqrt(2.0 / dof)
        keep = np.abs(v - predicted) <= reject * sd
        wts = 1.0 / sd[keep] ** 2
        a = np.column_stack([m[keep], np.ones(keep.sum())])
        normal = a.T @ (a * wts[:, None])
        slope, intercept = np.linalg.solve(normal, a.T @ (wts * v[keep]))
    residual = v[keep] - (slope * m[keep] + intercept)
    chi2 = float(np.sum(wts * residual**2) / max(keep.sum() - 2, 1))
    cov = np.linalg.inv(normal) * chi2
    return TransferFit(float(slope), float(intercept), float(np.sqrt(cov[0, 0])), float(np.sqrt(cov[1, 1])),
                       float(cov[0, 1]), int(keep.sum()))


def transfer_linearity(stats: PixelStatistics, slope: float, intercept: float) -> float:
    """Max / min over the deciles of the pixels' mean of (median variance / ``slope x mean + intercept``):
    1 where the variance is linear in the mean, as photon transfer has it (the median of a chi-square
    variance sits a few per cent below its mean in every decile alike)."""
    edges = np.quantile(stats.mean, np.linspace(0, 1, 11))
    deciles = np.clip(np.searchsorted(edges, stats.mean, side="right") - 1, 0, 9)
    ratios = [np.median(stats.variance[deciles == d])
              / max(slope * np.median(stats.mean[deciles == d]) + intercept, 1e-9)
              for d in range(10) if np.any(deciles == d)]
    return float(max(ratios) / max(min(ratios), 1e-9))


@dataclass
class CameraEstimate:
    """A camera found from the data: offset ADU, gain ADU/e- (EMCCD: with the EM gain), read noise e- rms,
    excess noise F^2 (from the kind, not measured), their standard errors (NaN: not determined from the
    data), a one-line ``source`` and ``notes`` on what was assumed; ``doubt``: why photon transfer could not
    tell the offset (the gain then matches the background noise), None where it could."""

    offset: float
    gain: float
    read_noise: float
    excess_noise: float
    kind: str
    offset_se: float
    gain_se: float
    read_noise_se: float
    source: str
    notes: list[str] = field(default_factory=list)
    frames: int = 0
    method: str = DEFAULT_METHOD
    doubt: str | None = None

    def camera(self) -> Camera:
        return Camera(self.offset, self.gain, self.read_noise, self.kind)

    def as_dict(self) -> dict:
        keys = ("offset", "gain", "read_noise", "excess_noise", "offset_se", "gain_se", "read_noise_se")
        return {k: getattr(self, k) for k in keys} | {"kind": self.kind, "source": self.source, "notes": self.notes,
                                                    "frames": self.frames, "method": self.method, "doubt": self.doubt}

    def describe(self) -> str:
        """``gain 18.6 +/- 0.4 ADU/e-, offset ... , read noise ...`` (``+/-`` only for measured values)."""
        def part(name: str, value: float, se: float, unit: str) -> str:
            return f"{name} {value:.3g}{f' +/- {se:.2g}' if np.isfinite(se) else ''} {unit}"
        text = ", ".join([part("gain", self.gain, self.gain_se, "ADU/e-"),
                          part("offset", self.offset, self.offset_se, "ADU"),
                          part("read noise", self.read_noise, self.read_noise_se, "e- rms")])
        return text + (f" (EMCCD, F^2 = {self.excess_noise:g})" if self.kind == "emccd" else "")


def estimate_camera(frames, kind: str = "ccd", offset: float | None = None, read_noise: float | None = None,
                    method: str = DEFAULT_METHOD) -> CameraEstimate:
    """Estimate the camera of ``(T, H, W)`` ADU frames (any array-like; the first :data:`MAX_FRAMES` are
    read). ``offset`` (ADU) and ``read_noise`` (e- rms) known from elsewhere fill what the data cannot
    separate. A photon-transfer line the data contradict (:func:`photon_transfer_doubt`) gives way to the
    flat-field estimate, which names the offset it assumed. Raises :class:`EstimateError` below
    :data:`MIN_FRAMES` frames, and where the pixels do not fluctuate like photon counts."""
    excess = Camera(kind=kind).validate().excess_noise
    n = len(frames)
    if n < MIN_FRAMES:
        raise EstimateError(f"{n} frames are too few to estimate the camera from the data "
                            f"(at least {MIN_FRAMES} needed)")
    data = np.asarray(frames[:MAX_FRAMES])
    bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise EstimateError(f"the frames hold {bad} NaN or infinite pixel{'s' if bad > 1 else ''}")
    stats = pixel_statistics(data, method)
    if stats.correlation > MAX_CORRELATION:
        raise EstimateError(f"the camera cannot be told from the data: neighbouring pixels fluctuate together "
                            f"(correlation {stats.correlation:.2f}), as no shot noise does: emitters everywhere, or a "
                            f"smoothed or interpolated stack; {ADVICE}")
    fit = fit_transfer(stats)
    if not (fit.slope > 0 and fit.slope_se < FLAT_SLOPE_ERROR * fit.slope):
        return _flat_field_estimate(stats, kind, offset, read_noise, method, min(n, MAX_FRAMES), fit)
    doubt = photon_transfer_doubt(stats, fit, excess, offset)
    if doubt:
        return _flat_field_estimate(stats, kind, offset, read_noise, method, min(n, MAX_FRAMES), fit, doubt)
    gain, gain_se = fit.slope / excess, fit.slope_se / excess
    zero, zero_se = fit.zero_level, fit.zero_level_se
    notes = []
    if offset is not None:   # read noise from o - o' = g r^2 / F^2
        r2 = max(excess * (offset - zero) / gain, 0.0)
        rn = float(np.sqrt(r2))
        rn_se = float(excess * zero_se / gain / (2 * rn)) if rn > 0 else float("nan")
        off, off_se = float(offset), float("nan")
        notes.append(f"offset {offset:g} ADU given; read noise from the photon-transfer intercept")
    else:
        rn = ASSUMED_READ_NOISE[kind] if read_noise is None else float(read_noise)
        off = zero + gain * rn**2 / excess
        off_se, rn_se = zero_se, float("nan")
        notes.append(f"read noise {rn:g} e- rms {'given' if read_noise is not None else 'assumed (the default)'}: "
                     "offset and read noise cannot both be found from photon transfer")
        if off > stats.low and read_noise is None:   # the read noise assumed is too large for the data
            off, rn = stats.low, float(np.sqrt(excess * (stats.low - zero) / gain))
            notes.append(f"offset capped at the data's {LOW_PERCENTILE:g}th percentile ({off:.4g} ADU) and read noise "
                         f"{rn:.2g} e- rms from it: the read noise assumed put the offset above the data")
    return CameraEstimate(float(off), float(gain), rn, excess, kind, float(off_se), float(gain_se), rn_se,
                          f"estimated from the data ({min(n, MAX_FRAMES)} frames, photon transfer)", notes,
                          min(n, MAX_FRAMES), method)


def photon_transfer_doubt(stats: PixelStatistics, fit: TransferFit, excess: float, offset: float | None) -> str | None:
    """Why the photon-transfer line cannot be the camera's, or None: its zero level (the offset, read noise
    aside) above the data's :data:`LOW_PERCENTILE`; a variance that is not linear in the mean (beyond
    :data:`LINEARITY`); a background outside :data:`BACKGROUND_RANGE` photo-electrons."""
    zero = fit.zero_level if offset is None else float(offset)
    if zero > stats.low:
        what = "the photon-transfer fit puts the offset at" if offset is None else "the offset given,"
        return f"{what} {zero:.4g} ADU, above {LOW_PERCENTILE:g} % of the pixels ({stats.low:.4g} ADU)"
    linearity = transfer_linearity(stats, fit.slope, fit.intercept)
    if linearity > LINEARITY:
        return f"the pixels' variance is not linear in their mean (deciles off the line by up to {linearity:.2g}x)"
    background = float(np.median(stats.mean) - zero) / (fit.slope / excess)
    if not BACKGROUND_RANGE[0] <= background <= BACKGROUND_RANGE[1]:
        return f"the photon-transfer fit implies a background of {background:.3g} photo-electrons per pixel"
    return None


def _flat_field_estimate(stats: PixelStatistics, kind: str, offset: float | None, read_noise: float | None,
                         method: str, frames: int, fit: TransferFit, doubt: str | None = None) -> CameraEstimate:
    """A flat background (or a photon-transfer line ``fit`` in ``doubt``): one (mean, variance) point. The gain
    follows once the offset is known; the offset is taken as given, else the default, and the notes say it could
    not be determined. Raises :class:`EstimateError` where the pixels' variance follows neither that camera's
    line nor ``fit``'s, or is far below photon counts'."""
    defaults = Camera(kind=kind)
    off = defaults.offset if offset is None else float(offset)
    rn = ASSUMED_READ_NOISE[kind] if read_noise is None else float(read_noise)
    mean, var = float(np.median(stats.mean)), float(np.median(stats.variance))
    f2 = defaults.excess_noise
    signal = f2 * (mean - off)
    which = "given" if offset is not None else "the default"
    if off > stats.low:
        raise EstimateError(f"the camera cannot be told from the data: the offset {off:g} ADU ({which}) lies above "
                            f"{LOW_PERCENTILE:g} % of the pixels ({stats.low:.4g} ADU)"
                            f"{'; ' + doubt if doubt else ''}; {ADVICE}")
    gain = (-signal + np.sqrt(signal**2 + 4 * rn**2 * var)) / (2 * rn**2) if rn > 0 else var / signal
    background = (mean - off) / gain if gain > 0 else np.inf
    linearity = min(transfer_linearity(stats, fit.slope, fit.intercept),
                    transfer_linearity(stats, gain * f2, (gain * rn) ** 2 - gain * f2 * off) if gain > 0 else 1.0)
    if not (BACKGROUND_RANGE[0] <= background <= BACKGROUND_RANGE[1] and linearity <= LINEARITY):
        why = (f"their variance ({var:.3g} ADU^2 at {mean:.4g} ADU) is far below photon counts'"
               if linearity <= LINEARITY
               else f"their variance is not linear in their mean (deciles off the line by up to {linearity:.2g}x)")
        raise EstimateError(f"the camera cannot be told from the data: the pixels do not fluctuate like photon counts "
                            f"({why}: a processed, rescaled or noise-free stack, or one with emitters everywhere)"
                            f"{'; ' + doubt if doubt else ''}; {ADVICE}")
    gain_se = float(gain * np.sqrt(2.0 / np.sum(stats.dof)))
    if doubt:
        source = (f"estimated from the data ({frames} frames, the background noise; photon transfer could not tell "
                  "the offset)")
        notes = [f"{doubt}: offset {off:g} ADU {which}, gain from the background noise; if that is not the "
                 f"camera's, {ADVICE}"]
    else:
        source = f"estimated from the data ({frames} frames, flat background)"
        how = "given" if offset is not None else "the default: it could not be determined (flat background)"
        notes = [f"offset {off:g} ADU {how}"]
    return CameraEstimate(off, float(gain), rn, f2, kind, float("nan"), gain_se, float("nan"), source,
                          [*notes, f"read noise {rn:g} e- rms assumed"], frames, method, notes[0] if doubt else None)


def noise_ratio(frames, camera: Camera, method: str = DEFAULT_METHOD) -> float:
    """Measured / predicted background noise (ADU rms) of ``frames`` for ``camera``: the median over
    pixels of the measured variance over :meth:`Camera.noise_variance`, square-rooted."""
    stats = pixel_statistics(np.asarray(frames[:MAX_FRAMES]), method)
    pixel = lambda a: np.asarray(a).ravel()[stats.index] if np.ndim(a) else a
    cam = Camera(pixel(camera.offset), pixel(camera.gain), pixel(camera.read_noise), camera.kind)
    predicted = np.maximum(cam.noise_variance(stats.mean), 1e-6)
    return float(np.sqrt(np.median(stats.variance / predicted)))
