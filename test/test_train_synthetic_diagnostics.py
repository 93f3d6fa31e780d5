"""SynDenseHybrid diagnostics and eval-mode sampling (issue 14): samples never touch BatchNorm running statistics,
equal eval-mode samples and stay differentiable; diagnostics match hand/autograd computations and leave the
training step's gradients unchanged."""
from __future__ import annotations

import copy
import csv
import math

import cv2
import numpy as np
import pytest
import torch

from conftest import TINY, randomize_batchnorm
from densehybrid_ros.models import build_model
from densehybrid_training.config import TrainConfig
from densehybrid_training.engine import _joint_step
from densehybrid_training.flow import build_flow
from densehybrid_training.synthetic import (JointFlowTraining, SyntheticConfig, masked_confidence, sample_grid,
                                            saturated_count)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread):
    """Every test here runs single-threaded (see conftest.one_torch_thread)."""


def _joint(seed: int = 0, **cfg) -> JointFlowTraining:
    torch.manual_seed(seed)
    flow = randomize_batchnorm(build_flow("tiny"), seed)  # BatchNorm in the coupling nets, non-trivial statistics
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in flow.modules())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a "trained" flow: couplings no longer the identity (zero-initialised output convs)
        for p in flow.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        for name, buffer in flow.named_buffers():
            if name.endswith("initialized"):  # ActNorm as after pretraining
                buffer.fill_(True)
    return JointFlowTraining(flow, SyntheticConfig(**{"side_range": (16, 32), **cfg}), MEAN, STD, seed=seed,
                             device=torch.device("cpu"))


def _buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.named_buffers()}


def test_sampling_never_changes_batchnorm_running_statistics():
    joint = _joint()
    before = _buffers(joint.flow)
    samples = joint.sample(4, 16, 16)
    assert samples.requires_grad
    after = _buffers(joint.flow)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(m.training for m in joint.flow.modules())  # train mode restored for L_mle
    # mix() pastes through the same path: still no change
    joint.mix(torch.randn(2, 3, 64, 64), torch.zeros(2, 64, 64, dtype=torch.long),
              torch.zeros(2, 64, 64, dtype=torch.bool), step=0)
    assert all(torch.equal(before[k], v) for k, v in joint.flow.named_buffers())
    # the control: plain train-mode sampling does move the running statistics
    joint.flow.sample(4, 16, 16)
    assert any(not torch.equal(before[k], v) for k, v in joint.flow.named_buffers() if "running_mean" in k)


def test_samples_equal_eval_mode_samples_and_differ_from_train_mode():
    joint = _joint(temperature=0.8)
    reference = copy.deepcopy(joint.flow).eval()
    torch.manual_seed(5)
    ours = joint.sample(3, 16, 24)
    torch.manual_seed(5)  # the same latent draws
    with torch.no_grad():
        expected = reference.sample(3, 16, 24, temperature=0.8)
    assert torch.equal(ours.detach(), expected)
    torch.manual_seed(5)
    with torch.no_grad():
        train_mode = copy.deepcopy(joint.flow).train().sample(3, 16, 24, temperature=0.8)
    assert not torch.allclose(train_mode, expected)  # batch statistics would have leaked


def test_gradients_reach_the_flow_through_eval_mode_samples():
    joint = _joint()
    params = list(joint.flow.parameters())
    weights = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))

    def objective() -> torch.Tensor:
        torch.manual_seed(7)
        return (joint.sample(2, 16, 16) * weights).sum()

    grads = torch.autograd.grad(objective(), params, allow_unused=True)
    nonzero = sum(1 for g in grads if g is not None and bool(g.abs().sum() > 0))
    assert nonzero > len(params) // 2
    # directional derivative by central finite differences along a random direction
    gen = torch.Generator().manual_seed(2)
    direction = [torch.randn(p.shape, generator=gen) * 1e-2 for p in params]
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, direction) if g is not None)
    eps = 1e-2
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(eps * d)
        plus = float(objective())
        for p, d in zip(params, direction):
            p.sub_(2 * eps * d)
        minus = float(objective())
        for p, d in zip(params, direction):
            p.add_(eps * d)
    numeric = (plus - minus) / (2 * eps)
    assert analytic != 0 and numeric == pytest.approx(analytic, rel=0.05, abs=1e-3)


def test_masked_confidence_by_hand():
    logits = torch.tensor([[[[0.0, 2.0, 1.0]], [[0.0, -1.0, 3.0]]]])  # (1, 2, 1, 3)
    mask = torch.tensor([[[True, True, False]]])
    out = masked_confidence(logits, mask)
    p1 = math.exp(2.0) / (math.exp(2.0) + math.exp(-1.0))
    assert out["max_softmax"] == pytest.approx((0.5 + p1) / 2, rel=1e-6)

    def jsd(p):  # JSD between U = (1/2, 1/2) and (p, 1 - p), natural log
        m = [(p + 0.5) / 2, (1 - p + 0.5) / 2]
        kl_um = sum(0.5 * math.log(0.5 / mi) for mi in m)
        kl_pm = sum(q * math.log(q / mi) for q, mi in zip([p, 1 - p], m))
        return 0.5 * kl_um + 0.5 * kl_pm

    assert out["jsd"] == pytest.approx((0.0 + jsd(p1)) / 2, rel=1e-6)
    assert all(math.isnan(v) for v in masked_confidence(logits, torch.zeros_like(mask)).values())


def test_saturated_count_by_hand():
    values = torch.tensor([[0.0, 0.2, 1.0], [0.999, 1.0, 0.0]])
    assert saturated_count(values) == (4, 6)
    assert saturated_count(torch.full((2, 3, 4, 4), 0.5)) == (0, 96)


def test_no_gradient_reaches_the_flow_through_saturated_sample_values():
    """`saturated_count`'s premise, checked by autograd: a hot sample has values clamped at 0 or 1, and the flow's
    parameters get gradient from its other values only."""
    joint = _joint(temperature=4.0)
    torch.manual_seed(1)
    samples = joint.sample(2, 16, 16)
    saturated = (samples.detach() <= 0) | (samples.detach() >= 1)
    assert 0 < int(saturated.sum()) < saturated.numel()
    params = [p for p in joint.flow.parameters() if p.requires_grad]

    def grad_norm(mask: torch.Tensor) -> float:
        grads = torch.autograd.grad((samples * mask).sum(), params, retain_graph=True, allow_unused=True)
        return math.sqrt(sum(float(g.pow(2).sum()) for g in grads if g is not None))

    assert grad_norm(saturated.float()) == 0.0
    assert grad_norm((~saturated).float()) > 0.0


def test_diagnostics_count_the_saturated_values_of_the_drawn_samples():
    """sample_saturated is the share of saturated values of the samples `mix` drew (redrawn from the same torch
    seed: one 16x16 size for the batch, drawn in one call), before upsampling and pasting."""
    joint = _joint(temperature=4.0, side_range=(16, 16))
    model = randomize_batchnorm(build_model(TINY)).train()
    x, labels, d_out = _step_inputs()
    torch.manual_seed(7)
    mixed, labels2, d_out2, synthetic, replaced = joint.mix(x, labels, d_out, step=0)
    torch.manual_seed(7)
    redrawn = joint.sample(2, 16, 16).detach()
    expected = int(((redrawn <= 0) | (redrawn >= 1)).sum()) / redrawn.numel()
    assert 0.0 < expected < 1.0
    out = model(mixed)
    row = joint.diagnostics(out.logits, labels2, d_out2, synthetic,
                            joint.flow_loss(out.logits, synthetic, replaced, step=1))
    assert row["sample_saturated"] == pytest.approx(expected, rel=1e-6)
    controls = JointFlowTraining(None, SyntheticConfig(source="uniform", side_range=(16, 32)), MEAN, STD, seed=0,
                                 device=torch.device("cpu"))
    mixed, labels2, d_out2, synthetic, _ = controls.mix(x, labels, d_out, step=0)
    assert math.isnan(controls.diagnostics(model(mixed).logits, labels2, d_out2, synthetic, {})["sample_saturated"])


def test_sample_grid_places_every_sample():
    samples = torch.stack([torch.full((3, 4, 6), v) for v in (0.0, 0.5, 1.0)])
    samples[1, 0] = 1.0  # sample 1: red channel full
    grid = sample_grid(samples, columns=2, gap=2)
    assert grid.shape == (2 * 4 + 2, 2 * 6 + 2, 3) and grid.dtype == np.uint8
    assert (grid[:4, :6] == 0).all()
    assert (grid[:4, 8:14] == [255, 128, 128]).all()
    assert (grid[6:10, :6] == 255).all() and (grid[6:, 8:] == 0).all()


def _step_inputs():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 64, 64, generator=gen)
    labels = torch.randint(0, TINY.num_classes, (2, 64, 64), generator=gen)
    labels[:, :4] = 255  # some void pixels, never counted as inliers
    return x, labels, torch.zeros(2, 64, 64, dtype=torch.bool)


def test_gradient_share_matches_backward_on_each_term():
    joint = _joint(jsd_weight=0.5)
    model = randomize_batchnorm(build_model(TINY)).train()
    x, labels, d_out = _step_inputs()
    mixed, labels2, d_out2, synthetic, replaced = joint.mix(x, labels, d_out, step=0)
    out = model(mixed)
    terms = joint.flow_loss(out.logits, synthetic, replaced, step=0)
    row = joint.diagnostics(out.logits, labels2, d_out2, synthetic, terms)
    params = list(joint.flow.parameters())
    assert all(p.grad is None for p in params)  # diagnostics accumulate nothing

    def backward_norm(loss: torch.Tensor) -> float:
        joint.flow.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        return float(torch.cat([p.grad.flatten() for p in params if p.grad is not None]).norm())

    boundary, mle = backward_norm(0.5 * terms["jsd"]), backward_norm(terms["mle_bpd"])
    assert boundary > 0 and mle > 0
    assert row["grad_norm_boundary"] == pytest.approx(boundary, rel=1e-4)
    assert row["grad_norm_mle"] == pytest.approx(mle, rel=1e-4)
    assert row["boundary_grad_share"] == pytest.approx(boundary / mle, rel=1e-4)
    assert row["jsd_weight"] == 0.5 and row["mle_bpd"] == pytest.approx(float(terms["mle_bpd"].detach()), rel=1e-6)
    # pixel groups: pasted pixels vs labelled inlier pixels (void excluded), each by its own mask
    probs = torch.softmax(out.logits.detach(), 1).amax(1)
    inlier = (labels2 != 255) & ~d_out2
    assert row["max_softmax_synthetic"] == pytest.approx(float(probs[synthetic].mean()), rel=1e-5)
    assert row["max_softmax_inlier"] == pytest.approx(float(probs[inlier].mean()), rel=1e-5)
    # sample statistics: per channel over the pasted pixels of the mixed images, back in [0, 1] units
    pasted = (mixed.detach() * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1))
    pasted = pasted.permute(1, 0, 2, 3)[:, synthetic]
    for c, ch in enumerate("rgb"):
        assert row[f"sample_mean_{ch}"] == pytest.approx(float(pasted[c].mean()), abs=1e-5)
        assert row[f"sample_std_{ch}"] == pytest.approx(float(pasted[c].std()), abs=1e-5)


def test_diagnostics_leave_the_training_step_unchanged_and_are_written(tmp_path):
    results = {}
    for every in (0, 1):
        joint = _joint(diagnostics_every=every)
        model = randomize_batchnorm(build_model(TINY)).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        cfg = TrainConfig(mode="finetune", out=str(tmp_path / f"every{every}"), synthetic=joint.cfg)
        x, labels, d_out = _step_inputs()
        torch.manual_seed(11)
        _joint_step(cfg, model, joint, optimizer, x, labels, d_out, step=0)
        results[every] = [p.detach().clone() for p in [*model.parameters(), *joint.flow.parameters()]]
    assert all(torch.equal(a, b) for a, b in zip(results[0], results[1]))
    assert not (tmp_path / "every0" / "joint_diagnostics.csv").exists()
    out = tmp_path / "every1"
    with (out / "joint_diagnostics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["step"] == "1"
    assert float(rows[0]["boundary_grad_share"]) > 0
    assert 0 <= float(rows[0]["jsd_synthetic"]) <= math.log(2)
    png = cv2.imread(str(out / "pasted" / "step_0000001.png"))
    assert png is not None and png.shape[0] >= 16
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_diagnostics_csv_keeps_one_header_when_a_resume_logs_new_columns(tmp_path):
    """A run resumed by a version that logs more columns: old rows keep their values, the header grows, and
    every row reads back under the right column names (csv.DictReader, not the writer's own code)."""
    from densehybrid_training.synthetic import JointDiagnostics

    log = JointDiagnostics(tmp_path)
    log.write(10, {"a": 1.0, "b": 2.0}, None)
    JointDiagnostics(tmp_path).write(20, {"a": 3.0, "c": 4.0, "b": 5.0}, None)
    with (tmp_path / "joint_diagnostics.csv").open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["step", "a", "b", "c"]
    assert rows == [{"step": "10", "a": "1", "b": "2", "c": ""}, {"step": "20", "a": "3", "b": "5", "c": "4"}]
