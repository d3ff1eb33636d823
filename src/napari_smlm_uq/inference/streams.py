"""Random streams per frame: frame ``i`` of a run with seed ``s`` always draws the same samples, whichever
chunk of frames (or machine) predicts it, because its generator is seeded by ``(s, i)`` alone."""
from __future__ import annotations

import numpy as np
import torch


def frame_seed(seed: int, index: int) -> int:
    """A 63-bit seed for frame ``index`` of a run seeded ``seed`` (numpy SeedSequence: independent streams)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def frame_generator(seed: int, index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The torch generator of frame ``index`` (absolute frame number in the stack) on ``device``."""
    return torch.Generator(device=device).manual_seed(frame_seed(seed, index))
