"""DenseFlow-L-k: the densely connected multi-scale normalizing flow (thesis 3.4.3, Fig. 3.6).

Pipeline (likelihood direction) for an image ``x`` with integer levels ``k in {0..K-1}^D``, K = 256:

1. dequantize (3.12-3.14): ``y = k + u``, ``u ~ q(u | k)`` (uniform or variational) -> term ``-ln q(u|k)``;
2. input scaling: ``v = y / K - 0.5`` in ``[-0.5, 0.5]^D`` -> term ``-D ln K`` (the 8-bit discretisation
   constant: it turns the density on ``[-0.5, 0.5]^D`` into one on ``[0, K]^D``, i.e. per unit bin);
3. initial squeeze ``(C, H, W) -> (4C, H/2, W/2)`` (as the authors' model: the first block works at
   half resolution);
4. blocks ``b = 1..B``, each `DenseFlowBlock` = `units` DenseFlow units of `modules` glow-like modules
   (ActNorm 3.8 -> invertible 1x1 conv -> affine coupling 3.9 -> channel switch) joined by cross-unit
   coupling (3.18-3.21), which adds `growth` channels after every unit but the last;
   between blocks `SqueezeDrop` (3.4.3): squeeze and resolve half of the channels under the prior;
5. the final latent under the learned `ChannelwiseGaussian` prior (3.3).

The sum of all terms is one sample of the lower bound ("ELBO") of ``ln P(x)`` in nats:

    ln P(x) >= E[ ln p(z) + sum ln|det J| + sum ln p(dropped) + sum_i (sum ln sigma_i - ln N(e_i))
                  - D ln K - ln q(u | k) ]

(3.6, 3.14, 3.21); ``iwbo`` averages ``k`` importance weights inside the log (tighter, 8.3-8.5 with
the variational q). Bits per dimension = ``-bound / (D ln 2)``, ``D = C H W``.

Input scaling convention: images enter as uint8 ``[0, 255]`` or as floats in ``[0, 1]`` holding
``level / 255`` (e.g. ``ToTensor`` output; rounded to the nearest level). `sample` returns floats in
``[0, 1]`` on the same scale: ``image = (y - 0.5) / 255`` clamped, where ``y = K (v + 0.5)`` is the
continuous (dequantized) value; no rounding, so it is differentiable w.r.t. the flow's parameters
(the joint training's L_jsd (4.19) back-propagates through it). ``torch.floor(255 * image + 0.5)``
gives the quantized image of (3.15).

The flow is fully convolutional and all priors are per channel, so one model evaluates and samples at
any height/width that is a multiple of ``2 ** len(blocks)`` (8 for three blocks).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from densehybrid_training.flow.augment import CrossUnitCoupling
from densehybrid_training.flow.bijections import ActNorm, AffineCoupling, BijectiveSequential, ChannelSwitch, \
    InvConv1x1, ScaleShift, split_sizes, squeeze2d, unsqueeze2d
from densehybrid_training.flow.coupling import CouplingNetwork
from densehybrid_training.flow.dequantization import UniformDequantization, VariationalDequantization
from densehybrid_training.flow.distributions import ChannelwiseGaussian, SqueezeDrop


@dataclass(frozen=True)
class DenseFlowConfig:
    """DenseFlow-L-k hyper-parameters. Defaults: DenseFlow-74-10 (thesis 5.1)."""

    blocks: tuple[tuple[int, int], ...] = ((6, 5), (4, 6), (1, 20))  # (units, glow-like modules per unit)
    growth: int = 10  # k: noise channels added by each cross-unit coupling
    coupling_width: int = 48  # 1x1 projection width of every coupling network
    dense_layers: int = 7  # layers of the coupling network's dense block
    dense_growth: int = 64  # channels added by each dense layer (authors' value; not in the thesis)
    gated: bool = True  # gated 1x1 transition at the end of the dense block
    attention_heads: int = 1
    attention_dim: int = 0  # q/k/v channels; 0 = coupling_width // 2
    landmarks: tuple[int, int] = (4, 4)  # Nyström landmark grid (clamped to the feature map)
    pinv: str = "iterative"  # 'iterative' (Nyströmformer) or 'exact' (torch.linalg.pinv)
    pinv_iterations: int = 6
    norm: str = "batch"  # fusion normalisation in the coupling nets: 'batch', 'group' or 'none'
    in_channels: int = 3
    num_bits: int = 8
    dequantization: str = "variational"  # 'variational' (3.14, thesis 5.1) or 'uniform' (3.13)
    dequant_steps: int = 4  # conditional couplings of the variational dequantizer (authors: 4)
    dequant_width: int = 64  # its coupling / context-network width (authors: 64)
    dequant_context: int = 64  # channels of its context features (authors: 64)
    dequant_depth: int = 4  # layers of each dense block in the dequantizer (authors: 4)
    dequant_growth: int = 64  # dense growth in the dequantizer's coupling networks (authors: 64)
    dequant_context_growth: int = 16  # dense growth in its context network (authors: 16)
    drop_prior: str = "standard"  # squeeze-and-drop prior: 'standard' N(0, I) or 'conditional'
    lu: bool = False  # LU-parameterised invertible 1x1 convolutions
    checkpointing: bool = False  # recompute coupling nets in backward (memory for speed; BN stats update twice)

    def validate(self) -> None:
        if not self.blocks or any(u < 1 or m < 1 for u, m in self.blocks):
            raise ValueError(f"blocks must be a non-empty list of (units >= 1, modules >= 1), got {self.blocks}")
        for name in ("growth", "coupling_width", "dense_layers", "dense_growth", "attention_heads",
                     "in_channels", "dequant_steps", "dequant_width", "dequant_context", "dequant_depth",
                     "dequant_growth", "dequant_context_growth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.attention_dim < 0 or min(self.landmarks) < 1 or self.pinv_iterations < 1:
            raise ValueError("attention_dim must be >= 0, landmarks >= 1x1, pinv_iterations >= 1")
        if not 1 <= self.num_bits <= 8:
            raise ValueError(f"num_bits must be in 1..8, got {self.num_bits}")
        choices = {"pinv": ("iterative", "exact"), "norm": ("batch", "group", "none"),
                   "dequantization": ("variational", "uniform"), "drop_prior": ("standard", "conditional")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    @property
    def num_modules(self) -> int:
        """L of DenseFlow-L-k: the total number of glow-like (invertible) modules."""
        return sum(u * m for u, m in self.blocks)

    @property
    def name(self) -> str:
        return f"DenseFlow-{self.num_modules}-{self.growth}"


PRESETS: dict[str, DenseFlowConfig] = {
    # thesis 5.1: blocks of 6 units x 5 modules, 4 x 6, 1 x 20; growth 10; coupling width 48
    "74-10": DenseFlowConfig(),
    # thesis 6.4 (used for synthetic negatives, 5.1): 5 x 3, 3 x 5, 1 x 15; growth 6
    "45-6": DenseFlowConfig(blocks=((5, 3), (3, 5), (1, 15)), growth=6),
    # CPU-sized (this project's sim-world runs on 2 cores): 2 x 2, 2 x 3, 1 x 6; growth 4; ~0.77M parameters;
    # one training step on 16 crops of 64x64 takes ~0.5 s on 2 cores (45-6: ~25 s for 2 crops)
    "cpu": DenseFlowConfig(blocks=((2, 2), (2, 3), (1, 6)), growth=4, coupling_width=32, dense_layers=3,
                           dense_growth=16, dequantization="uniform"),
    # stronger CPU presets (issue 14), the thesis's 45-6 structure scaled to 2 cores: DenseFlow-22-6 (2.20M parameters)
    # and DenseFlow-31-6 (6.62M). Measured on the quiet 2-core machine: joint SynDenseHybrid steps/s at batch 8,
    # 256x512 crops, per-image samples 16..160 px (`densehybrid-bench train --modes joint --flow-presets cpu cpu-m
    # cpu-l --warmup 1 --steps 3 --repeats 2`): cpu 0.274, cpu-m 0.188 (x0.69), cpu-l 0.114 (x0.42); a real-negative
    # step runs at 1.21. After 200 pretraining steps (batch 16, 64x64 sim crops) the val ELBO is 5.02 / 4.59 / 4.40
    # bits/dim at 0.45 / 1.13 / ~2.5-3.2 s per step. 45-6's flow work is ~10x cpu's (~31 s per joint step).
    "cpu-m": DenseFlowConfig(blocks=((2, 3), (2, 4), (1, 8)), growth=6, coupling_width=48, dense_layers=3,
                             dense_growth=24, dequantization="uniform"),
    "cpu-l": DenseFlowConfig(blocks=((3, 3), (3, 4), (1, 10)), growth=6, coupling_width=48, dense_layers=4,
                             dense_growth=32, dequantization="uniform"),
    # unit tests: same structure (3 blocks, cross-unit coupling), ~57k parameters
    "tiny": DenseFlowConfig(blocks=((2, 1), (2, 1), (1, 2)), growth=2, coupling_width=8, dense_layers=2,
                            dense_growth=4, landmarks=(2, 2), dequantization="uniform", dequant_steps=1,
                            dequant_width=8, dequant_context=4, dequant_depth=2, dequant_growth=4,
                            dequant_context_growth=4),
}


def flow_config(preset: str | DenseFlowConfig = "45-6", **overrides) -> DenseFlowConfig:
    """A preset name ('74-10', '45-6', 'cpu', 'cpu-m', 'cpu-l', 'tiny') or a config, with field overrides, validated."""
    if isinstance(preset, DenseFlowConfig):
        config = preset
    elif preset in PRESETS:
        config = PRESETS[preset]
    else:
        raise ValueError(f"unknown DenseFlow preset {preset!r}; known: {sorted(PRESETS)}")
    config = replace(config, **overrides)
    config.validate()
    return config


class FlowModule(BijectiveSequential):
    """One glow-like module ``m_{i,j}`` (Fig. 3.5): ActNorm (3.8) -> invertible 1x1 conv ->
    affine coupling (3.9-3.11) with the dense + Nyström coupling network -> channel switch."""

    def __init__(self, channels: int, config: DenseFlowConfig):
        c1, c2 = split_sizes(channels)
        net = CouplingNetwork(c1, 2 * c2, width=config.coupling_width, dense_layers=config.dense_layers,
                              dense_growth=config.dense_growth, gated=config.gated,
                              attention_heads=config.attention_heads, attention_dim=config.attention_dim or None,
                              landmarks=config.landmarks, pinv=config.pinv,
                              pinv_iterations=config.pinv_iterations, norm=config.norm)
        super().__init__(ActNorm(channels), InvConv1x1(channels, config.lu),
                         AffineCoupling(channels, net, config.checkpointing), ChannelSwitch(channels))


class DenseFlowBlock(nn.Module):
    """A DenseFlow block (3.4.3): `units` DenseFlow units ``f_i^DF`` densely joined by cross-unit
    coupling ``h_i`` (3.18); the last unit has none.

    Unit ``i`` (1-based) maps ``z_{i-1}^(aug) -> z_i`` (``z_0`` = block input, ``z_0^(aug) = z_0``);
    ``h_i`` appends `growth` channels to ``z_i`` with ``(mu, sigma) = g_i([z_0, ..., z_{i-1}])``.
    Unit ``i`` therefore has ``C + (i-1) * growth`` channels and ``g_i`` reads
    ``C + sum_{j=1}^{i-1} (C + (j-1) growth)`` channels.
    """

    def __init__(self, channels: int, units: int, modules_per_unit: int, config: DenseFlowConfig):
        super().__init__()
        growth = config.growth
        self.in_channels = channels
        self.growth = growth
        self.units = nn.ModuleList()
        self.cross = nn.ModuleList()
        context = [channels]  # channels of z_0, z_1, ...
        for i in range(units):
            c = channels + i * growth
            self.units.append(BijectiveSequential(*[FlowModule(c, config) for _ in range(modules_per_unit)]))
            if i < units - 1:
                self.cross.append(CrossUnitCoupling(sum(context), growth))
                context.append(c)
        self.out_channels = channels + (units - 1) * growth

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, noises=None):
        """Returns ``(z, logdet, augmentation)``: exact log-determinant of the units and the summed
        cross-unit terms ``sum ln sigma - ln N(e)`` (3.21). `noises`: optional list of fixed ``e_i``."""
        latents = [x]
        h, logdet = self.units[0](x)
        augmentation = x.new_zeros(x.shape[0])
        for i, unit in enumerate(self.units[1:]):
            noise = None if noises is None else noises[i]
            h_aug, term = self.cross[i](h, torch.cat(latents, dim=1), noise=noise, generator=generator)
            latents.append(h)
            augmentation = augmentation + term
            h, ld = unit(h_aug)
            logdet = logdet + ld
        return h, logdet, augmentation

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Sampling direction: invert each unit and drop the appended noise channels (no ``g_i``)."""
        for i in range(len(self.units) - 1, 0, -1):
            z = self.cross[i - 1].inverse(self.units[i].inverse(z))
        return self.units[0].inverse(z)


TERMS = ("log_pz", "log_p_dropped", "logdet", "augmentation", "input_scaling", "dequantization")


class DenseFlow(nn.Module):
    """DenseFlow-L-k (module docstring has the pipeline, the bound and the input conventions).

    Public API: `log_prob` (one-sample ELBO, nats), `iwbo`, `bits_per_dim`, `sample`, `elbo_terms`,
    and the continuous-space bijection pair `encode` / `decode` (``v in [-0.5, 0.5]^D``).
    """

    def __init__(self, config: DenseFlowConfig | str = "45-6"):
        super().__init__()
        config = flow_config(config)
        self.config = config
        self.levels = 2 ** config.num_bits
        if config.dequantization == "variational":
            self.dequantizer = VariationalDequantization(
                config.in_channels, config.num_bits, config.dequant_steps, config.dequant_width,
                config.dequant_context, config.lu, depth=config.dequant_depth, growth=config.dequant_growth,
                context_depth=config.dequant_depth, context_growth=config.dequant_context_growth)
        else:
            self.dequantizer = UniformDequantization()
        self.input_scaling = ScaleShift(1.0 / self.levels, -0.5)
        channels = 4 * config.in_channels
        self.blocks = nn.ModuleList()
        self.drops = nn.ModuleList()
        for b, (units, modules_per_unit) in enumerate(config.blocks):
            block = DenseFlowBlock(channels, units, modules_per_unit, config)
            self.blocks.append(block)
            channels = block.out_channels
            if b < len(config.blocks) - 1:
                self.drops.append(SqueezeDrop(channels, config.drop_prior))
                channels *= 2
        self.latent_channels = channels
        self.prior = ChannelwiseGaussian(channels)

    # ---------------------------------------------------------------- shapes and inputs
    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this: ``2 ** number of squeezes``."""
        return 2 ** len(self.blocks)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        self.check_size(height, width)
        m = self.size_multiple
        return self.latent_channels, height // m, width // m

    def check_size(self, height: int, width: int) -> None:
        m = self.size_multiple
        if height < m or width < m or height % m or width % m:
            raise ValueError(f"{self.config.name}: height and width must be positive multiples of {m}, "
                             f"got {height}x{width}")

    def _reference(self) -> torch.Tensor:
        return self.prior.loc

    def to_levels(self, x: torch.Tensor) -> torch.Tensor:
        """Integer levels ``{0..K-1}`` (as the model's float dtype) from uint8/int levels or from floats
        in [0, 1] holding ``level / (K-1)`` (rounded to the nearest level)."""
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ValueError(f"expected an image batch (B, C, H, W), got {getattr(x, 'shape', type(x))}")
        if x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected {self.config.in_channels} channels, got {x.shape[1]}")
        self.check_size(x.shape[2], x.shape[3])
        ref = self._reference()
        if x.dtype.is_floating_point:
            if not torch.isfinite(x).all() or x.min() < -1e-6 or x.max() > 1 + 1e-6:
                raise ValueError("float images must be finite and in [0, 1] (level / (K-1))")
            return torch.round(x.to(ref.dtype).clamp(0, 1) * (self.levels - 1))
        if x.dtype == torch.bool or x.dtype.is_complex:
            raise ValueError(f"unsupported image dtype {x.dtype}")
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= self.levels:
            raise ValueError(f"integer images must hold levels in [0, {self.levels - 1}]")
        return x.to(ref.dtype)

    # ---------------------------------------------------------------- continuous-space bijection
    def encode(self, v: torch.Tensor, generator: torch.Generator | None = None, noises=None):
        """Continuous input ``v`` (after dequantization and scaling) -> ``(z, terms, dropped)``.

        `terms` holds per-sample ``log_pz``, ``log_p_dropped``, ``logdet`` and ``augmentation``;
        `dropped` lists the latents resolved by each squeeze-and-drop (for exact `decode`).
        `noises`: optional per-block lists of fixed cross-unit noises ``e_i`` (tests).
        """
        h = squeeze2d(v)
        logdet = v.new_zeros(v.shape[0])
        augmentation = v.new_zeros(v.shape[0])
        log_p_dropped = v.new_zeros(v.shape[0])
        dropped = []
        for b, block in enumerate(self.blocks):
            h, ld, aug = block(h, generator=generator, noises=None if noises is None else noises[b])
            logdet = logdet + ld
            augmentation = augmentation + aug
            if b < len(self.drops):
                h, log_p, d = self.drops[b](h)
                log_p_dropped = log_p_dropped + log_p
                dropped.append(d)
        terms = {"log_pz": self.prior.log_prob(h), "log_p_dropped": log_p_dropped, "logdet": logdet,
                 "augmentation": augmentation}
        return h, terms, dropped

    def decode(self, z: torch.Tensor, dropped=None, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Inverse of `encode`: final latent (and optionally the dropped latents) -> ``v``.
        Missing dropped latents are drawn from their priors with `temperature`."""
        h = z
        for b in range(len(self.blocks) - 1, -1, -1):
            h = self.blocks[b].inverse(h)
            if b > 0:
                d = None if dropped is None else dropped[b - 1]
                h = self.drops[b - 1].inverse(h, d, temperature, generator)
        return unsqueeze2d(h)

    # ---------------------------------------------------------------- likelihood
    def elbo_terms(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """All per-sample contributions (nats) to one sample of the bound; their sum is `log_prob`."""
        k = self.to_levels(x)
        y, log_q = self.dequantizer(k, generator=generator)
        v, scaling = self.input_scaling(y)
        _, terms, _ = self.encode(v, generator=generator)
        terms["input_scaling"] = scaling
        terms["dequantization"] = -log_q
        return terms

    def log_prob(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One-sample lower bound of ``ln P(x)`` (nats, per image) with fresh dequantization and
        augmentation noise: ``ln p(x + u, e~) - ln q(u, e~ | x)``."""
        terms = self.elbo_terms(x, generator)
        return sum(terms[name] for name in TERMS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x)

    def iwbo(self, x: torch.Tensor, k: int, batch_samples: int = 1,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Importance-weighted bound ``logsumexp_j(ln w_j) - ln k`` over ``k`` joint samples of the
        dequantization and augmentation noise (``ln w_j`` = one `log_prob` sample); per image, nats.
        `batch_samples` importance samples share one forward pass (the batch is repeated). Use eval
        mode: batch-norm statistics in train mode would couple the samples.
        """
        if k < 1 or batch_samples < 1:
            raise ValueError(f"k and batch_samples must be >= 1, got {k}, {batch_samples}")
        log_w = []
        done = 0
        while done < k:
            n = min(batch_samples, k - done)
            lw = self.log_prob(x.repeat(n, 1, 1, 1), generator=generator)
            log_w.append(lw.reshape(n, x.shape[0]))
            done += n
        log_w = torch.cat(log_w, dim=0)
        return torch.logsumexp(log_w, dim=0) - math.log(k)

    def bits_per_dim(self, x: torch.Tensor, k: int = 1, batch_samples: int = 1,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """``-bound / (C H W ln 2)`` per image (k = 1: ELBO, k > 1: IWBO); includes the 8-bit
        discretisation constant, so it is comparable with published bits/dim."""
        bound = self.log_prob(x, generator) if k == 1 else self.iwbo(x, k, batch_samples, generator)
        return -bound / (x[0].numel() * math.log(2.0))

    # ---------------------------------------------------------------- sampling
    def sample(self, num: int, height: int, width: int, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """``num`` images of ``height x width`` (multiples of `size_multiple`) in [0, 1], float,
        differentiable w.r.t. the flow parameters (3.7 without the quantization of 3.15).
        `temperature` scales the standard deviation of the final prior and of the dropped latents.
        Cross-unit noise channels are simply dropped on the way back (no ``g_i`` is evaluated).
        With ``norm='batch'`` in train mode the coupling networks normalise with the statistics of the
        generated batch (and update the running statistics with them), as in the authors' joint
        training; ``norm='group'`` makes every sample independent of its batch."""
        if num < 1:
            raise ValueError(f"num must be >= 1, got {num}")
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        c, h, w = self.latent_shape(height, width)
        z = self.prior.sample(num, h, w, temperature, generator)
        v = self.decode(z, None, temperature, generator)
        y = self.levels * (v + 0.5)  # continuous level in [0, K]
        return ((y - 0.5) / (self.levels - 1)).clamp(0.0, 1.0)


def build_flow(preset: str | DenseFlowConfig = "45-6", **overrides) -> DenseFlow:
    """`DenseFlow` from a preset name or config with field overrides."""
    return DenseFlow(flow_config(preset, **overrides))


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_breakdown(preset: str | DenseFlowConfig = "74-10", height: int = 64, width: int = 64,
                        in_channels: int = 3) -> dict[str, int | str | tuple]:
    """Parameter counts of a DenseFlow for ``in_channels x height x width`` inputs, by component.

    The flow is fully convolutional with per-channel priors, so the counts do not depend on the
    spatial size; it is only checked to be valid and reported with the final latent shape.
    Measured (``python -c "from densehybrid_training.flow import parameter_breakdown as p; print(p('74-10'))"``):
    74-10: 130,647,294 in total (coupling networks 116,868,398; cross-unit g 8,947,480; ActNorm and
    1x1 convs 2,435,016; variational dequantizer 2,395,784; priors 616), latent (308, 8, 8) at 64x64;
    45-6: 75,020,522 (70,893,450; 1,198,152; 532,800; 2,395,784; 336), latent (168, 8, 8). Both totals
    equal those of the authors' code (matejgrcic/DenseFlow).
    """
    model = build_flow(preset, in_channels=in_channels)
    latent = model.latent_shape(height, width)
    couplings = cross = invertible = 0
    for block in model.blocks:
        cross += parameter_count(block.cross)
        for unit in block.units:
            for module in unit.layers:
                couplings += parameter_count(module.layers[2])
                invertible += parameter_count(module.layers[0]) + parameter_count(module.layers[1])
    return {
        "name": model.config.name,
        "input": (in_channels, height, width),
        "latent": latent,
        "total": parameter_count(model),
        "coupling_networks": couplings,
        "cross_unit_g": cross,
        "actnorm_and_1x1": invertible,
        "dequantizer": parameter_count(model.dequantizer),
        "priors": parameter_count(model.prior) + parameter_count(model.drops),
    }
