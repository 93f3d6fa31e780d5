"""Sizes and positions of synthetic negatives (training/synthetic.py, issue 14): log-uniform sides in the flow's
8-px steps against their written-out law (`paste.random_side`, shared with the real negatives), and negatives standing on the ground as the real ones can
(`synthetic.ground_prob`, the data config's ground classes)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from densehybrid_ros.config import ConfigError
from densehybrid_training.cli import joint_training
from densehybrid_training.config import load_train_config
from densehybrid_training.paste import random_side
from densehybrid_training.synthetic import JointFlowTraining, SyntheticConfig

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ROAD, OTHER = 0, 1
H, W, HORIZON = 64, 96, 40  # street crops: road from row 40 down, another class above, two void rows on top


def _street(n: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 3, H, W, generator=torch.Generator().manual_seed(1))
    labels = torch.full((n, H, W), OTHER, dtype=torch.int64)
    labels[:, HORIZON:] = ROAD
    labels[:, :2] = 255
    return x, labels, torch.zeros(n, H, W, dtype=torch.bool)


def _joint(**cfg) -> JointFlowTraining:
    return JointFlowTraining(None, SyntheticConfig(**{"source": "uniform", "sizes": "image", **cfg}), MEAN, STD,
                             seed=2, device=torch.device("cpu"), ground_ids=(ROAD,) if cfg.get("ground_prob") else ())


def _lowest_rows(synthetic: torch.Tensor) -> list[int]:
    return [int(torch.nonzero(m.any(dim=1)).max()) for m in synthetic]


def test_log_sides_follow_the_law_in_8_px_steps():
    lo, hi, n = 16, 128, 100_000
    rng = np.random.default_rng(0)
    sides = np.array([random_side(rng, lo, hi, "log", step=8) for _ in range(n)])
    assert set(np.unique(sides)) == set(range(lo, hi + 1, 8))
    values = np.arange(lo, hi + 1, 8)
    counts = np.array([(sides == s).sum() for s in values])
    # P(s) = ln((s + 8) / s) / ln((hi + 8) / lo), written out independently of the sampler
    expected = np.array([math.log((s + 8) / s) for s in values]) / math.log((hi + 8) / lo)
    assert expected.sum() == pytest.approx(1.0)
    chi2 = float((((counts - n * expected) ** 2) / (n * expected)).sum())
    assert chi2 < scipy.stats.chi2.ppf(0.999, df=len(values) - 1)
    assert (sides == 16).mean() > 2.5 / len(values)  # 0.19 against 1/15 for the uniform steps
    uniform = np.array([random_side(rng, lo, hi, step=8) for _ in range(30_000)])
    assert set(np.unique(uniform)) == set(values) and (uniform == 16).mean() == pytest.approx(1 / 15, abs=0.01)
    with pytest.raises(ValueError, match="multiples of the step 8"):
        random_side(rng, 12, 128, "log", step=8)


def test_joint_sizes_follow_the_side_scale():
    x, labels, d_out = _street(n=8)
    sides = {"uniform": [], "log": []}
    for scale in sides:
        joint = _joint(side_range=(16, 48), side_scale=scale)
        for step in range(40):
            _, _, _, synthetic, _ = joint.mix(x, labels, d_out, step)
            for m in synthetic:
                rows, cols = torch.nonzero(m, as_tuple=True)  # rectangles: the mask is the whole h x w frame
                sides[scale] += [int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)]
    for scale, values in sides.items():
        assert set(values) <= {16, 24, 32, 40, 48}, scale
    # log-uniform over 16..48 in 8-px steps: P(16) = ln(24/16) / ln(56/16) = 0.32; uniform: 0.2
    assert np.mean(np.array(sides["log"]) == 16) == pytest.approx(math.log(1.5) / math.log(3.5), abs=0.05)
    assert np.mean(np.array(sides["uniform"]) == 16) == pytest.approx(0.2, abs=0.05)


@pytest.mark.parametrize("shape", ["rectangle", "blob"])
def test_grounded_negatives_stand_on_the_road(shape):
    joint = _joint(side_range=(16, 32), shape=shape, ground_prob=1.0)
    x, labels, d_out = _street()
    for step in range(10):
        mixed, labels2, d_out2, synthetic, _ = joint.mix(x, labels, d_out, step)
        for i, m in enumerate(synthetic):
            lowest = int(torch.nonzero(m.any(dim=1)).max())
            middle = torch.nonzero(m[lowest]).float().mean()
            assert lowest >= HORIZON, (step, i)  # the mask's lowest row lies on road
            assert labels[i, lowest, int(middle.round())] == ROAD
            assert (labels2[i][m] == 255).all() and torch.equal(d_out2[i], m)
            assert torch.equal(labels2[i][~m], labels[i][~m])


def test_uniform_positions_also_use_the_rest_of_the_frame():
    x, labels, d_out = _street()
    lowest = [r for step in range(10) for r in _lowest_rows(_joint(side_range=(16, 32)).mix(x, labels, d_out, step)[3])]
    assert min(lowest) < HORIZON
    half = [r for step in range(20)
            for r in _lowest_rows(_joint(side_range=(16, 32), ground_prob=0.5).mix(x, labels, d_out, step)[3])]
    assert 0.15 < np.mean(np.array(half) < HORIZON) < 0.5  # half uniform, of which about 40% end above the road


def test_ground_classes_come_from_the_data_config():
    cfg = load_train_config(None, ["mode=finetune", "synthetic.source=uniform", "synthetic.ground_prob=0.5"])
    meta = {"classes": [{"name": n} for n in ("sky", "sidewalk", "road")]}
    joint = joint_training(cfg, meta, None, torch.device("cpu"))
    assert joint.ground_ids == (2, 1)  # data.negative_ground_classes: road, sidewalk
    assert joint_training(load_train_config(None, ["mode=finetune", "synthetic.source=uniform"]), meta, None,
                          torch.device("cpu")).ground_ids == ()
    with pytest.raises(ConfigError, match="negative_ground_classes"):
        joint_training(cfg, {"classes": [{"name": "sky"}]}, None, torch.device("cpu"))
    with pytest.raises(ValueError, match="negative_ground_classes"):
        JointFlowTraining(None, SyntheticConfig(source="uniform", ground_prob=0.5), MEAN, STD, 0,
                          torch.device("cpu"))
    with pytest.raises(ConfigError, match="synthetic: side_scale must be one of"):
        load_train_config(None, ["synthetic.side_scale=cube"])
    with pytest.raises(ConfigError, match="synthetic: ground_prob must be in"):
        load_train_config(None, ["synthetic.ground_prob=1.5"])
