"""95% bootstrap intervals that resample whole groups of frames (streets), not pixels.

Pixels of one street are strongly correlated (the same objects, light and camera), so resampling pixels or
even frames would give intervals far too narrow. Each group keeps sufficient statistics:
- per score, a histogram of its positive and negative pixels on a fine grid (`GroupedScoreHistograms`);
- a closed-set confusion matrix (`GroupedConfusion`).
A bootstrap replicate draws as many groups as there are, with replacement (Efron's nonparametric bootstrap),
adds their statistics and recomputes the metric; the interval is the 2.5 and 97.5 percentiles of the
replicates (percentile method). The anomaly metrics of a replicate come from the binned counts through the
project's exact curve integrator (bin centres as distinct scores), so they differ from the exact pooled
value only by the binning (`binned_point` in the result shows by how much). All metrics of one evaluation share
the replicates' draws, so the difference of two scores' metrics has its own (paired) interval from the
per-replicate differences (`paired_difference`), narrower than the two intervals side by side suggest when the
scores err on the same streets.

The grouped histograms of an evaluation are saved beside its metrics.json (`GroupedStatistics`, groups.npz), so
that two evaluations of the same frames (two models) can be compared on the same draws as well
(evaluation/compare.py).
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Sequence

import numpy as np

from densehybrid_ros.evaluation._checks import valid_pixels
from densehybrid_ros.evaluation.anomaly_metrics import AnomalyMetrics
from densehybrid_ros.evaluation.score_grid import ScoreGrid
from densehybrid_ros.evaluation.segmentation_metrics import iou_per_class

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
GROUPS_FILE = "groups.npz"  # an evaluation's `GroupedStatistics`, beside its metrics.json
GROUPS_FORMAT = 1


@dataclass(frozen=True)
class Interval:
    point: float  # the metric on the whole evaluation set
    low: float
    high: float
    binned_point: float | None = None  # the point estimate from the binned statistics (anomaly metrics)


def percentile_interval(values: np.ndarray, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """The central `level` interval of bootstrap replicates (NaN replicates dropped)."""
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(v, alpha)), float(np.quantile(v, 1.0 - alpha))


def group_weights(num_groups: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, num_groups) multiplicities: how often each group is drawn in each replicate."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, num_groups, size=(resamples, num_groups))
    return np.stack([np.bincount(d, minlength=num_groups) for d in draws]).astype(np.int64)


class GroupIndex:
    """Consecutive indices 0..G-1 for group keys (street ids, frame names), shared by all accumulators of one
    evaluation so that one weight matrix resamples all of them alike."""

    def __init__(self) -> None:
        self.index: dict[Hashable, int] = {}

    def __call__(self, group: Hashable) -> int:
        return self.index.setdefault(group, len(self.index))

    def __len__(self) -> int:
        return len(self.index)


def _padded(rows: list[np.ndarray], count: int, shape: tuple[int, ...]) -> np.ndarray:
    """Stack per-group rows, with zero rows for groups this accumulator never saw (count >= len(rows))."""
    return np.stack(rows + [np.zeros(shape, np.int64)] * (count - len(rows)))


class GroupedScoreHistograms:
    """Per-group positive/negative histograms of one score on a `ScoreGrid` (carried over when it grows)."""

    def __init__(self, num_bins: int = 8192, margin: float = 1.0) -> None:
        self.grid = ScoreGrid(num_bins, margin)
        self._pos: list[np.ndarray] = []
        self._neg: list[np.ndarray] = []

    def update(self, g: int, scores: np.ndarray, ood_labels: np.ndarray) -> None:
        """Add one image of group index `g` (from a shared `GroupIndex`)."""
        values, is_anomaly = valid_pixels(scores, ood_labels)
        if values.size == 0:
            return
        merges = self.grid.extend(values)
        if merges:
            self._pos = [self.grid.merge(h, merges) for h in self._pos]
            self._neg = [self.grid.merge(h, merges) for h in self._neg]
        cells = self.grid.cells(values)
        n = self.grid.num_bins
        while len(self._pos) <= g:
            self._pos.append(np.zeros(n, np.int64))
            self._neg.append(np.zeros(n, np.int64))
        self._pos[g] += np.bincount(cells[is_anomaly], minlength=n)
        self._neg[g] += np.bincount(cells[~is_anomaly], minlength=n)

    @property
    def has_data(self) -> bool:
        """Whether any image with a valid pixel was added."""
        return bool(self._pos)

    def counts(self, num_groups: int) -> tuple[np.ndarray, np.ndarray]:
        """(num_groups, num_bins) positive and negative counts (zero rows for groups this score never saw)."""
        return (_padded(self._pos, num_groups, (self.grid.num_bins,)),
                _padded(self._neg, num_groups, (self.grid.num_bins,)))

    @classmethod
    def from_counts(cls, positives: np.ndarray, negatives: np.ndarray, lo: float, step: float
                    ) -> GroupedScoreHistograms:
        """Histograms of saved (G, num_bins) counts on the grid of num_bins cells of width `step` from `lo`."""
        positives, negatives = np.asarray(positives, np.int64), np.asarray(negatives, np.int64)
        if positives.ndim != 2 or positives.shape != negatives.shape:
            raise ValueError(f"counts must be two (groups, bins) arrays, got {positives.shape} and {negatives.shape}")
        hist = cls(num_bins=positives.shape[1])
        hist.grid.lo, hist.grid.step = float(lo), float(step)
        hist._pos, hist._neg = list(positives), list(negatives)
        return hist

    def replicates(self, weights: np.ndarray, extra: dict[str, Callable[[AnomalyMetrics], float]] | None = None
                   ) -> dict[str, np.ndarray]:
        """AP, FPR95, AUROC (and any `extra` metric) of every replicate (one per row of `weights`, from
        `group_weights(G, ...)` with G the number of groups of the shared index; NaN where a replicate has no
        anomaly or no inlier pixel), and under "binned" the metrics of all groups once (NaN-free or absent)."""
        pos = _padded(self._pos, weights.shape[1], (self.grid.num_bins,))
        neg = _padded(self._neg, weights.shape[1], (self.grid.num_bins,))
        picks = anomaly_metric_picks(extra)
        values = {name: np.full(len(weights), np.nan) for name in picks}
        for r, w in enumerate(weights):
            m = self.grid.metrics(w @ pos, w @ neg)
            if m is not None:
                for name, fn in picks.items():
                    values[name][r] = fn(m)
        binned = self.grid.metrics(pos.sum(0), neg.sum(0))
        if binned is not None:
            values["binned"] = np.array([fn(binned) for fn in picks.values()])
        return values

    def intervals(self, exact: AnomalyMetrics, weights: np.ndarray, level: float = DEFAULT_LEVEL,
                  extra: dict[str, Callable[[AnomalyMetrics], float]] | None = None,
                  replicates: dict[str, np.ndarray] | None = None) -> dict[str, Interval]:
        """Intervals for AP, FPR95, AUROC (and any `extra` metric of an AnomalyMetrics) around `exact`;
        `weights` from `group_weights(G, ...)` with G the number of groups of the shared index (`replicates`: this
        accumulator's `replicates(weights, extra)`, when already computed)."""
        if not self._pos:
            return {}
        picks = anomaly_metric_picks(extra)
        values = self.replicates(weights, extra) if replicates is None else replicates
        binned = values.get("binned")
        return {name: Interval(fn(exact), *percentile_interval(values[name], level),
                               None if binned is None else float(binned[i]))
                for i, (name, fn) in enumerate(picks.items())}


def anomaly_metric_picks(extra: dict[str, Callable[[AnomalyMetrics], float]] | None = None
                         ) -> dict[str, Callable[[AnomalyMetrics], float]]:
    """The metrics an interval is computed for: name -> its value in an AnomalyMetrics (AP, FPR95, AUROC, `extra`)."""
    return {"ap": lambda m: m.ap, "fpr95": lambda m: m.fpr95, "auroc": lambda m: m.auroc, **(extra or {})}


def paired_difference(point_a: float, point_b: float, replicates_a: np.ndarray, replicates_b: np.ndarray,
                      level: float = DEFAULT_LEVEL) -> Interval:
    """The difference a - b of one metric of two scores evaluated on the same frames: the exact difference and the
    percentile interval of the per-replicate differences (the same resampled groups for both: paired)."""
    a, b = np.asarray(replicates_a, np.float64), np.asarray(replicates_b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired replicates must come from the same weights, got {a.shape} and {b.shape}")
    return Interval(point_a - point_b, *percentile_interval(a - b, level))


@dataclass
class GroupedStatistics:
    """What the anomaly intervals of one evaluation are computed from: the group keys in group-index order (the
    columns of `group_weights`) and per score its `GroupedScoreHistograms`. Saved as groups.npz (`save`), so that
    another evaluation of the same frames can be resampled on the same draws (evaluation/compare.py)."""

    keys: tuple[str, ...]
    grouped_by: str  # what a group is: "street", or "image" where the dataset has no streets
    scores: dict[str, GroupedScoreHistograms]

    def __post_init__(self) -> None:
        self.keys = tuple(self.keys)
        if len(set(self.keys)) != len(self.keys):
            raise ValueError(f"group keys must be distinct, got {len(self.keys)} keys of which "
                             f"{len(set(self.keys))} distinct")

    def save(self, path: str | Path) -> None:
        """Write a compressed .npz to `path` (the name as given): per score its grid (lo, step, number of cells) and
        the counts of the cells any group has a pixel in (the rest of the grid is empty)."""
        arrays: dict[str, np.ndarray] = {"format": np.array(GROUPS_FORMAT), "groups": np.array(self.keys, str),
                                         "grouped_by": np.array(self.grouped_by),
                                         "scores": np.array(list(self.scores), str)}
        for name, hist in self.scores.items():
            pos, neg = hist.counts(len(self.keys))
            cells = np.flatnonzero((pos + neg).any(0))
            top = max(int(pos.max(initial=0)), int(neg.max(initial=0)))
            arrays[f"{name}.grid"] = np.array([hist.grid.lo, hist.grid.step], np.float64)
            arrays[f"{name}.num_bins"] = np.array(hist.grid.num_bins)
            arrays[f"{name}.cells"] = cells.astype(np.min_scalar_type(hist.grid.num_bins))
            arrays[f"{name}.pos"] = pos[:, cells].astype(np.min_scalar_type(top))
            arrays[f"{name}.neg"] = neg[:, cells].astype(np.min_scalar_type(top))
        with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to another name
            np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> GroupedStatistics:
        """Read what `save` wrote (ValueError naming the problem for another file)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                found = int(data["format"]) if "format" in data.files else None
                if found != GROUPS_FORMAT:
                    raise ValueError(f"format {found}, expected {GROUPS_FORMAT}")
                keys = tuple(str(k) for k in data["groups"])
                scores = {}
                for name in (str(s) for s in data["scores"]):
                    n, cells = int(data[f"{name}.num_bins"]), data[f"{name}.cells"].astype(np.int64)
                    pos, neg = np.zeros((2, len(keys), n), np.int64)
                    pos[:, cells], neg[:, cells] = data[f"{name}.pos"], data[f"{name}.neg"]
                    lo, step = data[f"{name}.grid"]
                    scores[name] = GroupedScoreHistograms.from_counts(pos, neg, lo, step)
                return cls(keys, str(data["grouped_by"]), scores)
        except (KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path}: not a readable groups file ({exc})") from exc

    def reordered(self, keys: Sequence[str]) -> GroupedStatistics:
        """The same statistics with the groups in the order of `keys`, which must be exactly these groups."""
        if sorted(keys) != sorted(self.keys):
            raise ValueError("reordering needs the same set of group keys")
        index = {k: i for i, k in enumerate(self.keys)}
        order = [index[k] for k in keys]
        scores = {}
        for name, hist in self.scores.items():
            pos, neg = hist.counts(len(self.keys))
            scores[name] = GroupedScoreHistograms.from_counts(pos[order], neg[order], hist.grid.lo, hist.grid.step)
        return GroupedStatistics(tuple(keys), self.grouped_by, scores)


class GroupedConfusion:
    """Per-group K x K closed-set confusion matrices (rows ground truth, columns prediction)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self._cms: list[np.ndarray] = []

    def update(self, g: int, confusion: np.ndarray) -> None:
        """Add one image's confusion matrix to group index `g`."""
        while len(self._cms) <= g:
            self._cms.append(np.zeros((self.num_classes, self.num_classes), np.int64))
        self._cms[g] += confusion

    def intervals(self, weights: np.ndarray, level: float = DEFAULT_LEVEL) -> dict:
        """{"miou": Interval, "iou": [Interval per class]} (IoU of a class absent from a replicate is NaN)."""
        if not self._cms:
            return {}
        cms = _padded(self._cms, weights.shape[1], (self.num_classes, self.num_classes))  # (G, K, K)
        flat = cms.reshape(len(cms), -1)
        ious = []
        with np.errstate(invalid="ignore", divide="ignore"):
            for w in weights:
                ious.append(iou_per_class((w @ flat).reshape(self.num_classes, self.num_classes)))
            ious_arr = np.array(ious)
            point = iou_per_class(cms.sum(0))
            miou_reps = np.nanmean(ious_arr, axis=1)
        return {"miou": Interval(float(np.nanmean(point)), *percentile_interval(miou_reps, level)),
                "iou": [Interval(float(point[k]), *percentile_interval(ious_arr[:, k], level))
                        for k in range(self.num_classes)]}
