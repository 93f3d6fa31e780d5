"""SMIYC component-level metrics (Chan et al. 2021, "SegmentMeIfYouCan"): sIoU, PPV, mean F1.

Follows the benchmark code (road_anomaly_benchmark ``metrics/instance_segmentation.py``) step by step:

1. Prediction mask = ``score > threshold`` (strict), set to 0 on void pixels (label 255).
2. Connected components, 8-connected (``scipy.ndimage.label`` with a 3x3 structure of ones), of the
   ground-truth anomaly mask (label 1) and of the prediction mask, separately.
3. Size filters: predicted components with fewer than ``min_pred_size`` pixels are deleted (the code's
   ``thresh_segsize``); ground-truth components with fewer than ``min_gt_size`` pixels become void (the code's
   ``thresh_instsize``), which also drops the predictions on them. Presets: AnomalyTrack 500 / 100 px,
   ObstacleTrack 50 / 10 px (prediction / ground truth), as the benchmark's SegEval configurations.
4. Everything below is counted inside the region of interest (non-void after step 3).

For a ground-truth component k with the set K^(k) of predicted components that intersect it:
``sIoU(k) = |k n U K^(k)| / |(k u U K^(k)) \\ A(k)|``, where A(k) holds the pixels of OTHER ground-truth
components: a prediction covering several objects is not penalised for the other objects it covers.
For a predicted component k^: ``PPV(k^) = |k^ n (all ground-truth anomaly pixels)| / |k^|``.
At each tau in {0.25, 0.30, ..., 0.75}: TP = #GT components with sIoU >= tau, FN = #GT with sIoU < tau,
FP = #predicted with PPV < tau (the code's comparisons), F1(tau) = 2TP / (2TP + FN + FP); mean F1 is the
average over the 11 taus. TP/FN/FP are pooled over images; sIoU and PPV are means over all components of
the dataset.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from densehybrid_ros.datasets.base import OOD_ANOMALY, VOID
from densehybrid_ros.evaluation._checks import as_ood_labels, as_scores, check_finite, check_same_shape

SIOU_THRESHOLDS = np.linspace(0.25, 0.75, 11, endpoint=True)  # the benchmark's own array (same floats)
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class ComponentSizeFilter:
    """Minimum component sizes in pixels (0 = keep all)."""

    min_pred_size: int = 0  # smaller predicted components are removed (SMIYC thresh_segsize)
    min_gt_size: int = 0  # smaller ground-truth components become void (SMIYC thresh_instsize)


NO_SIZE_FILTER = ComponentSizeFilter(0, 0)
ANOMALY_TRACK = ComponentSizeFilter(min_pred_size=500, min_gt_size=100)
OBSTACLE_TRACK = ComponentSizeFilter(min_pred_size=50, min_gt_size=10)


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a 2-D boolean mask: (int32 labels, 0 = background; count)."""
    labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    return labels, int(count)


@dataclass(frozen=True)
class ImageComponentStats:
    siou: np.ndarray  # per ground-truth component (after the size filter)
    ppv: np.ndarray  # per predicted component inside the region of interest
    gt_sizes: np.ndarray
    pred_sizes: np.ndarray


def _drop_small(labels: np.ndarray, count: int, min_size: int) -> np.ndarray:
    """Boolean per label id: True for components smaller than min_size (background never)."""
    small = np.bincount(labels.ravel(), minlength=count + 1) < min_size
    small[0] = False
    return small


def siou_and_ppv(gt_components: np.ndarray, pred_components: np.ndarray) -> tuple[np.ndarray, ...]:
    """sIoU per GT component and PPV per predicted component from two label arrays over the ROI pixels."""
    g = gt_components.ravel().astype(np.int64)
    p = pred_components.ravel().astype(np.int64)
    n_pred = int(p.max(initial=0)) + 1
    gt_size = np.bincount(g, minlength=int(g.max(initial=0)) + 1)
    pred_size = np.bincount(p, minlength=n_pred)
    both = (g > 0) & (p > 0)
    pairs, overlap = np.unique(g[both] * n_pred + p[both], return_counts=True)
    pair_gt, pair_pred = pairs // n_pred, pairs % n_pred
    pred_on_gt = np.bincount(pair_pred, weights=overlap, minlength=n_pred)  # |k^ n any GT component|
    n_gt = gt_size.size
    intersection = np.bincount(pair_gt, weights=overlap, minlength=n_gt)
    union_of_preds = np.bincount(pair_gt, weights=pred_size[pair_pred], minlength=n_gt)
    on_other_gt = np.bincount(pair_gt, weights=pred_on_gt[pair_pred] - overlap, minlength=n_gt)  # A(k) part
    adjusted_union = union_of_preds + gt_size - intersection - on_other_gt
    gt_ids = np.flatnonzero(gt_size[1:]) + 1
    pred_ids = np.flatnonzero(pred_size[1:]) + 1
    siou = intersection[gt_ids] / adjusted_union[gt_ids]
    ppv = pred_on_gt[pred_ids] / pred_size[pred_ids]
    return siou, ppv, gt_size[gt_ids], pred_size[pred_ids]


def image_component_stats(pred_mask: np.ndarray, ood_labels: np.ndarray,
                          size_filter: ComponentSizeFilter = NO_SIZE_FILTER) -> ImageComponentStats:
    """sIoU / PPV of the components of one image (2-D binary prediction mask, uint8 ood labels)."""
    labels = as_ood_labels(ood_labels)
    pred_mask = np.asarray(pred_mask)
    check_same_shape("pred_mask", pred_mask, "ood_labels", labels)
    if labels.ndim != 2:
        raise ValueError(f"component metrics need one 2-D image, got shape {labels.shape}")
    if pred_mask.dtype != bool and not np.isin(pred_mask, (0, 1)).all():
        raise ValueError("pred_mask must be boolean or hold only 0 and 1")
    gt_components, n_gt = label_components(labels == OOD_ANOMALY)
    pred_components, n_pred = label_components(pred_mask.astype(bool) & (labels != VOID))
    pred_components[_drop_small(pred_components, n_pred, size_filter.min_pred_size)[pred_components]] = 0
    roi = (labels != VOID) & ~_drop_small(gt_components, n_gt, size_filter.min_gt_size)[gt_components]
    return ImageComponentStats(*siou_and_ppv(gt_components[roi], pred_components[roi]))


def threshold_scores(scores: np.ndarray, ood_labels: np.ndarray, threshold: float) -> np.ndarray:
    """SMIYC's binarisation: anomaly where ``score > threshold`` (the benchmark code's strict rule, kept to reproduce
    it; the project's own thresholds mean ``score >= t``: pass ``thresholds.fusion_threshold(t)`` to apply one);
    NaN/inf at non-void pixels is an error."""
    values = as_scores(scores)
    labels = as_ood_labels(ood_labels)
    check_same_shape("scores", values, "ood_labels", labels)
    check_finite(values[labels != VOID])
    return values > threshold


@dataclass(frozen=True)
class ComponentResult:
    siou: float  # mean sIoU over all ground-truth components
    ppv: float  # mean PPV over all predicted components (NaN when nothing was predicted)
    mean_f1: float  # mean of f1 over the taus
    thresholds: np.ndarray  # the taus
    f1: np.ndarray
    tp: np.ndarray
    fn: np.ndarray
    fp: np.ndarray
    num_gt_components: int
    num_pred_components: int


@dataclass
class ComponentMetrics:
    """Accumulates component statistics over images and pools them as the SMIYC benchmark."""

    size_filter: ComponentSizeFilter = NO_SIZE_FILTER
    thresholds: np.ndarray = field(default_factory=lambda: SIOU_THRESHOLDS.copy())
    _siou: list[np.ndarray] = field(default_factory=list, init=False, repr=False)
    _ppv: list[np.ndarray] = field(default_factory=list, init=False, repr=False)

    def update(self, pred_mask: np.ndarray, ood_labels: np.ndarray) -> ImageComponentStats:
        """Add one image's binary prediction; returns its per-component statistics."""
        stats = image_component_stats(pred_mask, ood_labels, self.size_filter)
        self._siou.append(stats.siou)
        self._ppv.append(stats.ppv)
        return stats

    def update_scores(self, scores: np.ndarray, ood_labels: np.ndarray, threshold: float) -> ImageComponentStats:
        """Add one image's score map binarised at ``score > threshold``."""
        return self.update(threshold_scores(scores, ood_labels, threshold), ood_labels)

    def compute(self) -> ComponentResult:
        siou = np.concatenate(self._siou) if self._siou else np.empty(0)
        ppv = np.concatenate(self._ppv) if self._ppv else np.empty(0)
        if siou.size == 0:
            raise ValueError("no ground-truth anomaly component (after the size filter): component metrics undefined")
        taus = np.asarray(self.thresholds, dtype=np.float64)
        tp = (siou[None, :] >= taus[:, None]).sum(axis=1)
        fn = siou.size - tp
        fp = (ppv[None, :] < taus[:, None]).sum(axis=1)
        f1 = 2 * tp / (2 * tp + fn + fp)
        return ComponentResult(
            siou=float(siou.mean()), ppv=float(ppv.mean()) if ppv.size else float("nan"),
            mean_f1=float(f1.mean()), thresholds=taus, f1=f1, tp=tp, fn=fn, fp=fp,
            num_gt_components=int(siou.size), num_pred_components=int(ppv.size))


__all__ = ["SIOU_THRESHOLDS", "ComponentSizeFilter", "NO_SIZE_FILTER", "ANOMALY_TRACK", "OBSTACLE_TRACK",
           "label_components", "ImageComponentStats", "siou_and_ppv", "image_component_stats",
           "threshold_scores", "ComponentResult", "ComponentMetrics"]
