"""phi: 2D DeepSTORM (Nehme 2020; paper appendix A). Raw frame -> 4x super-resolved KDE in [-1, 1].

Context aggregation with dilated convolutions, two 2x nearest-neighbour resize-convolutions, a
three-block prediction module and HardTanh. Fully convolutional (BatchNorm only), so tiles give
the same result as whole frames once the margin exceeds :attr:`DeepSTORM.receptive_radius`.
:meth:`DeepSTORM.fused` gives the same function with fewer operations for inference.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# A 3x3 convolution after 2x nearest upsampling, along one axis: output 2i+a sees input rows
# i-1, i, i (a = 0) or i, i, i+1 (a = 1). As a stride-2 transposed convolution, tap k of 4 sums
# the 3x3 taps j with TAPS[k, j] = 1.
_TRANSPOSED_TAPS = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


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

    def fused(self) -> DeepSTORM:
        """An inference copy computing the same function (to float rounding): BatchNorm folded into the
        convolutions, and each nearest-upsample + 3x3 convolution replaced by one stride-2 4x4
        transposed convolution (4/9 of the multiply-adds at the upsampled size). 2.5x faster on CPU
        (64x64 frames: 26 -> 64 frames/s, benchmarks.md)."""
        net = copy.deepcopy(self).eval()
        for block in net.modules():
            if isinstance(block, nn.Sequential) and len(block) > 1 and isinstance(block[1], nn.BatchNorm2d):
                block[0], block[1] = fuse_conv_bn_eval(block[0], block[1]), nn.Identity()
        layers, blocks = list(net.upsample), []
        for prev, block in zip([None, *layers], layers):
            if isinstance(prev, nn.Upsample):
                block[0] = _as_transposed(block[0])
            if not isinstance(block, nn.Upsample):
                blocks.append(block)
        net.upsample = nn.Sequential(*blocks)
        return net


def _as_transposed(conv: nn.Conv2d) -> nn.ConvTranspose2d:
    """The stride-2 transposed convolution equal to 2x nearest upsampling followed by ``conv`` (3x3, pad 1)."""
    taps = _TRANSPOSED_TAPS.to(conv.weight)
    t = nn.ConvTranspose2d(conv.in_channels, conv.out_channels, 4, stride=2, padding=1, bias=conv.bias is not None)
    t.weight.data = torch.einsum("ka,lb,oiab->iokl", taps, taps, conv.weight.data).contiguous()
    if conv.bias is not None:
        t.bias.data = conv.bias.data.clone()
    return t.to(conv.weight.device)
