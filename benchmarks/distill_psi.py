"""Maintainers only: distil psi's two-step sampler into one network pass per sample (issue 24; docs/models.md).

    python benchmarks/distill_psi.py --iterations 8000 --out runs/psi1/model.pt      # resumable
    python benchmarks/bundle_weights.py runs/psi1/model.pt --name default           # calibrate + register

Progressive distillation (Salimans & Ho 2022), one halving: from the preconditioned start
``y_K = sqrt(g_K) phi(x) + sqrt(1 - g_K) n`` the teacher takes two deterministic (DDIM, clipped ``y_0``) steps;
the student, initialised as the teacher, learns to land on the same KDE in one step. One step of the package's
ancestral sampler is that deterministic step, so the student runs unchanged with ``steps = 1`` (the model file
records it: ``info["sampler"]``). Each sample's spread then comes from its start ``n`` alone. Loss: mean squared
error of the implied ``y_0``, on training patches over ``TrainSettings``' ranges (uniform and structured,
0.1-10 emitters/um^2), bf16 where native, Adam with a warm-up and cosine decay, batch 16. phi, the schedule and
the start are the teacher's; the calibration is refitted by ``bundle_weights.py``.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_smlm_uq.inference.pipeline import bf16_autocast
from napari_smlm_uq.inference.preprocessing import psi_condition
from napari_smlm_uq.io.files import atomic_path
from napari_smlm_uq.models import registry
from napari_smlm_uq.models.unet import UNet
from napari_smlm_uq.training import TrainSettings
from napari_smlm_uq.training_data import simulate_patches

START = 0.5    # the teacher's preconditioned start (PredictSettings.start)
WARM_UP = 200  # iterations of linear learning-rate warm-up


def implied_y0(psi: UNet, y: torch.Tensor, cond: torch.Tensor, gamma: float) -> torch.Tensor:
    """The KDE ``y_0`` that psi's noise estimate at level ``gamma`` implies (float32, unclipped)."""
    eps = psi(y, cond, torch.full((1,), np.sqrt(gamma))).float()
    return (y - np.sqrt(1.0 - gamma) * eps) / np.sqrt(gamma)


def teacher_kde(psi: UNet, y: torch.Tensor, cond: torch.Tensor, gammas: np.ndarray) -> torch.Tensor:
    """Deterministic (DDIM) steps through ``gammas`` from ``y``, ``y_0`` clipped to [-1, 1] at each step."""
    for g_t, g_next in itertools.pairwise(gammas):
        y0 = implied_y0(psi, y, cond, g_t).clamp(-1.0, 1.0)
        eps = (y - np.sqrt(g_t) * y0) / np.sqrt(1.0 - g_t)
        y = np.sqrt(g_next) * y0 + np.sqrt(1.0 - g_next) * eps
    return y


def batch(models: registry.Models, rng: np.random.Generator, gen: torch.Generator, n: int, gammas: np.ndarray,
          bf16: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Starts ``y_K``, conditions, the teacher's KDEs and the true KDEs of ``n`` fresh patches."""
    x, z0 = simulate_patches(rng, n, TrainSettings())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        z_phi = models.phi(x).float()
        cond = psi_condition(x, z_phi).contiguous(memory_format=torch.channels_last)
        y = np.sqrt(gammas[0]) * z_phi + np.sqrt(1 - gammas[0]) * torch.randn(z_phi.shape, generator=gen)
        y = y.contiguous(memory_format=torch.channels_last)
        target = teacher_kde(models.psi, y, cond, gammas)
    return y, cond, target, z0


def distil(models: registry.Models, student: UNet, state: dict, iterations: int, lr: float, bf16: bool,
           save: Callable[[], None]) -> None:
    """Train ``student`` (in place) from ``state`` on; ``save()`` every 250 iterations (resumable)."""
    gammas = models.schedule.inference_gammas(2, START)
    rng, gen = state["rng"], state["gen"]
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    if state.get("opt"):
        opt.load_state_dict(state["opt"])
    student.train()
    t0 = time.perf_counter()
    for it in range(state["iteration"], iterations):
        y, cond, target, _ = batch(models, rng, gen, 16, gammas, bf16)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (it + 1) / WARM_UP) * 0.5 * (1 + np.cos(np.pi * it / iterations))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.mse_loss(implied_y0(student, y, cond, gammas[0]).clamp(-1.0, 1.0), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        state["log"].append(float(loss.detach()))
        state["iteration"] = it + 1
        if (it + 1) % 250 == 0 or it + 1 == iterations:
            state["opt"] = opt.state_dict()
            save()
            print({"iteration": it + 1, "loss": float(np.mean(state["log"][-250:])),
                   "seconds": round(time.perf_counter() - t0)}, flush=True)
    student.eval()


def validation(models: registry.Models, student: UNet, bf16: bool, n: int = 128) -> dict:
    """On fresh patches: MSE of the one-step student and of the teacher's own single step to the two-step
    teacher, and of each to the true KDE."""
    gammas = models.schedule.inference_gammas(2, START)
    y, cond, target, z0 = batch(models, np.random.default_rng(99), torch.Generator().manual_seed(99), n, gammas, bf16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        one = implied_y0(student, y, cond, gammas[0]).clamp(-1, 1)
        teacher_one = implied_y0(models.psi, y, cond, gammas[0]).clamp(-1, 1)
    return {"student_to_teacher": float(F.mse_loss(one, target)),
            "teacher_1step_to_teacher": float(F.mse_loss(teacher_one, target)),
            "teacher_to_truth": float(F.mse_loss(target, z0)), "student_to_truth": float(F.mse_loss(one, z0)),
            "teacher_1step_to_truth": float(F.mse_loss(teacher_one, z0))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init", default=registry.DEFAULT_MODEL, help="the teacher: bundled model name or model file")
    ap.add_argument("--student", type=Path, help="start the student from this model file's psi (a previous stage)")
    ap.add_argument("--iterations", type=int, default=8000)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    models = registry.load(a.init)
    models.to("cpu")
    models.psi.requires_grad_(False)
    previous = registry.load(a.student) if a.student else None
    student = copy.deepcopy(previous.psi if previous else models.psi).requires_grad_(True)
    bf16 = bf16_autocast("auto", torch.device("cpu"))
    checkpoint = a.out.with_suffix(".state.pt")
    state = {"iteration": 0, "log": [], "rng": np.random.default_rng(a.seed),
             "gen": torch.Generator().manual_seed(a.seed)}
    if checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False)   # our own file, with numpy RNG state
        student.load_state_dict(saved.pop("student"))
        state.update(saved, gen=torch.Generator().manual_seed(0))
        state["gen"].set_state(saved["gen"])
        print(f"resumed at iteration {state['iteration']}")
    a.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        with atomic_path(checkpoint) as tmp:
            torch.save(dict(state, student=student.state_dict(), gen=state["gen"].get_state()), tmp)

    distil(models, student, state, a.iterations, a.lr, bf16, save)
    check = validation(models, student, bf16)
    print(check)
    info = dict(models.info, sampler={"steps": 1, "start": START},
                distilled_psi={"teacher": a.init, "teacher_steps": 2, "iterations": a.iterations, "lr": a.lr,
                               "seed": a.seed,
                               "previous_stage": previous.info.get("distilled_psi") if previous else None,
                               "bf16": bf16, "validation": check,
                               "loss_per_250": [float(np.mean(state["log"][i:i + 250]))
                                                for i in range(0, len(state["log"]), 250)]})
    registry.save(replace(models, psi=student, info=info), a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
