"""Dense anomaly scores and open-set fusion, one function per equation.

Conventions: logits `s` are (B, K, H, W) with classes on dim 1; the inlier logit `g` is (B, 1, H, W)
or (B, H, W). Every anomaly score is (B, H, W) float32 and oriented so that HIGHER = MORE ANOMALOUS.

The threshold rule, one for the whole project (`is_anomalous`): a pixel is anomalous where score >= threshold.
Evaluation's operating points (TPR 95%: the lowest score still flagged), calibration, the node's open-set map and
obstacle mask, and densehybrid-eval-bag all use it.
Equation numbers refer to the thesis (Grcic, 2024); Sec. 3 of the TPAMI 2024 paper is the same model.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import numpy as np
import torch
import torch.nn.functional as F


def _squeeze_channel(inlier_logit: torch.Tensor) -> torch.Tensor:
    return inlier_logit[:, 0] if inlier_logit.dim() == 4 else inlier_logit


def class_posterior(logits: torch.Tensor) -> torch.Tensor:
    """P(y|x) = softmax(s) over classes (4.5, 4.9). Returns (B, K, H, W)."""
    return torch.softmax(logits.float(), dim=1)


def unnormalized_log_likelihood(logits: torch.Tensor) -> torch.Tensor:
    """ln p^(x) = LSE_y(s_y): logits read as an unnormalized joint exp(s_y) = p^(y, x) (4.6, 4.7)."""
    return torch.logsumexp(logits.float(), dim=1)


def log_outlier_posterior(inlier_logit: torch.Tensor) -> torch.Tensor:
    """ln P(d_out|x) = ln(1 - sigmoid(g(z))) = logsigmoid(-g(z)) (4.10), computed stably."""
    return F.logsigmoid(-_squeeze_channel(inlier_logit).float())


def log_inlier_posterior(inlier_logit: torch.Tensor) -> torch.Tensor:
    """ln P(d_in|x) = ln sigmoid(g(z)) = logsigmoid(g(z)) (4.10), computed stably."""
    return F.logsigmoid(_squeeze_channel(inlier_logit).float())


def hybrid_score(logits: torch.Tensor, inlier_logit: torch.Tensor) -> torch.Tensor:
    """DenseHybrid score s_H(x) = ln P(d_out|x) - ln p^(x) (4.11); the normalizer Z is dropped."""
    return log_outlier_posterior(inlier_logit) - unnormalized_log_likelihood(logits)


def discriminative_score(inlier_logit: torch.Tensor) -> torch.Tensor:
    """Discriminative component alone, s_D(x) = ln P(d_out|x) (4.10)."""
    return log_outlier_posterior(inlier_logit)


def generative_score(logits: torch.Tensor) -> torch.Tensor:
    """Generative component alone, s_G(x) = -ln p^(x) = -LSE(s) (4.7)."""
    return -unnormalized_log_likelihood(logits)


def msp_score(logits: torch.Tensor) -> torch.Tensor:
    """Max-softmax baseline (Hendrycks & Gimpel): -max_y P(y|x)."""
    return -class_posterior(logits).amax(dim=1)


def max_logit_score(logits: torch.Tensor) -> torch.Tensor:
    """Max-logit baseline (Hendrycks et al.): -max_y s_y."""
    return -logits.float().amax(dim=1)


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Free energy (Liu et al.): E(x) = -T * LSE(s / T). At T = 1 it equals `generative_score`."""
    if temperature <= 0:
        raise ValueError(f"energy temperature must be > 0, got {temperature}")
    return -temperature * torch.logsumexp(logits.float() / temperature, dim=1)


def entropy_score(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the class posterior, H(P(y|x)) = -sum_y P log P (nats)."""
    log_p = torch.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


ScoreMap = TypeVar("ScoreMap", torch.Tensor, np.ndarray)


def is_anomalous(score: ScoreMap, threshold: float) -> ScoreMap:
    """The project's threshold rule: True where ``score >= threshold`` (a threshold equal to an attained score flags
    that score; a TPR-95% operating point is such a score). Compared in the score map's own floating dtype (the
    threshold is rounded to it, as torch does with a Python number), so a torch tensor and a numpy array of the
    same float32 scores give the same mask. Works on torch tensors and numpy arrays alike."""
    if isinstance(score, torch.Tensor):
        return score >= float(threshold)
    values = np.asarray(score)
    if np.issubdtype(values.dtype, np.floating):
        return values >= values.dtype.type(threshold)
    return values >= threshold


IdMap = TypeVar("IdMap", torch.Tensor, np.ndarray)


def closed_set_decision(logits: torch.Tensor, class_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Closed-set class ids argmax_k (s_k + b_k): the thesis's argmax (4.2.2), with an optional per-class bias b (K,)
    on the logits: post-hoc logit adjustment (Menon et al., ICLR 2021). A loss weighted by w_k trains logits whose
    softmax leans towards heavy classes by ln w_k; b_k = -tau ln w_k takes back the share tau of that lean
    (`weights.ClassBias`). Only the decision moves: the anomaly scores read the unbiased logits. (B, K, H, W) ->
    (B, H, W) int64."""
    if class_bias is None:
        return logits.argmax(dim=1)
    if class_bias.shape != (logits.shape[1],):
        raise ValueError(f"class_bias has shape {tuple(class_bias.shape)}, the logits {logits.shape[1]} classes")
    return (logits.float() + class_bias.to(logits.device, torch.float32).view(1, -1, 1, 1)).argmax(dim=1)


def open_set_fusion(class_ids: IdMap, score: ScoreMap, threshold: float, unknown_id: int) -> IdMap:
    """K+1-way open-set map (thesis 4.2.2): closed-set argmax, overridden with `unknown_id` (= K)
    wherever the anomaly score reaches the threshold (`is_anomalous`: score >= threshold).

    Torch tensors or numpy arrays (both of one kind; shapes broadcast); the result has class_ids' kind and dtype.
    TypeError when one is a tensor and the other an array, ValueError when unknown_id does not fit that dtype."""
    anomalous = is_anomalous(score, threshold)
    if isinstance(class_ids, torch.Tensor) != isinstance(anomalous, torch.Tensor):
        raise TypeError(f"class_ids and score must both be torch tensors or both numpy arrays, got "
                        f"{type(class_ids).__name__} and {type(score).__name__}")
    if isinstance(class_ids, torch.Tensor):
        return class_ids.masked_fill(anomalous, unknown_id)
    ids = np.asarray(class_ids)
    if np.issubdtype(ids.dtype, np.integer) and not np.iinfo(ids.dtype).min <= unknown_id <= np.iinfo(ids.dtype).max:
        raise ValueError(f"unknown_id {unknown_id} does not fit class_ids' dtype {ids.dtype}")
    return np.where(anomalous, np.asarray(unknown_id, dtype=ids.dtype), ids)


ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Every score a single forward pass yields, by name: f(logits, inlier_logit) -> (B, H, W).
SCORES: dict[str, ScoreFn] = {
    "hybrid": hybrid_score,
    "generative": lambda s, g: generative_score(s),
    "discriminative": lambda s, g: discriminative_score(g),
    "msp": lambda s, g: msp_score(s),
    "max_logit": lambda s, g: max_logit_score(s),
    "energy": lambda s, g: energy_score(s),
    "entropy": lambda s, g: entropy_score(s),
}


def compute_scores(names: list[str] | tuple[str, ...], logits: torch.Tensor, inlier_logit: torch.Tensor) -> dict[str, torch.Tensor]:
    """The named scores of one forward pass; unknown names raise a ValueError listing the valid ones."""
    unknown = [n for n in names if n not in SCORES]
    if unknown:
        raise ValueError(f"unknown score(s) {unknown}; available: {sorted(SCORES)}")
    return {name: SCORES[name](logits, inlier_logit) for name in names}
