"""Invertible building blocks of DenseFlow (thesis 3.2, 3.3.2), one class per bijection.

Interface (`Bijection`): ``forward(x) -> (z, logdet)`` with ``logdet`` the per-sample
``ln |det dz/dx|`` (shape ``(B,)``), and ``inverse(z) -> x``. Every logdet is a *contribution to*
``ln p(x)`` by the change of variables (3.5): ``ln p(x) = ln p(z) + ln |det J|``.

Tensors are NCHW. Nothing here draws random numbers, so each class is an exact bijection.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def sum_per_sample(x: torch.Tensor) -> torch.Tensor:
    """Sum every dimension except the batch dimension: ``(B, ...) -> (B,)``."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


class Bijection(nn.Module):
    """Base class: ``forward(x) -> (z, logdet per sample)``, ``inverse(z) -> x``."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def inverse(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class BijectiveSequential(Bijection):
    """Composition ``f_K o ... o f_1`` (3.4); logdets add up (3.6)."""

    def __init__(self, *layers: Bijection):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z):
        for layer in reversed(self.layers):
            z = layer.inverse(z)
        return z


class ActNorm(Bijection):
    """ActNorm (thesis 3.8): per-channel affine ``y = s * x + b`` with data-dependent initialisation.

    Parameterised as ``y = (x + bias) * exp(log_scale)``, i.e. ``s = exp(log_scale)`` and
    ``b = bias * s``. On the first forward call (any mode) the parameters are set from that batch so
    that every output channel has zero mean and unit (population, i.e. biased) variance over
    ``(B, H, W)``. The persistent boolean buffer ``initialized`` records this; it is part of the
    state dict, so loading a trained state dict never triggers a re-initialisation.
    logdet = H * W * sum_c log_scale_c (the Jacobian is ``diag(s)`` repeated over pixels).
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Data-dependent init from batch ``x``: bias = -mean, log_scale = -log(std + eps)."""
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.var(dim=(0, 2, 3), keepdim=True, unbiased=False).sqrt()
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)

    def forward(self, x):
        if not bool(self.initialized):
            self.initialize(x)
        z = (x + self.bias) * torch.exp(self.log_scale)
        logdet = (x.shape[2] * x.shape[3]) * self.log_scale.sum()
        return z, logdet.expand(x.shape[0])

    def inverse(self, z):
        return z * torch.exp(-self.log_scale) - self.bias


def random_orthogonal(channels: int) -> torch.Tensor:
    """A random orthogonal matrix (QR of a Gaussian matrix, sign-fixed), Glow's 1x1 conv init."""
    q, r = torch.linalg.qr(torch.randn(channels, channels))
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


class InvConv1x1(Bijection):
    """Invertible 1x1 convolution (thesis 3.2; Glow): ``z[:, :, h, w] = W @ x[:, :, h, w]``.

    logdet = H * W * ln |det W|. ``lu=False`` stores ``W`` directly (slogdet, matrix inverse);
    ``lu=True`` stores the LU factors ``W = P L (U + diag(sign * exp(log_s)))`` so that
    ``ln |det W| = sum(log_s)`` costs O(C). Both start from a random orthogonal matrix.
    """

    def __init__(self, channels: int, lu: bool = False):
        super().__init__()
        self.channels = channels
        self.lu = lu
        w = random_orthogonal(channels)
        if not lu:
            self.weight = nn.Parameter(w)
        else:
            p, l, u = torch.linalg.lu(w)
            s = torch.diagonal(u)
            self.register_buffer("perm", p)
            self.register_buffer("sign_s", torch.sign(s))
            self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
            self.lower = nn.Parameter(l * self.lower_mask)
            self.upper = nn.Parameter(torch.triu(u, 1))
            self.log_s = nn.Parameter(torch.log(torch.abs(s)))

    def matrix(self) -> torch.Tensor:
        if not self.lu:
            return self.weight
        eye = torch.eye(self.channels, dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.transpose(0, 1) + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ lower @ upper

    def log_abs_det(self) -> torch.Tensor:
        if self.lu:
            return self.log_s.sum()
        return torch.linalg.slogdet(self.weight)[1]

    def forward(self, x):
        w = self.matrix()
        z = F.conv2d(x, w.unsqueeze(-1).unsqueeze(-1))
        logdet = (x.shape[2] * x.shape[3]) * self.log_abs_det()
        return z, logdet.expand(x.shape[0])

    def inverse(self, z):
        w_inv = torch.linalg.inv(self.matrix())
        return F.conv2d(z, w_inv.unsqueeze(-1).unsqueeze(-1))


def split_sizes(channels: int) -> tuple[int, int]:
    """Channel split of a coupling: (conditioning x1, transformed x2) = (C - C//2, C//2)."""
    return channels - channels // 2, channels // 2


def bounded_log_scale(raw: torch.Tensor) -> torch.Tensor:
    """``ln s = 2 tanh(raw / 2)``: the coupling scale ``s = exp(2 tanh(raw/2))`` lies in (e^-2, e^2).

    The thesis writes the coupling only as ``y2 = s * x2 + t`` (3.9); this bounded parameterisation is
    the one of the method notes / authors' code. ``raw = 0`` gives ``s = 1``.
    """
    return 2.0 * torch.tanh(raw / 2.0)


class AffineCoupling(Bijection):
    """Affine coupling (thesis 3.9-3.11).

    ``x = [x1, x2]`` (channel split ``split_sizes``); ``(raw, t) = coupling_net(x1)``;
    ``y1 = x1``, ``y2 = s * x2 + t`` with ``s = exp(bounded_log_scale(raw))`` (3.9);
    inverse ``x2 = (y2 - t) / s`` (3.11); the Jacobian is triangular (3.10), so
    logdet = sum of ``ln s`` over the transformed elements.

    ``coupling_net`` maps ``C1`` channels to ``2 * C2`` channels: the first ``C2`` are ``raw``, the
    rest ``t``. Its output layer is zero-initialised, so the coupling starts as the identity.
    ``checkpointing`` recomputes the coupling network in the backward pass (saves memory in training).
    """

    def __init__(self, channels: int, coupling_net: nn.Module, checkpointing: bool = False):
        super().__init__()
        self.channels = channels
        self.c1, self.c2 = split_sizes(channels)
        self.net = coupling_net
        self.checkpointing = checkpointing

    def _params(self, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            h = checkpoint(self.net, x1, use_reentrant=False)
        else:
            h = self.net(x1)
        raw, shift = h[:, : self.c2], h[:, self.c2:]
        return bounded_log_scale(raw), shift

    def forward(self, x):
        x1, x2 = x[:, : self.c1], x[:, self.c1:]
        log_s, t = self._params(x1)
        y2 = x2 * torch.exp(log_s) + t
        return torch.cat([x1, y2], dim=1), sum_per_sample(log_s)

    def inverse(self, z):
        y1, y2 = z[:, : self.c1], z[:, self.c1:]
        log_s, t = self._params(y1)
        x2 = (y2 - t) * torch.exp(-log_s)
        return torch.cat([y1, x2], dim=1)


class ChannelSwitch(Bijection):
    """Channel switch after a coupling: ``[x1, x2] -> [x2, x1]`` with ``x1`` the first ``C - C//2``
    channels (the coupling's conditioning part), so the next coupling transforms what this one only
    read. A permutation: logdet 0."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.c1 = channels - channels // 2

    def forward(self, x):
        return torch.cat([x[:, self.c1:], x[:, : self.c1]], dim=1), x.new_zeros(x.shape[0])

    def inverse(self, z):
        c2 = self.channels - self.c1
        return torch.cat([z[:, c2:], z[:, :c2]], dim=1)


def squeeze2d(x: torch.Tensor) -> torch.Tensor:
    """Space-to-depth 2x2 (thesis 3.3.2): ``(B, C, H, W) -> (B, 4C, H/2, W/2)``.

    Output channel ``4c + 2i + j`` holds input channel ``c`` at offset ``(i, j)`` of each 2x2 cell.
    """
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"squeeze needs even height and width, got {h}x{w}")
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze2d(x: torch.Tensor) -> torch.Tensor:
    """Depth-to-space 2x2, the inverse of `squeeze2d`: ``(B, 4C, H, W) -> (B, C, 2H, 2W)``."""
    b, c4, h, w = x.shape
    if c4 % 4:
        raise ValueError(f"unsqueeze needs a multiple of 4 channels, got {c4}")
    c = c4 // 4
    x = x.reshape(b, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c, 2 * h, 2 * w)


class Squeeze(Bijection):
    """`squeeze2d` as a bijection (a permutation of elements: logdet 0)."""

    def forward(self, x):
        return squeeze2d(x), x.new_zeros(x.shape[0])

    def inverse(self, z):
        return unsqueeze2d(z)


class ScaleShift(Bijection):
    """Elementwise ``y = scale * x + shift`` with constants (input scaling); logdet = D ln|scale|."""

    def __init__(self, scale: float, shift: float):
        super().__init__()
        if scale == 0:
            raise ValueError("scale must be non-zero")
        self.scale = float(scale)
        self.shift = float(shift)

    def forward(self, x):
        d = x[0].numel()
        logdet = x.new_full((x.shape[0],), d * math.log(abs(self.scale)))
        return x * self.scale + self.shift, logdet

    def inverse(self, z):
        return (z - self.shift) / self.scale


class Sigmoid(Bijection):
    """Elementwise logistic sigmoid R -> (0, 1); ``ln sigma'(x) = -softplus(-x) - softplus(x)``."""

    def forward(self, x):
        logdet = sum_per_sample(-F.softplus(-x) - F.softplus(x))
        return torch.sigmoid(x), logdet

    def inverse(self, z):
        return torch.log(z) - torch.log1p(-z)
