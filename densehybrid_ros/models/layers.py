"""Small building blocks shared by the decoder and the DenseHybrid head."""
from __future__ import annotations

from torch import nn


class BNReLUConv(nn.Sequential):
    """Pre-activation unit BN -> ReLU -> Conv(k x k), as in SwiftNet's decoder and the DenseHybrid head."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = False):
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(in_channels))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module(
            "conv",
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias),
        )
