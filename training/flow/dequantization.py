"""Dequantization of 8-bit images (thesis 3.3.1, equations 3.12-3.14).

A discrete image ``x in {0..K-1}^D`` (K = 2^num_bits = 256) becomes continuous ``y = x + u`` with
``u in [0, 1)^D`` (3.12). For a density ``p(y)`` on ``[0, K]^D``, ``P(x) = int_[0,1]^D p(x + u) du``, and
for any ``q(u | x)`` on the unit cube

    ln P(x) >= E_{u ~ q(.|x)} [ ln p(x + u) - ln q(u | x) ]                          (3.14)

(uniform ``q``: ``ln q = 0``, eq. 3.13). Both dequantizers return ``(y, ln q(u | x))``; the caller adds
``-ln q(u | x)`` to the bound (sign convention: contributions to ``ln P(x)``).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from densehybrid_training.flow.bijections import InvConv1x1, Sigmoid, bounded_log_scale, split_sizes, \
    squeeze2d, sum_per_sample, unsqueeze2d
from densehybrid_training.flow.coupling import DenseBlock, DenseLayer, GatedConv1x1
from densehybrid_training.flow.distributions import ChannelwiseGaussian


class UniformDequantization(nn.Module):
    """``u ~ U[0, 1)^D`` (3.12); ``ln q(u | x) = 0`` (3.13)."""

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        u = torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator)
        return x + u, x.new_zeros(x.shape[0])


def gated_dense_block(in_channels: int, out_channels: int, depth: int, growth: int) -> nn.Sequential:
    """A dense block [105] from ``in_channels`` to ``out_channels``: `depth` densely connected layers
    (`DenseLayer`, each adding `growth` channels) then a gated 1x1 transition (`GatedConv1x1`).

    `densehybrid_training.flow.coupling.DenseBlock` is the same block for ``in_channels == out_channels``; this one
    also changes the width (the first block of the dequantizer's context network reads the C image
    channels and writes `out_channels`).
    """
    layers: list[nn.Module] = [DenseLayer(in_channels + i * growth, growth) for i in range(depth)]
    layers.append(GatedConv1x1(in_channels + depth * growth, out_channels))
    return nn.Sequential(*layers)


class ResidualDenseBlock(nn.Module):
    """``x + DenseBlock(x)``: a gated dense block (`densehybrid_training.flow.coupling.DenseBlock`) with a skip."""

    def __init__(self, width: int, depth: int, growth: int):
        super().__init__()
        self.block = DenseBlock(width, depth, growth, gated=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ConditionalAffineCoupling(nn.Module):
    """Affine coupling (3.9-3.11) whose network also reads a context tensor (here: features of x).

    ``x = [x1, x2]`` (`split_sizes`); ``(raw, t) = net([x1, context])``; ``y2 = exp(2 tanh(raw/2)) * x2 + t``.
    net (Flow++-style, as in the authors' dequantizer): 1x1 conv to `width` -> residual gated dense
    block (`depth` layers of `growth` channels) -> zero-initialised 1x1 conv to ``2 * C2`` (first ``C2``
    channels: raw log-scale, the rest: shift), so the coupling starts as the identity.
    Parameters: ``(C1 + ctx + 1) width`` + dense block + ``(width + 1) 2 C2``.
    """

    def __init__(self, channels: int, context_channels: int, width: int, depth: int = 4, growth: int = 64):
        super().__init__()
        self.c1, self.c2 = split_sizes(channels)
        self.net = nn.Sequential(
            nn.Conv2d(self.c1 + context_channels, width, kernel_size=1),
            ResidualDenseBlock(width, depth, growth),
            nn.Conv2d(width, 2 * self.c2, kernel_size=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _params(self, x1: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(torch.cat([x1, context], dim=1))
        return bounded_log_scale(h[:, : self.c2]), h[:, self.c2:]

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y, ln |det dy/dx|)`` for a fixed context."""
        x1, x2 = x[:, : self.c1], x[:, self.c1:]
        log_s, t = self._params(x1, context)
        return torch.cat([x1, x2 * torch.exp(log_s) + t], dim=1), sum_per_sample(log_s)

    def inverse(self, z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        y1, y2 = z[:, : self.c1], z[:, self.c1:]
        log_s, t = self._params(y1, context)
        return torch.cat([y1, (y2 - t) * torch.exp(-log_s)], dim=1)


class VariationalDequantization(nn.Module):
    """Variational dequantization (3.14, Flow++ [100]): ``q(u | x)`` is a small conditional flow.

    Structure (that of the authors' DenseFlow code; 2,395,784 parameters for C = 3 with the defaults):

    - context network (157,552): x scaled to [-1, 1] -> gated dense block ``C -> width`` (`context_depth`
      layers of `context_growth`) -> 2x2 conv with stride 2 (``width -> width``, to half resolution) ->
      gated dense block ``width -> context_channels`` (same depth and growth);
    - learned base ``eps ~ N(loc_c, exp(log_scale_c)^2)`` of shape ``(4C, H/2, W/2)`` (`ChannelwiseGaussian`,
      ``2 * 4C`` = 24 parameters);
    - `steps` x [invertible 1x1 conv, `ConditionalAffineCoupling` on the context] -> a last invertible
      1x1 conv (2,238,208 together for C = 3) -> unsqueeze -> sigmoid -> ``u in (0, 1)^(C, H, W)``.

    ``ln q(u | x) = ln p_base(eps) - ln |det du/deps|``. Needs even H, W.
    """

    def __init__(self, in_channels: int = 3, num_bits: int = 8, steps: int = 4, width: int = 64,
                 context_channels: int = 64, lu: bool = False, depth: int = 4, growth: int = 64,
                 context_depth: int = 4, context_growth: int = 16):
        super().__init__()
        self.levels = 2 ** num_bits
        self.in_channels = in_channels
        channels = 4 * in_channels
        self.context_net = nn.Sequential(
            gated_dense_block(in_channels, width, context_depth, context_growth),
            nn.Conv2d(width, width, kernel_size=2, stride=2),
            gated_dense_block(width, context_channels, context_depth, context_growth))
        self.base = ChannelwiseGaussian(channels)
        self.convs = nn.ModuleList([InvConv1x1(channels, lu) for _ in range(steps + 1)])
        self.couplings = nn.ModuleList(
            [ConditionalAffineCoupling(channels, context_channels, width, depth, growth) for _ in range(steps)])
        self.sigmoid = Sigmoid()

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """Features of the integer levels ``x`` (B, C, H, W) -> (B, context_channels, H/2, W/2)."""
        scaled = 2.0 * x / (self.levels - 1) - 1.0
        return self.context_net(scaled)

    def transform(self, eps: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The conditional bijection ``eps (4C, H/2, W/2) -> u (C, H, W)``; returns ``(u, logdet)``."""
        logdet = eps.new_zeros(eps.shape[0])
        h = eps
        for conv, coupling in zip(self.convs[:-1], self.couplings):
            h, ld = conv(h)
            logdet = logdet + ld
            h, ld = coupling(h, context)
            logdet = logdet + ld
        h, ld = self.convs[-1](h)
        u, ld_sig = self.sigmoid(unsqueeze2d(h))
        return u, logdet + ld + ld_sig

    def transform_inverse(self, u: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Inverse of `transform` for a fixed context: ``u (C, H, W) -> eps (4C, H/2, W/2)``."""
        h = squeeze2d(self.sigmoid.inverse(u))
        h = self.convs[-1].inverse(h)
        for conv, coupling in zip(reversed(self.convs[:-1]), reversed(self.couplings)):
            h = conv.inverse(coupling.inverse(h, context))
        return h

    def log_q(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``ln q(u | x)`` of given noise ``u in (0, 1)^D`` (change of variables through the inverse)."""
        context = self.context(x)
        eps = self.transform_inverse(u, context)
        _, logdet = self.transform(eps, context)
        return self.base.log_prob(eps) - logdet

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """``x`` holds integer levels (as floats). Returns ``(x + u, ln q(u | x))``."""
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"variational dequantization needs even height and width, got {h}x{w}")
        eps = self.base.sample(b, h // 2, w // 2, 1.0, generator)
        u, logdet = self.transform(eps, self.context(x))
        return x + u, self.base.log_prob(eps) - logdet
