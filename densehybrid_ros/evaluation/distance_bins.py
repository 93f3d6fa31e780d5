"""Anomaly-detection metrics per distance bin (exact AP / AUROC / FPR95 on each bin's pixels).

A pixel with depth d (metres, NaN = unknown) belongs to the bin [lower, upper) with lower <= d < upper;
pixels with unknown depth or outside every bin are left out. Each bin pools its pixels over all images
in a `StreamingAnomalyMetrics` (bounded memory; exact). A bin without anomaly (or without inlier) pixels
reports ``metrics = None`` and the reason. `DISTANCE_EDGES` are the project's bins (pixel metrics, recall and obstacle
detection by distance: one definition); `PAPER_BIN_EDGES` the 5 m bins from 5 to 50 m of the paper's Table 6 (AP and
FPR95 per range on LostAndFound test, Sec. 6.4).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from densehybrid_ros.datasets.base import VOID
from densehybrid_ros.evaluation._checks import as_ood_labels, as_scores, check_same_shape
from densehybrid_ros.evaluation.anomaly_metrics import AnomalyMetrics
from densehybrid_ros.evaluation.streaming import StreamingAnomalyMetrics

DISTANCE_EDGES = (0.0, 10.0, 20.0, 30.0, 50.0, math.inf)
NEAR_RANGE = 20.0  # metres: the "near" range whose pooled metrics reports give beside the bins (a vehicle's reaction range)
PAPER_BIN_EDGES = tuple(float(d) for d in range(5, 55, 5))


@dataclass(frozen=True)
class DistanceBinResult:
    lower: float
    upper: float
    metrics: AnomalyMetrics | None
    reason: str | None  # why metrics is None
    num_positives: int
    num_negatives: int


def check_bin_edges(edges: Sequence[float]) -> np.ndarray:
    """At least two strictly increasing, non-negative, non-NaN edges (the last may be inf)."""
    arr = np.asarray(edges, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 2:
        raise ValueError(f"bin edges need at least two values, got {list(edges)}")
    if np.isnan(arr).any() or arr[0] < 0 or not (np.diff(arr) > 0).all():
        raise ValueError(f"bin edges must be non-negative and strictly increasing, got {list(edges)}")
    return arr


def distance_bin_index(depth: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index per pixel (-1 for NaN depth or outside all bins); negative depth is an error."""
    depth = as_scores(depth, "depth")
    if (depth < 0).any():
        raise ValueError("depth has negative values (metres along the optical axis expected)")
    index = np.searchsorted(edges, depth, side="right") - 1
    index[(index >= edges.size - 1) | np.isnan(depth)] = -1
    return index


class DistanceBinnedAnomalyMetrics:
    """Per-bin exact anomaly metrics over a dataset: ``update(scores, ood_labels, depth)`` then ``compute()``."""

    def __init__(self, bin_edges: Sequence[float] = DISTANCE_EDGES, max_buffer_pixels: int = 1 << 22,
                 tmp_dir: str | None = None) -> None:
        self.edges = check_bin_edges(bin_edges)
        self._bins = [StreamingAnomalyMetrics(max_buffer_pixels, tmp_dir) for _ in range(self.edges.size - 1)]

    def update(self, scores: np.ndarray, ood_labels: np.ndarray, depth: np.ndarray) -> None:
        labels = as_ood_labels(ood_labels)
        check_same_shape("depth", np.asarray(depth), "ood_labels", labels)
        index = distance_bin_index(depth, self.edges)
        for b, acc in enumerate(self._bins):
            acc.update(scores, np.where(index == b, labels, VOID).astype(np.uint8))

    def compute(self) -> list[DistanceBinResult]:
        results = []
        for b, acc in enumerate(self._bins):
            pos, neg = acc.num_positives, acc.num_negatives
            reason = ("no anomaly pixels in this distance bin" if pos == 0 else
                      "no inlier pixels in this distance bin" if neg == 0 else None)
            metrics = None if reason else acc.compute()
            results.append(DistanceBinResult(float(self.edges[b]), float(self.edges[b + 1]), metrics, reason,
                                             pos, neg))
        return results

    def close(self) -> None:
        for acc in self._bins:
            acc.close()


def distance_binned_metrics(scores: np.ndarray, ood_labels: np.ndarray, depth: np.ndarray,
                            bin_edges: Sequence[float] = DISTANCE_EDGES) -> list[DistanceBinResult]:
    """One-shot `DistanceBinnedAnomalyMetrics` on arrays held in memory."""
    acc = DistanceBinnedAnomalyMetrics(bin_edges, max_buffer_pixels=max(1, np.asarray(scores).size + 1))
    try:
        acc.update(scores, ood_labels, depth)
        return acc.compute()
    finally:
        acc.close()


__all__ = ["DISTANCE_EDGES", "PAPER_BIN_EDGES", "DistanceBinResult", "DistanceBinnedAnomalyMetrics", "distance_binned_metrics",
           "distance_bin_index", "check_bin_edges"]
