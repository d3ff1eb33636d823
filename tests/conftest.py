"""Shared test setup: one torch thread (the machines running the tests are small and busy) and the one
tiny model every test uses (random weights, psi nudged off its zero-initialised output layer)."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import pytest
import torch

from napari_smlm_uq.models import registry


def pytest_collection_modifyitems(items):
    """Tests that open a napari viewer (or any Qt widget) carry the ``gui`` marker: ``-m "not gui"`` runs the
    Qt-free core alone."""
    for item in items:
        if {"make_napari_viewer", "qtbot", "qapp"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.gui)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    torch.set_num_threads(1)
    yield


def build_tiny() -> registry.Models:
    """The tiny architecture with fixed random weights; psi's output layer starts at zero, so every psi
    weight is nudged to give the sampler something to say, and its noise estimate's bias raised so that its
    KDEs are mostly zero with a few peaks, as a trained model's, not a peak at every other SR pixel (134
    localizations against 2,740 in 6 frames of 16x16 px with 97 emitters: the refinement of thousands of noise
    peaks was most of the suite's time)."""
    torch.manual_seed(0)
    models = registry.build(registry.tiny_config(), name="tiny")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in models.psi.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        [conv for conv in models.psi.modules() if isinstance(conv, torch.nn.Conv2d)][-1].bias.add_(2.5)
    return models.to("cpu")


@pytest.fixture(scope="module")
def tiny_models() -> registry.Models:
    return build_tiny()


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory):
    """The tiny model saved as a model file (shared by the whole session: never write to it)."""
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    registry.save(build_tiny(), path)
    return path


class OutOfMemoryOnce(torch.nn.Module):
    """psi that raises a CUDA out-of-memory error the first time it sees more than ``limit`` tiles."""

    def __init__(self, psi: torch.nn.Module, limit: int):
        super().__init__()
        self.psi, self.limit, self.raised = psi, limit, 0

    def inference_layout(self, tiles_per_image: int = 1, window: int = 0):
        return self.psi.inference_layout(tiles_per_image, window)

    def forward(self, y, cond, sqrt_gamma):
        if len(y) > self.limit and not self.raised:
            self.raised += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.psi(y, cond, sqrt_gamma)


def simulated_inputs(folder: Path, frames: int, size: int) -> dict[str, Path]:
    """A simulated stack (through the CLI; 120 nm pixels, 3 emitters/um^2) and a tiny model file."""
    from napari_smlm_uq import cli

    stack = folder / "sim.tif"
    assert cli.main(["simulate", str(stack), "--frames", str(frames), "--size", str(size), "--density", "3",
                     "--pixel-size", "120", "--seed", "4"]) == 0
    registry.save(build_tiny(), folder / "tiny.pt")
    return {"folder": folder, "stack": stack, "model": folder / "tiny.pt"}
