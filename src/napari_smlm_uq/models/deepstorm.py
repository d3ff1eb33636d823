"""phi: 2D DeepSTORM (Nehme 2020; paper appendix A). Raw frame -> 4x super-resolved KDE in [-1, 1].

Context aggregation with dilated convolutions, two 2x nearest-neighbour resize-convolutions, a
three-block prediction module and HardTanh. Fully convolutional (BatchNorm only), so tiles give
the same result as whole frames once the margin exceeds :attr:`DeepSTORM.receptive_radius`.
"""
from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DeepSTORM(nn.Module):
    """``forward(x)``: ``(B, 1, H, W)`` normalised frames -> ``(B, 1, 4H, 4W)`` KDE in model space."""

    def __init__(self, channels: int = 48, up_channels: int = 32, dilations: tuple[int, ...] = (1, 2, 4, 8, 4, 2, 1)):
        super().__init__()
        self.config = {"channels": channels, "up_channels": up_channels, "dilations": list(dilations)}
        self.context = nn.Sequential(_block(1, channels), *[_block(channels, channels, d) for d in dilations])
        self.upsample = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), _block(channels, up_channels),
            nn.Upsample(scale_factor=2, mode="nearest"), _block(up_channels, up_channels),
        )
        self.predict = nn.Sequential(_block(up_channels, up_channels), _block(up_channels, up_channels),
                                     nn.Conv2d(up_channels, 1, 1), nn.Hardtanh(-1.0, 1.0))
        self.receptive_radius = 2 + sum(dilations) + 2  # raw pixels, with a margin for the SR convolutions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(self.upsample(self.context(x)))
