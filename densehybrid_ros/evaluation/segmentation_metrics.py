"""Closed-set mIoU (5.3) and open-set open-mIoU (5.4, 5.5) with mean F1, from confusion matrices.

Label convention (``densehybrid_ros.datasets``): ground truth ``semantic`` uint8 with 0..K-1 known classes,
K = anomaly, 255 = void. Closed-set predictions are 0..K-1; open-set predictions are 0..K with K = unknown.
Confusion matrices are int64 with rows = ground truth and columns = prediction, accumulated with
``np.bincount``; they add up over images, so every metric here is pooled over the dataset.

- Closed-set (5.3): K x K matrix over the pixels labelled with a KNOWN class (anomaly and void excluded);
  ``IoU_k = TP_k / (TP_k + FP_k + FN_k)``; mIoU is the mean over the classes that occur (in ground truth
  or prediction) -- a class with TP + FP + FN = 0 is NaN and left out of the mean.
- Open-set (5.4, 5.5): (K+1) x (K+1) matrix over all non-void pixels, prediction = closed-set class
  overridden with K where the anomaly score reaches the threshold (score >= t). ``FP_k^os`` sums column k over all other
  rows INCLUDING the anomaly row (class k predicted at an undetected anomaly); ``FN_k^os`` sums row k over
  all other columns INCLUDING the unknown column (inlier of class k flagged as anomaly). open-mIoU averages
  over the K known classes only, so a perfect anomaly detector gives open-mIoU == mIoU.
- Mean F1: the macro F1 over the K+1 classes of the open-set matrix, ``F1_k = 2TP / (2TP + FP + FN)``,
  the "F1 score averaged over K+1 classes" (paper Sec. 5.2) that thesis Tab. 6.5 reports next to open-mIoU.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from densehybrid_ros.datasets.base import VOID
from densehybrid_ros.evaluation._checks import as_class_map, as_ood_labels, as_scores, check_same_shape
from densehybrid_ros.scores import is_anomalous


def _check_num_classes(num_classes: int) -> None:
    if int(num_classes) < 1 or int(num_classes) >= VOID:
        raise ValueError(f"num_classes must be in [1, {VOID - 1}], got {num_classes}")


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_labels: int) -> np.ndarray:
    """num_labels x num_labels int64 counts (rows gt, columns pred) via np.bincount.

    ``gt`` values must be in [0, num_labels) or 255 (void, dropped); ``pred`` in [0, num_labels).
    """
    if not 1 <= int(num_labels) <= VOID:
        raise ValueError(f"num_labels must be in [1, {VOID}] (255 is void), got {num_labels}")
    check_same_shape("gt", np.asarray(gt), "pred", np.asarray(pred))
    gt = as_class_map(gt, 0, num_labels - 1, "ground truth", allow_void=True).ravel()
    pred = as_class_map(pred, 0, num_labels - 1, "prediction", allow_void=False).ravel()
    keep = gt != VOID
    codes = gt[keep].astype(np.int64) * num_labels + pred[keep].astype(np.int64)
    return np.bincount(codes, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def closed_set_confusion(semantic: np.ndarray, class_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """K x K confusion over pixels of known classes (anomaly pixels, label K, and void excluded)."""
    _check_num_classes(num_classes)
    semantic = as_class_map(semantic, 0, num_classes, "semantic labels", allow_void=True)
    known = np.where(semantic == num_classes, VOID, semantic)
    return confusion_matrix(known, class_pred, num_classes)


def open_set_confusion(semantic: np.ndarray, open_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K+1) x (K+1) confusion: ground truth 0..K (K = anomaly), prediction 0..K (K = unknown)."""
    _check_num_classes(num_classes)
    return confusion_matrix(semantic, open_pred, num_classes + 1)


def _check_square(cm: np.ndarray) -> np.ndarray:
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] < 1:
        raise ValueError(f"confusion matrix must be square and non-empty, got shape {cm.shape}")
    if (cm < 0).any():
        raise ValueError("confusion matrix has negative counts")
    return cm.astype(np.float64)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _nanmean(values: np.ndarray, what: str) -> float:
    if np.isnan(values).all():
        raise ValueError(f"{what} is undefined: no class has any labelled or predicted pixel")
    return float(np.nanmean(values))


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """IoU_k = TP_k / (TP_k + FP_k + FN_k) (5.3); NaN for a class absent from gt and prediction."""
    cm = _check_square(cm)
    tp = np.diag(cm)
    return _ratio(tp, cm.sum(axis=0) + cm.sum(axis=1) - tp)


def mean_iou(cm: np.ndarray) -> float:
    """Closed-set mIoU: mean of `iou_per_class` over the classes that occur."""
    return _nanmean(iou_per_class(cm), "mIoU")


def open_iou_per_class(open_cm: np.ndarray) -> np.ndarray:
    """open-IoU_k = TP_k / (TP_k + FP_k^os + FN_k^os) for the K known classes (5.4, 5.5).

    FP_k^os = sum_{i != k} FP_k^i over all K+1 ground-truth rows (anomalies predicted as k included);
    FN_k^os = sum_{i != k} FN_k^i over all K+1 predicted columns (k flagged unknown included).
    """
    cm = _check_square(open_cm)
    known = cm.shape[0] - 1
    tp = np.diag(cm)[:known]
    fp_os = cm.sum(axis=0)[:known] - tp
    fn_os = cm.sum(axis=1)[:known] - tp
    return _ratio(tp, tp + fp_os + fn_os)


def open_mean_iou(open_cm: np.ndarray) -> float:
    """open-mIoU: mean of `open_iou_per_class` over the K known classes only (thesis 5.2)."""
    return _nanmean(open_iou_per_class(open_cm), "open-mIoU")


def f1_per_class(cm: np.ndarray) -> np.ndarray:
    """F1_k = 2 TP_k / (2 TP_k + FP_k + FN_k) for every row/column of `cm`; NaN for absent classes."""
    cm = _check_square(cm)
    tp = np.diag(cm)
    return _ratio(2 * tp, cm.sum(axis=0) + cm.sum(axis=1))


def mean_f1(open_cm: np.ndarray) -> float:
    """Macro F1 over the K+1 classes (known + unknown) of the open-set confusion matrix."""
    return _nanmean(f1_per_class(open_cm), "mean F1")


def open_set_prediction(class_pred: np.ndarray, scores: np.ndarray, threshold: float, num_classes: int) -> np.ndarray:
    """K+1-way map: closed-set class, overridden with K where ``score >= threshold``.

    The project's one rule (`densehybrid_ros.scores.is_anomalous`, as the runtime's ``open_set_fusion``), compared in
    the scores' own floating dtype: an operating point t (e.g. AnomalyMetrics.threshold95) is used as it is.
    """
    _check_num_classes(num_classes)
    class_pred = as_class_map(class_pred, 0, num_classes - 1, "class predictions", allow_void=False)
    values = np.asarray(scores)
    if not np.issubdtype(values.dtype, np.floating):
        values = as_scores(values)
    check_same_shape("class predictions", class_pred, "scores", values)
    if np.isnan(values).any():
        raise ValueError("scores contain NaN")
    return np.where(is_anomalous(values, threshold), num_classes, class_pred).astype(np.int64)


def ood_labels_from_semantic(semantic: np.ndarray, num_classes: int) -> np.ndarray:
    """uint8 ood labels from semantic labels: K -> 1 (anomaly), 255 -> 255 (void), known -> 0."""
    _check_num_classes(num_classes)
    semantic = as_class_map(semantic, 0, num_classes, "semantic labels", allow_void=True)
    ood = np.where(semantic == VOID, VOID, (semantic == num_classes).astype(np.uint8))
    return as_ood_labels(ood.astype(np.uint8))


@dataclass(frozen=True)
class OpenSetResult:
    """Closed- and open-set segmentation metrics (fractions) with the matrices they come from."""

    miou: float  # closed-set mIoU (5.3)
    iou: np.ndarray  # (K,) closed-set IoU per class
    open_miou: float  # open-mIoU (5.4, 5.5)
    open_iou: np.ndarray  # (K,) open-IoU per known class
    mean_f1: float  # macro F1 over K+1 classes
    f1: np.ndarray  # (K+1,)
    closed_confusion: np.ndarray  # (K, K)
    open_confusion: np.ndarray  # (K+1, K+1)
    threshold: float  # threshold used: unknown where score >= threshold


def open_set_result(closed_cm: np.ndarray, open_cm: np.ndarray, threshold: float) -> OpenSetResult:
    """Every segmentation metric from the two confusion matrices."""
    return OpenSetResult(
        miou=mean_iou(closed_cm), iou=iou_per_class(closed_cm), open_miou=open_mean_iou(open_cm),
        open_iou=open_iou_per_class(open_cm), mean_f1=mean_f1(open_cm), f1=f1_per_class(open_cm),
        closed_confusion=np.asarray(closed_cm), open_confusion=np.asarray(open_cm), threshold=float(threshold))


class OpenSetAccumulator:
    """Accumulates the closed-set and open-set confusion matrices at a fixed fusion threshold."""

    def __init__(self, num_classes: int, threshold: float) -> None:
        _check_num_classes(num_classes)
        if np.isnan(threshold):
            raise ValueError("threshold is NaN")
        self.num_classes, self.threshold = int(num_classes), float(threshold)
        self.closed = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.open = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
        self.num_images = 0

    def update(self, semantic: np.ndarray, class_pred: np.ndarray, scores: np.ndarray) -> None:
        """Add one image: semantic labels (0..K, 255), closed-set classes (0..K-1), anomaly scores."""
        check_same_shape("semantic labels", np.asarray(semantic), "class predictions", np.asarray(class_pred))
        self.closed += closed_set_confusion(semantic, class_pred, self.num_classes)
        open_pred = open_set_prediction(class_pred, scores, self.threshold, self.num_classes)
        self.open += open_set_confusion(semantic, open_pred, self.num_classes)
        self.num_images += 1

    def compute(self) -> OpenSetResult:
        return open_set_result(self.closed, self.open, self.threshold)


__all__ = ["confusion_matrix", "closed_set_confusion", "open_set_confusion", "iou_per_class", "mean_iou",
           "open_iou_per_class", "open_mean_iou", "f1_per_class", "mean_f1", "open_set_prediction",
           "ood_labels_from_semantic", "OpenSetResult", "open_set_result", "OpenSetAccumulator"]
