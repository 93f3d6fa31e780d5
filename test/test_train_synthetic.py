"""Synthetic negatives (thesis 4.18-4.20): the JSD term by hand, and gradient routing between segmenter and flow."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import TINY, randomize_batchnorm
from densehybrid_ros.models import build_model
from densehybrid_training.flow import build_flow
from densehybrid_training.losses import densehybrid_loss
from densehybrid_training.synthetic import JointFlowTraining, SyntheticConfig, jsd_to_uniform, route_gradients


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread):
    """Every test here runs single-threaded (see conftest.one_torch_thread)."""


def _jsd_by_hand(p: list[float]) -> float:
    k = len(p)
    m = [(pi + 1 / k) / 2 for pi in p]
    kl_um = sum((1 / k) * math.log((1 / k) / mi) for mi in m)
    kl_pm = sum(pi * math.log(pi / mi) for pi, mi in zip(p, m) if pi > 0)
    return 0.5 * kl_um + 0.5 * kl_pm


def test_jsd_to_uniform_by_hand():
    logits = torch.tensor([[[[0.0, 2.0]], [[0.0, -1.0]], [[0.0, 0.5]]]])  # (1, 3, 1, 2): pixel 0 uniform
    mask = torch.tensor([[[True, True]]])
    p1 = torch.softmax(logits[0, :, 0, 1], 0).tolist()
    expected = (0.0 + _jsd_by_hand(p1)) / 2
    assert jsd_to_uniform(logits, mask).item() == pytest.approx(expected, rel=1e-6)
    only_second = torch.tensor([[[False, True]]])
    assert jsd_to_uniform(logits, only_second).item() == pytest.approx(_jsd_by_hand(p1), rel=1e-6)
    confident = torch.tensor([[[[50.0]], [[0.0]], [[0.0]]]])
    assert jsd_to_uniform(confident, torch.ones(1, 1, 1, dtype=torch.bool)).item() == pytest.approx(
        _jsd_by_hand([1.0, 0.0, 0.0]), rel=1e-4)


def test_gradient_routing_between_segmenter_and_flow():
    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(TINY)).train()
    flow = build_flow("tiny")
    joint = JointFlowTraining(flow, SyntheticConfig(side_range=(16, 32), jsd_weight=0.03), (0.485, 0.456, 0.406),
                              (0.229, 0.224, 0.225), seed=0, device=torch.device("cpu"))
    x = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, TINY.num_classes, (2, 64, 64))
    d_out = torch.zeros(2, 64, 64, dtype=torch.bool)
    mixed, labels2, d_out2, synthetic, replaced = joint.mix(x, labels, d_out, step=0)
    assert synthetic.any() and torch.equal(synthetic, d_out2) and (labels2[synthetic] == 255).all()
    assert replaced is not None and replaced.shape[0] == 2
    out = model(mixed)
    seg_loss = densehybrid_loss(out.logits, out.inlier_logit, labels2, d_out2)["total"]
    flow_terms = joint.flow_loss(out.logits, synthetic, None, step=0)  # L_jsd only
    seg_params, flow_params = list(model.parameters()), list(flow.parameters())

    # reference gradients, each loss on its own
    g_seg_from_seg = torch.autograd.grad(seg_loss, seg_params, retain_graph=True, allow_unused=True)
    g_flow_from_seg = torch.autograd.grad(seg_loss, flow_params, retain_graph=True, allow_unused=True)
    g_flow_from_jsd = torch.autograd.grad(flow_terms["flow_total"], flow_params, retain_graph=True, allow_unused=True)
    # the sample is differentiable: the segmenter's loss WOULD reach the flow, and L_jsd does reach it
    assert any(g is not None and g.abs().sum() > 0 for g in g_flow_from_seg)
    assert any(g is not None and g.abs().sum() > 0 for g in g_flow_from_jsd)

    route_gradients(seg_loss, flow_terms["flow_total"], seg_params, flow_params)
    for p, g in zip(seg_params, g_seg_from_seg):  # segmenter: its own loss only, nothing from the flow loss
        torch.testing.assert_close(p.grad, torch.zeros_like(p) if g is None else g)
    for p, g in zip(flow_params, g_flow_from_jsd):  # flow: lambda * L_jsd only, nothing from the segmenter loss
        torch.testing.assert_close(p.grad if p.grad is not None else torch.zeros_like(p),
                                   torch.zeros_like(p) if g is None else g)


def test_mle_on_replaced_patches_only_touches_the_flow():
    torch.manual_seed(1)
    flow = build_flow("tiny")
    joint = JointFlowTraining(flow, SyntheticConfig(side_range=(16, 16), jsd_weight=0.0), (0.5, 0.5, 0.5),
                              (0.25, 0.25, 0.25), 0, torch.device("cpu"))
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    mixed, _, _, synthetic, replaced = joint.mix(x, torch.zeros(1, 32, 32, dtype=torch.long),
                                                 torch.zeros(1, 32, 32, dtype=torch.bool), step=3)
    # the replaced patch is the original image's content at the pasted rectangle, in [0, 1] units
    x01 = x.detach() * 0.25 + 0.5
    rows, cols = torch.nonzero(synthetic[0], as_tuple=True)
    top, left = int(rows.min()), int(cols.min())
    torch.testing.assert_close(replaced[0].detach(), x01[0, :, top : top + 16, left : left + 16])
    logits = torch.zeros(1, 5, 32, 32, requires_grad=True)
    rng = torch.get_rng_state()  # bits/dim dequantises with random noise: the same draws for the checks below
    terms = joint.flow_loss(logits, synthetic, replaced, step=0)
    mle = terms["mle_bpd"]
    # L_mle (4.18): the flow's NLL of the replaced inlier content in bits/dim, not of the pasted sample
    torch.set_rng_state(rng)
    torch.testing.assert_close(mle, flow.bits_per_dim(replaced.detach().clamp(0, 1)).mean())
    sample = mixed.detach()[0, :, top : top + 16, left : left + 16] * 0.25 + 0.5
    torch.set_rng_state(rng)
    assert not torch.allclose(mle, flow.bits_per_dim(sample[None].clamp(0, 1)).mean())
    assert terms["flow_total"] is mle or torch.equal(terms["flow_total"], mle)  # jsd_weight 0: L = L_mle
    # its gradient reaches the flow's parameters and nothing else: not the segmenter's logits, not the image
    flow_params = list(flow.parameters())
    grads = torch.autograd.grad(mle, [logits, x, *flow_params], allow_unused=True)
    assert grads[0] is None and grads[1] is None
    assert sum(float(g.abs().sum()) for g in grads[2:] if g is not None) > 0