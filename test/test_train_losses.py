"""Loss terms (thesis 4.14-4.16) against hand computations; pasting (4.17) keeps image/label/d_out consistent."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from densehybrid_training.losses import (LossWeights, authors_code_loss, bounded_outlier_likelihood_loss,
                                         classification_loss, densehybrid_loss, inlier_posterior_loss,
                                         outlier_likelihood_loss, outlier_posterior_loss)
from densehybrid_training.paste import paste_negative, random_position, random_rectangle

# one image, 2 classes, 1x3 pixels: pixel 0 inlier class 1, pixel 1 void (not pasted), pixel 2 pasted
LOGITS = torch.tensor([[[[0.0, 2.0, 1.0]], [[1.0, -1.0, 3.0]]]])  # (1, 2, 1, 3)
G = torch.tensor([[[[0.5, -2.0, -1.5]]]])  # inlier logit g
LABELS = torch.tensor([[[1, 255, 255]]])
D_OUT = torch.tensor([[[False, False, True]]])


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_each_term_by_hand():
    # L_cls: pixel 0 only: -ln softmax([0, 1])[1]
    assert classification_loss(LOGITS, LABELS, D_OUT).item() == pytest.approx(-math.log(math.exp(1) / (1 + math.exp(1))))
    # L_d inlier term: pixel 0 only (pixel 1 is void, excluded): -ln sigmoid(0.5)
    assert inlier_posterior_loss(G, LABELS, D_OUT).item() == pytest.approx(-math.log(sig(0.5)))
    # L_d outlier term: pixel 2: -ln(1 - sigmoid(-1.5))
    assert outlier_posterior_loss(G, D_OUT).item() == pytest.approx(-math.log(1 - sig(-1.5)))
    # L_x outlier term: pixel 2: LSE(1, 3)
    assert outlier_likelihood_loss(LOGITS, D_OUT).item() == pytest.approx(math.log(math.exp(1) + math.exp(3)))


def test_terms_stay_finite_and_exact_for_saturated_outputs():
    # float32 sigmoid(100) rounds to 1 and exp(1000) overflows: the terms must come from stable log forms
    g = torch.tensor([[[[-100.0, 0.0, 100.0]]]])
    logits = torch.tensor([[[[0.0, 0.0, 1000.0]]], [[[0.0, 0.0, 1000.0]]]]).reshape(1, 2, 1, 3)
    labels = torch.tensor([[[1, 255, 255]]])
    # -ln sigmoid(-100) = 100 + ln(1 + e^-100); -ln(1 - sigmoid(100)) = 100 + ln(1 + e^-100); LSE(1000, 1000)
    assert inlier_posterior_loss(g, labels, D_OUT).item() == pytest.approx(100.0)
    assert outlier_posterior_loss(g, D_OUT).item() == pytest.approx(100.0)
    assert outlier_likelihood_loss(logits, D_OUT).item() == pytest.approx(1000.0 + math.log(2))


def test_compound_loss_weights_and_void_exclusion():
    w = LossWeights(1.0, 0.3, 0.2, 0.05)
    t = densehybrid_loss(LOGITS, G, LABELS, D_OUT, w)
    expected = (-math.log(math.exp(1) / (1 + math.exp(1))) + 0.3 * -math.log(sig(0.5))
                + 0.2 * -math.log(1 - sig(-1.5)) + 0.05 * math.log(math.exp(1) + math.exp(3)))
    assert t["total"].item() == pytest.approx(expected)
    # changing the void pixel's outputs changes nothing
    logits2, g2 = LOGITS.clone(), G.clone()
    logits2[..., 1] = 50.0
    g2[..., 1] = -30.0
    assert densehybrid_loss(logits2, g2, LABELS, D_OUT, w)["total"].item() == pytest.approx(expected)


def test_no_pasted_pixels_gives_zero_outlier_terms_with_gradient():
    logits = LOGITS.clone().requires_grad_(True)
    t = densehybrid_loss(logits, G, LABELS, torch.zeros_like(D_OUT))
    assert t["d_out"].item() == 0.0 and t["x_out"].item() == 0.0
    t["total"].backward()
    assert torch.isfinite(logits.grad).all()


def test_gradients_match_autograd_of_the_formula():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 1, 5, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 4, (2, 5, 6))
    labels[0, 0] = 255
    d_out = torch.rand(2, 5, 6) < 0.3
    labels[d_out] = 255
    w = LossWeights()
    total = densehybrid_loss(logits, g, labels, d_out, w)["total"]
    # independent formula, written with explicit probabilities
    p = torch.softmax(logits, 1)
    inl = (labels != 255) & ~d_out
    lbl = labels.clamp(max=3)
    ce = -torch.log(p.gather(1, lbl[:, None]).squeeze(1))[inl].mean()
    pin = torch.sigmoid(g[:, 0])
    ref = (ce - w.b2 * torch.log(pin[inl]).mean() - w.b3 * torch.log(1 - pin[d_out]).mean()
           + w.b4 * torch.log(torch.exp(logits).sum(1))[d_out].mean())
    assert total.item() == pytest.approx(ref.item(), rel=1e-6)
    ga = torch.autograd.grad(total, (logits, g))
    gb = torch.autograd.grad(ref, (logits, g))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_bounded_outlier_term_by_hand():
    """Inliers' mean LSE is the reference; a pasted pixel costs max(0, LSE - (reference - m)) and gets no push
    below that; the reference carries no gradient."""
    # 1x4 pixels, 2 classes: pixels 0, 1 inliers; 2, 3 pasted
    logits = torch.tensor([[[[2.0, 0.0, 1.0, -9.0]], [[0.0, 4.0, 1.0, -9.0]]]], requires_grad=True)
    labels = torch.tensor([[[0, 1, 255, 255]]])
    d_out = torch.tensor([[[False, False, True, True]]])
    lse = [math.log(math.exp(2) + 1), math.log(1 + math.exp(4)), math.log(2 * math.exp(1)), math.log(2 * math.exp(-9))]
    reference = (lse[0] + lse[1]) / 2
    margin = 2.0
    expected = (max(0.0, lse[2] - (reference - margin)) + max(0.0, lse[3] - (reference - margin))) / 2
    assert lse[2] > reference - margin > lse[3]  # one pixel above the bound, one below
    loss = bounded_outlier_likelihood_loss(logits, labels, d_out, margin)
    assert loss.item() == pytest.approx(expected)
    (grad,) = torch.autograd.grad(loss, logits)
    # d/ds of LSE is softmax; only pixel 2 (above the bound) gets a gradient, with weight 1/2 of the mean
    torch.testing.assert_close(grad[0, :, 0, 2], torch.tensor([0.25, 0.25]))
    assert torch.count_nonzero(grad[..., [0, 1, 3]]) == 0


def test_compound_loss_uses_the_bounded_term_when_a_margin_is_set():
    w = LossWeights(1.0, 0.3, 0.2, 0.05, x_out_margin=1.0)
    t = densehybrid_loss(LOGITS, G, LABELS, D_OUT, w)
    # reference: pixel 0's LSE(0, 1); pasted pixel 2: LSE(1, 3)
    ref = math.log(1 + math.e)
    bounded = max(0.0, math.log(math.exp(1) + math.exp(3)) - (ref - 1.0))
    expected = (-math.log(math.exp(1) / (1 + math.exp(1))) + 0.3 * -math.log(sig(0.5))
                + 0.2 * -math.log(1 - sig(-1.5)) + 0.05 * bounded)
    assert t["total"].item() == pytest.approx(expected)
    assert t["x_out_bounded"].item() == pytest.approx(bounded)
    assert t["x_in"].item() == pytest.approx(ref)
    with pytest.raises(ValueError, match="x_out_margin"):
        LossWeights(x_out_margin=-1.0).validate()


def test_authors_variant_counts_void_as_inlier():
    t = authors_code_loss(LOGITS, G, LABELS, D_OUT)
    head = (-math.log(sig(0.5)) - math.log(sig(-2.0)) - math.log(1 - sig(-1.5))) / 3
    assert t["head"].item() == pytest.approx(head)


def test_paste_keeps_image_labels_and_dout_consistent():
    rng = np.random.default_rng(0)
    image = torch.rand(3, 20, 30)
    labels = torch.randint(0, 5, (20, 30))
    labels[0, :] = 255
    d_out = torch.zeros(20, 30, dtype=torch.bool)
    patch = torch.rand(3, 6, 8)
    mask = torch.zeros(6, 8, dtype=torch.bool)
    mask[1:5, 2:7] = True
    mask[0, 0] = True
    top, left = random_position(rng, 20, 30, 6, 8)
    x, y, d = paste_negative(image, labels, d_out, patch, mask, top, left)
    m = torch.zeros(20, 30, dtype=torch.bool)
    m[top : top + 6, left : left + 8] = mask
    assert torch.equal(d, m)
    assert torch.equal(x[:, m], patch[:, mask]) and torch.equal(x[:, ~m], image[:, ~m])
    assert (y[m] == 255).all() and torch.equal(y[~m], labels[~m])
    with pytest.raises(ValueError, match="does not fit"):
        paste_negative(image, labels, d_out, patch, mask, 15, 0)


def test_random_rectangle_respects_recipe():
    rng = np.random.default_rng(1)
    sizes = [random_rectangle(rng, 64, 96) for _ in range(200)]
    assert all(16 <= h <= 64 and 16 <= w <= 64 and h % 8 == 0 and w % 8 == 0 for h, w in sizes)
    assert len(set(sizes)) > 10
