"""Shared test setup: one torch thread (the machines running the tests are small and busy)."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    torch.set_num_threads(1)
    yield


class OutOfMemoryOnce(torch.nn.Module):
    """psi that raises a CUDA out-of-memory error the first time it sees more than ``limit`` tiles."""

    def __init__(self, psi: torch.nn.Module, limit: int):
        super().__init__()
        self.psi, self.limit, self.raised = psi, limit, 0

    def forward(self, y, cond, sqrt_gamma):
        if len(y) > self.limit and not self.raised:
            self.raised += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.psi(y, cond, sqrt_gamma)


def tiny_model_file(path: Path) -> Path:
    """A tiny random model (with a non-trivial psi) saved at ``path``."""
    from napari_smlm_uq.models import registry

    torch.manual_seed(0)
    models = registry.build(registry.tiny_config(), name="tiny")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in models.psi.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    registry.save(models, path)
    return path


def simulated_inputs(folder: Path, frames: int, size: int) -> dict[str, Path]:
    """A simulated stack (through the CLI; 120 nm pixels, 3 emitters/um^2) and a tiny model file."""
    from napari_smlm_uq import cli

    stack = folder / "sim.tif"
    assert cli.main(["simulate", str(stack), "--frames", str(frames), "--size", str(size), "--density", "3",
                     "--pixel-size", "120", "--seed", "4"]) == 0
    return {"folder": folder, "stack": stack, "model": tiny_model_file(folder / "tiny.pt")}
