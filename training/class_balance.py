"""Class-balanced cross-entropy weights, so that thin and rare classes (poles, signs, people, bicycles) are
learned, not drowned by road and sky.

ENet weighting (Paszke et al., 2016): w_c = 1 / ln(c + p_c), p_c the class's share of labelled pixels and
c = 1.02, which bounds the weight of a vanishing class at 1 / ln(1.02) ~ 50 and gives road (p ~ 0.3) ~ 3.6.
"""
from __future__ import annotations

import numpy as np

from densehybrid_ros.classes import VOID

CLASS_BALANCE_MODES = ("none", "enet")


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


def class_weights(mode: str, inliers, num_classes: int) -> list[float] | None:
    """The loss's per-class weights for `mode` ("none" -> None)."""
    if mode not in CLASS_BALANCE_MODES:
        raise ValueError(f"class_balance must be one of {CLASS_BALANCE_MODES}, got {mode!r}")
    if mode == "none":
        return None
    return [float(w) for w in enet_class_weights(class_frequencies(inliers, num_classes))]
