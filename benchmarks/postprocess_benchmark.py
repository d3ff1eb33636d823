"""Post-processing benchmark (docs/postprocess.md): drift, merging, FRC and Picasso export on simulated
localizations (tests/localization_simulation.py: rings of 8 molecules, blinks of 3 frames on average, a smooth
200 nm drift, each localization displaced by its own uncertainty, 130 nm / sqrt(photons)).

    PYTHONPATH=src python benchmarks/postprocess_benchmark.py [--frames 10000] [--million]

Writes ``benchmarks/results/postprocess.json`` and ``docs/img/postprocess_*.png``. With ``.venv-picasso``
(``python3 -m venv .venv-picasso && .venv-picasso/bin/pip install picassosr==0.11.3``) the exported HDF5
is opened and rendered by Picasso (benchmarks/picasso_open.py).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_smlm_uq.analysis.render import render
from napari_smlm_uq.io.picasso import write_locs
from napari_smlm_uq.io.tables import read_table
from napari_smlm_uq.postprocess import drift, frc, merge

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))   # the simulation the tests use
import localization_simulation as simulation  # noqa: E402

RESULTS, IMG = ROOT / "benchmarks" / "results", ROOT / "docs" / "img"
PICASSO = ROOT / ".venv-picasso" / "bin" / "python"


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def drift_rms(d: drift.Drift, truth: np.ndarray) -> float:
    err = np.stack([d.x, d.y], axis=1) - truth
    err -= err.mean(axis=0)  # the drift is defined up to a constant
    return float(np.sqrt(np.mean(np.sum(err ** 2, axis=1))))


def drift_case(sim: simulation.SimulatedLocalizations, frames: int) -> tuple[dict, drift.Drift, drift.Drift]:
    coarse, t_rcc = timed(drift.rcc, sim.frame, sim.x, sim.y, frames, 1000)
    fine, t_ref = timed(drift.refine, sim.frame, sim.x, sim.y, sim.sigma, coarse, 200)
    short = drift.rcc(sim.frame, sim.x, sim.y, frames, 200)  # RCC alone on the refinement's short segments
    return {"localizations": len(sim), "rcc_rms_nm": drift_rms(coarse, sim.drift),
            "rcc_200_frames_rms_nm": drift_rms(short, sim.drift),
            "refined_rms_nm": drift_rms(fine, sim.drift),
            "median_se_nm": float(np.median(np.hypot(fine.x_se, fine.y_se))),
            "seconds_rcc": t_rcc, "seconds_refine": t_ref}, coarse, fine


def merge_case(sim: simulation.SimulatedLocalizations) -> dict:
    ev, seconds = timed(merge.merge, sim.frame, sim.x, sim.y, sim.sigma, sim.photons)
    z = np.concatenate([(ev.x - ev.mean_of(sim.x_true)) / ev.sigma, (ev.y - ev.mean_of(sim.y_true)) / ev.sigma])
    mixed = np.bincount(ev.index, minlength=len(ev))  # events holding localizations of more than one blink
    first_event = np.full(len(ev), -1)
    first_event[ev.index] = sim.event
    impure = np.bincount(ev.index, weights=sim.event != first_event[ev.index], minlength=len(ev)) > 0
    return {"localizations": len(sim), "events": len(ev), "true_blinks": int(len(np.unique(sim.event))),
            "impure_events_fraction": float(impure.mean()), "z_std": float(np.std(z)),
            "mean_frames_per_event": float(mixed.mean()), "seconds": seconds}


def frc_case(sim: simulation.SimulatedLocalizations) -> tuple[dict, dict]:
    out, curves = {}, {}
    keep = sim.sigma <= 1.5 * np.median(sim.sigma)
    for split in ("blocks", "random"):
        half = frc.halves(sim.frame, split, 100)
        for name, sel in (("all", np.ones(len(sim), bool)), ("filtered", keep)):
            m, seconds = timed(frc.frc, sim.x[sel], sim.y[sel], half[sel])
            e = frc.expected(sim.x_true[sel], sim.y_true[sel], sim.sigma[sel], half[sel])
            out[f"{split}_{name}"] = {"localizations": int(sel.sum()), "resolution_nm": m.resolution_nm,
                                      "expected_nm": e.resolution_nm,
                                      "relative_difference": m.resolution_nm / e.resolution_nm - 1, "seconds": seconds}
            curves[f"{split}_{name}"] = (m, e)
    out["filter_max_uncertainty_nm"] = float(1.5 * np.median(sim.sigma))
    return out, curves


def save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def corrected_events(sim, fine: drift.Drift) -> merge.Events:
    x, y, sigma = drift.correct(sim.frame, sim.x, sim.y, sim.sigma, fine)
    return merge.merge(sim.frame, x, y, sigma, sim.photons)


def plot_drift(sim, coarse, fine, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    f = np.arange(len(fine))
    for k, (ax, name) in enumerate(zip(axes, ("x", "y"))):
        truth = sim.drift[:, k] - np.mean(sim.drift[:, k] - (fine.x if k == 0 else fine.y))
        est, se = (fine.x, fine.x_se) if k == 0 else (fine.y, fine.y_se)
        rcc_curve = (coarse.x if k == 0 else coarse.y)
        ax.plot(f, truth, "k-", lw=3, alpha=0.3, label="simulated")
        ax.plot(f, rcc_curve - np.mean(rcc_curve - est), "C1--", lw=1, label="RCC alone")
        ax.fill_between(f, est - 2 * se, est + 2 * se, color="C0", alpha=0.4)
        ax.plot(f, est, "C0-", lw=1, label="RCC + intersection (+/- 2 s.e.)")
        ax.set_xlabel("frame")
        ax.set_ylabel(f"drift {name} [nm]")
    axes[0].legend(fontsize=8)
    save(fig, path)


def plot_frc(curves: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key, colour in (("blocks_all", "C0"), ("blocks_filtered", "C2")):
        m, e = curves[key]
        ax.plot(m.frequency, m.curve, color=colour, label=f"{key.split('_')[1]}: {m.resolution_nm:.1f} nm")
        ax.plot(e.frequency, e.curve, color=colour, ls=":", label=f"expected: {e.resolution_nm:.1f} nm")
    ax.axhline(frc.THRESHOLD, color="k", lw=0.8, ls="--")
    ax.set_xlim(0, 0.1)
    ax.set_xlabel("spatial frequency [1/nm]")
    ax.set_ylabel("FRC")
    ax.legend(fontsize=8)
    save(fig, path)


def plot_renders(sim, fine, path: Path) -> None:
    import matplotlib.pyplot as plt

    ev = corrected_events(sim, fine)
    x0, y0 = np.median(sim.x_true) - 1000, np.median(sim.y_true) - 1000
    panels = (("before: drifted localizations", sim.x, sim.y, sim.sigma),
              ("after: drift-corrected, blinks merged", ev.x, ev.y, ev.sigma))
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
    for ax, (title, px, py, ps) in zip(axes, panels):
        image = render(px - x0, py - y0, ps, (2000.0, 2000.0), 5.0)
        ax.imshow(image, cmap="hot", vmax=np.quantile(image[image > 0], 0.99), extent=(0, 2000, 2000, 0))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("nm")
    save(fig, path)


def picasso_case(sim, fine) -> dict:
    """Export merged events to Picasso's format, re-import (every column kept?), open with Picasso."""
    ev = corrected_events(sim, fine)
    table = {"frame": ev.first + 1.0, "x [nm]": ev.x, "y [nm]": ev.y, "uncertainty [nm]": ev.sigma,
             "frames": ev.frames.astype(float), "intensity [photon]": ev.photons}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "locs.hdf5"
        write_locs(path, table, 100.0)
        back = read_table(path)
        result = {"columns_kept": all(np.allclose(back[k], v, rtol=1e-6, atol=1e-3) for k, v in table.items())}
        if not PICASSO.is_file():
            return {**result, "picasso": f"not run: {PICASSO} missing"}
        png, js = IMG / "postprocess_picasso.png", Path(tmp) / "picasso.json"
        run = subprocess.run([str(PICASSO), str(ROOT / "benchmarks" / "picasso_open.py"), str(path), str(png), str(js)],
                             capture_output=True, text=True)
        if run.returncode:
            return {**result, "picasso": f"failed: {run.stderr.strip().splitlines()[-1]}"}
        return {**result, **json.loads(js.read_text()), "exported": len(table["frame"])}


def million(frames: int) -> dict:
    """Timing of each step on about 10^6 localizations."""
    sim = simulation.simulate_localizations(frames=frames, field_um=10.0, density=1.0 * 10000 / frames, molecules=6000,
                                            seed=21)
    coarse, t_rcc = timed(drift.rcc, sim.frame, sim.x, sim.y, frames, 1000)
    _, t_ref = timed(drift.refine, sim.frame, sim.x, sim.y, sim.sigma, coarse, 200)
    _, t_merge = timed(merge.merge, sim.frame, sim.x, sim.y, sim.sigma, sim.photons)
    _, t_frc = timed(frc.frc, sim.x, sim.y, frc.halves(sim.frame))
    return {"localizations": len(sim), "seconds_drift": t_rcc + t_ref, "seconds_rcc": t_rcc, "seconds_refine": t_ref,
            "seconds_merge": t_merge, "seconds_frc": t_frc}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=10000)
    ap.add_argument("--million", action="store_true", help="also time each step on 10^6 localizations")
    a = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    IMG.mkdir(parents=True, exist_ok=True)
    out = {"machine": f"2-core CPU of the dev machine ({platform.processor() or platform.machine()})",
           "frames": a.frames, "field_um": 10.0, "drift_path_nm": 200.0}
    dense = simulation.simulate_localizations(frames=a.frames, density=0.5, molecules=3000, seed=1)
    out["drift_dense_0.5"], coarse, fine = drift_case(dense, a.frames)
    plot_drift(dense, coarse, fine, IMG / "postprocess_drift.png")
    plot_renders(dense, fine, IMG / "postprocess_render.png")
    sparse = simulation.simulate_localizations(frames=a.frames, density=0.05, molecules=3000, seed=2)
    out["drift_sparse_0.05"] = drift_case(sparse, a.frames)[0]
    still = simulation.simulate_localizations(frames=a.frames, density=0.5, molecules=3000, drift_nm=0.0, seed=3)
    out["merge"] = merge_case(still)
    frc_sim = simulation.simulate_localizations(frames=5000, field_um=10.0, density=0.5, molecules=3000, photons=250,
                                                photon_spread=1.2, drift_nm=0.0, seed=4)
    out["frc"], curves = frc_case(frc_sim)
    plot_frc(curves, IMG / "postprocess_frc.png")
    out["picasso_export"] = picasso_case(dense, fine)
    if a.million:
        out["million"] = million(a.frames)
    (RESULTS / "postprocess.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
