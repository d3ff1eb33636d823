"""The 3D accuracy table of docs/3d.md (section 5, issue 23): the 3D pipeline (phi, psi's samples when
``--samples`` > 0, the astigmatic refinement) and Picasso's astigmatic pipeline on the same simulated movies,
scored alike.

    PYTHONPATH=src python benchmarks/accuracy_3d.py [--model default] [--samples 0] [--frames 50] \
        [--densities 0.5,2] [--picasso] [--note "loaded"] [--out benchmarks/results/accuracy_3d_<tag>.json]

Movies (``smlm-uq simulate --z-calibration``'s simulator): the calibration of the tests (sigma 1 px in x's
focus, 1.05 px in y's, foci 500 nm apart; valid over +-550 nm), z uniform in +-400 nm, 2,000 photons,
background 20 photons/px, read noise 1.5 e-, offset 100 ADU, gain 1, 100 nm pixels, 64x64 px, seed 11 for
every density (Picasso's tuning movies: seed 7411).

Scores (``analysis.metrics.score_3d``, as ``smlm-uq evaluate``: lateral matching within 250 nm): JAC,
recall, precision, lateral and z RMSE, E lateral / axial (weight 0.5 nm^-1) / 3D; on isolated emitters (no
other emitter within 6 px, 3 px from the edges, detected once: no other localization within 3 px, with a z
uncertainty: the 3D fit kept) z and lateral RMSE over the root-mean-square of each emitter's Cramer-Rao
bound (``crlb_3d``, a centred box) and std(z error / z uncertainty) (and laterally with psi's samples);
the z RMSE and std(z error / z uncertainty) over every matched localization with one; the recall at
|z| > 350 nm over that at |z| < 100 nm; wall and CPU seconds per frame (after a warm-up movie).

``--picasso`` (needs ``.venv-bench``, see picasso_baseline.py): our calibration becomes Picasso's (6th-order
polynomials of sx(z), sy(z) fitted to our widths over the valid range, magnification factor 1), its minimum
net gradient, box (5, 7, 9) and z filter (0, 2) are tuned for E 3D on the tuning movie of each density,
then ``picasso_baseline.py localize3d`` runs on the test movie; its CSV (``z [nm]``, ``lpz`` as
``uncertainty z [nm]``) is scored as ours; its seconds per frame are localization and z fit after numba's
warm-up. Writes the JSON (machine, date, commit) after every density.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from density import PICASSO, write_movie
from precision import nearest_neighbour

from napari_smlm_uq.analysis.metrics import match, score_3d
from napari_smlm_uq.inference.pipeline import PredictSettings, predict
from napari_smlm_uq.io.tables import read_localizations, table_localizations
from napari_smlm_uq.localizations import Localizations, px_to_nm
from napari_smlm_uq.models import registry
from napari_smlm_uq.physics.astigmatism import DefocusCurve, ZCalibration, crlb_3d
from napari_smlm_uq.physics.camera import Camera
from napari_smlm_uq.physics.simulate import Emitters, SimulatedStack, SimulationSettings, simulate

ROOT = Path(__file__).resolve().parents[1]
# the calibration of the tests (tests/test_refine3d.py, test_astigmatism.py)
CAL = ZCalibration(
    DefocusCurve(1.0, -250.0, 400.0, 0.1, 0.05), DefocusCurve(1.05, 250.0, 380.0, -0.1, 0.05), (-550.0, 550.0), 100.0
)
MOVIE = dict(size=64, photons=2000.0, background=20.0, pixel_size=100.0, z_calibration=CAL, z_range=(-400.0, 400.0),
             camera=Camera(offset=100.0, gain=1.0, read_noise=1.5))
TEST_SEED, TUNE_SEED = 11, 7411
ISOLATED_PX, EDGE_PX, ALONE_PX = 6.0, 3.0, 3.0   # no other emitter within, from the edges, no other localization within
FAR_NM, NEAR_NM = 350.0, 100.0                     # recall at |z| above / below
NG_GRID, BOXES, Z_FILTERS = ("250", "500", "1000", "1500", "2000", "3000", "5000"), ("5", "7", "9"), ("0", "2")


def movie(density: float, frames: int, seed: int) -> SimulationSettings:
    return SimulationSettings(frames=frames, density=density, seed=seed, **MOVIE).validate()


def ours(models, stack: SimulatedStack, samples: int) -> tuple[Localizations, dict]:
    """Every frame's 3D localizations; wall and CPU seconds per frame."""
    sim = stack.settings
    settings = PredictSettings(samples=samples, z_calibration=CAL, camera=sim.camera, pixel_size=sim.pixel_size)
    wall, cpu = time.perf_counter(), time.process_time()
    locs = Localizations.concat([r.localizations for r in predict(stack.adu, models, settings)])
    return locs, {"seconds_per_frame": (time.perf_counter() - wall) / sim.frames,
                  "cpu_seconds_per_frame": (time.process_time() - cpu) / sim.frames}


def rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(a)))) if len(a) else float("nan")


def std(a: np.ndarray) -> float:
    return float(np.std(a)) if len(a) else float("nan")


def isolated(locs: Localizations, truth: Emitters, li: np.ndarray, gi: np.ndarray, sim: SimulationSettings) -> dict:
    """z and lateral RMSE over the Cramer-Rao bounds, and the errors over the uncertainties, of the matched
    pairs ``li``, ``gi`` whose emitter is isolated and whose 3D fit was kept."""
    h, w = sim.shape
    inner = np.minimum.reduce([truth.row, truth.col, h - 1 - truth.row, w - 1 - truth.col]) >= EDGE_PX
    keep = ((nearest_neighbour(truth)[gi] > ISOLATED_PX) & inner[gi] & (nearest_neighbour(locs)[li] > ALONE_PX)
            & np.isfinite(locs.uncertainty_z[li]))
    li, gi = li[keep], gi[keep]
    rn = float(sim.camera.read_noise)
    bounds = np.array([crlb_3d(n, float(sim.background), z, CAL, read_noise=rn)
                       for n, z in zip(truth.photons[gi], truth.z[gi])]).reshape(-1, 5)
    dz = locs.z[li] - truth.z[gi]
    lateral = np.concatenate([locs.col[li] - truth.col[gi], locs.row[li] - truth.row[gi]])
    unc = np.tile(locs.uncertainty[li], 2)
    return {"n": int(len(li)), "z_rmse_nm": rms(dz), "z_crlb_nm": rms(bounds[:, 2]),
            "z_rmse_over_crlb": rms(dz) / rms(bounds[:, 2]),
            "lateral_rmse_nm": rms(lateral) * sim.pixel_size,
            "lateral_rmse_over_crlb": rms(lateral) / rms(np.concatenate([bounds[:, 0], bounds[:, 1]])),
            "z_error_over_uncertainty_std": std(dz / locs.uncertainty_z[li]),
            "lateral_error_over_uncertainty_std": std((lateral / unc)[np.isfinite(unc)])}


def scores(locs: Localizations, stack: SimulatedStack) -> dict:
    """The table's columns for ``locs`` against the movie's truth."""
    sim, truth = stack.settings, stack.emitters
    nm = lambda p: np.column_stack([px_to_nm(p.col, sim.pixel_size), px_to_nm(p.row, sim.pixel_size)])
    lateral, axial = score_3d(locs.frame, nm(locs), locs.z, truth.frame, nm(truth), truth.z)
    m = match(locs.frame, nm(locs), truth.frame, nm(truth))
    li, gi = m.loc_idx, m.gt_idx
    found = np.zeros(len(truth), bool)
    found[gi] = True
    recall = lambda sel: float(100.0 * found[sel].mean()) if sel.any() else float("nan")
    far, near = recall(np.abs(truth.z) > FAR_NM), recall(np.abs(truth.z) < NEAR_NM)
    kept = np.isfinite(locs.uncertainty_z[li])
    dz = (locs.z[li] - truth.z[gi])[kept]
    return {**lateral.as_dict(), **axial.as_dict(), "emitters": int(len(truth)), "localizations": int(len(locs)),
            "kept_fits_pct": float(100.0 * np.isfinite(locs.uncertainty_z).mean()) if len(locs) else float("nan"),
            "rmse_z_kept": rms(dz), "z_error_over_uncertainty_std_all": std(dz / locs.uncertainty_z[li][kept]),
            "isolated": isolated(locs, truth, li, gi, sim),
            f"recall_abs_z_above_{FAR_NM:g}": far, f"recall_abs_z_below_{NEAR_NM:g}": near,
            "recall_ratio": far / near if near else float("nan")}


def picasso_calibration(cal: ZCalibration) -> dict:
    """Picasso's astigmatic calibration (picasso.zfit): 6th-order polynomials (highest power first) of the
    widths in camera pixels over z in nm, fitted to ours over its valid range; magnification factor 1 (the
    simulated z is the true z)."""
    z = np.linspace(*cal.z_range, 1101)
    sx, sy = cal.sigmas(z)
    cx, cy = np.polyfit(z, sx, 6), np.polyfit(z, sy, 6)
    misfit = max(np.abs(np.polyval(cx, z) - sx).max(), np.abs(np.polyval(cy, z) - sy).max())
    return {"X Coefficients": cx.tolist(), "Y Coefficients": cy.tolist(), "Magnification factor": 1.0,
            "max_misfit_px": float(misfit)}


def localize3d(tif: Path, out: Path, calibration: Path, ng, box, z_filter) -> list[dict]:
    """``picasso_baseline.py localize3d`` in Picasso's venv; its JSON line per CSV."""
    cam = MOVIE["camera"]
    camera = ["--pixel-size", f"{MOVIE['pixel_size']:g}", "--offset", f"{cam.offset:g}", "--gain", f"{cam.gain:g}",
              "--read-noise", f"{cam.read_noise:g}"]
    env = dict(os.environ, NUMBA_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    stdout = subprocess.run([str(PICASSO), str(ROOT / "benchmarks" / "picasso_baseline.py"), "localize3d", str(tif),
                             str(out), "--calibration", str(calibration), "--ng", *ng, "--box", *box, "--z-filter",
                             *z_filter, *camera], capture_output=True, text=True, check=True, env=env).stdout
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def picasso_locs(csv: str) -> Localizations:
    return table_localizations(read_localizations(csv), MOVIE["pixel_size"])


def picasso(stack: SimulatedStack, tune: SimulatedStack, folder: Path) -> dict:
    """Picasso's 3D pipeline tuned for E 3D on ``tune``, then run on ``stack`` and scored as ours."""
    calibration, converted = folder / "picasso_3d.json", picasso_calibration(CAL)
    calibration.write_text(json.dumps(converted))
    tune_tif, test_tif = write_movie(tune, folder, "tune"), write_movie(stack, folder, "test")
    grid = []
    for run in localize3d(tune_tif, folder / "tuning", calibration, NG_GRID, BOXES, Z_FILTERS):
        s = scores(picasso_locs(run["csv"]), tune)
        grid.append({k: run[k] for k in ("ng", "box", "z_filter")} | {k: s[k] for k in ("jaccard", "rmse", "rmse_z",
                                                                                          "efficiency_3d")})
    best = max(grid, key=lambda r: r["efficiency_3d"])
    run = localize3d(test_tif, folder / "test.csv", calibration, [f"{best['ng']:g}"], [str(best["box"])],
                     [str(best["z_filter"])])[0]
    return {**scores(picasso_locs(run["csv"]), stack), "seconds_per_frame": run["ms_per_frame"] / 1000.0,
            "tuned": {k: best[k] for k in ("ng", "box", "z_filter")}, "tuning": grid, "calibration": converted}


def summary(r: dict) -> list:
    iso = r["isolated"]
    return [round(r[k], 1) for k in ("jaccard", "rmse", "rmse_z", "efficiency_3d")] + [
        iso["n"], round(iso["z_rmse_over_crlb"], 2), round(iso["z_error_over_uncertainty_std"], 2),
        round(r["recall_ratio"], 2), round(r["seconds_per_frame"], 3)]


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.exists() else []
    return f"{os.cpu_count()}-core {names[0] if names else platform.processor() or platform.machine()}"


def commit() -> str:
    git = lambda *args: subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()
    return git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain", "--", "src") else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=registry.DEFAULT_MODEL, help="bundled model name or model file")
    ap.add_argument("--samples", type=int, default=0, help="psi's samples per frame (0: phi alone)")
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--densities", default="0.5,2", help="emitters per um^2, comma-separated")
    ap.add_argument("--picasso", action="store_true", help="Picasso's 3D pipeline too (needs .venv-bench)")
    ap.add_argument("--note", default="", help="said of the machine (e.g. 'loaded by other jobs')")
    ap.add_argument("--out", type=Path, required=True, help="results JSON (benchmarks/results/accuracy_3d_<tag>.json)")
    a = ap.parse_args()
    if a.picasso and not PICASSO.exists():
        ap.error(f"--picasso needs {PICASSO} (see benchmarks/picasso_baseline.py)")
    models = registry.load(a.model)
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit(),
           "machine": {"cpu": cpu_name(),
                       "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "load_average": os.getloadavg()[0], "note": a.note},
           "model": a.model, "model_trained_on": models.info.get("trained_on"), "samples": a.samples,
           "frames": a.frames,
           "movie": {k: v for k, v in MOVIE.items() if k not in ("z_calibration", "camera")}
           | {"camera": vars(MOVIE["camera"]), "z_calibration": CAL.to_dict(), "seed": TEST_SEED},
           "densities": {}}
    ours(models, simulate(movie(1.0, 2, TUNE_SEED - 1)), a.samples)   # start-up is not a frame's cost
    a.out.parent.mkdir(parents=True, exist_ok=True)
    for density in (float(d) for d in a.densities.split(",")):
        stack = simulate(movie(density, a.frames, TEST_SEED))
        locs, timing = ours(models, stack, a.samples)
        row = {"ours": scores(locs, stack) | timing}
        if a.picasso:
            with tempfile.TemporaryDirectory() as folder:
                row["picasso"] = picasso(stack, simulate(movie(density, a.frames, TUNE_SEED)), Path(folder))
        res["densities"][f"{density:g}"] = row
        print(f"{density:g}/um^2 (JAC, RMSE, RMSE z, E 3D, isolated n, z/CRLB, z std, recall ratio, s/frame):",
              json.dumps({k: summary(v) for k, v in row.items()}), flush=True)
        a.out.write_text(json.dumps(res, indent=1, default=float) + "\n")
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
