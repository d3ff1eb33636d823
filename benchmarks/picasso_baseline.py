"""Picasso (PyPI ``picassosr``) baseline localizer for the napari-smlm-uq benchmarks.

Standalone: imports nothing from napari_smlm_uq. It runs in its own virtual environment, never in the
project's .venv (picasso pulls in PyQt6, streamlit, dask, ... which must not land next to napari's Qt):

    cd <repository root>                            # .venv-bench/ is git-ignored
    python3 -m venv .venv-bench                     # tested with Python 3.11.7 (picassosr needs >= 3.10)
    .venv-bench/bin/pip install "picassosr==0.11.3" tifffile   # full dependency set, ~1.7 GB, ~80 s
    # (a --no-deps install was not tried; picasso.localize itself imports numpy, numba, scipy, pandas,
    #  dask, matplotlib, tqdm, sqlalchemy, pyyaml, h5py, nd2 and tifffile)

Usage (set OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 on a shared machine):

    .venv-bench/bin/python benchmarks/picasso_baseline.py localize MOVIE.tif OUT.csv --ng 1000 \
        [--box 7] [--pixel-size 100 --offset 100 --gain 1 --read-noise 1.5] [--use-read-noise] [--max-sigma S]
    .venv-bench/bin/python benchmarks/picasso_baseline.py tune MOVIE.tif GT.csv --grid 500 1000 2000 [--box 5 7]
    .venv-bench/bin/python benchmarks/picasso_baseline.py localize3d MOVIE.tif OUT --calibration CAL3D.json \
        --ng 1000 [2000 ...] [--box 7 [9 ...]] [--z-filter 0 [2 ...]] [the camera options]

For PSF sigma = 1 px, box 5 scores much better than box 7 (fewer spots lost at the frame edge and to
neighbours inside the box): tune both. --max-sigma drops fits wider than S px (merged emitters), as one
would in Picasso's Filter; it is off by default.

Camera parameters follow the project (offset in ADU, gain in ADU per photo-electron, read noise in
photo-electrons rms); they are converted to Picasso's camera_info: Baseline = offset, Sensitivity =
1/gain (photo-electrons per ADU), Gain = 1 (EM gain), Qe = 1. Fitting is Picasso's "gaussmle" (Poisson
MLE of a pixel-integrated Gaussian with free sx, sy). Read noise is ignored by default, as in Picasso's
GUI; --use-read-noise passes it as a uniform sCMOS calibration (Huang et al. 2013 variance term).

Output: a ThunderSTORM CSV, frame 1-based, x along columns, origin at the top-left CORNER of pixel (0, 0).
Picasso puts the centre of pixel i at coordinate i, so x_nm = (x_picasso + 0.5) * pixel_size.
``uncertainty [nm]`` is the mean of Picasso's lpx and lpy (CRLB of the fit, pixels) times pixel_size.

``localize3d`` is Picasso's astigmatic 3D pipeline: ``picasso.localize.localize`` with ``calibration_3d`` (gaussmle,
then ``picasso.zfit``'s z from the fitted sx, sy: the z in [-1000, 1000] nm minimizing Huang et al.'s
``(sqrt sx - sqrt wx(z))^2 + (sqrt sy - sqrt wy(z))^2`` with Picasso's 6th-order polynomials, times the
magnification factor, and ``lpz``). CAL3D.json holds Picasso's calibration keys: ``"X Coefficients"`` and
``"Y Coefficients"`` (7 numbers each, highest power first: sx(z) and sy(z) in camera pixels, z in nm; sx along x,
the columns) and ``"Magnification factor"``. ``--z-filter`` k > 0 then drops the z fits whose residual
``d_zcalib`` exceeds k times its rms (``zfit.filter_z_fits``: 2 in ``zfit.zfit``, 0 in ``localize``). The CSV
gains ``z [nm]`` and ``uncertainty z [nm]`` (lpz). One (ng, box, z filter) writes OUT as the CSV; several write
OUT/ng{ng}_box{box}_filter{k}.csv each (one localization per (ng, box), the filters applied to it), and print
one JSON line per file with its ms per frame (localization and z fit, after numba's warm-up).

``tune`` localizes the (separate, tuning) movie at each minimum net gradient of the grid, scores each
against the ground truth (per frame, optimal one-to-one matching within 250 nm, JAC, RMSE,
E = 100 - sqrt((100 - JAC)^2 + RMSE^2)) and prints one JSON line {"best_ng": ..., "table": [...]}.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
import warnings

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np


def load_movie(path: str) -> np.ndarray:
    """(T, H, W) movie as a numpy memmap (Picasso's fit accepts np.memmap or its own movie classes)."""
    import tempfile

    import tifffile

    try:
        mov = tifffile.memmap(path, mode="r")
    except (ValueError, OSError):  # compressed / non-contiguous TIFF: copy into a temporary memmap
        data = tifffile.imread(path)
        with tempfile.NamedTemporaryFile(suffix=".raw", delete=False) as fh:
            raw = fh.name
        mov = np.memmap(raw, dtype=data.dtype, mode="w+", shape=data.shape)
        mov[:] = data
    if mov.ndim == 2:
        mov = mov[None]
    if mov.ndim != 3:
        raise SystemExit(f"{path}: expected a (T, H, W) stack, got shape {mov.shape}")
    return mov


def localize(movie: np.ndarray, ng: float, box: int = 7, pixel_size: float = 100.0, offset: float = 100.0,
             gain: float = 1.0, read_noise: float = 1.5, use_read_noise: bool = False,
             max_sigma: float | None = None, calibration_3d: dict | None = None):
    """Picasso identify + gaussmle fit (+ its astigmatic z fit with ``calibration_3d``): Picasso's table."""
    from picasso import localize as pl

    camera_info = {"Baseline": float(offset), "Sensitivity": 1.0 / float(gain), "Gain": 1.0, "Qe": 1.0,
                   "Pixelsize": float(pixel_size)}
    calib = None
    if use_read_noise:
        shape = movie.shape[1:]
        calib = {"offset": np.full(shape, offset, np.float32), "gain": np.full(shape, gain, np.float32),
                 "variance": np.full(shape, (read_noise * gain) ** 2, np.float32)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        locs, _ = pl.localize(movie, camera_info=camera_info,
                              identification_parameters={"Min. Net Gradient": float(ng), "Box Size": int(box)},
                              fitting_method="gaussmle", camera_calibration=calib, threaded=False,
                              calibration_3d=calibration_3d, movie_info=[{"Frames": movie.shape[0],
                              "Height": movie.shape[1], "Width": movie.shape[2], "Pixelsize": float(pixel_size)}])
    if locs is not None and len(locs) and max_sigma is not None:
        locs = locs[(locs["sx"] <= max_sigma) & (locs["sy"] <= max_sigma)]
    return locs


def table(locs, pixel_size: float, three_d: bool = False) -> dict[str, np.ndarray]:
    """Picasso's table as ThunderSTORM columns: frame (1-based), x/y/uncertainty [nm], photons; in 3D also z
    and its uncertainty (lpz), both in nm as zfit writes them (times the magnification factor)."""
    if locs is None or len(locs) == 0:
        z = np.zeros(0)
        return {"frame": z.astype(int), "x": z, "y": z, "photons": z, "uncertainty": z} | (
            {"z": z, "uncertainty_z": z} if three_d else {})
    locs = locs.sort_values(["frame", "y", "x"], kind="stable")
    locs = locs[np.isfinite(locs["x"].to_numpy()) & np.isfinite(locs["y"].to_numpy())]
    p = float(pixel_size)
    out = {"frame": locs["frame"].to_numpy().astype(int) + 1,
           "x": (locs["x"].to_numpy(float) + 0.5) * p, "y": (locs["y"].to_numpy(float) + 0.5) * p,
           "photons": locs["photons"].to_numpy(float),
           "uncertainty": 0.5 * (locs["lpx"].to_numpy(float) + locs["lpy"].to_numpy(float)) * p}
    return out | ({"z": locs["z"].to_numpy(float), "uncertainty_z": locs["lpz"].to_numpy(float)} if three_d else {})


def write_csv(path: str, t: dict[str, np.ndarray]) -> None:
    """ThunderSTORM CSV of :func:`table`'s columns, written atomically."""
    names = ["x", "y", "photons", "uncertainty"] + (["z", "uncertainty_z"] if "z" in t else [])
    header = ["x [nm]", "y [nm]", "intensity [photon]", "uncertainty [nm]", "z [nm]", "uncertainty z [nm]"]
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh, quoting=csv.QUOTE_NONNUMERIC)
        w.writerow(["id", "frame", *header[:len(names)]])
        for i, row in enumerate(zip(t["frame"], *(t[k] for k in names))):
            fh.write(f"{i + 1},{int(row[0])}," + ",".join(f"{v:.4f}" for v in row[1:]) + "\n")
    os.replace(tmp, path)


def read_csv(path: str) -> dict[str, np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    header = [h.strip() for h in rows[0]]
    data = np.array([[float(v) for v in r] for r in rows[1:] if r], float).reshape(-1, len(header))
    return {h: data[:, i] for i, h in enumerate(header)}


def score(loc_f, loc_xy, gt_f, gt_xy, tol: float = 250.0) -> dict:
    """SMLM-challenge scores: per-frame optimal one-to-one matching within tol nm (max #pairs, then
    min summed distance), JAC %, RMSE nm, E, and the mean x/y error of matched pairs (bias check)."""
    from scipy.optimize import linear_sum_assignment

    err = []
    for t in np.intersect1d(loc_f, gt_f):
        li, gi = np.flatnonzero(loc_f == t), np.flatnonzero(gt_f == t)
        d = np.linalg.norm(loc_xy[li, None] - gt_xy[None, gi], axis=-1)
        cost = np.where(d <= tol, d, 1e12)
        r, c = linear_sum_assignment(cost)
        ok = cost[r, c] < 1e12
        err.append(loc_xy[li[r[ok]]] - gt_xy[gi[c[ok]]])
    err = np.concatenate(err) if err else np.zeros((0, 2))
    tp = len(err)
    fp, fn = len(loc_f) - tp, len(gt_f) - tp
    jac = 100.0 * tp / max(tp + fp + fn, 1)
    rmse = float(np.sqrt(np.mean(np.sum(err**2, 1)))) if tp else float("nan")
    e = 100.0 - np.sqrt((100.0 - jac) ** 2 + rmse**2) if tp else 0.0
    bias = err.mean(0) if tp else np.full(2, np.nan)
    return {"jaccard": round(jac, 3), "rmse": round(rmse, 3), "efficiency": round(float(e), 3), "tp": tp,
            "fp": fp, "fn": fn, "mean_dx": round(float(bias[0]), 3), "mean_dy": round(float(bias[1]), 3)}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("localize", "tune", "localize3d"):
        p = sub.add_parser(name)
        p.add_argument("movie")
        if name == "localize":
            p.add_argument("out")
            p.add_argument("--ng", type=float, required=True, help="Picasso's minimum net gradient")
            p.add_argument("--box", type=int, default=7, help="Picasso's box size (odd, pixels)")
        elif name == "tune":
            p.add_argument("gt")
            p.add_argument("--grid", type=float, nargs="+", required=True, help="min net gradients to try")
            p.add_argument("--tolerance", type=float, default=250.0)
            p.add_argument("--box", type=int, nargs="+", default=[7], help="box size(s) to try")
        else:
            p.add_argument("out", help="the CSV (one combination) or a folder for one CSV per combination")
            p.add_argument("--calibration", required=True, help="Picasso's astigmatic calibration (JSON)")
            p.add_argument("--ng", type=float, nargs="+", required=True, help="Picasso's minimum net gradient(s)")
            p.add_argument("--box", type=int, nargs="+", default=[7], help="box size(s) (odd, pixels)")
            p.add_argument("--z-filter", type=int, nargs="+", default=[0],
                           help="drop z fits whose residual exceeds k times its rms (0: keep all, as localize does)")
        p.add_argument("--max-sigma", type=float, default=None,
                       help="drop fits whose sx or sy exceeds this (pixels), as Picasso's Filter would; "
                            "default: keep all")
        p.add_argument("--pixel-size", type=float, default=100.0, help="nm")
        p.add_argument("--offset", "--baseline", dest="offset", type=float, default=100.0, help="ADU")
        p.add_argument("--gain", type=float, default=1.0, help="ADU per photo-electron")
        p.add_argument("--read-noise", type=float, default=1.5, help="photo-electrons rms")
        p.add_argument("--use-read-noise", action="store_true",
                       help="model the read noise (uniform sCMOS calibration); default: ignore it, as Picasso's GUI")
    return ap


def run_localize(movie: np.ndarray, a: argparse.Namespace, cam: dict) -> None:
    t0 = time.perf_counter()
    localize(movie[:2], a.ng, box=a.box, **cam)  # numba compiles picasso's kernels on first use
    t1 = time.perf_counter()
    t = table(localize(movie, a.ng, box=a.box, **cam), a.pixel_size)
    dt = time.perf_counter() - t1
    write_csv(a.out, t)
    print(f"wrote {a.out}: {len(t['frame'])} localizations in {len(movie)} frames, "
          f"{1000 * dt / len(movie):.2f} ms per frame after {t1 - t0:.1f} s of warm-up/JIT "
          f"(ng {a.ng:g}, box {a.box})", file=sys.stderr)


def run_tune(movie: np.ndarray, a: argparse.Namespace, cam: dict) -> None:
    gt = read_csv(a.gt)
    gt_xy = np.column_stack([gt["x [nm]"], gt["y [nm]"]])
    localize(movie[:2], a.grid[0], box=a.box[0], **cam)  # compile numba first so the timings are fair
    rows = []
    for box in a.box:
        for ng in a.grid:
            t0 = time.perf_counter()
            t = table(localize(movie, ng, box=box, **cam), a.pixel_size)
            ms = 1000 * (time.perf_counter() - t0) / len(movie)
            s = score(t["frame"], np.column_stack([t["x"], t["y"]]), gt["frame"].astype(int), gt_xy, a.tolerance)
            rows.append({"ng": ng, "box": box, **s, "n_loc": len(t["frame"]), "ms_per_frame": round(ms, 2)})
    best = max(rows, key=lambda r: r["efficiency"])
    print(json.dumps({"best_ng": best["ng"], "best_box": best["box"], "best": best, "table": rows}))


def run_localize3d(movie: np.ndarray, a: argparse.Namespace, cam: dict) -> None:
    from picasso import zfit

    with open(a.calibration) as fh:
        calibration = json.load(fh)
    combinations = [(ng, box, k) for box in a.box for ng in a.ng for k in a.z_filter]
    if len(combinations) > 1:
        os.makedirs(a.out, exist_ok=True)
    localize(movie[:2], a.ng[0], box=a.box[0], calibration_3d=calibration, **cam)   # numba's warm-up
    for box in a.box:
        for ng in a.ng:
            t0 = time.perf_counter()
            locs = localize(movie, ng, box=box, calibration_3d=dict(calibration), **cam)
            ms = 1000 * (time.perf_counter() - t0) / len(movie)
            for k in a.z_filter:
                kept = zfit.filter_z_fits(locs, k) if locs is not None and len(locs) else locs
                out = a.out if len(combinations) == 1 else os.path.join(a.out, f"ng{ng:g}_box{box}_filter{k}.csv")
                t = table(kept, a.pixel_size, three_d=True)
                write_csv(out, t)
                print(json.dumps({"csv": out, "ng": ng, "box": box, "z_filter": k, "n_loc": len(t["frame"]),
                                  "ms_per_frame": round(ms, 3)}), flush=True)


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    movie = load_movie(a.movie)
    cam = dict(max_sigma=a.max_sigma, pixel_size=a.pixel_size, offset=a.offset, gain=a.gain, read_noise=a.read_noise,
               use_read_noise=a.use_read_noise)
    {"localize": run_localize, "tune": run_tune, "localize3d": run_localize3d}[a.cmd](movie, a, cam)
    return 0


if __name__ == "__main__":
    sys.exit(main())
