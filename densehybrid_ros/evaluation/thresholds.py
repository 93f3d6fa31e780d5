"""Cross-fold threshold protocol for open-set segmentation (thesis 5.2; paper Sec. 6.2, StreetHazards).

The anomaly threshold is the TPR-95% operating point of one fold (StreetHazards test town t5); the open-set
map built with it is scored on the other fold (t6); then the folds swap, and each metric is the average of
the two measurements weighted by the folds' image counts.

Design. Exact open-mIoU at a threshold needs every pixel's (score, label, class) once the threshold is
known, and the threshold needs the whole fold first. So a fold is given as a RE-ITERABLE source of images
-- a sequence (list of tuples, a dataset-backed object with ``__iter__``) or a zero-argument callable
returning a fresh iterator (e.g. one that reloads cached model outputs, or re-runs the Predictor) -- and
every fold is read twice: pass 1 finds its threshold with the exact bounded-memory
`StreamingAnomalyMetrics`, pass 2 accumulates the confusion matrices at the OTHER fold's threshold. Memory
stays bounded and the result is exact. (The alternative, histograms over a fixed list of candidate
thresholds in a single pass, would only approximate the TPR-95% point; it is not used.)

Threshold semantics: the project's one rule, ``score >= t`` (`densehybrid_ros.scores.is_anomalous`, compared in
the scores' dtype). `AnomalyMetrics.threshold95` is the lowest score predicted anomalous at that operating point, so
it is applied as it is: the protocol fuses with it, and it is the value the node's configuration receives.
`fusion_threshold` (t, dtype) is for binarisers with the strict rule ``score > value`` (SMIYC's benchmark code,
`component_metrics.threshold_scores`): the largest value of the dtype for which ``score > value`` selects exactly the
scores ``>= t``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Union

import numpy as np

from densehybrid_ros.evaluation.anomaly_metrics import AnomalyMetrics
from densehybrid_ros.evaluation.segmentation_metrics import (
    OpenSetAccumulator,
    OpenSetResult,
    ood_labels_from_semantic,
)
from densehybrid_ros.evaluation.streaming import StreamingAnomalyMetrics

# One image: (anomaly scores HxW, semantic labels HxW uint8 0..K-1 / K anomaly / 255 void, closed-set classes HxW).
FoldImage = tuple[np.ndarray, np.ndarray, np.ndarray]
FoldSource = Union[Callable[[], Iterable[FoldImage]], Iterable[FoldImage]]


def fusion_threshold(operating_threshold: float, score_dtype: np.dtype | type = np.float32) -> float:
    """Threshold T with ``score > T  <=>  score >= operating_threshold`` for every score of `score_dtype`: the
    project's rule (``>=``) expressed for a strict binariser such as SMIYC's (``>``).

    T is the representable value just below the smallest representable value >= operating_threshold, so a
    float32 comparison (the runtime's) and a float64 one agree.
    """
    kind = np.dtype(score_dtype).type
    if not issubclass(kind, np.floating):
        raise ValueError(f"score_dtype must be a floating dtype, got {np.dtype(score_dtype)}")
    if not np.isfinite(operating_threshold):
        raise ValueError(f"operating threshold must be finite, got {operating_threshold}")
    ceiling = kind(operating_threshold)
    if float(ceiling) < operating_threshold:
        ceiling = np.nextafter(ceiling, kind(np.inf))
    return float(np.nextafter(ceiling, kind(-np.inf)))


def iterate_fold(source: FoldSource) -> Iterator[FoldImage]:
    """A fresh pass over a fold source; a one-shot iterator is rejected (it cannot be read twice)."""
    if callable(source):
        return iter(source())
    if iter(source) is source:
        raise ValueError("a fold must be re-iterable (a sequence or a callable returning a new iterator), "
                         "not a one-shot iterator/generator: the protocol reads each fold twice")
    return iter(source)


def fold_operating_point(source: FoldSource, num_classes: int, max_buffer_pixels: int = 1 << 22,
                         tmp_dir: str | None = None) -> tuple[AnomalyMetrics, int, np.dtype]:
    """Pass 1: exact anomaly metrics of a fold (its TPR-95% threshold), image count, and score dtype."""
    dtypes: set[np.dtype] = set()
    with StreamingAnomalyMetrics(max_buffer_pixels, tmp_dir) as acc:
        for scores, semantic, _ in iterate_fold(source):
            acc.update(scores, ood_labels_from_semantic(semantic, num_classes))
            dtype = np.asarray(scores).dtype
            dtypes.add(dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64))
        if len(dtypes) > 1:
            raise ValueError(f"a fold mixes score dtypes {sorted(map(str, dtypes))}; use one dtype per fold")
        return acc.compute(), acc.num_images, dtypes.pop()


def _open_set_pass(source: FoldSource, num_classes: int, threshold: float) -> tuple[OpenSetResult, int]:
    acc = OpenSetAccumulator(num_classes, threshold)
    for scores, semantic, class_pred in iterate_fold(source):
        acc.update(semantic, class_pred, scores)
    if acc.num_images == 0:
        raise ValueError("the fold yielded no images")
    return acc.compute(), acc.num_images


def evaluate_open_set(source: FoldSource, num_classes: int, threshold: float) -> OpenSetResult:
    """Pass 2: closed-set mIoU, open-mIoU and mean F1 of a fold at a threshold (score >= threshold)."""
    return _open_set_pass(source, num_classes, threshold)[0]


@dataclass(frozen=True)
class FoldResult:
    num_images: int
    anomaly: AnomalyMetrics  # this fold's own pooled anomaly metrics (threshold95 = its operating point)
    applied_threshold: float  # the OTHER fold's operating point (unknown where score >= it)
    segmentation: OpenSetResult  # this fold at applied_threshold


@dataclass(frozen=True)
class CrossFoldResult:
    open_miou: float  # image-count-weighted over the two folds
    mean_f1: float
    miou: float  # closed-set mIoU, weighted the same way (it does not depend on the threshold)
    fold_a: FoldResult
    fold_b: FoldResult


def _weighted(a: float, b: float, n_a: int, n_b: int) -> float:
    return (n_a * a + n_b * b) / (n_a + n_b)


def cross_fold_open_set(fold_a: FoldSource, fold_b: FoldSource, num_classes: int,
                        max_buffer_pixels: int = 1 << 22, tmp_dir: str | None = None) -> CrossFoldResult:
    """Threshold at TPR 95% on fold A applied to fold B and vice versa; metrics weighted by image counts."""
    anomaly_a, n_a, _ = fold_operating_point(fold_a, num_classes, max_buffer_pixels, tmp_dir)
    anomaly_b, n_b, _ = fold_operating_point(fold_b, num_classes, max_buffer_pixels, tmp_dir)
    thr_from_a = anomaly_a.threshold95  # applied to fold B's scores: unknown where score >= it
    thr_from_b = anomaly_b.threshold95
    seg_a, again_a = _open_set_pass(fold_a, num_classes, thr_from_b)
    seg_b, again_b = _open_set_pass(fold_b, num_classes, thr_from_a)
    if (again_a, again_b) != (n_a, n_b):
        raise ValueError(f"a fold changed between its two passes: images {n_a} then {again_a} (A), "
                         f"{n_b} then {again_b} (B)")
    result_a = FoldResult(n_a, anomaly_a, thr_from_b, seg_a)
    result_b = FoldResult(n_b, anomaly_b, thr_from_a, seg_b)
    return CrossFoldResult(
        open_miou=_weighted(seg_a.open_miou, seg_b.open_miou, n_a, n_b),
        mean_f1=_weighted(seg_a.mean_f1, seg_b.mean_f1, n_a, n_b),
        miou=_weighted(seg_a.miou, seg_b.miou, n_a, n_b), fold_a=result_a, fold_b=result_b)


__all__ = ["FoldImage", "FoldSource", "fusion_threshold", "iterate_fold", "fold_operating_point",
           "evaluate_open_set", "FoldResult", "CrossFoldResult", "cross_fold_open_set"]
