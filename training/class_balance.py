"""Class balance, so that thin and rare classes (poles, signs, people, bicycles) are learned, not drowned by road and
sky.

- Loss: ENet weighting (Paszke et al., 2016): w_c = 1 / ln(c + p_c), p_c the class's share of labelled pixels and
  c = 1.02, which bounds the weight of a vanishing class at 1 / ln(1.02) ~ 50 and gives road (p ~ 0.3) ~ 3.6.
- Sampling: repeat factors (Gupta et al., LVIS, 2019): with f_c the share of training images showing class c,
  r_c = max(1, sqrt(t / f_c)) and an image is drawn r_i = max over its classes of r_c times as often.
- Decision: the weighted loss leaves the logits leaning towards heavy classes; `logit_adjustment_bias` gives the
  per-class bias that takes a share of that lean back at inference (chosen by calibration on held-out data), and
  `refine_class_bias` adjusts each class's share of it on the same held-out pixels (kept by calibration only where it
  raises mIoU on streets it was not fitted on).
"""
from __future__ import annotations

import math

import numpy as np

from densehybrid_ros.classes import VOID
from densehybrid_ros.evaluation.segmentation_metrics import mean_iou

CLASS_BALANCE_MODES = ("none", "enet")
BIAS_OFFSETS = tuple(round(0.1 * i, 1) for i in range(-15, 16))  # one class's trial offsets per sweep: -1.5..1.5


def class_frequencies(inliers, num_classes: int, samples: int = 400) -> np.ndarray:
    """Share of each class among the labelled (non-void) pixels of `samples` evenly spaced training images."""
    n = len(inliers)
    picks = np.unique(np.linspace(0, n - 1, min(samples, n)).round().astype(int))
    counts = np.zeros(num_classes, np.float64)
    for i in picks:
        _, labels = inliers[int(i)]
        valid = labels[labels != VOID]
        counts += np.bincount(valid.ravel(), minlength=num_classes)[:num_classes]
    total = counts.sum()
    if total == 0:
        raise ValueError(f"no labelled pixels in {len(picks)} sampled training images")
    return counts / total


def enet_class_weights(frequencies: np.ndarray, c: float = 1.02) -> np.ndarray:
    """w_k = 1 / ln(c + p_k) (ENet)."""
    if c <= 1.0:
        raise ValueError(f"c must exceed 1, got {c}")
    return 1.0 / np.log(c + np.asarray(frequencies, np.float64))


def logit_adjustment_bias(weights, tau: float) -> tuple[float, ...]:
    """b_k = -tau ln w_k: the per-class logit bias that takes back the share `tau` of the prior shift a loss weighted by
    w_k gives the logits (post-hoc logit adjustment, Menon et al., ICLR 2021; applied by
    `densehybrid_ros.scores.closed_set_decision`). tau = 0: no change; tau = 1: the unweighted posterior's argmax."""
    w = np.asarray(weights, np.float64)
    if w.ndim != 1 or w.size == 0 or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"class weights must be positive and finite, got {list(w)}")
    if not math.isfinite(tau) or tau < 0:
        raise ValueError(f"tau must be finite and >= 0, got {tau}")
    return tuple(float(b) for b in -tau * np.log(w))


def pixel_miou(labels: np.ndarray, prediction: np.ndarray, num_classes: int) -> float:
    """Closed-set mIoU (`mean_iou`: the classes that occur) of flat pixel labels and predictions in 0..K-1."""
    cm = np.bincount(labels * num_classes + prediction, minlength=num_classes ** 2)
    return mean_iou(cm.reshape(num_classes, num_classes))


def refine_class_bias(logits: np.ndarray, labels: np.ndarray, start, offsets=BIAS_OFFSETS,
                      sweeps: int = 2) -> np.ndarray:
    """Per-class biases b for the decision argmax_k (s_k + b_k), by coordinate ascent on closed-set mIoU from `start`.

    `logits` (N, K): raw logits of N labelled pixels; `labels` (N,): their classes in 0..K-1. Each class in turn
    moves its b_k by the offset of `offsets` that gives the best mIoU (`mean_iou`: the classes that occur) with the
    other biases held; `sweeps` passes over the classes. A class keeps its value unless an offset strictly raises
    mIoU, so the result's mIoU on these pixels is never below `start`'s. For class k the other classes' best
    (value m, class j) is fixed, and a pixel goes to k exactly when s_k + b_k + offset > m.
    """
    x = np.asarray(logits, np.float32)
    y = np.asarray(labels, np.int64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"logits must be (N, K) and labels (N,), got {x.shape} and {y.shape}")
    k_count = x.shape[1]
    if y.size == 0 or y.min() < 0 or y.max() >= k_count:
        raise ValueError(f"labels must be class ids in 0..{k_count - 1} (void left out), at least one")
    bias = np.asarray(start, np.float32).copy()
    if bias.shape != (k_count,):
        raise ValueError(f"start must hold {k_count} values, got {bias.shape}")

    for _ in range(sweeps):
        for k in range(k_count):
            others = x + bias
            others[:, k] = -np.inf
            best_other = others.argmax(axis=1)
            margin = others[np.arange(len(x)), best_other] - (x[:, k] + bias[k])  # k wins when offset > margin
            best_offset, best = 0.0, pixel_miou(y, np.where(margin < 0, k, best_other), k_count)
            for offset in offsets:
                value = pixel_miou(y, np.where(margin < offset, k, best_other), k_count)
                if value > best + 1e-12:
                    best_offset, best = offset, value
            bias[k] += best_offset
    return bias


def class_weights(mode: str, inliers, num_classes: int) -> list[float] | None:
    """The loss's per-class weights for `mode` ("none" -> None)."""
    if mode not in CLASS_BALANCE_MODES:
        raise ValueError(f"class_balance must be one of {CLASS_BALANCE_MODES}, got {mode!r}")
    if mode == "none":
        return None
    return [float(w) for w in enet_class_weights(class_frequencies(inliers, num_classes))]


def image_class_presence(inliers, num_classes: int) -> np.ndarray:
    """(N, num_classes) bool: which classes each training image shows (labelled pixels, void left out)."""
    presence = np.zeros((len(inliers), num_classes), bool)
    for i in range(len(inliers)):
        _, labels = inliers[i]
        present = np.unique(labels[labels != VOID])
        presence[i, present[present < num_classes]] = True
    return presence


def repeat_factors(presence: np.ndarray, threshold: float) -> np.ndarray:
    """Per-image repeat factors r_i = max(1, max over the image's classes c of sqrt(threshold / f_c)), f_c the share
    of images showing c (LVIS repeat-factor sampling); an image showing no labelled class gets 1."""
    if not threshold > 0:
        raise ValueError(f"the repeat threshold must be > 0, got {threshold}")
    presence = np.asarray(presence, bool)
    if presence.ndim != 2 or presence.shape[0] == 0:
        raise ValueError(f"presence must be (images, classes) with at least one image, got {presence.shape}")
    share = presence.mean(axis=0)
    per_class = np.ones(presence.shape[1])
    seen = share > 0
    per_class[seen] = np.maximum(1.0, np.sqrt(threshold / share[seen]))
    return np.where(presence, per_class[None, :], 1.0).max(axis=1)
