"""``smlm-uq train``: train or fine-tune phi and psi on simulated data; options: the fields of
:class:`TrainSettings`."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ..training import TrainSettings
from ._options import add_options, settings

NAME, HELP = "train", "train or fine-tune phi and psi on simulated data"


def arguments(p: argparse.ArgumentParser) -> None:
    add_options(p, TrainSettings)
    p.add_argument("--tiny", action="store_true", help="a very small architecture (for quick tests)")
    p.add_argument("--log-every", type=int, default=50, help="print the loss every N iterations")
    p.add_argument("--z-calibration", default=None, metavar="CAL.json",
                   help="3D: astigmatic training data from this calibration (smlm-uq calibrate-z; its pixel size)")


def run(a: argparse.Namespace) -> int:
    from ..io.zcalibration import read_zcalibration
    from ..models import registry
    from ..training import calibration_stacks, train, validate_model

    config = registry.tiny_config() if a.tiny else registry.default_config()
    z_calibration = read_zcalibration(a.z_calibration) if a.z_calibration else None
    s = settings(TrainSettings, a, config=config, z_calibration=z_calibration).validate()
    if s.init:
        registry.resolve(s.init)
    shown = {k: v for k, v in dataclasses.asdict(s).items() if k not in ("config", "z_calibration")}
    print(f"training {s.target} -> {Path(s.out_dir) / 'model.pt'} ({json.dumps(shown)})")
    model_path = None
    for p in train(s):
        model_path = p.model_path
        if p.stage == "calibration":
            print(f"calibration refitted on {len(calibration_stacks(s))} simulated stacks: "
                  f"std(error/uncertainty) {p.val_loss:.2f} raw -> {p.loss:.2f} calibrated  {p.elapsed:.0f} s")
        elif p.iteration % a.log_every == 0 or p.val_loss is not None:
            val = f"  validation {p.val_loss:.5f}" if p.val_loss is not None else ""
            print(f"{p.stage} {p.iteration}/{p.iterations}  loss {p.loss:.5f}{val}  {p.elapsed:.0f} s", flush=True)
    print(f"model written to {model_path}")
    if model_path is not None:
        v = validate_model(model_path, s)
        print(f"validation ({v['frames']} simulated frames of {v['size']} px, {v['emitters']} emitters, phi alone): "
              f"JAC {v['jaccard']:.1f} %  RMSE {v['rmse']:.1f} nm  E {v['efficiency']:.1f}  "
              f"(CRLB {v['crlb']:.1f} nm per axis at {v['photons']:.0f} photons, background {v['background']:.0f})")
    return 0
