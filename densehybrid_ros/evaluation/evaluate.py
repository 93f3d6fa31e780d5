"""Run the shared Predictor over an evaluation dataset and accumulate every applicable metric.

One pass, bounded memory: exact streaming AP/AUROC/FPR95 per score, distance bins where depth exists,
SMIYC component metrics for the SMIYC kinds, closed-set mIoU and open-mIoU / mean F1 where the dataset's
classes are the model's, and the generative/discriminative ensemble analysis. A seeded pixel subsample
per score feeds the report's curves and histograms (the metrics themselves are exact).

Thresholds: open-mIoU, the SMIYC components and recall by distance / size are taken at `threshold` (the thesis
protocol: the weights' TPR-95% point unless one is given); every operating point of the weights (e.g. fpr1, the
node's default) is reported as well (metrics "operating_points": TPR and FPR on this data, open-mIoU, mean F1;
recall by distance / size under its name).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import numpy as np
from tqdm import tqdm

from densehybrid_ros.datasets.base import OOD_ANOMALY, OOD_INLIER, EvalDataset, EvalSample
from densehybrid_ros.evaluation.bootstrap import (DEFAULT_RESAMPLES, GroupedConfusion, GroupedScoreHistograms,
                                                  GroupIndex, group_weights)
from densehybrid_ros.evaluation.breakdown import (SIZE_EDGES, FlaggedAtThresholds, RecallByBin,
                                                  SizeBinnedAnomalyMetrics, component_sizes)
from densehybrid_ros.evaluation.component_metrics import ANOMALY_TRACK, OBSTACLE_TRACK, ComponentMetrics
from densehybrid_ros.evaluation.distance_bins import DistanceBinnedAnomalyMetrics
from densehybrid_ros.evaluation.ensemble import EnsembleAccumulator
from densehybrid_ros.evaluation.segmentation_metrics import OpenSetAccumulator, closed_set_confusion, iou_per_class
from densehybrid_ros.evaluation.streaming import StreamingAnomalyMetrics
from densehybrid_ros.evaluation.anomaly_metrics import PerImageAnomalyMetrics
from densehybrid_ros.evaluation.thresholds import fusion_threshold
from densehybrid_ros.predictor import Prediction, Predictor

COMPONENT_FILTERS = {"smiyc-anomaly": ANOMALY_TRACK, "smiyc-obstacle": OBSTACLE_TRACK, "smiyc-laf-noknown": OBSTACLE_TRACK}
DISTANCE_EDGES = (0.0, 10.0, 20.0, 30.0, 50.0, math.inf)


@dataclass
class EvalOptions:
    scores: tuple[str, ...] = ("hybrid",)
    max_images: int | None = None
    per_image: bool = False  # the StreetHazards per-image-averaged variant as well
    threshold: float | None = None  # open-set / component threshold; None -> `protocol_threshold` of the predictor
    operating_points: dict[str, float] | None = None  # further named thresholds to report; None -> the weights' points
    distance_edges: tuple[float, ...] = DISTANCE_EDGES
    subsample_per_image: int = 20000
    keep_examples: int = 6
    seed: int = 0
    bootstrap_resamples: int = DEFAULT_RESAMPLES  # 95% intervals resampling groups (streets); 0 = none
    size_edges: tuple[float, ...] = SIZE_EDGES  # anomaly component sizes (pixels) for the size breakdown


@dataclass
class Example:
    sample: EvalSample
    prediction: Prediction


@dataclass
class EvalResult:
    metrics: dict
    subsample: dict[str, tuple[np.ndarray, np.ndarray]]  # score -> (values, is_anomaly)
    examples: list[Example] = field(default_factory=list)


def _same_taxonomy(dataset: EvalDataset, predictor: Predictor) -> bool:
    classes = getattr(dataset, "classes", None)
    return classes is not None and list(classes) == [c.name for c in predictor.metadata.classes]


PROTOCOL_POINT = "tpr95"  # the thesis protocol's operating point (open-mIoU)


def weights_points(predictor: Predictor) -> dict[str, float]:
    """The predictor's weights' operating points, name -> threshold (none for a stand-in without weights)."""
    calibration = getattr(getattr(predictor, "metadata", None), "calibration", None)
    return {} if calibration is None else {name: p.threshold for name, p in calibration.points().items()}


def protocol_threshold(predictor: Predictor) -> float | None:
    """The threshold of the thesis protocol: the weights' TPR-95% point, else the predictor's threshold (weights with
    a manual threshold, stand-ins)."""
    return weights_points(predictor).get(PROTOCOL_POINT, predictor.threshold)


def evaluate(predictor: Predictor, dataset: EvalDataset, options: EvalOptions = EvalOptions(),
             progress: bool = True, on_image: Callable[[int], None] | None = None) -> EvalResult:
    """Evaluate `predictor` on `dataset`; see the module doc for what is computed when."""
    missing = [s for s in options.scores if s != "hybrid" and s not in predictor.config.extra_scores]
    if missing:
        raise ValueError(f"scores {missing} were not requested from the predictor (PredictorConfig.extra_scores)")
    n = len(dataset) if options.max_images is None else min(len(dataset), options.max_images)
    if n == 0:
        raise ValueError(f"dataset {dataset.kind}:{dataset.root} has no images")
    threshold = options.threshold if options.threshold is not None else protocol_threshold(predictor)
    points = options.operating_points if options.operating_points is not None else weights_points(predictor)
    kind = dataset.kind
    semantic_ok = _same_taxonomy(dataset, predictor)
    K = predictor.num_classes
    rng = np.random.default_rng(options.seed)
    streams = {s: StreamingAnomalyMetrics() for s in options.scores}
    per_image = {s: PerImageAnomalyMetrics() for s in options.scores} if options.per_image else {}
    bins: dict[str, DistanceBinnedAnomalyMetrics] = {}
    components = ComponentMetrics(COMPONENT_FILTERS[kind]) if kind in COMPONENT_FILTERS and threshold is not None else None
    ensemble = EnsembleAccumulator() if {"generative", "discriminative"} <= set(options.scores) else None
    closed_cm = np.zeros((K, K), np.int64)
    open_acc = OpenSetAccumulator(K, threshold) if semantic_ok and threshold is not None else None
    open_at = {name: OpenSetAccumulator(K, t) for name, t in points.items()} if semantic_ok else {}
    flagged = FlaggedAtThresholds(points)
    groups = GroupIndex()
    group_of = getattr(dataset, "group", None)
    grouped = {s: GroupedScoreHistograms() for s in options.scores}
    grouped_cm = GroupedConfusion(K)
    sizes = {s: SizeBinnedAnomalyMetrics(options.size_edges) for s in options.scores}
    named_thresholds = {**({} if threshold is None else {"threshold": float(threshold)}), **points}
    recall_distance = RecallByBin(options.distance_edges, named_thresholds)
    recall_size = RecallByBin(options.size_edges, named_thresholds)
    sub_values: dict[str, list] = {s: [] for s in options.scores}
    sub_labels: list[np.ndarray] = []
    examples: list[Example] = []
    labelled = with_anomaly = 0
    try:
        for i in tqdm(range(n), desc=f"eval {kind}", unit="img", disable=not progress):
            sample = dataset[i]
            pred = predictor.predict(sample.image)
            maps = {"hybrid": pred.hybrid, **pred.scores}
            g = groups(group_of(i) if group_of is not None else sample.name)
            if semantic_ok and sample.semantic is not None:
                cm = closed_set_confusion(sample.semantic, pred.class_ids, K)
                closed_cm += cm
                grouped_cm.update(g, cm)
                for acc in (open_acc, *open_at.values()):
                    if acc is not None:
                        acc.update(sample.semantic, pred.class_ids, pred.hybrid)
            if sample.ood is not None:
                labelled += 1
                has_anomaly = bool((sample.ood == OOD_ANOMALY).any())
                with_anomaly += has_anomaly
                for s in options.scores:
                    streams[s].update(maps[s], sample.ood)
                    grouped[s].update(g, maps[s], sample.ood)
                    sizes[s].update(maps[s], sample.ood)
                    if s in per_image:
                        per_image[s].update(maps[s], sample.ood)
                    if sample.depth is not None:
                        bins.setdefault(s, DistanceBinnedAnomalyMetrics(options.distance_edges)).update(
                            maps[s], sample.ood, sample.depth)
                flagged.update(pred.hybrid, sample.ood)
                recall_size.update(pred.hybrid, sample.ood, component_sizes(sample.ood))
                if sample.depth is not None:
                    recall_distance.update(pred.hybrid, sample.ood, sample.depth)
                if components is not None:
                    components.update_scores(pred.hybrid, sample.ood, fusion_threshold(threshold))
                if ensemble is not None:
                    ensemble.update(maps["generative"], maps["discriminative"], sample.ood)
                valid = np.flatnonzero((sample.ood == OOD_INLIER) | (sample.ood == OOD_ANOMALY))
                take = rng.choice(valid, min(options.subsample_per_image, valid.size), replace=False)
                sub_labels.append(sample.ood.ravel()[take] == OOD_ANOMALY)
                for s in options.scores:
                    sub_values[s].append(maps[s].ravel()[take])
                if has_anomaly and len(examples) < options.keep_examples:
                    examples.append(Example(sample, pred))
            if on_image is not None:
                on_image(i)
        metrics: dict = {"dataset": {"kind": kind, "root": str(dataset.root), "split": dataset.split, "images": n,
                                     "labelled_images": labelled, "images_with_anomalies": with_anomaly},
                         "threshold": threshold, "groups": len(groups), "scores": {}}
        weights = (group_weights(len(groups), options.bootstrap_resamples, options.seed)
                   if options.bootstrap_resamples and len(groups) > 1 else None)
        if weights is not None:
            metrics["bootstrap"] = {"resamples": options.bootstrap_resamples, "level": 0.95,
                                    "groups": len(groups), "grouped_by": "street" if group_of is not None else "image"}
        for s in options.scores:
            entry: dict = {}
            try:
                exact = streams[s].compute()
                entry["anomaly"] = asdict(exact)
                if weights is not None:
                    entry["intervals"] = {k: asdict(v) for k, v in grouped[s].intervals(exact, weights).items()}
            except ValueError as exc:
                entry["anomaly"] = None
                entry["anomaly_skipped"] = str(exc)
            entry["size_bins"] = [asdict(b) for b in sizes[s].compute()]
            if s in per_image:
                entry["per_image"] = asdict(per_image[s].compute())
            if s in bins:
                entry["distance_bins"] = [asdict(b) for b in bins[s].compute()]
            metrics["scores"][s] = entry
        if semantic_ok and closed_cm.sum():
            iou = iou_per_class(closed_cm)
            metrics["closed_set"] = {"miou": float(np.nanmean(iou)), "iou": dict(zip(dataset.classes, _floats(iou)))}
            if weights is not None:
                ci = grouped_cm.intervals(weights)
                metrics["closed_set"]["intervals"] = {"miou": asdict(ci["miou"]),
                                                      "iou": dict(zip(dataset.classes, (asdict(v) for v in ci["iou"])))}
            if open_acc is not None:
                r = open_acc.compute()
                metrics["open_set"] = {"threshold": threshold, "open_miou": r.open_miou, "miou": r.miou,
                                       "mean_f1": r.mean_f1, "open_iou": dict(zip(dataset.classes, _floats(r.open_iou)))}
            else:
                metrics["open_set_skipped"] = "no threshold: weights uncalibrated and none given"
        elif not semantic_ok:
            metrics["semantic_skipped"] = "dataset classes differ from the model's: no mIoU / open-mIoU"
        if points:
            metrics["operating_points"] = operating_point_entries(flagged, open_at)
        if named_thresholds and labelled:
            metrics["recall_by_size"] = [asdict(b) for b in recall_size.compute()]
            if recall_distance.positives.sum():
                metrics["recall_by_distance"] = [asdict(b) for b in recall_distance.compute()]
        if components is not None:
            try:
                metrics["components"] = asdict(components.compute())
            except ValueError as exc:  # e.g. the size filter voided every ground-truth component
                metrics["components_skipped"] = str(exc)
        if ensemble is not None:
            metrics["ensemble"] = asdict(ensemble.compute())
        subsample = {s: (np.concatenate(v) if v else np.zeros(0, np.float32),
                         np.concatenate(sub_labels) if sub_labels else np.zeros(0, bool)) for s, v in sub_values.items()}
        return EvalResult(_jsonable(metrics), subsample, examples)
    finally:
        for acc in list(streams.values()) + list(bins.values()):
            acc.close()


def operating_point_entries(flagged: FlaggedAtThresholds,
                            open_at: dict[str, OpenSetAccumulator]) -> dict[str, dict]:
    """Per operating point: its threshold, TPR and FPR on the evaluated pixels, and open-mIoU / mean F1 at it (when
    the dataset's classes are the model's)."""
    entries = flagged.compute()
    for name, acc in open_at.items():
        if acc.num_images:
            r = acc.compute()
            entries[name].update(open_miou=r.open_miou, mean_f1=r.mean_f1)
    return entries


def _floats(values: Iterable) -> list:
    return [None if (v is None or (isinstance(v, float) and math.isnan(v))) else float(v) for v in values]


def _jsonable(obj):
    """Replace NaN/inf by None and numpy scalars/arrays by Python types, recursively."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def predicted_fold(predictor: Predictor, dataset: EvalDataset, max_images: int | None = None):
    """A re-iterable fold source (thresholds.FoldSource): each pass re-runs the predictor on the dataset."""
    n = len(dataset) if max_images is None else min(len(dataset), max_images)

    def images():
        for i in range(n):
            sample = dataset[i]
            if sample.semantic is None:
                raise ValueError(f"{dataset.kind}: image {sample.name} has no semantic labels (needed for open-mIoU)")
            pred = predictor.predict(sample.image)
            yield pred.hybrid, sample.semantic, pred.class_ids

    return images


def cross_fold(predictor: Predictor, fold_a: EvalDataset, fold_b: EvalDataset, max_images: int | None = None) -> dict:
    """The two-fold protocol (StreetHazards t5/t6, or sim val/test): threshold at TPR 95% on one fold, open-mIoU
    and mean F1 on the other, then swapped; weighted by image counts (thresholds.cross_fold_open_set)."""
    from densehybrid_ros.evaluation.thresholds import cross_fold_open_set

    for ds in (fold_a, fold_b):
        if not _same_taxonomy(ds, predictor):
            raise ValueError(f"{ds.kind}:{ds.root}: dataset classes differ from the model's; no open-mIoU")
    r = cross_fold_open_set(predicted_fold(predictor, fold_a, max_images), predicted_fold(predictor, fold_b, max_images),
                            predictor.num_classes)
    fold = lambda f, ds: {"dataset": f"{ds.kind}:{ds.root} split={ds.split}", "images": f.num_images,  # noqa: E731
                          "own_threshold95": f.anomaly.threshold95, "applied_threshold": f.applied_threshold,
                          "open_miou": f.segmentation.open_miou, "mean_f1": f.segmentation.mean_f1,
                          "miou": f.segmentation.miou}
    return _jsonable({"open_miou": r.open_miou, "mean_f1": r.mean_f1, "miou": r.miou,
                      "fold_a": fold(r.fold_a, fold_a), "fold_b": fold(r.fold_b, fold_b)})
