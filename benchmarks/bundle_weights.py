"""Maintainers only: calibrate a trained model and bundle it as a named model of the package.

    python benchmarks/bundle_weights.py runs/bundled/model.pt --name default

Fits the uncertainty calibration (a scale per context) on simulated validation stacks (seeds 5000+, never used
for training or the benchmarks), writes ``src/napari_smlm_uq/models/weights/NAME.pt`` and its registry entry
(file, sha256, config). Users never reach this code: training refuses the weights folder.
"""
from __future__ import annotations

import argparse
import json

from napari_smlm_uq.analysis.evaluation import calibrate
from napari_smlm_uq.inference.pipeline import PredictSettings
from napari_smlm_uq.models import registry
from napari_smlm_uq.physics.simulate import SimulationSettings


def validation_stacks(frames: int) -> list[SimulationSettings]:
    """Validation stacks spanning the training range's SNRs and densities."""
    grid = [(1000, 20, 1.0), (2000, 20, 1.0), (5000, 50, 1.2), (800, 10, 1.4), (3000, 100, 0.9)]
    return [SimulationSettings(frames=frames, size=32, density=d, photons=p, background=b, psf_sigma=s, seed=5000 + i)
            for i, ((p, b, s), d) in enumerate((g, d) for g in grid for d in (0.5, 3.0))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--name", default=registry.DEFAULT_MODEL)
    ap.add_argument("--frames", type=int, default=20)
    a = ap.parse_args()
    models = registry.load(a.model)
    report = calibrate(models, PredictSettings(), validation_stacks(a.frames))
    models.calibration = report["calibration"]
    models.info["calibration"] = report
    models.name = a.name
    path = registry.WEIGHTS_DIR / f"{a.name}.pt"
    digest = registry.save(models, path)
    entries = json.loads(registry.REGISTRY.read_text()) if registry.REGISTRY.exists() else {}
    entries[a.name] = {"file": path.name, "sha256": digest}  # the config lives in the file
    registry.REGISTRY.write_text(json.dumps(entries, indent=1) + "\n")
    print(json.dumps(report, indent=1), f"-> {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
