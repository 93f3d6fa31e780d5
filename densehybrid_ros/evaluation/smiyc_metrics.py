"""SegmentMeIfYouCan benchmark mode: the pixel metrics of the official road-anomaly-benchmark code.

The benchmark (SegmentMeIfYouCan/road-anomaly-benchmark, ``metrics/pixel_classification.py`` and
``pixel_classification_curves.py``) does not integrate exact curves: it bins every frame's scores, merges
the bins of all frames into one binned PR/ROC curve and reads AP, AUROC, FPR95 and the best-F1 threshold off
that curve. This module re-derives that procedure so that its numbers are the benchmark's, given the same
score maps. Two configurations exist there; the leaderboard uses the first:

- ``"percentiles"`` ('PixBinaryClass', 768 bins): per-frame bin edges from quantiles of the frame's scores,
- ``"uniform"`` ('PixBinaryClass-uniThr', 4096 bins): the same equal-width bins over [0, 1] in every frame.

Procedure (``P``/``N`` = number of positive / negative pixels, void (255) pixels excluded, labels 0/1):

1. Per frame, bin edges. ``percentiles``: with ``k = num_bins // 2``, the edges are the sorted distinct
   values of {0, 1} u Q(pos, k) u Q(neg, k), where ``Q(x, k) = quantile(x, linspace(0, 1, min(k, |x|)))``
   (NumPy's linear-interpolation quantiles; a class absent from the frame adds nothing). Because Q starts at
   the minimum and ends at the maximum, every score falls inside the edges. ``uniform``: ``np.histogram``'s
   ``num_bins`` equal bins over [0, 1], their edges computed in the scores' dtype. float16 cannot hold 4096
   distinct edges there and NumPy >= 2 refuses such bins (so the benchmark's own uniform mode fails on its
   float16-stored submissions): such input gets a ValueError.
2. Per frame, counts of positives and negatives per bin (bins are ``[e_i, e_i+1)``, the top one closed). Each
   bin becomes one candidate operating point: threshold = its lower edge ``e_i`` ("anomaly where score >=
   e_i").
3. Merge: ``uniform`` adds the counts of all frames bin by bin; ``percentiles`` pools the bins of all frames
   and orders them by threshold from high to low (``np.argsort(thresholds)[::-1]``, equal thresholds of
   different frames stay separate entries). Cumulative sums from the top give ``TP_m``, ``FP_m``.
4. Collapse equal thresholds: keep entry 0 and the LAST entry of every run of equal thresholds. (Entry 0 is
   always kept, so when several frames share the highest threshold the first point is a partial sum that
   depends on the order of ties: the same sort call as the benchmark's, frames in the order given, as its
   sequential run. In the uniform mode entry 0 simply appears twice.) If the first kept
   point has ``TP + FP > 0``, the point (0, 0) is put in front. The last point is always (P, N) here (every
   pixel is counted; the benchmark would append it otherwise).
5. On these points ``n = 0..L``: ``TPR_n = R_n = TP_n / P``, ``FPR_n = FP_n / N``,
   ``Prec_n = TP_n / (TP_n + FP_n)`` (1 where nothing is predicted), ``FN_n = P - TP_n``, and

   - ``AP = sum_{n>=1} (R_n - R_{n-1}) * Prec_n`` (the right-end step rule, starting at recall 0),
   - ``AUROC = sum_{n>=1} (FPR_n - FPR_{n-1}) * (TPR_n + TPR_{n-1}) / 2`` (``np.trapezoid``, from (0, 0)),
   - ``FPR95 = FPR_n`` at the first ``n`` with ``TPR_n >= 0.95``,
   - ``F1_n = 2 TP_n / (2 TP_n + FP_n + FN_n)``; ``best_F1 = max_n F1_n`` (first maximum),
   - ``best_F1_threshold = T[n*]``, where ``T`` is the merged threshold list of step 3 BEFORE the collapse of
     step 4 and ``n*`` the index of the best point AFTER it. This reproduces the benchmark exactly, including
     its index mismatch: ``T[n*]`` is not the threshold that produced the best point. Without equal
     thresholds it lies one or two bins lower; with many (float16 maps, where frames share quantile values)
     it can lie far higher: on 20 synthetic float16 frames, 0.993 instead of 0.943. The benchmark's SegEval
     takes this ``T[n*]`` for its component metrics (``score > threshold``). Where ``n*`` lies beyond ``T``
     (the benchmark raises IndexError there) the lowest threshold ``T[-1]`` is used.

How this differs from the project's exact metrics (`compute_anomaly_metrics`, `StreamingAnomalyMetrics`):
scores inside one bin become ties, so the curves are coarser; with bins so fine that every distinct score is
a bin edge, the SMIYC AP, AUROC, FPR95 and best F1 equal the exact ones. And from the older
`BinnedAnomalyMetrics` (the project's first reading of the uniform mode), on the same bins: that one starts
at the first point with a prediction (``n = 1``) and integrates AP by trapezoids, so
``AP_benchmark - AP_old = R_1 Prec_1 - sum_{n>=2} (R_n - R_{n-1}) (Prec_{n-1} - Prec_n) / 2``: the benchmark
adds the rectangle between recall 0 and the first point and takes the lower, right-end precision of every
step. Its AUROC also omits the segment from (0, 0). That is the AP gap of issue 16 (0.6896 old against 0.6975
by the official code on the same data); the first term dominates when the top bin already holds many
anomalies (saturated probabilities).

Bounded memory: only per-frame bin counts are kept (at most ``num_bins + 1`` bins per frame for
``percentiles``, one running histogram for ``uniform``), never the pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from densehybrid_ros.evaluation._checks import (
    OOD_ANOMALY, VOID, as_ood_labels, as_scores, check_finite, check_same_shape,
)
from densehybrid_ros.evaluation.anomaly_metrics import TPR_LEVEL, check_both_classes

PERCENTILES = "percentiles"
UNIFORM = "uniform"
DEFAULT_NUM_BINS = {PERCENTILES: 768, UNIFORM: 4096}  # the benchmark's two configurations
MIN_NUM_BINS = {PERCENTILES: 4, UNIFORM: 1}  # percentiles: >= 2 quantiles per class, so min and max are edges
UNIFORM_RANGE = (0.0, 1.0)


@dataclass(frozen=True)
class FrameBins:
    """Binned counts of one frame (or of several, merged), highest bin first.

    ``thresholds[i]`` is bin i's lower edge: a pixel is predicted anomalous at operating point i when its
    score is at least that edge.
    """

    thresholds: np.ndarray
    positives: np.ndarray  # int64
    negatives: np.ndarray  # int64


def percentile_edges(positives: np.ndarray, negatives: np.ndarray, num_bins: int) -> np.ndarray:
    """Bin edges of one frame in the ``percentiles`` mode (step 1 of the module doc).

    ``unique({0, 1} u Q(positives, k) u Q(negatives, k))`` with ``k = num_bins // 2`` and
    ``Q(x, k) = np.quantile(x, linspace(0, 1, min(k, |x|)))``; an empty class contributes nothing.
    """
    per_class = num_bins // 2
    parts = [np.array([0.0, 1.0])]
    for values in (positives, negatives):
        if values.size:
            parts.append(np.quantile(values, np.linspace(0.0, 1.0, min(per_class, values.size))))
    return np.unique(np.concatenate(parts))


def frame_bins(values: np.ndarray, is_anomaly: np.ndarray, bin_strategy: str, num_bins: int) -> FrameBins:
    """Histogram one frame's non-void scores into the mode's bins (steps 1-2 of the module doc)."""
    positives, negatives = values[is_anomaly], values[~is_anomaly]
    if bin_strategy == PERCENTILES:
        bins, value_range = percentile_edges(positives, negatives, num_bins), None
    else:
        bins, value_range = num_bins, UNIFORM_RANGE
    pos_counts, _ = np.histogram(positives, bins=bins, range=value_range)
    neg_counts, edges = np.histogram(negatives, bins=bins, range=value_range)
    return FrameBins(edges[::-1][1:], pos_counts[::-1].astype(np.int64), neg_counts[::-1].astype(np.int64))


def merge_percentile_frames(frames: Sequence[FrameBins]) -> FrameBins:
    """Pool the bins of all frames and order them by threshold, high to low (step 3, ``percentiles``)."""
    thresholds = np.concatenate([f.thresholds for f in frames])
    order = np.argsort(thresholds)[::-1]
    return FrameBins(thresholds[order], np.concatenate([f.positives for f in frames])[order],
                     np.concatenate([f.negatives for f in frames])[order])


def operating_points(bins: FrameBins) -> tuple[np.ndarray, np.ndarray]:
    """(TP, FP) as float64 at the curve's points (steps 3-4): cumulative counts from the highest bin, kept at
    entry 0 and at the last entry of each run of equal thresholds, with (0, 0) in front when the first kept
    point already predicts something."""
    run_ends = np.flatnonzero(bins.thresholds[:-1] != bins.thresholds[1:])
    keep = np.concatenate([[0], run_ends, [bins.thresholds.size - 1]])
    tp = np.cumsum(bins.positives.astype(np.float64))[keep]
    fp = np.cumsum(bins.negatives.astype(np.float64))[keep]
    if tp[0] != 0 or fp[0] != 0:
        tp, fp = np.concatenate([[0.0], tp]), np.concatenate([[0.0], fp])
    return tp, fp


def curve_metrics(tp: np.ndarray, fp: np.ndarray, num_positives: int, num_negatives: int,
                  thresholds: np.ndarray) -> dict[str, float]:
    """AP, AUROC, FPR95, best F1 and its threshold from the curve's points (step 5 of the module doc).

    ``thresholds`` is the merged, uncollapsed threshold list (the best-F1 threshold is read from it at the
    best point's index, as the benchmark does).
    """
    recall = tp / num_positives  # = TPR
    fpr = fp / num_negatives
    fn = num_positives - tp
    predicted = tp + fp
    precision = np.ones_like(tp)
    np.divide(tp, predicted, out=precision, where=predicted > 0)
    f1 = 2 * tp / (2 * tp + fp + fn)
    best = int(np.argmax(f1))
    return {
        "AP": float(np.sum(np.diff(recall) * precision[1:])),
        "AUROC": float(np.trapezoid(recall, fpr)),
        "FPR95": float(fpr[int(np.searchsorted(recall, TPR_LEVEL))]),  # first point with TPR >= 0.95
        "best_F1": float(f1[best]),
        "best_F1_threshold": float(thresholds[min(best, thresholds.size - 1)]),
    }


def _check_strategy(bin_strategy: str, num_bins: int | None) -> int:
    if bin_strategy not in DEFAULT_NUM_BINS:
        raise ValueError(f"bin_strategy must be one of {sorted(DEFAULT_NUM_BINS)}, got {bin_strategy!r}")
    num_bins = DEFAULT_NUM_BINS[bin_strategy] if num_bins is None else num_bins
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)):
        raise ValueError(f"num_bins must be an integer, got {num_bins!r}")
    if num_bins < MIN_NUM_BINS[bin_strategy]:
        raise ValueError(f"num_bins must be >= {MIN_NUM_BINS[bin_strategy]} for {bin_strategy!r} bins, got {num_bins}")
    return int(num_bins)


def _check_uniform_edges(dtype: np.dtype, num_bins: int) -> None:
    """``np.histogram`` builds the equal-width edges in the scores' float dtype; they must be distinct there
    (float16 cannot hold 4096 distinct edges in [0, 1], and NumPy refuses such bins)."""
    edge_dtype = dtype if np.issubdtype(dtype, np.floating) else np.float64
    edges = np.linspace(0.0, 1.0, num_bins + 1, dtype=edge_dtype)
    if np.any(edges[:-1] >= edges[1:]):
        raise ValueError(f"{num_bins} equal bins over [0, 1] are not distinct in {np.dtype(dtype)} (NumPy builds "
                         "the uniform bin edges in the scores' dtype): give float32 or float64 scores, or fewer bins")


def _roi_values(scores: np.ndarray, labels: np.ndarray, bin_strategy: str,
                num_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """The non-void scores (in their own dtype) and the anomaly mask of one frame, validated."""
    labels = as_ood_labels(labels, "labels")
    scores = np.asarray(scores)
    as_scores(np.empty(0, scores.dtype))  # dtype check only: the values keep their dtype (it sets uniform bin edges)
    check_same_shape("scores", scores, "labels", labels)
    keep = labels != VOID
    values = scores[keep]
    check_finite(values)
    if bin_strategy == UNIFORM:
        if values.size and (values.min() < UNIFORM_RANGE[0] or values.max() > UNIFORM_RANGE[1]):
            raise ValueError(f"uniform bins span [0, 1] (the benchmark expects probabilities and silently drops "
                             f"other scores); non-void scores span [{values.min()}, {values.max()}]: rescale them or "
                             "use bin_strategy='percentiles'")
        _check_uniform_edges(values.dtype, num_bins)
    return values, labels[keep] == OOD_ANOMALY


class SmiycPixelMetrics:
    """Accumulates the benchmark's binned pixel curves frame by frame; `compute` gives the metric dict.

    Memory: the bin counts only (see the module doc), never the pixels of earlier frames.
    """

    def __init__(self, bin_strategy: str = PERCENTILES, num_bins: int | None = None):
        self.bin_strategy = bin_strategy
        self.num_bins = _check_strategy(bin_strategy, num_bins)
        self.num_frames = 0
        self.num_positives = 0
        self.num_negatives = 0
        self._frames: list[FrameBins] = []  # percentiles: every frame's own bins
        self._uniform: FrameBins | None = None  # uniform: running sums over frames

    def update(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Add one frame: ``scores`` (any shape, higher = more anomalous) and ``labels`` (0 / 1 / 255)."""
        try:
            values, is_anomaly = _roi_values(scores, labels, self.bin_strategy, self.num_bins)
        except ValueError as exc:
            raise ValueError(f"frame {self.num_frames}: {exc}") from None
        bins = frame_bins(values, is_anomaly, self.bin_strategy, self.num_bins)
        if self.bin_strategy == PERCENTILES:
            self._frames.append(bins)
        elif self._uniform is None:
            self._uniform = bins
        elif not np.array_equal(bins.thresholds, self._uniform.thresholds):
            raise ValueError(f"frame {self.num_frames}: its uniform bin edges differ from the first frame's (scores "
                             f"of dtype {values.dtype}); give every frame the same score dtype")
        else:
            self._uniform = FrameBins(bins.thresholds, self._uniform.positives + bins.positives,
                                      self._uniform.negatives + bins.negatives)
        self.num_frames += 1
        self.num_positives += int(is_anomaly.sum())
        self.num_negatives += int(is_anomaly.size - is_anomaly.sum())

    def merged_bins(self) -> FrameBins:
        """All frames' bins in curve order (step 3 of the module doc)."""
        if self.num_frames == 0:
            raise ValueError("no frame was given: SMIYC pixel metrics are undefined")
        if self.bin_strategy == PERCENTILES:
            return merge_percentile_frames(self._frames)
        return self._uniform  # type: ignore[return-value]

    def compute(self) -> dict[str, float]:
        """{"AP", "AUROC", "FPR95", "best_F1", "best_F1_threshold"} (fractions), as the benchmark computes them."""
        bins = self.merged_bins()
        check_both_classes(self.num_positives, self.num_negatives, "the non-void pixels of all frames")
        tp, fp = operating_points(bins)
        return curve_metrics(tp, fp, self.num_positives, self.num_negatives, bins.thresholds)


def smiyc_pixel_metrics(scores: Sequence[np.ndarray], labels: Sequence[np.ndarray], bin_strategy: str = PERCENTILES,
                        num_bins: int | None = None) -> dict[str, float]:
    """The SegmentMeIfYouCan benchmark's pixel metrics of a list of frames (procedure and formulas in the
    module doc).

    ``scores[i]`` and ``labels[i]`` are frame i's score map (higher = more anomalous; for ``"uniform"`` in
    [0, 1]) and its labels (0 inlier, 1 anomaly, 255 void), of equal shape. ``num_bins`` defaults to the
    benchmark's: 768 for ``"percentiles"``, 4096 for ``"uniform"``. Returns a dict with "AP", "AUROC",
    "FPR95", "best_F1" (fractions) and "best_F1_threshold".

    Raises ValueError naming the problem for: a single array instead of a list of frames, lists of different
    lengths, mismatched shapes, labels outside {0, 1, 255}, non-finite scores at non-void pixels, uniform-mode
    scores outside [0, 1], and no anomaly (or no inlier) pixel at all.
    """
    for name, frames in (("scores", scores), ("labels", labels)):
        if isinstance(frames, np.ndarray):
            raise ValueError(f"{name} must be a list of per-frame arrays, got one array of shape {frames.shape}")
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} score maps but {len(labels)} label maps: one of each per frame")
    acc = SmiycPixelMetrics(bin_strategy, num_bins)
    for frame_scores, frame_labels in zip(scores, labels):
        acc.update(frame_scores, frame_labels)
    return acc.compute()


def as_submitted(scores: np.ndarray) -> np.ndarray:
    """A score map as the benchmark stores a submission: cast to float16 (its ``Evaluation.save_output``).

    Raises ValueError when finite scores exceed float16's range (they would turn into infinities).
    """
    values = as_scores(scores)
    with np.errstate(over="ignore"):
        stored = values.astype(np.float16)
    limit = float(np.finfo(np.float16).max)
    overflow = np.isfinite(values) & ~np.isfinite(stored)
    if overflow.any():
        raise ValueError(f"{int(overflow.sum())} scores exceed float16's range (|score| > {limit:.0f}): "
                         "the benchmark's float16 storage would make them infinite")
    return stored


__all__ = ["PERCENTILES", "UNIFORM", "DEFAULT_NUM_BINS", "FrameBins", "percentile_edges",
           "frame_bins", "merge_percentile_frames", "operating_points", "curve_metrics", "SmiycPixelMetrics",
           "smiyc_pixel_metrics", "as_submitted"]
