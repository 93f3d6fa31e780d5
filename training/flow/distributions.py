"""Base distributions of DenseFlow and the squeeze-and-drop module (thesis 3.1.2, 3.3.2, 3.4.3).

Log-densities are per sample (summed over C, H, W) and in nats. Sampling takes a `temperature` T:
the standard deviation of every base distribution is multiplied by T (T = 1: the model; T < 1:
samples nearer the modes; T = 0: the means).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from densehybrid_training.flow.bijections import squeeze2d, sum_per_sample, unsqueeze2d

LOG_2PI = math.log(2.0 * math.pi)


def log_standard_normal(x: torch.Tensor) -> torch.Tensor:
    """``ln N(x; 0, I)`` per sample."""
    return sum_per_sample(-0.5 * x * x - 0.5 * LOG_2PI)


def log_normal(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """``ln N(x; mean, diag(exp(log_std))^2)`` per sample (mean/log_std broadcast against x)."""
    e = (x - mean) * torch.exp(-log_std)
    return sum_per_sample(-0.5 * e * e - log_std - 0.5 * LOG_2PI)


def standard_noise(shape, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``N(0, I)`` noise of `shape` with the dtype/device of `like`."""
    return torch.randn(shape, dtype=like.dtype, device=like.device, generator=generator)


class ChannelwiseGaussian(nn.Module):
    """Learned base distribution of the final latent (3.3: ``N(mu, Sigma)`` with learned parameters).

    ``z ~ N(loc_c, exp(log_scale_c)^2)`` independently per element, one learned mean and log-std per
    channel, shared over positions, so the prior is defined at every spatial size. Zero-initialised:
    starts as N(0, I).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return log_normal(z, self.loc, self.log_scale)

    def sample(self, num: int, height: int, width: int, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        eps = standard_noise((num, self.channels, height, width), self.loc, generator)
        return self.loc + temperature * torch.exp(self.log_scale) * eps


class SqueezeDrop(nn.Module):
    """Squeeze-and-drop between DenseFlow blocks (3.4.3; multi-scale factor-out of RealNVP [98]).

    Forward: ``x (C, H, W) -> squeeze (4C, H/2, W/2) -> [kept (2C), dropped (2C)]``; the dropped half
    is resolved under its prior and leaves the flow: it adds ``ln p(dropped | kept)`` to ``ln p(x)``
    (an exact term, not a bound). ``prior='standard'``: N(0, I) (method notes, authors' code);
    ``prior='conditional'``: ``N(mu, sigma^2)`` with ``(mu, ln sigma)`` from a zero-initialised 3x3 conv of
    the kept half (Glow's learned split prior; starts as N(0, I)).
    Inverse: the dropped half is given (exact inversion) or drawn from the prior with temperature.
    """

    def __init__(self, channels: int, prior: str = "standard"):
        super().__init__()
        if prior not in ("standard", "conditional"):
            raise ValueError(f"drop prior must be 'standard' or 'conditional', got {prior!r}")
        self.channels = channels
        self.keep = 2 * channels
        self.prior = prior
        if prior == "conditional":
            self.prior_net = nn.Conv2d(self.keep, 2 * (4 * channels - self.keep), kernel_size=3, padding=1)
            nn.init.zeros_(self.prior_net.weight)
            nn.init.zeros_(self.prior_net.bias)

    def _prior_params(self, kept: torch.Tensor):
        if self.prior == "standard":
            return None, None
        mean, log_std = self.prior_net(kept).chunk(2, dim=1)
        return mean, log_std

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(kept, ln p(dropped | kept), dropped)``."""
        s = squeeze2d(x)
        kept, dropped = s[:, : self.keep], s[:, self.keep:]
        mean, log_std = self._prior_params(kept)
        log_p = log_standard_normal(dropped) if mean is None else log_normal(dropped, mean, log_std)
        return kept, log_p, dropped

    def inverse(self, kept: torch.Tensor, dropped: torch.Tensor | None = None, temperature: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
        if dropped is None:
            b, _, h, w = kept.shape
            eps = standard_noise((b, 4 * self.channels - self.keep, h, w), kept, generator)
            mean, log_std = self._prior_params(kept)
            dropped = temperature * eps if mean is None else mean + temperature * torch.exp(log_std) * eps
        return unsqueeze2d(torch.cat([kept, dropped], dim=1))
