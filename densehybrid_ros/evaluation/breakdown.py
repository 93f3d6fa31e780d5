"""Where the detector fails: anomaly metrics by object size, and recall at a threshold by distance or size.

Size of an anomaly pixel = the pixel count of its 8-connected anomaly component in that frame (what a
vehicle sees of the object). For a size bin, the positives are the anomaly pixels whose component falls in
the bin and the negatives are ALL inlier pixels (the question is "how well are objects of this size told
apart from the scene", not "from other inliers of the same size"). AP per size bin comes from histograms on
a fine grid that grows as needed (bounded memory; the pooled metrics elsewhere are exact); recall at a
threshold is counted exactly (score >= threshold flags a pixel).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from densehybrid_ros.datasets.base import OOD_ANOMALY, OOD_INLIER
from densehybrid_ros.evaluation.distance_bins import check_bin_edges
from densehybrid_ros.evaluation.score_grid import ScoreGrid
from densehybrid_ros.scores import is_anomalous

SIZE_EDGES = (0.0, 100.0, 400.0, 1600.0, 6400.0, math.inf)  # anomaly component size in pixels


def component_sizes(ood_labels: np.ndarray) -> np.ndarray:
    """Per pixel, the size (pixels) of its 8-connected anomaly component; NaN where not an anomaly pixel."""
    mask = (np.asarray(ood_labels) == OOD_ANOMALY).astype(np.uint8)
    sizes = np.full(mask.shape, np.nan, np.float64)
    if not mask.any():
        return sizes
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    area = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    sizes[mask > 0] = area[labels[mask > 0]]
    return sizes


@dataclass(frozen=True)
class BinRecall:
    lower: float
    upper: float
    num_positives: int
    recall: dict  # threshold name -> fraction of the bin's anomaly pixels with score >= threshold (None if empty)


class RecallByBin:
    """Exact recall of anomaly pixels per bin of a per-pixel quantity (depth, component size) at named
    thresholds."""

    def __init__(self, edges: Sequence[float], thresholds: dict[str, float]) -> None:
        self.edges = check_bin_edges(edges)
        self.thresholds = dict(thresholds)
        nb = self.edges.size - 1
        self.positives = np.zeros(nb, np.int64)
        self.hits = {name: np.zeros(nb, np.int64) for name in self.thresholds}

    def update(self, scores: np.ndarray, ood_labels: np.ndarray, quantity: np.ndarray) -> None:
        anomaly = (np.asarray(ood_labels) == OOD_ANOMALY) & ~np.isnan(quantity)
        q, s = quantity[anomaly], np.asarray(scores)[anomaly]
        index = np.searchsorted(self.edges, q, side="right") - 1
        inside = (index >= 0) & (index < self.edges.size - 1)
        index, s = index[inside], s[inside]
        nb = self.edges.size - 1
        self.positives += np.bincount(index, minlength=nb)
        for name, t in self.thresholds.items():
            self.hits[name] += np.bincount(index[is_anomalous(s, t)], minlength=nb)

    def compute(self) -> list[BinRecall]:
        return [BinRecall(float(self.edges[b]), float(self.edges[b + 1]), int(self.positives[b]),
                          {name: (float(h[b] / self.positives[b]) if self.positives[b] else None)
                           for name, h in self.hits.items()})
                for b in range(self.edges.size - 1)]


class FlaggedAtThresholds:
    """Exact shares of the anomaly pixels (TPR) and of the inlier pixels (FPR) flagged at named thresholds (the
    project's rule, `is_anomalous`: score >= threshold); void pixels are left out."""

    def __init__(self, thresholds: dict[str, float]) -> None:
        self.thresholds = dict(thresholds)
        self.positives = self.negatives = 0
        self.hits = dict.fromkeys(self.thresholds, 0)
        self.false_alarms = dict.fromkeys(self.thresholds, 0)

    def update(self, scores: np.ndarray, ood_labels: np.ndarray) -> None:
        labels = np.asarray(ood_labels)
        anomaly, inlier = labels == OOD_ANOMALY, labels == OOD_INLIER
        self.positives += int(anomaly.sum())
        self.negatives += int(inlier.sum())
        for name, t in self.thresholds.items():
            flagged = is_anomalous(np.asarray(scores), t)
            self.hits[name] += int((flagged & anomaly).sum())
            self.false_alarms[name] += int((flagged & inlier).sum())

    def compute(self) -> dict[str, dict]:
        """name -> {"threshold", "tpr", "fpr"} (a rate is None without pixels of its class)."""
        share = lambda n, d: n / d if d else None  # noqa: E731
        return {name: {"threshold": t, "tpr": share(self.hits[name], self.positives),
                       "fpr": share(self.false_alarms[name], self.negatives)} for name, t in self.thresholds.items()}


@dataclass(frozen=True)
class SizeBinResult:
    lower: float
    upper: float
    num_positives: int
    num_components: int
    ap: float | None  # binned AP of this bin's anomaly pixels against all inlier pixels


class SizeBinnedAnomalyMetrics:
    """AP per anomaly-component size bin (binned on a `ScoreGrid`): `update(scores, ood_labels)` per frame,
    then `compute()`."""

    def __init__(self, edges: Sequence[float] = SIZE_EDGES, num_bins: int = 8192) -> None:
        self.edges = check_bin_edges(edges)
        self.grid = ScoreGrid(num_bins)
        nb = self.edges.size - 1
        self.pos = np.zeros((nb, num_bins), np.int64)
        self.neg = np.zeros(num_bins, np.int64)
        self.components = np.zeros(nb, np.int64)

    def update(self, scores: np.ndarray, ood_labels: np.ndarray) -> None:
        labels = np.asarray(ood_labels)
        scores = np.asarray(scores, np.float64)
        valid = (labels == OOD_INLIER) | (labels == OOD_ANOMALY)
        if not valid.any():
            return
        merges = self.grid.extend(scores[valid])
        if merges:
            self.pos, self.neg = self.grid.merge(self.pos, merges), self.grid.merge(self.neg, merges)
        cells = np.full(labels.shape, -1, np.int64)
        cells[valid] = self.grid.cells(scores[valid])
        self.neg += np.bincount(cells[labels == OOD_INLIER], minlength=self.grid.num_bins)
        mask = (labels == OOD_ANOMALY).astype(np.uint8)
        if not mask.any():
            return
        _, comp, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        area = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
        nb = self.edges.size - 1
        comp_bin = np.searchsorted(self.edges, area, side="right") - 1
        comp_bin[(comp_bin < 0) | (comp_bin >= nb)] = -1
        self.components += np.bincount(comp_bin[comp_bin >= 0], minlength=nb)
        pixel_bin = np.concatenate([[-1], comp_bin])[comp[mask > 0]]
        pixel_cell = cells[mask > 0]
        for b in range(nb):
            sel = pixel_bin == b
            if sel.any():
                self.pos[b] += np.bincount(pixel_cell[sel], minlength=self.grid.num_bins)

    def compute(self) -> list[SizeBinResult]:
        out = []
        for b in range(self.edges.size - 1):
            m = self.grid.metrics(self.pos[b], self.neg)
            out.append(SizeBinResult(float(self.edges[b]), float(self.edges[b + 1]), int(self.pos[b].sum()),
                                     int(self.components[b]), None if m is None else m.ap))
        return out
