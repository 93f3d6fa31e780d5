"""Cross-unit coupling: stochastic skip connections between DenseFlow units (thesis 3.16-3.23, 8.1).

Augmentation bound (3.16, proof 8.1-8.5): for noise ``e`` with a *known* density,
``ln p(z_i) >= E_e[ln p(z_i, e) - ln p(e)]``. Cross-unit coupling (3.18) reparameterises the noise,

    z_i^(aug) = h_i(z_i, e_i; z_<i) = [z_i, sigma * e_i + mu],   (mu, sigma) = g_i(z_<i),   e_i ~ N(0, I),

with Jacobian ``diag(I, sigma)`` w.r.t. ``[z_i, e_i]`` (3.19), so ``ln p(z_i, e_i) = ln p(z_i^(aug)) +
sum ln sigma`` (3.20) and

    ln p(z_i) >= E_e[ ln p(z_i^(aug)) - ln N(e_i; 0, I) + sum ln sigma ]          (3.21)

Sign conventions: every term returned here is a contribution to the lower bound of ``ln p(x)``
(add it; the loss is the negated sum). The contribution of ``h_i`` is

    term_i = sum ln sigma - ln N(e_i; 0, I) = -ln q(e~_i | z_<i),    e~_i = mu + sigma * e_i,

the negative log-density of the appended channels under the variational (augmenting) distribution
``q(e~ | z_<i) = N(mu, sigma^2)``: the bound is ``ln p(x) >= E_q[ln p(x, e~) - ln q(e~ | x)]``.
It is exact in expectation only up to the KL gap; `DenseFlow.iwbo` tightens it with importance weights.
Sampling never evaluates ``g_i``: the inverse only removes the appended channels (3.22-3.25 remark).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from densehybrid_training.flow.bijections import bounded_log_scale, sum_per_sample
from densehybrid_training.flow.distributions import log_standard_normal, standard_noise


class CrossUnitCoupling(nn.Module):
    """``h_i`` of (3.18) with ``g_i = Conv3x3(c -> 4c) - ReLU - Conv1x1(4c -> 2 * growth)``, last layer
    zero-initialised (so ``mu = 0, sigma = 1`` at the start). ``c`` = channels of the context
    ``z_<i = [z_0, ..., z_{i-1}]``. ``ln sigma = 2 tanh(raw / 2)`` (bounded as in the affine couplings).
    """

    def __init__(self, context_channels: int, growth: int):
        super().__init__()
        if growth < 1:
            raise ValueError(f"growth must be >= 1, got {growth}")
        self.growth = growth
        self.context_channels = context_channels
        self.g = nn.Sequential(
            nn.Conv2d(context_channels, 4 * context_channels, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(4 * context_channels, 2 * growth, kernel_size=1))
        nn.init.zeros_(self.g[-1].weight)
        nn.init.zeros_(self.g[-1].bias)

    def noise_params(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, ln sigma) = g_i(z_<i)``, each ``(B, growth, H, W)``."""
        mean, raw = self.g(context).chunk(2, dim=1)
        return mean, bounded_log_scale(raw)

    def affine(self, z: torch.Tensor, e: torch.Tensor, context: torch.Tensor):
        """The bijection ``[z, e] -> [z, mu + sigma * e]`` (3.18) for a fixed context; logdet (3.19)."""
        mean, log_sigma = self.noise_params(context)
        return torch.cat([z, mean + torch.exp(log_sigma) * e], dim=1), sum_per_sample(log_sigma)

    def affine_inverse(self, z_aug: torch.Tensor, context: torch.Tensor):
        """Inverse of `affine`: ``z_aug -> (z, e)``."""
        mean, log_sigma = self.noise_params(context)
        z, e_tilde = z_aug[:, : -self.growth], z_aug[:, -self.growth:]
        return z, (e_tilde - mean) * torch.exp(-log_sigma)

    def forward(self, z: torch.Tensor, context: torch.Tensor, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``e ~ N(0, I)`` (or use `noise`) and return ``(z_aug, term_i)`` with
        ``term_i = sum ln sigma - ln N(e)`` (3.21), the contribution to the bound."""
        b, _, h, w = z.shape
        e = standard_noise((b, self.growth, h, w), z, generator) if noise is None else noise
        z_aug, log_det = self.affine(z, e, context)
        return z_aug, log_det - log_standard_normal(e)

    def inverse(self, z_aug: torch.Tensor) -> torch.Tensor:
        """Sampling direction: drop the appended noise channels (no ``g_i`` needed)."""
        return z_aug[:, : -self.growth]
