"""One evaluation protocol: `evaluate(source, dataset, metrics)` loops once over the dataset, takes each frame's
prediction from the source (evaluation/sources.py) and hands both to every metric (evaluation/metrics.py).

One pass, bounded memory. The standard metrics (`build_metrics` from `EvalOptions`): exact streaming AP/AUROC/FPR95
per score with bootstrap intervals, size and distance bins (where depth exists), SMIYC component metrics for the SMIYC
kinds, closed-set mIoU and open-mIoU / mean F1 where the dataset's classes are the model's, the
generative/discriminative ensemble analysis, and a seeded pixel subsample per score plus example frames for the
report's curves, histograms and images (the metrics themselves are exact).

Thresholds: open-mIoU, the SMIYC components and recall by distance / size are taken at `threshold` (the thesis
protocol: the weights' TPR-95% point unless one is given); every operating point of the weights (e.g. fpr1, the
node's default) is reported as well (metrics "operating_points": TPR and FPR on this data, open-mIoU, mean F1;
recall by distance / size under its name).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Hashable, Sequence

import numpy as np
from tqdm import tqdm

from densehybrid_ros.datasets.base import EvalDataset, EvalSample
from densehybrid_ros.evaluation.bootstrap import DEFAULT_RESAMPLES, GroupedStatistics
from densehybrid_ros.evaluation.breakdown import SIZE_EDGES
from densehybrid_ros.evaluation.component_metrics import ANOMALY_TRACK, OBSTACLE_TRACK
from densehybrid_ros.evaluation.distance_bins import DISTANCE_EDGES, NEAR_RANGE
from densehybrid_ros.evaluation.metrics import (GROUP, BootstrapGroups, Components, DatasetSummary, DistanceBins,
                                                Ensemble, Example, Metric, OperatingPoints, PerImage, PixelAnomaly,
                                                RecallBreakdown, ReportSamples, Segmentation, SizeBins, merge_entries)
from densehybrid_ros.evaluation.sources import PredictionSource, as_source, protocol_threshold
from densehybrid_ros.predictor import Predictor

COMPONENT_FILTERS = {"smiyc-anomaly": ANOMALY_TRACK, "smiyc-obstacle": OBSTACLE_TRACK,
                     "smiyc-laf-noknown": OBSTACLE_TRACK}
# metrics.json's top-level keys in the order they are written; others follow in the order of their metrics
KEY_ORDER = ("dataset", "threshold", "groups", "scores", "paired", "bootstrap", "closed_set", "open_set",
             "open_set_skipped", "semantic_skipped", "operating_points", "recall_by_size", "recall_by_distance",
             "components", "components_skipped", "ensemble")

@dataclass
class EvalOptions:
    scores: tuple[str, ...] = ("hybrid",)
    max_images: int | None = None
    per_image: bool = False  # the StreetHazards per-image-averaged variant as well
    threshold: float | None = None  # open-set / component threshold; None -> `sources.protocol_threshold`
    operating_points: dict[str, float] | None = None  # further named thresholds to report; None -> the weights' points
    distance_edges: tuple[float, ...] = DISTANCE_EDGES
    near_range: float | None = NEAR_RANGE  # metres: metrics pooled over pixels nearer than this ("near"); None = off
    subsample_per_image: int = 20000
    keep_examples: int = 6
    seed: int = 0
    bootstrap_resamples: int = DEFAULT_RESAMPLES  # 95% intervals resampling groups (streets); 0 = none
    size_edges: tuple[float, ...] = SIZE_EDGES  # anomaly component sizes (pixels) for the size breakdown


@dataclass
class EvalResult:
    metrics: dict
    subsample: dict[str, tuple[np.ndarray, np.ndarray]]  # score -> (values, is_anomaly)
    examples: list[Example] = field(default_factory=list)
    groups: GroupedStatistics | None = None  # the pixel metrics' grouped histograms (report: groups.npz)


def same_taxonomy(dataset: EvalDataset, source: PredictionSource) -> bool:
    """Whether the dataset's class names are the source's (then mIoU and open-mIoU mean something)."""
    classes = getattr(dataset, "classes", None)
    return classes is not None and list(classes) == list(source.class_names)


def build_metrics(options: EvalOptions, source: PredictionSource, dataset: EvalDataset) -> list[Metric]:
    """The standard metrics of `options` for `source` on `dataset` (see the module doc); ValueError for a score the
    source does not give."""
    missing = [s for s in options.scores if s not in source.scores]
    if missing:
        raise ValueError(f"scores {missing} were not requested from the predictor (PredictorConfig.extra_scores)")
    threshold = options.threshold if options.threshold is not None else protocol_threshold(source)
    points = dict(options.operating_points if options.operating_points is not None else source.operating_points)
    comparable = same_taxonomy(dataset, source)
    groups = BootstrapGroups(options.bootstrap_resamples, options.seed,
                             "street" if getattr(dataset, "group", None) is not None else "image")
    named = {**({} if threshold is None else {"threshold": float(threshold)}), **points}
    metrics: list[Metric] = [DatasetSummary(dataset, threshold), groups,
                             PixelAnomaly(options.scores, groups), SizeBins(options.scores, options.size_edges)]
    if options.per_image:
        metrics.append(PerImage(options.scores))
    metrics += [DistanceBins(options.scores, options.distance_edges, options.near_range),
                Segmentation(source.num_classes, getattr(dataset, "classes", None), threshold, comparable, groups),
                OperatingPoints(points, source.num_classes, comparable),
                RecallBreakdown(named, options.size_edges, options.distance_edges)]
    if dataset.kind in COMPONENT_FILTERS and threshold is not None:
        metrics.append(Components(COMPONENT_FILTERS[dataset.kind], threshold))
    if {"generative", "discriminative"} <= set(options.scores):
        metrics.append(Ensemble())
    metrics.append(ReportSamples(options.scores, options.subsample_per_image, options.keep_examples, options.seed))
    return metrics


def evaluate(source: PredictionSource | Predictor, dataset: EvalDataset,
             metrics: Sequence[Metric] | EvalOptions = EvalOptions(), progress: bool = True,
             max_images: int | None = None) -> EvalResult:
    """One pass over the first `max_images` frames of `dataset` (all by default): each frame's prediction from `source`
    (a Predictor: at its own threshold), then `update` of every metric; metrics.json = their `compute()` merged
    (`KEY_ORDER`, NaN/inf -> null). `metrics` as `EvalOptions`: `build_metrics` of them, over `options.max_images`.
    The report's subsample and examples come from a `ReportSamples` among the metrics, the grouped statistics
    (`EvalResult.groups`) from a `PixelAnomaly`."""
    source = as_source(source)
    if isinstance(metrics, EvalOptions):
        if max_images is not None:
            raise ValueError("give max_images in the EvalOptions")
        max_images = metrics.max_images
        metrics = build_metrics(metrics, source, dataset)
    try:
        n = len(dataset) if max_images is None else min(len(dataset), max_images)
        if n == 0:
            raise ValueError(f"dataset {dataset.kind}:{dataset.root} has no images")
        group_of = getattr(dataset, "group", None)
        for i in tqdm(range(n), desc=f"eval {dataset.kind}", unit="img", disable=not progress):
            sample = dataset[i]
            sample = with_group(sample, group_of(i) if group_of is not None else sample.name)
            prediction = source.predict(sample)
            for metric in metrics:
                metric.update(sample, prediction)
        merged: dict = {}
        for metric in metrics:
            merge_entries(merged, metric.compute())
        ordered = {key: merged.pop(key) for key in KEY_ORDER if key in merged}
        report = next((m for m in metrics if isinstance(m, ReportSamples)), None)
        pixel = next((m for m in metrics if isinstance(m, PixelAnomaly)), None)
        return EvalResult(jsonable({**ordered, **merged}), report.subsample() if report else {},
                          report.examples if report else [], pixel.statistics() if pixel else None)
    finally:
        for metric in metrics:
            metric.close()


def with_group(sample: EvalSample, group: Hashable) -> EvalSample:
    """The sample with its bootstrap group (the dataset's `group(i)`, e.g. the street, else the frame's name) in
    `extras[GROUP]`, for the grouped metrics."""
    return replace(sample, extras={**sample.extras, GROUP: group})


def jsonable(obj):
    """Replace NaN/inf by None and numpy scalars/arrays by Python types, recursively."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def predicted_fold(source: PredictionSource | Predictor, dataset: EvalDataset, max_images: int | None = None):
    """A re-iterable fold source (thresholds.FoldSource): each pass predicts the dataset's frames anew."""
    source = as_source(source)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)

    def images():
        for i in range(n):
            sample = dataset[i]
            if sample.semantic is None:
                raise ValueError(f"{dataset.kind}: image {sample.name} has no semantic labels (needed for open-mIoU)")
            pred = source.predict(sample)
            yield pred.hybrid, sample.semantic, pred.class_ids

    return images


def cross_fold(source: PredictionSource | Predictor, fold_a: EvalDataset, fold_b: EvalDataset,
               max_images: int | None = None) -> dict:
    """The two-fold protocol (StreetHazards t5/t6, or sim val/test): threshold at TPR 95% on one fold, open-mIoU
    and mean F1 on the other, then swapped; weighted by image counts (thresholds.cross_fold_open_set)."""
    from densehybrid_ros.evaluation.thresholds import cross_fold_open_set

    source = as_source(source)
    for ds in (fold_a, fold_b):
        if not same_taxonomy(ds, source):
            raise ValueError(f"{ds.kind}:{ds.root}: dataset classes differ from the model's; no open-mIoU")
    r = cross_fold_open_set(predicted_fold(source, fold_a, max_images), predicted_fold(source, fold_b, max_images),
                            source.num_classes)
    fold = lambda f, ds: {"dataset": f"{ds.kind}:{ds.root} split={ds.split}", "images": f.num_images,  # noqa: E731
                          "own_threshold95": f.anomaly.threshold95, "applied_threshold": f.applied_threshold,
                          "open_miou": f.segmentation.open_miou, "mean_f1": f.segmentation.mean_f1,
                          "miou": f.segmentation.miou}
    return jsonable({"open_miou": r.open_miou, "mean_f1": r.mean_f1, "miou": r.miou,
                     "fold_a": fold(r.fold_a, fold_a), "fold_b": fold(r.fold_b, fold_b)})
