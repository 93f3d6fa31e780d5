"""Pixel-level anomaly detection metrics (thesis 5.2): AP (5.2), AUROC, FPR at 95% TPR.

Conventions (as the benchmarks): anomaly = positive class; scores are oriented HIGHER = MORE ANOMALOUS;
``ood_labels`` are uint8 with 0 = inlier, 1 = anomaly, 255 = void (void pixels are dropped); pixels are
pooled over the whole dataset. A pixel is predicted anomalous at threshold ``t`` when ``score >= t``.

Every exact metric is integrated from the counts of positives and negatives per DISTINCT score, visited
from the highest score to the lowest (one operating point per distinct score, so ties are one point):

- AP: the step-wise sum of eq. 5.2, ``sum_n (R_n - R_{n-1}) P_n``, exactly the rule of
  ``sklearn.metrics.average_precision_score``.
- AUROC: trapezoids between consecutive distinct-score operating points, starting at (0, 0), as
  ``sklearn.metrics.roc_auc_score``.
- FPR95: FPR at the FIRST operating point (scanning thresholds from high to low) whose TPR >= 0.95, as the
  SMIYC and Fishyscapes code; ``threshold95`` is that point's score.

The same integrator (`CurveIntegrator`) serves the in-memory `compute_anomaly_metrics` and the bounded-memory
`densehybrid_ros.evaluation.streaming.StreamingAnomalyMetrics`; it sums in fixed-size blocks of distinct
scores, so both give bit-identical results.

Two benchmark variants that are NOT the exact pooled metrics are provided for comparison:
`BinnedAnomalyMetrics` (a uniform-bin histogram approximation; NOT the official SMIYC formulas, which
`densehybrid_ros.evaluation.smiyc_metrics` reproduces) and `PerImageAnomalyMetrics` (the StreetHazards code of
Hendrycks et al., averaging per image).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from densehybrid_ros.evaluation._checks import valid_pixels

TPR_LEVEL = 0.95
OPERATING_FPR_LEVELS = (0.01, 0.005, 0.001)  # recall at 1%, 0.5% and 0.1% of inlier pixels flagged
OPERATING_TPR_LEVELS = (0.5, 0.95)  # false alarms at 50% and 95% recall
INTEGRATION_BLOCK = 1 << 16  # distinct scores per summation block (fixed: results do not depend on chunking)


@dataclass(frozen=True)
class AnomalyMetrics:
    """Exact pooled anomaly-detection metrics (fractions in [0, 1], not percent)."""

    ap: float  # average precision, eq. 5.2 (step-wise, as sklearn)
    auroc: float  # area under the ROC curve
    fpr95: float  # FPR at the first operating point with TPR >= 0.95
    threshold95: float  # score of that operating point: predict anomaly where score >= threshold95
    tpr95: float  # the TPR actually reached there (>= 0.95)
    best_f1: float  # max over operating points of pixel F1 = 2TP / (2TP + FP + FN) (SMIYC's threshold rule)
    best_f1_threshold: float  # score of the first operating point reaching best_f1
    num_positives: int
    num_negatives: int
    # operating points for a vehicle (score >= threshold flags a pixel; OPERATING_FPR_LEVELS / OPERATING_TPR_LEVELS):
    # tpr_at_fpr["0.01"] = TPR at the lowest threshold that flags at most 1% of inlier pixels, with that threshold;
    # fpr_at_tpr["0.5"] = FPR at the first operating point (high to low threshold) with TPR >= 0.5, with it.
    tpr_at_fpr: dict | None = None  # level -> {"tpr", "fpr", "threshold"}
    fpr_at_tpr: dict | None = None  # level -> {"tpr", "fpr", "threshold"}


@dataclass(frozen=True)
class ScoreCounts:
    """Positives and negatives per distinct score; ``values`` strictly DESCENDING."""

    values: np.ndarray
    positives: np.ndarray  # int64
    negatives: np.ndarray  # int64


def distinct_score_counts(scores: np.ndarray, is_anomaly: np.ndarray) -> ScoreCounts:
    """Count anomalies and inliers at each distinct score (equal scores form one operating point)."""
    values, totals = np.unique(scores, return_counts=True)
    pos_values, pos_counts = np.unique(scores[is_anomaly], return_counts=True)
    positives = np.zeros(values.size, dtype=np.int64)
    positives[np.searchsorted(values, pos_values)] = pos_counts
    negatives = totals.astype(np.int64) - positives
    return ScoreCounts(values[::-1], positives[::-1], negatives[::-1])


def check_both_classes(num_positives: int, num_negatives: int, what: str = "the evaluated pixels") -> None:
    if num_positives == 0:
        raise ValueError(f"no anomaly (positive) pixels among {what}: AP/AUROC/FPR95 are undefined")
    if num_negatives == 0:
        raise ValueError(f"no inlier (negative) pixels among {what}: AUROC/FPR95 are undefined")


class CurveIntegrator:
    """Integrates AP, AUROC, FPR95 and best F1 over operating points fed in descending-score order.

    ``feed`` takes consecutive slices of the distinct-score sequence (any slicing); the totals of positives
    and negatives must be known up front. Sums run over fixed blocks of `INTEGRATION_BLOCK` distinct scores,
    so the float64 result is independent of how the sequence was sliced.
    """

    def __init__(self, num_positives: int, num_negatives: int) -> None:
        check_both_classes(num_positives, num_negatives)
        self.num_positives = int(num_positives)
        self.num_negatives = int(num_negatives)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_size = 0
        self._tp = 0
        self._fp = 0
        self._ap_sum = 0.0
        self._auc_sum = 0.0
        self._fpr95: tuple[float, float, float] | None = None
        self._best_f1 = (-1.0, float("nan"))
        # nothing flagged (threshold +inf) is the operating point before the first distinct score
        self._at_fpr = {level: (0.0, 0.0, float("inf")) for level in OPERATING_FPR_LEVELS}
        self._at_tpr: dict[float, tuple[float, float, float]] = {}

    def feed(self, values: np.ndarray, positives: np.ndarray, negatives: np.ndarray) -> None:
        """Append the next operating points (descending scores, continuing the previous call's)."""
        if values.size == 0:
            return
        self._pending.append((values, positives.astype(np.int64, copy=False), negatives.astype(np.int64, copy=False)))
        self._pending_size += values.size
        if self._pending_size < INTEGRATION_BLOCK:
            return
        parts = [np.concatenate(column) if len(column) > 1 else column[0] for column in zip(*self._pending)]
        full = self._pending_size - self._pending_size % INTEGRATION_BLOCK
        for start in range(0, full, INTEGRATION_BLOCK):
            self._integrate(*(part[start:start + INTEGRATION_BLOCK] for part in parts))
        rest = tuple(part[full:].copy() for part in parts)
        self._pending = [rest] if rest[0].size else []
        self._pending_size = rest[0].size

    def _integrate(self, values: np.ndarray, positives: np.ndarray, negatives: np.ndarray) -> None:
        tps = self._tp + np.cumsum(positives)
        fps = self._fp + np.cumsum(negatives)
        precision = tps / (tps + fps)
        self._ap_sum += float(np.sum(positives * precision))  # sum_n (R_n - R_{n-1}) P_n, times P
        trapezoid = negatives.astype(np.float64) * (2 * tps - positives).astype(np.float64)
        self._auc_sum += float(np.sum(trapezoid))  # sum dFP * (TP_n + TP_{n-1}), = 2 * P * N * AUROC
        if self._fpr95 is None:
            tpr = tps / self.num_positives
            hit = np.flatnonzero(tpr >= TPR_LEVEL)
            if hit.size:
                i = hit[0]
                self._fpr95 = (fps[i] / self.num_negatives, float(values[i]), float(tpr[i]))
        tpr_all = tps / self.num_positives
        fpr_all = fps / self.num_negatives
        for level in OPERATING_FPR_LEVELS:  # fps ascend: the last point within the budget is the lowest threshold
            ok = np.flatnonzero(fps <= level * self.num_negatives)
            if ok.size:
                j = ok[-1]
                self._at_fpr[level] = (float(tpr_all[j]), float(fpr_all[j]), float(values[j]))
        for level in OPERATING_TPR_LEVELS:
            if level not in self._at_tpr:
                hit = np.flatnonzero(tpr_all >= level)
                if hit.size:
                    j = hit[0]
                    self._at_tpr[level] = (float(tpr_all[j]), float(fpr_all[j]), float(values[j]))
        f1 = 2 * tps / (tps + fps + self.num_positives)
        i = int(np.argmax(f1))
        if f1[i] > self._best_f1[0]:
            self._best_f1 = (float(f1[i]), float(values[i]))
        self._tp = int(tps[-1])
        self._fp = int(fps[-1])

    def result(self) -> AnomalyMetrics:
        """Finish the integration; raises if the fed counts do not add up to the declared totals."""
        if self._pending_size:
            parts = [np.concatenate(column) for column in zip(*self._pending)]
            self._integrate(*parts)
            self._pending, self._pending_size = [], 0
        if (self._tp, self._fp) != (self.num_positives, self.num_negatives):
            raise ValueError(f"fed counts ({self._tp} positives, {self._fp} negatives) differ from the declared "
                             f"totals ({self.num_positives}, {self.num_negatives})")
        fpr95, threshold95, tpr95 = self._fpr95  # type: ignore[misc]  # always reached: the last TPR is 1
        return AnomalyMetrics(
            ap=self._ap_sum / self.num_positives,
            auroc=self._auc_sum / (2.0 * self.num_positives * self.num_negatives),
            fpr95=float(fpr95), threshold95=threshold95, tpr95=tpr95,
            best_f1=self._best_f1[0], best_f1_threshold=self._best_f1[1],
            num_positives=self.num_positives, num_negatives=self.num_negatives,
            tpr_at_fpr={str(k): dict(zip(("tpr", "fpr", "threshold"), v)) for k, v in self._at_fpr.items()},
            fpr_at_tpr={str(k): dict(zip(("tpr", "fpr", "threshold"), v)) for k, v in sorted(self._at_tpr.items())})


def metrics_from_counts(counts: ScoreCounts) -> AnomalyMetrics:
    """Exact AP / AUROC / FPR95 from per-distinct-score counts (descending scores)."""
    integrator = CurveIntegrator(int(counts.positives.sum()), int(counts.negatives.sum()))
    integrator.feed(counts.values, counts.positives, counts.negatives)
    return integrator.result()


def compute_anomaly_metrics(scores: np.ndarray, ood_labels: np.ndarray) -> AnomalyMetrics:
    """Exact pooled AP (5.2), AUROC and FPR95 of one array (or a stack of images) held in memory.

    ``scores``: any shape, higher = more anomalous; ``ood_labels``: same shape, uint8 0/1/255.
    Raises ValueError on shape mismatch, bad labels, NaN/inf scores at non-void pixels, or a missing class.
    """
    values, is_anomaly = valid_pixels(scores, ood_labels)
    check_both_classes(int(is_anomaly.sum()), int(is_anomaly.size - is_anomaly.sum()))
    return metrics_from_counts(distinct_score_counts(values, is_anomaly))


def average_precision(scores: np.ndarray, ood_labels: np.ndarray) -> float:
    """AP, eq. 5.2 (same rule as sklearn.metrics.average_precision_score)."""
    return compute_anomaly_metrics(scores, ood_labels).ap


def auroc(scores: np.ndarray, ood_labels: np.ndarray) -> float:
    """Area under the ROC curve (same rule as sklearn.metrics.roc_auc_score)."""
    return compute_anomaly_metrics(scores, ood_labels).auroc


def fpr_at_95_tpr(scores: np.ndarray, ood_labels: np.ndarray) -> tuple[float, float]:
    """(FPR, threshold) at the first operating point, from high to low threshold, with TPR >= 0.95."""
    result = compute_anomaly_metrics(scores, ood_labels)
    return result.fpr95, result.threshold95


# ---------------------------------------------------------------------------------------------------------
# StreetHazards variant (Hendrycks et al., anomaly_seg code): per-image metrics averaged over images.

def fpr_at_nearest_tpr(counts: ScoreCounts, level: float = TPR_LEVEL) -> float:
    """FPR at the operating point whose TPR is NEAREST to `level` (Hendrycks' ``fpr_and_fdr_at_recall``).

    Only points up to the first one reaching TPR = 1 are candidates; on a tie in |TPR - level| the point
    with the lower threshold (higher TPR, then higher FPR) wins, as argmin over the reversed list there.
    """
    tps = np.cumsum(counts.positives)
    fps = np.cumsum(counts.negatives)
    last = int(np.searchsorted(tps, tps[-1]))
    recall = (tps[: last + 1] / tps[-1])[::-1]
    cutoff = int(np.argmin(np.abs(recall - level)))
    return float(fps[: last + 1][::-1][cutoff] / fps[-1])


@dataclass(frozen=True)
class PerImageAnomalyResult:
    """Means over the images that contain both anomaly and inlier pixels (fractions)."""

    ap: float
    auroc: float
    fpr95: float  # nearest-TPR rule of `fpr_at_nearest_tpr`
    num_images: int  # images averaged
    skipped_without_anomaly: int
    skipped_without_inlier: int


class PerImageAnomalyMetrics:
    """StreetHazards protocol (Hendrycks' anomaly_seg): AP, AUROC, FPR95 per image, then averaged.

    Differences from the pooled exact metrics: every image weighs the same regardless of its anomaly area,
    and FPR95 is read at the operating point with TPR nearest to 0.95 (which may be below 0.95).
    Images without anomaly pixels or without inlier pixels are skipped, as in that code (``eval_ood.py``);
    both are counted in the result. Void pixels (255) are dropped first (that code has no void label).
    """

    def __init__(self) -> None:
        self._ap: list[float] = []
        self._auroc: list[float] = []
        self._fpr: list[float] = []
        self._no_anomaly = 0
        self._no_inlier = 0

    def update(self, scores: np.ndarray, ood_labels: np.ndarray) -> None:
        """Add one image."""
        values, is_anomaly = valid_pixels(scores, ood_labels)
        num_pos = int(is_anomaly.sum())
        if num_pos == 0:
            self._no_anomaly += 1
            return
        if num_pos == is_anomaly.size:
            self._no_inlier += 1
            return
        counts = distinct_score_counts(values, is_anomaly)
        exact = metrics_from_counts(counts)
        self._ap.append(exact.ap)
        self._auroc.append(exact.auroc)
        self._fpr.append(fpr_at_nearest_tpr(counts))

    def compute(self) -> PerImageAnomalyResult:
        if not self._ap:
            raise ValueError("no image with both anomaly and inlier pixels was given: per-image metrics undefined")
        return PerImageAnomalyResult(
            ap=float(np.mean(self._ap)), auroc=float(np.mean(self._auroc)), fpr95=float(np.mean(self._fpr)),
            num_images=len(self._ap), skipped_without_anomaly=self._no_anomaly,
            skipped_without_inlier=self._no_inlier)


def per_image_anomaly_metrics(images: Iterable[tuple[np.ndarray, np.ndarray]]) -> PerImageAnomalyResult:
    """`PerImageAnomalyMetrics` over an iterable of (scores, ood_labels) images."""
    acc = PerImageAnomalyMetrics()
    for scores, labels in images:
        acc.update(scores, labels)
    return acc.compute()


# ---------------------------------------------------------------------------------------------------------
# A uniform-bin histogram approximation (fixed memory). The official SMIYC pixel metrics differ (AP starting
# at recall 0 with right-end precisions): see densehybrid_ros.evaluation.smiyc_metrics.

@dataclass(frozen=True)
class BinnedAnomalyResult:
    ap: float  # trapezoid of precision over recall (NOT the step-wise AP)
    auroc: float  # trapezoid of TPR over FPR, without the (0, 0) origin
    fpr95: float  # first bin threshold, high to low, with TPR >= 0.95 (1.0 if never reached)
    threshold95: float  # that bin's lower edge (0.0 if never reached, as SMIYC)
    best_f1: float
    best_f1_threshold: float
    num_positives: int
    num_negatives: int


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


class BinnedAnomalyMetrics:
    """Histogram approximation of the curves (uniform bins, fixed memory); for the official SMIYC numbers use
    `densehybrid_ros.evaluation.smiyc_metrics.smiyc_pixel_metrics`.

    Scores are counted into ``num_bins`` equal bins over ``score_range`` (``np.histogram``); the operating
    points are the bin lower edges from high to low (predict anomaly where score >= edge). How it differs
    from the exact metrics: (1) scores inside one bin become ties; (2) AP is the trapezoid of precision over
    recall (the curve's area), not the step-wise sum of 5.2, and the points before the first prediction are
    dropped; (3) AUROC omits the segment from (0, 0) to the first point; (4) np.histogram silently drops
    scores outside the range (SMIYC expects probabilities in [0, 1]) -- here that raises unless
    ``clip=True``, which clips them onto the range ends instead.
    """

    def __init__(self, num_bins: int = 4096, score_range: tuple[float, float] = (0.0, 1.0), clip: bool = False):
        low, high = float(score_range[0]), float(score_range[1])
        if num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {num_bins}")
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise ValueError(f"score_range must be finite with low < high, got {score_range}")
        self.num_bins, self.score_range, self.clip = int(num_bins), (low, high), clip
        self._pos = np.zeros(self.num_bins, dtype=np.int64)
        self._neg = np.zeros(self.num_bins, dtype=np.int64)
        self._edges: np.ndarray | None = None

    def update(self, scores: np.ndarray, ood_labels: np.ndarray) -> None:
        values, is_anomaly = valid_pixels(scores, ood_labels)
        low, high = self.score_range
        if self.clip:
            values = np.clip(values, low, high)
        elif values.size and (values.min() < low or values.max() > high):
            raise ValueError(f"scores span [{values.min()}, {values.max()}], outside score_range {self.score_range}; "
                             "pass clip=True or a wider range")
        pos, self._edges = np.histogram(values[is_anomaly], bins=self.num_bins, range=self.score_range)
        neg, _ = np.histogram(values[~is_anomaly], bins=self.num_bins, range=self.score_range)
        self._pos += pos
        self._neg += neg

    def compute(self) -> BinnedAnomalyResult:
        num_pos, num_neg = int(self._pos.sum()), int(self._neg.sum())
        check_both_classes(num_pos, num_neg)
        tp = np.cumsum(self._pos[::-1]).astype(np.float64)
        fp = np.cumsum(self._neg[::-1]).astype(np.float64)
        thresholds = self._edges[::-1][1:]
        first = int(np.flatnonzero(tp + fp > 0)[0])
        tp, fp, thresholds = tp[first:], fp[first:], thresholds[first:]
        tpr, fpr, precision = tp / num_pos, fp / num_neg, tp / (tp + fp)
        f1 = 2 * tp / (tp + fp + num_pos)
        i95 = int(np.searchsorted(tpr, TPR_LEVEL))
        fpr95, thr95 = (float(fpr[i95]), float(thresholds[i95])) if i95 < tpr.size else (1.0, 0.0)
        best = int(np.nanargmax(f1))
        return BinnedAnomalyResult(
            ap=_trapezoid(precision, tpr), auroc=_trapezoid(tpr, fpr), fpr95=fpr95, threshold95=thr95,
            best_f1=float(f1[best]), best_f1_threshold=float(thresholds[best]),
            num_positives=num_pos, num_negatives=num_neg)


def binned_anomaly_metrics(scores: np.ndarray, ood_labels: np.ndarray, num_bins: int = 4096,
                           score_range: tuple[float, float] = (0.0, 1.0), clip: bool = False) -> BinnedAnomalyResult:
    """One-shot `BinnedAnomalyMetrics` (uniform-bin approximation)."""
    acc = BinnedAnomalyMetrics(num_bins, score_range, clip)
    acc.update(scores, ood_labels)
    return acc.compute()


__all__ = ["AnomalyMetrics", "ScoreCounts", "CurveIntegrator", "distinct_score_counts", "metrics_from_counts",
           "compute_anomaly_metrics", "average_precision", "auroc", "fpr_at_95_tpr", "fpr_at_nearest_tpr",
           "PerImageAnomalyMetrics", "PerImageAnomalyResult", "per_image_anomaly_metrics",
           "BinnedAnomalyMetrics", "BinnedAnomalyResult", "binned_anomaly_metrics", "check_both_classes",
           "TPR_LEVEL"]
