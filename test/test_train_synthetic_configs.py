"""The issue-14 run configs: the SynDenseHybrid fine-tuning of the Detector-quality closed-set model, its controls
(thesis Tab. 6.11) and ablation (Tab. 6.10), and the flow pretraining they start from, load and validate, keep the
real-negative run's model, data and validation, at least half its steps, and differ from each other only where the
control or ablation says."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from densehybrid_training.config import load_train_config
from densehybrid_training.flow import PRESETS
from densehybrid_training.flow_train import FlowTrainConfig

TRAIN = Path(__file__).resolve().parents[1] / "config" / "train"
CONTROLS = {"uniform": {"source": "uniform"}, "inlier_crops": {"source": "inlier_crops"},
            "detector": {"boundary": "detector"}}


def _load(name: str):
    return load_train_config(TRAIN / f"{name}.yaml", ["mode=finetune"])


def _real_negative_stages() -> list:
    """The bundled real-negative model's fine-tuning stages, followed back through their `init` checkpoints from
    its last stage to the closed-set model."""
    by_out = {}
    for path in TRAIN.glob("sim_finetune_real*.yaml"):
        cfg = _load(path.stem)
        by_out[cfg.out] = cfg
    stages, cfg = [], _load("sim_finetune_real_path4_rfs")
    while cfg is not None:
        stages.append(cfg)
        cfg = by_out.get(cfg.init.removesuffix("/checkpoints/last.pt"))
    return stages


def test_synthetic_big_follows_the_real_negative_fine_tuning():
    stages = _real_negative_stages()
    real, syn = stages[-1], _load("sim_synthetic_big")  # the first stage: sim_finetune_real_big
    assert len(stages) == 5 and [c.steps for c in stages] == [1200, 1600, 1600, 1600, 4800]
    assert syn.init == "runs/sim_segmenter_big/checkpoints/last.pt" == real.init
    # at least half the real-negative fine-tuning (thesis 5.3: 5 epochs with synthetic vs 10 with real negatives)
    assert syn.steps >= sum(c.steps for c in stages) / 2 == 5400
    for name in ("model", "batch_size", "class_balance", "loss", "optim", "speed", "validation"):
        assert getattr(syn, name) == getattr(real, name), name
    for name in ("inliers", "root", "crop", "scale_range"):
        assert getattr(syn.data, name) == getattr(real.data, name), name
    assert syn.data.negatives is None  # no real negatives at all
    s = syn.synthetic
    assert (s.source, s.sizes, s.shape, s.real_prob) == ("flow", "image", "mixed", 0.0)
    assert s.flow_optim.recipe == "thesis" and s.flow_lr == pytest.approx(2e-5)  # thesis 5.3 fine-tuning rate
    assert s.boundary_share > 0 and s.diagnostics_every > 0
    assert tuple(s.side_range) == (16, 160) == tuple(real.data.negative_side)


@pytest.mark.parametrize("name", sorted(CONTROLS))
def test_controls_differ_only_where_they_say(name):
    main, ctl = _load("sim_synthetic_big"), _load(f"sim_synthetic_big_{name}")
    assert ctl.out == f"{main.out}_{name}" and ctl.out != main.out
    a, b = asdict(main), asdict(ctl)
    a.pop("out"), b.pop("out")
    sa, sb = a.pop("synthetic"), b.pop("synthetic")
    assert a == b  # same segmenter, data, steps, optimiser, validation: the same budget
    for key, value in CONTROLS[name].items():
        assert sb[key] == value and sa[key] != value
    flow_only = {"flow_checkpoint", "temperature", "jsd_weight", "boundary_share", "share_every", "share_momentum",
                 "share_average", "lambda_range", "flow_lr", "flow_optim", "mle_every", "mle_norm", "boundary",
                 "sample_scale", "flow_every"}
    shared = set(sa) - set(CONTROLS[name]) - (flow_only if sb["source"] != "flow" else set())
    assert {k: sa[k] for k in shared} == {k: sb[k] for k in shared}


def test_flow_pretraining_config_uses_the_thesis_recipe():
    cfg = load_train_config(TRAIN / "sim_flow_pretrain_big.yaml", cls=FlowTrainConfig)
    assert cfg.optim.recipe == "thesis" and cfg.lr == pytest.approx(1e-3)
    assert cfg.optim.finetune_lr == pytest.approx(2e-5) and 0 < cfg.optim.finetune_steps < cfg.steps
    assert tuple(cfg.data.crop) == (64, 64) and cfg.data.root == _load("sim_synthetic_big").data.root
    assert cfg.flow in PRESETS
    assert _load("sim_synthetic_big").synthetic.flow_checkpoint == f"{cfg.out}/checkpoints/last.pt"
