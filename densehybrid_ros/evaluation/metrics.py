"""The metrics of `evaluate`, one interface: `update(sample, prediction)` per frame, `compute()` -> the entries they add
to metrics.json, `close()` (temporary storage; `evaluate` calls it in any case).

`evaluate.build_metrics` builds the standard set from `EvalOptions`; every metric here wraps one accumulator of this
package (thesis 5.2): exact streaming AP / AUROC / FPR95 per score with bootstrap intervals by group, AP by anomaly size
and by distance, the per-image variant, closed-set mIoU (5.3) and open-mIoU / mean F1 (5.4, 5.5), the operating points,
recall by distance and size, the SMIYC component metrics, the ensemble criterion (4.4) and the report's pixel subsample
and examples. Entries under "scores" are merged per score (`merge_entries`).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

from densehybrid_ros.datasets.base import OOD_ANOMALY, OOD_INLIER, EvalDataset, EvalSample
from densehybrid_ros.evaluation.anomaly_metrics import PerImageAnomalyMetrics
from densehybrid_ros.evaluation.bootstrap import (GroupedConfusion, GroupedScoreHistograms, GroupedStatistics,
                                                  GroupIndex, anomaly_metric_picks, group_weights, paired_difference)
from densehybrid_ros.evaluation.breakdown import (FlaggedAtThresholds, RecallByBin, SizeBinnedAnomalyMetrics,
                                                  component_sizes)
from densehybrid_ros.evaluation.component_metrics import ComponentMetrics, ComponentSizeFilter
from densehybrid_ros.evaluation.distance_bins import DistanceBinnedAnomalyMetrics
from densehybrid_ros.evaluation.ensemble import EnsembleAccumulator
from densehybrid_ros.evaluation.segmentation_metrics import OpenSetAccumulator, closed_set_confusion, iou_per_class
from densehybrid_ros.evaluation.streaming import StreamingAnomalyMetrics
from densehybrid_ros.evaluation.thresholds import fusion_threshold
from densehybrid_ros.predictor import Prediction

GROUP = "group"  # EvalSample.extras key set by `evaluate`: the frame's bootstrap group (street, else the frame)


class Metric(ABC):
    """One metric over a dataset: `update` per frame (in dataset order), then `compute`."""

    @abstractmethod
    def update(self, sample: EvalSample, prediction: Prediction) -> None:
        """Add one frame and its prediction."""

    @abstractmethod
    def compute(self) -> dict:
        """The entries this metric adds to metrics.json (top-level key -> value; {} for none)."""

    def close(self) -> None:
        """Release temporary storage (spill files); safe to call more than once."""


def score_maps(prediction: Prediction) -> dict[str, np.ndarray]:
    """Score name -> map: the hybrid score and the prediction's extra scores."""
    return {"hybrid": prediction.hybrid, **prediction.scores}


def merge_entries(into: dict, entries: dict) -> dict:
    """Add `entries` to `into`, merging nested dicts key by key (several metrics fill one score's entry)."""
    for key, value in entries.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge_entries(into[key], value)
        else:
            into[key] = value
    return into


def _floats(values: Iterable) -> list:
    return [None if (v is None or (isinstance(v, float) and math.isnan(v))) else float(v) for v in values]


# ------------------------------------------------------------------ the dataset and its groups
class DatasetSummary(Metric):
    """"dataset": what was evaluated (images, labelled ones, ones with anomalies); "threshold": the evaluation's
    open-set / component threshold."""

    def __init__(self, dataset: EvalDataset, threshold: float | None) -> None:
        self.kind, self.root, self.split = dataset.kind, str(dataset.root), dataset.split
        self.threshold = threshold
        self.images = self.labelled = self.with_anomaly = 0

    def update(self, sample: EvalSample, prediction: Prediction) -> None:
        self.images += 1
        if sample.ood is not None:
            self.labelled += 1
            self.with_anomaly += bool((sample.ood == OOD_ANOMALY).any())

    def compute(self) -> dict:
        return {"dataset": {"kind": self.kind, "root": self.root, "split": self.split, "images": self.images,
                            "labelled_images": self.labelled, "images_with_anomalies": self.with_anomaly},
                "threshold": self.threshold}


class BootstrapGroups(Metric):
    """The groups of frames the bootstrap resamples (streets; `extras[GROUP]`), numbered in order of appearance over
    every frame, and the one resampling-weight matrix all grouped metrics share (`bootstrap.group_weights`).
    "groups": their count; "bootstrap": resamples and level, when there are intervals (resamples > 0, > 1 group)."""

    def __init__(self, resamples: int, seed: int, grouped_by: str) -> None:
        self.resamples, self.seed, self.grouped_by = resamples, seed, grouped_by
        self.index = GroupIndex()
        self._weights: np.ndarray | None = None

    def of(self, sample: EvalSample) -> int:
        """The group index of a frame."""
        return self.index(sample.extras[GROUP])

    def update(self, sample: EvalSample, prediction: Prediction) -> None:
        self.of(sample)

    def keys(self) -> tuple[str, ...]:
        """The group keys in index order (the columns of `weights`), as text."""
        return tuple(str(k) for k in self.index.index)

    def weights(self) -> np.ndarray | None:
        """(resamples, groups) multiplicities, or None without intervals; fixed once asked for (after the pass)."""
        if self._weights is None and self.resamples and len(self.index) > 1:
            self._weights = group_weights(len(self.index), self.resamples, self.seed)
        return self._weights

    def compute(self) -> dict:
        entries: dict = {"groups": len(self.index)}
        if self.weights() is not None:
            entries["bootstrap"] = {"resamples": self.resamples, "level": 0.95, "groups": len(self.index),
                                    "grouped_by": self.grouped_by}
        return entries


# ------------------------------------------------------------------ anomaly detection per score
class PixelAnomaly(Metric):
    """Per score, "anomaly": exact pooled AP / AUROC / FPR95 (`StreamingAnomalyMetrics`) and "intervals": their 95%
    bootstrap intervals over the groups (`GroupedScoreHistograms`); "paired": the first score (the reference, e.g.
    hybrid) minus each other score, per metric, with the interval of the per-replicate differences
    (`bootstrap.paired_difference`: both on the same resampled groups), which says whether two scores differ beyond
    the noise when their own intervals overlap. `statistics()`: the per-group histograms, for groups.npz."""

    def __init__(self, scores: Sequence[str], groups: BootstrapGroups) -> None:
        self.groups = groups
        self.streams = {s: StreamingAnomalyMetrics() for s in scores}
        self.grouped = {s: GroupedScoreHistograms() for s in scores}

    def update(self, sample: EvalSample, prediction: Prediction) -> None:
        if sample.ood is None:
            return
        maps, g = score_maps(prediction), self.groups.of(sample)
        for s, stream in self.streams.items():
            stream.update(maps[s], sample.ood)
            self.grouped[s].update(g, maps[s], sample.ood)

    def compute(self) -> dict:
        weights = self.groups.weights()
        scores: dict = {}
        exact, replicates = {}, {}
        for s, stream in self.streams.items():
            entry: dict = {}
            try:
                exact[s] = stream.compute()
                entry["anomaly"] = asdict(exact[s])
                if weights is not None and self.grouped[s].has_data:
                    replicates[s] = self.grouped[s].replicates(weights)
                    intervals = self.grouped[s].intervals(exact[s], weights, replicates=replicates[s])
                    entry["intervals"] = {k: asdict(v) for k, v in intervals.items()}
            except ValueError as exc:
                entry["anomaly"] = None
                entry["anomaly_skipped"] = str(exc)
            scores[s] = entry
        out: dict = {"scores": scores}
        reference = next(iter(self.streams), None)
        if reference in replicates and len(replicates) > 1:
            points = anomaly_metric_picks()
            out["paired"] = {"reference": reference, "level": 0.95, "differences": {
                s: {k: asdict(paired_difference(fn(exact[reference]), fn(exact[s]), replicates[reference][k],
                                                replicates[s][k])) for k, fn in points.items()}
                for s in replicates if s != reference}}
        return out

    def statistics(self) -> GroupedStatistics | None:
        """The grouped histograms of the scores that saw a valid pixel, on all groups of the shared index (None for
        none): what the intervals are computed from, for comparing evaluations (evaluation/compare.py)."""
        scores = {s: h for s, h in self.grouped.items() if h.has_data}
        return GroupedStatistics(self.groups.keys(), self.groups.grouped_by, scores) if scores else None

    def close(self) -> None:
        for stream in self.streams.values():
            stream.close()


class SizeBins(Metric):
    """Per score, "size_bins": AP of the anomaly pixels by the size of their component (`SizeBinnedAnomalyMetrics`)."""

    def __init__(self, scores: Sequence[str], edges: Sequence[float]) -> None:
        self.bins = {s: SizeBinnedAnomalyMetrics(edges) for s in scores}

    def update(self, sample: EvalSample, prediction: Prediction) -> None:
        if sample.ood is None:
            return
        maps = score_maps(prediction)
        for s, acc in self.bins.items():
            acc.update(maps[s], sample.ood)

    def compute(self) -> dict:
        return {"scores": {s: {"size_bins": [asdict(b) for b in acc.compute()]} for s, acc in self.bins.items()}}


class PerImage(Metric):
    """Per score, "per_image": the StreetHazards per-image-averaged metrics (`PerImageAnomalyMetrics`)."""

    def __init__(self, scores: Sequence[str]) -> None:
        self.accumulators = {s: PerImageAnomalyMetrics() for s in scores}

    def update(self, sample: EvalSample, prediction: Prediction) -> None:
        if sample.ood is None:
            return
        maps = score_maps(prediction)
        for s, acc in self.accumulators.items():
            acc.update(maps[s], sample.ood)

    def compute(self) -> dict:
        return {"scores": {s: {"per_image": asdict(acc.compute())} for s, acc in self.accumulators.items()}}


class DistanceBins(Metric):
    """Per score, "distance_bins": exact AP / AUROC / FPR95 by depth (`DistanceBinnedAnomalyMetrics`), where frames
    have depth; with `near` (metres), also "near": the same metrics pooled over every pixel nearer than `near` (the
    range a vehicle must react in; a pooled AP is not a combination of the bins' APs)."""

    def __init__(self, scores: Sequence[str], edges: Sequence[float], near: float | None = None) -> None:
        self.scores, self.edges, self.near = tuple(scores), tuple(edges), near
        self.bins: dict[str, DistanceBinnedAnomalyMetrics] = {}
        self.near_bins: dict[str, DistanceBinnedAnomalyMetrics] = {}

    def update(self, sample: EvalSample, prediction: Prediction) -> None:
        if sample.ood is None or sample.depth is None:
            return
        maps = score_maps(prediction)
        for s in self.scores:
            if s not in self.bins:
                self.bins[s] = DistanceBinnedAnomalyMetrics(self.edges)
                if self.near is not None:
                    self.near_bins[s] = DistanceBinnedAnomalyMetrics((0.0, self.near))
            self.bins[s].update(maps[s], sample.ood, sample.depth)
            if self.near is not None:
                self.near_bins[s].update(maps[s], sample.ood, sample.depth)

    def compute(self) -> dict:
        if not self.bins:
            return {}
        out = {s: {"distance_bins": [asdict(b) for b in acc.compute()]} for s, acc in self.bins.items()}
        for s, acc in self.near_bins.items():
            (near,) = acc.compute()
            out[s]["near"] = asdict(near)
        return {"scores": out}

    def close(self) -> None:
        for acc in [*self.bins.values(), *self.near_bins.values()]:
            acc.close()


# ------------------------------------------------------------------ segmentation
class Segmentation(Metric):
    """"closed_set": mIoU and IoU per class (5.3) with bootstrap intervals; "open_set": open-mIoU, mean F1 (5.4, 5.5)
    at `threshold` (else "open_set_skipped"). Only where the dataset's classes are the model's (`comparable`; else
    "semantic_skipped")."""

    def __init__(self, num_classes: int, classes: Sequence[str] | None, threshold: float | None, comparable: bool,
                 groups: BootstrapGroups) -> None:
        self.num_classes, self.classes, self.threshold = num_classes, list(classes or ()), threshold
        self.comparable, self.groups = comparable, groups
        self.confusion = np.zeros((num_classes, num_classes), np.int64)
        self.grouped = GroupedConfusion(num_classes)
        self.open_set = OpenSetAccumulator(num_classes, threshold) if comparable and threshold is not None else None

    def update(self, sample: EvalSample, prediction: Prediction) -> None:
        if not self.comparable or sample.semantic is None:
            return
        cm = closed_set_confusion(sample.semantic, prediction.class_ids, self.num_classes)
        self.confusion += cm
        self.grouped.update(self.groups.of(sample), cm)
        if self.open_set is not None:
            self.open_set.update(sample.semantic, prediction.class_ids, prediction.hybrid)

    def compute(self) -> dict:
        if not self.comparable:
            return {"semantic_skipped": "dataset classes differ from the model's: no mIoU / open-mIoU"}
        if not self.confusion.sum():
            return {}
        iou = iou_per_class(self.confusion)
        closed: dict = {"miou": float(np.nanmean(iou)), "iou": dict(zip(self.classes, _floats(iou)))}
        weights = self.groups.weights()
        if weights is not None:
            ci = self.grouped.intervals(weights)
            closed["intervals"] = {"miou": asdict(ci["miou"]),
                                   "iou": dict(zip(self.classes, (asdict(v) for v in ci["iou"])))}
        entries: dict = {"closed_set": closed}
        if self.open_set is not None:
            r = self.open_set.compute()
            entries["open_set"] = {"threshold": self.threshold, "open_miou": r.open_miou, "miou": r.miou,
                                   "mean_f1": r.mean_f1, "open_iou": dict(zip(self.classes, _floats(r.open_iou)))}
        else:
            entries["open_set_skipped"] = "no threshold: weights uncalibrated and none given"
        return entries


class OperatingPoints(Metric):
    """"operating_points": per named threshold (the weights' points), TPR and FPR on the evaluated pixels
    (`is_anomalous`) and open-mIoU / mean F1 at it where the classes are comparable."""

    def __init__(self, points: dict[str, float], num_classes: int, comparable: bool) -> None:
        self.points = dict(points)
        self.flagged = FlaggedAtThresholds(self.points)
        self.open_at = ({name: OpenSetAccumulator(num_classes, t) for name, t in self.points.items()}
                        if comparable else {})

    def update(self, sample: EvalSample, prediction: Prediction) -> None:
        if self.open_at and sample.semantic is not None:
            for acc in self.open_at.values():
                acc.update(sample.semantic, prediction.class_ids, prediction.hybrid)
        if sample.ood is not None:
            self.flagged.update(prediction.hybrid, sample.ood)

    def compute(self) -> dict:
        if not self.points:
            return {}
        entries = self.flagged.compute()
        for name, acc in self.open_at.items():
            if acc.num_images:
                r = acc.compute()
                entries[name].update(open_miou=r.open_miou, mean_f1=r.mean_f1)
        return {"operating_points": entries}


class RecallBreakdown(Metric):
    """"recall_by_size" (anomaly component size) and "recall_by_distance" (depth, where frames have it): the share of
    anomaly pixels the hybrid score flags at each named threshold (`RecallByBin`)."""

    def __init__(self, thresholds: dict[str, float], size_edges: Sequence[float],
                 distance_edges: Sequence[float]) -> None:
        self.thresholds = dict(thresholds)
        self.by_size = RecallByBin(size_edges, self.thresholds)
        self.by_distance = RecallByBin(distance_edges, self.thresholds)
        self.labelled = 0

    def update(self, sample: EvalSample, prediction: Prediction) -> None:
        if sample.ood is None:
            return
        self.labelled += 1
        self.by_size.update(prediction.hybrid, sample.ood, component_sizes(sample.ood))
        if sample.depth is not None:
            self.by_distance.update(prediction.hybrid, sample.ood, sample.depth)

    def compute(self) -> dict:
        if not (self.thresholds and self.labelled):
            return {}
        entries = {"recall_by_size": [asdict(b) for b in self.by_size.compute()]}
        if self.by_distance.positives.sum():
            entries["recall_by_distance"] = [asdict(b) for b in self.by_distance.compute()]
        return entries


class Components(Metric):
    """"components": the SMIYC component metrics (sIoU, PPV, mean F1) of the hybrid score at `threshold` with the
    kind's size filter (else "components_skipped" and why)."""

    def __init__(self, size_filter: ComponentSizeFilter, threshold: float) -> None:
        self.components = ComponentMetrics(size_filter)
        self.threshold = fusion_threshold(threshold)  # the project's >= for SMIYC's strict binariser

    def update(self, sample: EvalSample, prediction: Prediction) -> None:
        if sample.ood is not None:
            self.components.update_scores(prediction.hybrid, sample.ood, self.threshold)

    def compute(self) -> dict:
        try:
            return {"components": asdict(self.components.compute())}
        except ValueError as exc:  # e.g. the size filter voided every ground-truth component
            return {"components_skipped": str(exc)}


class Ensemble(Metric):
    """"ensemble": the generative / discriminative ensemble criterion (thesis 4.4, `EnsembleAccumulator`)."""

    def __init__(self) -> None:
        self.accumulator = EnsembleAccumulator()

    def update(self, sample: EvalSample, prediction: Prediction) -> None:
        if sample.ood is not None:
            maps = score_maps(prediction)
            self.accumulator.update(maps["generative"], maps["discriminative"], sample.ood)

    def compute(self) -> dict:
        return {"ensemble": asdict(self.accumulator.compute())}


# ------------------------------------------------------------------ the report's material
@dataclass
class Example:
    sample: EvalSample
    prediction: Prediction


class ReportSamples(Metric):
    """No metrics.json entry: the report's material. A seeded subsample of valid pixels per labelled frame and
    score (curves, histograms) and the first frames with anomalies (example images)."""

    def __init__(self, scores: Sequence[str], per_image: int, keep_examples: int, seed: int) -> None:
        self.scores, self.per_image, self.keep_examples = tuple(scores), per_image, keep_examples
        self.rng = np.random.default_rng(seed)
        self.values: dict[str, list[np.ndarray]] = {s: [] for s in self.scores}
        self.labels: list[np.ndarray] = []
        self.examples: list[Example] = []

    def update(self, sample: EvalSample, prediction: Prediction) -> None:
        if sample.ood is None:
            return
        maps = score_maps(prediction)
        valid = np.flatnonzero((sample.ood == OOD_INLIER) | (sample.ood == OOD_ANOMALY))
        take = self.rng.choice(valid, min(self.per_image, valid.size), replace=False)
        self.labels.append(sample.ood.ravel()[take] == OOD_ANOMALY)
        for s in self.scores:
            self.values[s].append(maps[s].ravel()[take])
        if (sample.ood == OOD_ANOMALY).any() and len(self.examples) < self.keep_examples:
            self.examples.append(Example(sample, prediction))

    def compute(self) -> dict:
        return {}

    def subsample(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """score -> (values, is_anomaly) of the subsampled pixels."""
        labels = np.concatenate(self.labels) if self.labels else np.zeros(0, bool)
        return {s: (np.concatenate(v) if v else np.zeros(0, np.float32), labels) for s, v in self.values.items()}
