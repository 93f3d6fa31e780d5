"""The DenseHybrid compound loss (thesis 4.16, derivation in appendix 8.5), one function per term.

Pixel sets, for a batch of mixed-content images (4.17):
- inlier pixels  D_in : not pasted and with a known class label (void excluded everywhere);
- pasted pixels  D_out: the negative's pixels (`d_out` mask); their semantic label is void.

    L = b1 * L_cls + b2 * L_d^in + b3 * L_d^out + b4 * L_x^out
      = -b1 E_in[ln P(y|x)] - b2 E_in[ln P(d_in|x)] - b3 E_out[ln(1 - P(d_in|x))] + b4 E_out[LSE(s)]

L_x's inlier part (-s_y) is already inside L_cls (8.23-8.26), so it is not added again. Thesis weights
for traffic scenes with LDN-121: b1 = 1, b2 = b3 = 0.3, b4 = 0.03 (`THESIS_TRAFFIC`).

The terms are built from the score functions of `densehybrid_ros.scores` (one function per equation), so that
training and inference read the same ln p^(x) = LSE(s) (4.7) and ln P(d_out|x) = ln sigmoid(-g) (4.10).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from densehybrid_ros.classes import VOID
from densehybrid_ros.scores import log_inlier_posterior, log_outlier_posterior, unnormalized_log_likelihood


@dataclass(frozen=True)
class LossWeights:
    b1: float = 1.0  # classification, inlier pixels
    b2: float = 0.3  # -ln P(d_in|x), inlier pixels
    b3: float = 0.3  # -ln (1 - P(d_in|x)), pasted pixels
    b4: float = 0.03  # LSE(s) = ln p^(x) (L_x^UB's outlier term), pasted pixels
    # None: L_x's outlier term as in the thesis (unbounded below); a number m: the bounded form
    # `bounded_outlier_likelihood_loss`, which stops pushing a pasted pixel once its LSE is m nats under the
    # batch's mean inlier LSE
    x_out_margin: float | None = None

    def validate(self) -> None:
        for name in ("b1", "b2", "b3", "b4"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss weight {name} must be >= 0, got {getattr(self, name)}")
        if self.x_out_margin is not None and self.x_out_margin < 0:
            raise ValueError(f"loss.x_out_margin must be >= 0 nats (or null), got {self.x_out_margin}")


THESIS_TRAFFIC = LossWeights()  # LDN-121 on road scenes
THESIS_DEEPLAB = LossWeights(1.0, 0.1, 0.1, 0.01)
THESIS_PASCAL_COCO = LossWeights(1.0, 1.5, 1.5, 0.15)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over `mask`; 0 (with a graph) when the mask is empty."""
    count = mask.sum()
    return (values * mask).sum() / count.clamp(min=1)


def inlier_mask(labels: torch.Tensor, d_out: torch.Tensor) -> torch.Tensor:
    """D_in: pixels with a known class that were not pasted over."""
    return (labels != VOID) & ~d_out


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, d_out: torch.Tensor,
                        class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """L_cls = E_in[-ln P(y|x)] (8.23): cross-entropy over inlier pixels only. With `class_weights` (K,), the
    mean is weighted, sum_i w_{y_i} CE_i / sum_i w_{y_i} (class-balanced training,
    densehybrid_training.class_balance)."""
    inl = inlier_mask(labels, d_out)
    target = torch.where(inl, labels.long(), torch.zeros_like(labels, dtype=torch.long))
    ce = F.cross_entropy(logits.float(), target, reduction="none")
    if class_weights is None:
        return _masked_mean(ce, inl)
    w = class_weights.to(ce.device, ce.dtype)[target] * inl
    return (ce * w).sum() / w.sum().clamp(min=1e-12)


def inlier_posterior_loss(inlier_logit: torch.Tensor, labels: torch.Tensor, d_out: torch.Tensor) -> torch.Tensor:
    """L_d's inlier term (4.15): E_in[-ln P(d_in|x)] = E_in[-ln sigmoid(g)]."""
    return _masked_mean(-log_inlier_posterior(inlier_logit), inlier_mask(labels, d_out))


def outlier_posterior_loss(inlier_logit: torch.Tensor, d_out: torch.Tensor) -> torch.Tensor:
    """L_d's outlier term (4.15): E_out[-ln(1 - P(d_in|x))] = E_out[-ln P(d_out|x)] = E_out[-ln sigmoid(-g)]
    (`scores.log_outlier_posterior`, 4.10)."""
    return _masked_mean(-log_outlier_posterior(inlier_logit), d_out)


def outlier_likelihood_loss(logits: torch.Tensor, d_out: torch.Tensor) -> torch.Tensor:
    """L_x^UB's outlier term (4.14): E_out[LSE_y(s_y)] = E_out[ln p^(x)] (`scores.unnormalized_log_likelihood`,
    4.7), pushing the likelihood down on negatives."""
    return _masked_mean(unnormalized_log_likelihood(logits), d_out)


def mean_inlier_likelihood(logits: torch.Tensor, labels: torch.Tensor, d_out: torch.Tensor) -> torch.Tensor:
    """E_in[LSE(s)] = E_in[ln p^(x)] (4.7), detached: where the inliers' likelihood sits (logged as `x_in`; the
    reference of the bounded outlier term)."""
    return _masked_mean(unnormalized_log_likelihood(logits), inlier_mask(labels, d_out)).detach()


def bounded_outlier_likelihood_loss(logits: torch.Tensor, labels: torch.Tensor, d_out: torch.Tensor,
                                    margin: float) -> torch.Tensor:
    """A bounded form of L_x^UB's outlier term (not in the thesis; the project's option):
    E_out[max(0, LSE(s) - (sg(E_in[LSE(s)]) - margin))], with sg the stop-gradient.

    The thesis's E_out[LSE(s)] (4.14) has no lower bound: on the sim it drove pasted pixels to LSE -52 (inliers
    ~3) and the total loss below zero while rider and bicycle IoU fell to ~0. This form pushes a pasted pixel's
    likelihood down only until it lies `margin` nats under the batch's mean inlier likelihood, so the gradient
    stays on the negatives that still look like inliers. The reference is detached, so no gradient of this term
    reaches the inlier pixels (it cannot be lowered by lowering the inliers' logits). A batch without inlier
    pixels has reference 0."""
    reference = mean_inlier_likelihood(logits, labels, d_out)
    excess = F.relu(unnormalized_log_likelihood(logits) - (reference - margin))
    return _masked_mean(excess, d_out)


def densehybrid_loss(logits: torch.Tensor, inlier_logit: torch.Tensor, labels: torch.Tensor, d_out: torch.Tensor,
                     weights: LossWeights = THESIS_TRAFFIC, class_weights: torch.Tensor | None = None
                     ) -> dict[str, torch.Tensor]:
    """The compound loss (4.16) with modulation weights; returns every term and `total`.

    logits (B, K, H, W), inlier_logit (B, 1, H, W), labels (B, H, W) with 255 = void, d_out (B, H, W) bool;
    `class_weights` (K,) optionally balance L_cls. With `weights.x_out_margin` set, L_x's outlier term is the
    bounded form (`x_out_bounded`); `x_out` is then logged only. `x_in` (logged) is E_in[LSE(s)].
    """
    terms = {
        "cls": classification_loss(logits, labels, d_out, class_weights),
        "d_in": inlier_posterior_loss(inlier_logit, labels, d_out),
        "d_out": outlier_posterior_loss(inlier_logit, d_out),
        "x_out": outlier_likelihood_loss(logits, d_out),
    }
    if weights.x_out_margin is not None:
        terms["x_out_bounded"] = bounded_outlier_likelihood_loss(logits, labels, d_out, weights.x_out_margin)
    x_term = terms["x_out"] if weights.x_out_margin is None else terms["x_out_bounded"]
    terms["total"] = (weights.b1 * terms["cls"] + weights.b2 * terms["d_in"] + weights.b3 * terms["d_out"]
                      + weights.b4 * x_term)
    terms["x_in"] = mean_inlier_likelihood(logits, labels, d_out)
    return terms


def authors_code_loss(logits: torch.Tensor, inlier_logit: torch.Tensor, labels: torch.Tensor, d_out: torch.Tensor,
                      ce_weight: float = 0.3, lse_weight: float = 0.03,
                      class_weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The public DenseHybrid code's variant, for comparison: CE + 0.03 LSE(negatives) + 0.3 * a 2-way CE of
    the outlier head in which every non-pasted pixel, void and padding included, counts as an inlier."""
    cls = classification_loss(logits, labels, d_out, class_weights)
    x_out = outlier_likelihood_loss(logits, d_out)
    head = torch.where(d_out, -log_outlier_posterior(inlier_logit), -log_inlier_posterior(inlier_logit)).mean()
    total = cls + lse_weight * x_out + ce_weight * head
    return {"cls": cls, "x_out": x_out, "head": head, "total": total,
            "x_in": mean_inlier_likelihood(logits, labels, d_out)}
