"""Gaussian diffusion on KDEs: schedules, the training noise-level sampler, the ancestral sampler.

Conventions (docs/method.md, "Diffusion, and two corrections to the paper"):
``gamma_t = prod_{s<=t} (1 - beta_s)`` with ``gamma_0 = 1``; ``y_t = sqrt(gamma) y_0 + sqrt(1 - gamma) eps``;
the network predicts ``eps`` and is conditioned on the continuous ``sqrt(gamma)``, so any inference schedule
can be used. The paper's eq. 8 is replaced by the noise-prediction ancestral step
``y_{t-1} = (y_t - beta_t / sqrt(1 - gamma_t) eps) / sqrt(alpha_t) + sigma_t xi`` with the posterior
variance ``sigma_t^2 = beta_t (1 - gamma_{t-1}) / (1 - gamma_t)``. It is computed in the equivalent
posterior-mean form with the implied ``y_0`` clipped to the data range ``[-1, 1]`` (Ho 2020).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..io.files import InputError

NAMED = {
    # the paper's schedule (4.2): gamma_T = 0.60, so pure-noise starts are inconsistent with training
    "paper": {"steps": 100, "beta_start": 1e-4, "beta_end": 1e-2},
    # consistent default (Ho 2020): gamma_T = 4.0e-5
    "default": {"steps": 1000, "beta_start": 1e-4, "beta_end": 2e-2},
}


@dataclass(frozen=True)
class Schedule:
    """A linear-beta noise schedule; plain data, rebuilt from :meth:`config`."""

    steps: int
    beta_start: float
    beta_end: float

    @classmethod
    def named(cls, name: str) -> Schedule:
        if name not in NAMED:
            raise InputError(f"unknown schedule {name!r}; choose from {', '.join(NAMED)}")
        return cls(**NAMED[name])

    def config(self) -> dict:
        return {"steps": self.steps, "beta_start": self.beta_start, "beta_end": self.beta_end}

    @property
    def betas(self) -> np.ndarray:
        return np.linspace(self.beta_start, self.beta_end, self.steps)

    @property
    def gammas(self) -> np.ndarray:
        """``gamma_0 .. gamma_T`` (length ``T + 1``, ``gamma_0 = 1``), strictly decreasing."""
        return np.concatenate([[1.0], np.cumprod(1.0 - self.betas)])

    def sample_training_gamma(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Paper 3.2: ``t ~ U{1..T}``, then ``gamma ~ U(gamma_t, gamma_{t-1})``."""
        g = torch.as_tensor(self.gammas, dtype=torch.float64)
        t = torch.randint(1, self.steps + 1, (n,), generator=generator)
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return (g[t] + u * (g[t - 1] - g[t])).float()

    def inference_gammas(self, steps: int, start: float = 1.0) -> np.ndarray:
        """``steps + 1`` decreasing noise levels from ``gamma(start * T)`` down to 1 (``gamma_0``), evenly
        respaced in ``t`` on this schedule. ``start < 1`` is the preconditioned start (docs/method.md)."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1 (got {steps})")
        if not 0 < start <= 1:
            raise ValueError(f"start must be in (0, 1] (got {start})")
        t = np.linspace(start * self.steps, 0, steps + 1)
        return np.interp(t, np.arange(self.steps + 1), self.gammas)


EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ancestral_sampler(eps_fn: EpsFn, start_mean: torch.Tensor, gammas: np.ndarray,
                      generator: torch.Generator | Sequence[torch.Generator] | None = None,
                      should_stop: Callable[[], bool] = lambda: False) -> torch.Tensor | None:
    """Reverse diffusion from ``y_K ~ N(sqrt(gamma_K) start_mean, (1 - gamma_K) I)`` down to ``y_0``.

    ``start_mean`` is zeros for the pure-noise start or ``phi(x)`` for the preconditioned start;
    ``eps_fn(y_t, sqrt_gamma)`` predicts the noise. ``generator`` may be a list: equal consecutive parts of
    the batch then draw their noise from one generator each (per-frame streams). Returns ``y_0`` in
    ``[-1, 1]``, or None when ``should_stop()`` turns true between two steps."""
    gens = list(generator) if isinstance(generator, Sequence) else [generator]
    part = (len(start_mean) // len(gens), *start_mean.shape[1:])

    def noise() -> torch.Tensor:  # drawn on each generator's device (a CUDA generator draws on the GPU)
        return torch.cat([torch.randn(part, generator=g, dtype=start_mean.dtype,
                                      device=g.device if g is not None else start_mean.device).to(start_mean.device)
                          for g in gens])

    g = [float(v) for v in gammas]
    y = np.sqrt(g[0]) * start_mean + np.sqrt(1.0 - g[0]) * noise()
    for k in range(len(g) - 1):
        if should_stop():
            return None
        g_t, g_prev = g[k], g[k + 1]
        alpha = g_t / g_prev
        beta = 1.0 - alpha
        eps = eps_fn(y, torch.full((y.shape[0],), np.sqrt(g_t), device=y.device))
        y0 = ((y - np.sqrt(1.0 - g_t) * eps) / np.sqrt(g_t)).clamp(-1.0, 1.0)
        # the posterior mean of q(y_{t-1} | y_t, y0); without the clamp it equals the eps-form update
        y = (np.sqrt(g_prev) * beta * y0 + np.sqrt(alpha) * (1.0 - g_prev) * y) / (1.0 - g_t)
        if k < len(g) - 2:
            y = y + np.sqrt(beta * (1.0 - g_prev) / (1.0 - g_t)) * noise()
    return y.clamp(-1.0, 1.0)
