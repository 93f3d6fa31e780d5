"""The flow's optimiser recipes (training/flow_optim.py, thesis 5.3): the schedule against its closed form, Adamax vs
Adam against hand-computed first updates, recipe defaults per context, config errors naming the field, and a
flow-pretrain run with the thesis recipe ending on the fine-tuning rate."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from densehybrid_ros.config import ConfigError
from densehybrid_training.config import load_train_config
from densehybrid_training.flow_optim import FlowOptimConfig, build_flow_optimizer, flow_lr_factor
from densehybrid_training.flow_train import FlowTrainConfig


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread):
    """Single-threaded (see conftest.one_torch_thread)."""


def test_lr_factor_closed_form():
    # warm-up: update s (0-based) runs at (s + 1) / warmup of the base rate, reaching 1 at update warmup - 1
    assert [flow_lr_factor(s, 4, 1.0, 0) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    # decay 0.95 after every completed epoch of 3 updates, no warm-up
    assert [flow_lr_factor(s, 0, 0.95, 3) for s in range(7)] == pytest.approx(
        [1, 1, 1, 0.95, 0.95, 0.95, 0.95 ** 2])
    # both: the decay also applies inside a warm-up that outlasts an epoch
    assert flow_lr_factor(4, 10, 0.5, 2) == pytest.approx(0.5 * 0.5 ** 2)
    # fine-tuning phase: constant ratio from update `finetune_from` on
    assert flow_lr_factor(7, 4, 0.95, 3, finetune_from=8, finetune_ratio=0.02) == pytest.approx(0.95 ** 2)
    assert flow_lr_factor(8, 4, 0.95, 3, finetune_from=8, finetune_ratio=0.02) == 0.02
    assert flow_lr_factor(10 ** 6, 4, 0.95, 3, finetune_from=8, finetune_ratio=0.02) == 0.02


def test_recipe_defaults_follow_thesis_5_3():
    thesis, adam = FlowOptimConfig(recipe="thesis"), FlowOptimConfig()
    assert thesis.resolved("pretrain") == (5000, 0.95)  # 5,000-iteration warm-up, x0.95 per epoch
    assert thesis.resolved("joint") == (0, 1.0)  # fine-tuning: constant rate (authors' train_more.py)
    assert thesis.finetune_lr == 2e-5
    assert adam.resolved("pretrain") == (100, 1.0) and adam.resolved("joint") == (0, 1.0)
    assert FlowOptimConfig(recipe="thesis", warmup_steps=7, decay=0.9).resolved("pretrain") == (7, 0.9)
    with pytest.raises(ValueError, match="context"):
        thesis.resolved("finetune")


def _first_update(recipe: str, lr: float, context: str, **fields) -> tuple[torch.Tensor, torch.Tensor, object]:
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=torch.float64))  # float64: steps of 2e-7
    optimizer, scheduler = build_flow_optimizer([p], lr, FlowOptimConfig(recipe=recipe, **fields), context,
                                                total_steps=100, epoch_steps=10)
    g = torch.tensor([0.3, -4.0, 1e-3, 0.0], dtype=torch.float64)
    before = p.detach().clone()
    p.grad = g.clone()
    optimizer.step()
    scheduler.step()
    return p.detach() - before, g, optimizer


def test_thesis_recipe_is_adamax_with_warm_up():
    delta, g, optimizer = _first_update("thesis", 1e-3, "pretrain")
    assert isinstance(optimizer, torch.optim.Adamax)
    assert optimizer.defaults["betas"] == (0.9, 0.999)
    # Adamax's first update: m = (1 - b1) g, u = |g| + eps, step = lr_0 / (1 - b1) * m / u = lr_0 * g / (|g| + eps)
    lr0 = 1e-3 / 5000  # update 0 of the 5,000-step warm-up
    expected = -lr0 * g / (g.abs() + 1e-8)
    torch.testing.assert_close(delta, expected, rtol=1e-5, atol=1e-12)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2 * 1e-3 / 5000)  # the next update's rate


def test_adam_recipe_keeps_the_earlier_optimiser():
    delta, g, optimizer = _first_update("adam", 1e-3, "pretrain")
    assert type(optimizer) is torch.optim.Adam
    # Adam's first update: m_hat = g, v_hat = g^2 -> step = lr_0 * g / (|g| + eps), lr_0 = lr / 100 (warm-up)
    torch.testing.assert_close(delta, -1e-5 * g / (g.abs() + 1e-8), rtol=1e-5, atol=1e-12)
    # joint training: no warm-up, constant
    delta, g, optimizer = _first_update("adam", 1e-5, "joint")
    torch.testing.assert_close(delta, -1e-5 * g / (g.abs() + 1e-8), rtol=1e-5, atol=1e-12)
    assert optimizer.param_groups[0]["lr"] == 1e-5


def test_lr_trajectory_through_the_scheduler():
    p = torch.nn.Parameter(torch.zeros(1))
    cfg = FlowOptimConfig(recipe="thesis", warmup_steps=3, finetune_steps=2, finetune_lr=2e-5)
    optimizer, scheduler = build_flow_optimizer([p], 1e-3, cfg, "pretrain", total_steps=9, epoch_steps=4)
    seen = []
    for _ in range(9):
        seen.append(optimizer.param_groups[0]["lr"])
        p.grad = torch.ones(1)
        optimizer.step()
        scheduler.step()
    expected = [1e-3 * min(1, (s + 1) / 3) * 0.95 ** (s // 4) for s in range(7)] + [2e-5, 2e-5]
    assert seen == pytest.approx(expected, rel=1e-12)


def test_bad_recipe_fields_are_named():
    with pytest.raises(ConfigError, match=r"optim: recipe must be one of \('adam', 'thesis'\), got 'sgd'"):
        load_train_config(None, ["optim.recipe=sgd"], cls=FlowTrainConfig)
    with pytest.raises(ConfigError, match="optim: decay must be in"):
        load_train_config(None, ["optim.decay=1.5"], cls=FlowTrainConfig)
    with pytest.raises(ConfigError, match="optim.warmup_steps: expected an integer"):
        load_train_config(None, ["optim.warmup_steps=many"], cls=FlowTrainConfig)
    with pytest.raises(ConfigError, match="optim.finetune_steps"):
        load_train_config(None, ["steps=10", "optim.finetune_steps=11"], cls=FlowTrainConfig)
    with pytest.raises(ConfigError, match=r"synthetic.flow_optim: recipe must be one of"):
        load_train_config(None, ["synthetic.flow_optim.recipe=adamw"])
    with pytest.raises(ConfigError, match="synthetic: flow_optim.finetune_steps is for flow pretraining"):
        load_train_config(None, ["synthetic.flow_optim.finetune_steps=5"])
    cfg = load_train_config(None, ["synthetic.flow_optim.recipe=thesis"])
    assert cfg.synthetic.flow_optim.recipe == "thesis"


def test_flow_pretrain_with_the_thesis_recipe_ends_at_the_fine_tuning_rate(tmp_path, monkeypatch):
    """`flow-pretrain` builds its optimiser from `optim`: Adamax state, and after the last (fine-tuning) steps the
    optimizer holds finetune_lr."""
    from densehybrid_training import flow_train
    from densehybrid_training.checkpoint import load_checkpoint
    from densehybrid_training.data.augment import InlierAugment
    from densehybrid_training.mixed import MixedContentDataset

    rng = np.random.default_rng(0)
    images = [(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8), np.zeros((48, 48), np.uint8)) for _ in range(8)]

    def crops(cfg):
        return MixedContentDataset(images, InlierAugment(cfg.data.crop, (1.0, 1.0), 0.5, False), (0, 0, 0),
                                   (1, 1, 1), cfg.seed)

    monkeypatch.setattr(flow_train, "crops_dataset", crops)
    cfg = load_train_config(None, ["flow=tiny", f"out={tmp_path}", "data.crop=[32,32]", "batch_size=2", "steps=6",
                                   "lr=0.01", "optim.recipe=thesis", "optim.warmup_steps=2",
                                   "optim.finetune_steps=2", "checkpoint_every=6", "log_every=3"], cls=FlowTrainConfig)
    last = flow_train.pretrain(cfg)
    state = load_checkpoint(last)
    group = state["optimizer"]["param_groups"][0]
    assert group["lr"] == pytest.approx(2e-5)
    assert all("exp_inf" in s for s in state["optimizer"]["state"].values())  # Adamax's infinity-norm state
    # epochs of 8 // 2 = 4 steps: update 4 (the 5th) would be at 0.95 x lr, but it is a fine-tuning step
    assert state["scheduler"]["last_epoch"] == 6
    assert math.isfinite(float(next(iter(state["model"].values())).float().sum()))
