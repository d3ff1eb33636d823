"""``smlm-uq predict`` with no camera options against the right camera (issue 26), on stacks whose camera
the data can or cannot tell: JAC and recall with the bundled model, phi alone and the refinement
(``--samples 0``), and what the camera estimate said.

    python benchmarks/camera_fallback.py

Writes ``benchmarks/results/camera_fallback.json``. The stacks are written without camera metadata.
"""
from __future__ import annotations

import contextlib
import io
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_smlm_uq import cli
from napari_smlm_uq.analysis.metrics import score
from napari_smlm_uq.io.tables import emitters_table, read_localizations, table_xy
from napari_smlm_uq.physics.camera import Camera
from napari_smlm_uq.physics.simulate import SimulationSettings, simulate

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "camera_fallback.json"
EMCCD = Camera(200.0, 40.0, 1.5, "emccd")
RIGHT_EMCCD = ["--offset", "200", "--gain", "40", "--read-noise", "1.5", "--camera-kind", "emccd"]
FLICKER = {"photons": 3000.0, "background": (3.0, 15.0), "camera": EMCCD, "seed": 1}   # background per frame
CASES = {   # name: simulation, the right camera's options, noise-free (expected photons x 2 + 100 ADU)
    "ccd, gain 3, offset 200, 20 frames": (
        SimulationSettings(frames=20, size=64, camera=Camera(200.0, 3.0, 1.5), seed=11),
        ["--offset", "200", "--gain", "3", "--read-noise", "1.5"], False),
    "emccd, EM gain 40, background 3-15 per frame, 20 frames": (
        SimulationSettings(frames=20, size=64, **FLICKER), RIGHT_EMCCD, False),
    "the same, 100 frames": (SimulationSettings(frames=100, size=64, **FLICKER), RIGHT_EMCCD, False),
    "noise-free, x2 + 100 ADU, 20 frames": (
        SimulationSettings(frames=20, size=64, background=(10.0, 30.0), seed=2),
        ["--offset", "100", "--gain", "2", "--read-noise", "0"], True),
}


def run(stack: Path, out: Path, options: list[str]) -> tuple[dict, list[str]]:
    text = io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.redirect_stderr(io.StringIO()):
        args = ["predict", str(stack), "--out", str(out), "--samples", "0", "--device", "cpu", "--overwrite", *options]
        assert cli.main(args) == 0
    return json.loads((out / "summary.json").read_text()), text.getvalue().splitlines()


def main() -> None:
    torch.set_num_threads(1)
    results = {"machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread",
               "cases": {}}
    with tempfile.TemporaryDirectory() as folder:
        for name, (settings, right, noise_free) in CASES.items():
            sim = simulate(settings)
            adu = sim.omega * 2.0 + 100.0 if noise_free else sim.adu
            stack = Path(folder) / "stack.tif"
            tifffile.imwrite(stack, np.clip(np.rint(adu), 0, 65535).astype(np.uint16))
            truth = emitters_table(sim.emitters, settings.pixel_size)
            case = {}
            for label, options in (("no options", []), ("right camera", right)):
                summary, lines = run(stack, Path(folder) / label.replace(" ", "-"), options)
                locs = read_localizations(Path(folder) / label.replace(" ", "-") / "localizations.csv")
                s = score(locs["frame"], table_xy(locs), truth["frame"], table_xy(truth), 250.0)
                camera = summary["camera"]
                case[label] = {"jaccard": s.jaccard, "recall": s.recall, "rmse_nm": s.rmse, "efficiency": s.efficiency,
                               "camera": {k: camera[k] for k in ("offset", "gain", "read_noise", "sources")},
                               "said": [line for line in lines if "estimate" in line and "background" not in line],
                               "warnings": summary["warnings"]}
            case["jaccard_ratio"] = case["no options"]["jaccard"] / case["right camera"]["jaccard"]
            case["recall_ratio"] = case["no options"]["recall"] / case["right camera"]["recall"]
            results["cases"][name] = case
            print(f"{name}: JAC {case['no options']['jaccard']:.1f} / {case['right camera']['jaccard']:.1f} "
                  f"({case['jaccard_ratio']:.3f}), recall ratio {case['recall_ratio']:.3f}")
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
