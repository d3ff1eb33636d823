"""Maintainers only: distil a model's phi into one with a narrower super-resolution part (issue 12: phi on
256x256 frames on the CPU; docs/models.md).

    python benchmarks/distill_phi.py --init default --up-channels 16 --iterations 9000 --out runs/distilled/model.pt
    python benchmarks/bundle_weights.py runs/distilled/model.pt --name default     # calibrate + register

The student keeps the teacher's context module (copied and frozen: 48 channels at the raw pixel size) and
learns its upsampling and prediction modules (``--up-channels`` at 2x and 4x the raw size) to reproduce the
teacher's output on training patches (``training_data.simulate_patches`` over the training ranges of
``TrainSettings``), by mean squared error, bf16 where native, Adam with a cosine decay, batch 32. psi, the
schedule and the calibration are the teacher's, so psi is conditioned on (nearly) the same phi output.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_smlm_uq.inference.pipeline import bf16_autocast
from napari_smlm_uq.models import registry
from napari_smlm_uq.models.deepstorm import DeepSTORM
from napari_smlm_uq.training import TrainSettings
from napari_smlm_uq.training_data import simulate_patches


def student_of(teacher: DeepSTORM, up_channels: int) -> DeepSTORM:
    """A phi with the teacher's context module (copied, frozen) and a fresh SR part of ``up_channels``."""
    config = teacher.config
    student = DeepSTORM(config["channels"], up_channels, tuple(config["dilations"]))
    student.context.load_state_dict(teacher.context.state_dict())
    student.context.requires_grad_(False)
    return student


def output(phi: DeepSTORM, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    """``phi(x)`` without gradients (float32)."""
    with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        return phi(x).float()


def distil(teacher: DeepSTORM, student: DeepSTORM, iterations: int, lr: float, seed: int, bf16: bool) -> list[dict]:
    """Train ``student`` (in place) to reproduce ``teacher``; returns the loss log every 500 steps."""
    rng, s = np.random.default_rng(seed), TrainSettings()
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    student.train()
    student.context.eval()  # frozen BatchNorm statistics
    log, t0 = [], time.perf_counter()
    for it in range(iterations):
        x = simulate_patches(rng, 32, s)[0].contiguous(memory_format=torch.channels_last)
        target = output(teacher, x, bf16)
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * it / iterations))
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.mse_loss(student(x).float(), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (it + 1) % 500 == 0:
            log.append({"iteration": it + 1, "loss": float(loss.detach()), "seconds": time.perf_counter() - t0})
            print(log[-1], flush=True)
    student.eval()
    return log


def validation_mse(teacher: DeepSTORM, student: DeepSTORM, bf16: bool, n: int = 256) -> dict:
    """MSE of the student to the teacher, and of the teacher to the true KDEs, on fresh patches."""
    x, z0 = simulate_patches(np.random.default_rng(99), n, TrainSettings())
    x = x.contiguous(memory_format=torch.channels_last)
    t, s = output(teacher, x, bf16), output(student, x, bf16)
    return {"student_to_teacher": float(F.mse_loss(s, t)), "teacher_to_truth": float(F.mse_loss(t, z0)),
            "student_to_truth": float(F.mse_loss(s, z0))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init", default=registry.DEFAULT_MODEL, help="the teacher: bundled model name or model file")
    ap.add_argument("--up-channels", type=int, default=16)
    ap.add_argument("--iterations", type=int, default=9000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    models = registry.load(a.init)
    bf16 = bf16_autocast("auto", torch.device("cpu"))
    student = student_of(models.phi, a.up_channels).to(memory_format=torch.channels_last)
    log = distil(models.phi, student, a.iterations, a.lr, a.seed, bf16)
    check = validation_mse(models.phi, student, bf16)
    print(check)
    info = dict(models.info, distilled={"teacher": a.init, "up_channels": a.up_channels, "iterations": a.iterations,
                                        "lr": a.lr, "seed": a.seed, "bf16": bf16, "log": log, "validation": check})
    a.out.parent.mkdir(parents=True, exist_ok=True)
    registry.save(replace(models, phi=student, info=info), a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
