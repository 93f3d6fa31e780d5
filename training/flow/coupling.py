"""The intra-module coupling network of DenseFlow (thesis 3.4.3, Fig. 3.5; setup in 5.1).

``x1 -> 1x1 conv to `width` (48) -> [dense block || Nyström self-attention] -> concat
     -> norm-ReLU-1x1 conv back to `width` -> zero-initialised 1x1 conv to 2*C2 (raw scale, shift)``

The dense block (DenseNet [105]) has `layers` (7) densely connected layers; each layer reads the
concatenation of the block input and all previous layer outputs, ``1x1 conv (c->c) - ReLU -
3x3 conv (c->growth) - ReLU``, and the block ends with a (gated) 1x1 transition back to `width`.
The attention branch is `NystromAttention` with one head of ``width // 2`` channels. The thesis fixes
width 48, 7 layers and a single head; the dense-layer growth (64), the gated transition and the
batch-norm fusion follow the method notes / authors' setup (the thesis does not state them).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from densehybrid_training.flow.attention import NystromAttention


class GatedConv1x1(nn.Module):
    """``a + b * sigmoid(c)`` with ``(a, b, c)`` from one 1x1 conv (a gated linear transition)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 3 * out_channels, kernel_size=1)

    def forward(self, x):
        a, b, c = self.conv(x).chunk(3, dim=1)
        return a + b * torch.sigmoid(c)


class DenseLayer(nn.Module):
    """One densely connected layer: returns ``[x, relu(conv3x3(relu(conv1x1(x))))]``."""

    def __init__(self, in_channels: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, kernel_size=1), nn.ReLU(),
            nn.Conv2d(in_channels, growth, kernel_size=3, padding=1), nn.ReLU())

    def forward(self, x):
        return torch.cat([x, self.body(x)], dim=1)


class DenseBlock(nn.Module):
    """`layers` densely connected layers [105] then a 1x1 transition (gated or plain) to `width`."""

    def __init__(self, width: int, layers: int, growth: int, gated: bool = True):
        super().__init__()
        self.layers = nn.Sequential(*[DenseLayer(width + i * growth, growth) for i in range(layers)])
        total = width + layers * growth
        self.transition = GatedConv1x1(total, width) if gated else nn.Conv2d(total, width, kernel_size=1)

    def forward(self, x):
        return self.transition(self.layers(x))


def make_norm(kind: str, channels: int) -> nn.Module:
    """Normalisation of the fusion layer: 'batch' (authors' choice), 'group' (per-sample, batch
    independent, useful when samples are drawn in train mode) or 'none'."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch', 'group' or 'none', got {kind!r}")


class CouplingNetwork(nn.Module):
    """Coupling network of Fig. 3.5: projection, dense block || Nyström attention, fusion, output.

    Maps ``in_channels`` to ``out_channels`` at the same resolution; the output conv is
    zero-initialised so that the affine coupling starts as the identity.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 48, dense_layers: int = 7,
                 dense_growth: int = 64, gated: bool = True, attention_heads: int = 1,
                 attention_dim: int | None = None, landmarks: tuple[int, int] = (4, 4),
                 pinv: str = "iterative", pinv_iterations: int = 6, norm: str = "batch"):
        super().__init__()
        attention_dim = attention_dim or max(attention_heads, width // 2)
        self.project = nn.Conv2d(in_channels, width, kernel_size=1)
        self.dense = DenseBlock(width, dense_layers, dense_growth, gated)
        self.attention = NystromAttention(width, attention_dim, attention_heads, landmarks, pinv, pinv_iterations)
        self.fuse = nn.Sequential(make_norm(norm, 2 * width), nn.ReLU(),
                                  nn.Conv2d(2 * width, width, kernel_size=1, bias=False))
        self.out = nn.Conv2d(width, out_channels, kernel_size=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x):
        h = self.project(x)
        h = self.fuse(torch.cat([self.attention(h), self.dense(h)], dim=1))
        return self.out(h)
