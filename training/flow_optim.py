"""The flow's optimiser and learning-rate schedule, for `flow-pretrain` and for the flow of joint SynDenseHybrid
fine-tuning (`synthetic.flow_optim`).

Two recipes (`FlowOptimConfig.recipe`):

- ``adam`` (this project's default so far): Adam (betas 0.9, 0.999), a short linear warm-up (100 steps in
  pretraining, none in joint training), then a constant learning rate.
- ``thesis``: the DenseFlow recipe of thesis 5.3 ("Implementation details, DenseFlow"): "Adamax optimizer with
  learning rate set to 10^-3 ... linear warm-up of the learning rate in the first 5000 iterations ... the
  learning rate is exponentially decayed by a factor of 0.95 after every epoch. The model is fine-tuned using a
  learning rate of 2*10^-5" (ImageNet32: 20 epochs, then 2 epochs of fine-tuning; ImageNet64: 10 + 1). Betas
  (0.9, 0.999) as the authors' `experiments/image/optim/expdecay_flow.py` (matejgrcic/DenseFlow); their
  fine-tuning script (`train_more.py`) sets the new learning rate on the resumed optimizer and runs it constant,
  without warm-up or decay, which `thesis_lr` reproduces for the last `finetune_steps` steps of a pretraining run
  and for the whole of joint training (the flow there is fine-tuned from its pretrained state: thesis 5.3 gives
  no other flow learning rate for joint training, so `synthetic.flow_lr` 2e-5 is the thesis's fine-tuning value).

The schedule is one named function, `flow_lr_factor`, applied by `torch.optim.lr_scheduler.LambdaLR` (checkpointed
with the optimizer, so runs resume on the same curve).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

RECIPES = ("adam", "thesis")
BETAS = (0.9, 0.999)  # both recipes (torch defaults; the authors' expdecay_flow.py defaults)
THESIS_LR = 1e-3  # thesis 5.3: Adamax at 10^-3 (ImageNet32 training)
THESIS_WARMUP = 5000  # thesis 5.3: linear warm-up over the first 5000 iterations
THESIS_DECAY = 0.95  # thesis 5.3: x0.95 after every epoch (CIFAR-10: 0.9975)
THESIS_FINETUNE_LR = 2e-5  # thesis 5.3: fine-tuning learning rate
ADAM_PRETRAIN_WARMUP = 100  # this project's earlier flow-pretrain warm-up
# largest L2 norm of the flow's gradient per optimizer step, in pretraining and in joint training: one exploding
# step (measured in joint training at temperature 1.5: a boundary gradient of norm 1e7) would otherwise fill
# Adamax's infinity-norm state, u = max(0.999 u, |g|), which takes ~14,000 steps to forget a factor 1e6
FLOW_GRAD_CLIP = 50.0


@dataclass(frozen=True)
class FlowOptimConfig:
    """Which optimiser and schedule drive the flow. ``None`` fields take the recipe's value for the context
    (``pretrain`` or ``joint``, see `resolved`)."""

    recipe: str = "adam"  # 'adam' | 'thesis' (see module doc)
    warmup_steps: int | None = None  # linear warm-up length; None: adam 100 (pretrain) / 0 (joint), thesis 5000 / 0
    decay: float | None = None  # learning-rate factor per epoch; None: adam 1.0, thesis 0.95 (pretrain) / 1.0 (joint)
    epoch_steps: int = 0  # steps per epoch for `decay`; 0 = training images // batch size
    finetune_steps: int = 0  # pretraining only: the last N steps run at `finetune_lr`, constant (thesis 5.3)
    finetune_lr: float = THESIS_FINETUNE_LR

    def validate(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {self.recipe!r}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0 (or null for the recipe's), got {self.warmup_steps}")
        if self.decay is not None and not 0.0 < self.decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1] (or null for the recipe's), got {self.decay}")
        if self.epoch_steps < 0:
            raise ValueError(f"epoch_steps must be >= 0 (0 = images // batch size), got {self.epoch_steps}")
        if self.finetune_steps < 0:
            raise ValueError(f"finetune_steps must be >= 0, got {self.finetune_steps}")
        if not self.finetune_lr > 0:
            raise ValueError(f"finetune_lr must be > 0, got {self.finetune_lr}")

    def resolved(self, context: str) -> tuple[int, float]:
        """(warm-up steps, per-epoch decay) with the recipe's defaults for ``context`` ('pretrain' or 'joint')."""
        if context not in ("pretrain", "joint"):
            raise ValueError(f"context must be 'pretrain' or 'joint', got {context!r}")
        if context == "joint":
            default_warmup, default_decay = 0, 1.0
        elif self.recipe == "thesis":
            default_warmup, default_decay = THESIS_WARMUP, THESIS_DECAY
        else:
            default_warmup, default_decay = ADAM_PRETRAIN_WARMUP, 1.0
        warmup = default_warmup if self.warmup_steps is None else self.warmup_steps
        decay = default_decay if self.decay is None else self.decay
        return warmup, decay


def flow_lr_factor(step: int, warmup_steps: int, decay: float, epoch_steps: int, finetune_from: int | None = None,
                   finetune_ratio: float = 1.0) -> float:
    """The learning-rate multiplier of update ``step`` (0-based) under the thesis 5.3 schedule:

        factor = min(1, (step + 1) / warmup_steps) * decay ** floor(step / epoch_steps)    (step < finetune_from)
        factor = finetune_ratio                                                             (step >= finetune_from)

    i.e. a linear warm-up reaching the base rate at update ``warmup_steps``, an exponential decay by ``decay``
    after every completed epoch (applied during the warm-up too: the authors' code lets the warm-up override
    the decay, which only matters if the warm-up outlasts an epoch), and a constant fine-tuning rate
    ``finetune_ratio`` x base (= finetune_lr / lr) from update ``finetune_from`` on. ``warmup_steps = 0``: no warm-up;
    ``epoch_steps = 0``: no decay."""
    if finetune_from is not None and step >= finetune_from:
        return finetune_ratio
    warm = 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)
    epochs = step // epoch_steps if epoch_steps > 0 else 0
    return warm * decay ** epochs


def build_flow_optimizer(params, lr: float, cfg: FlowOptimConfig, context: str, total_steps: int | None = None,
                         epoch_steps: int = 0) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """Optimizer (Adam for 'adam', Adamax for 'thesis'; betas 0.9, 0.999) and its `LambdaLR` schedule
    (`flow_lr_factor`); step the scheduler once per update. ``epoch_steps`` is used when ``cfg.epoch_steps`` is 0;
    ``total_steps`` places the fine-tuning phase (pretraining only)."""
    cfg.validate()
    params = list(params)
    optimizer = (torch.optim.Adamax if cfg.recipe == "thesis" else torch.optim.Adam)(params, lr=lr, betas=BETAS)
    warmup, decay = cfg.resolved(context)
    per_epoch = cfg.epoch_steps or epoch_steps
    finetune_from = None
    if context == "pretrain" and cfg.finetune_steps:
        if total_steps is None:
            raise ValueError("finetune_steps needs the run's total steps")
        finetune_from = max(0, total_steps - cfg.finetune_steps)
    factor: Callable[[int], float] = lambda s: flow_lr_factor(s, warmup, decay, per_epoch, finetune_from,
                                                              cfg.finetune_lr / lr)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
