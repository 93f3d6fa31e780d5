"""Metrics per distance bin against sklearn on each bin's pixel subset."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from densehybrid_ros.evaluation.distance_bins import DistanceBinnedAnomalyMetrics, distance_binned_metrics


def scene(seed: int, n: int = 4000):
    rng = np.random.default_rng(seed)
    depth = rng.uniform(0, 60, n).astype(np.float32)
    depth[rng.random(n) < 0.1] = np.nan
    labels = ((rng.random(n) < 0.15) & (depth < 30)).astype(np.uint8)  # no anomaly beyond 30 m
    scores = np.round(rng.normal(size=n) + 1.2 * labels, 1)
    labels[rng.random(n) < 0.05] = 255
    return scores, labels, depth


def test_bins_match_sklearn_on_subsets(tmp_path):
    edges = [0, 10, 20, 30, 50, math.inf]
    acc = DistanceBinnedAnomalyMetrics(edges, max_buffer_pixels=500, tmp_dir=str(tmp_path))  # spills too
    images = [scene(seed) for seed in range(3)]
    for scores, labels, depth in images:
        acc.update(scores, labels, depth)
    results = acc.compute()
    acc.close()
    scores, labels, depth = (np.concatenate(column) for column in zip(*images))
    assert [(r.lower, r.upper) for r in results] == list(zip(edges[:-1], edges[1:]))
    for r in results[:3]:
        subset = (depth >= r.lower) & (depth < r.upper) & (labels != 255)
        y, s = labels[subset], scores[subset]
        fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
        i = np.flatnonzero(tpr >= 0.95)[0]
        assert r.reason is None
        assert r.metrics.ap == pytest.approx(average_precision_score(y, s), abs=1e-9)
        assert r.metrics.auroc == pytest.approx(roc_auc_score(y, s), abs=1e-9)
        assert r.metrics.fpr95 == pytest.approx(fpr[i], abs=1e-9)
        assert (r.num_positives, r.num_negatives) == (int(y.sum()), int((y == 0).sum()))
    for r in results[3:]:  # 30-50 m and beyond: no anomalies
        assert r.metrics is None and "no anomaly" in r.reason and r.num_negatives > 0


def test_bin_boundaries_nan_and_errors():
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3])
    labels = np.array([1, 0, 1, 0, 1, 0], np.uint8)
    depth = np.array([0.0, 9.99, 10.0, 10.0, np.nan, 25.0])
    results = distance_binned_metrics(scores, labels, depth, [0, 10, 20])
    assert (results[0].num_positives, results[0].num_negatives) == (1, 1)  # [0, 10)
    assert (results[1].num_positives, results[1].num_negatives) == (1, 1)  # 10 is in [10, 20); 25 and NaN out
    assert results[0].metrics.ap == 1.0
    with pytest.raises(ValueError, match="strictly increasing"):
        distance_binned_metrics(scores, labels, depth, [0, 10, 10])
    with pytest.raises(ValueError, match="negative"):
        distance_binned_metrics(scores, labels, -np.ones(6), [0, 10])
    with pytest.raises(ValueError, match="shape mismatch"):
        distance_binned_metrics(scores, labels, depth[:5], [0, 10])


def test_near_range_pools_every_pixel_nearer_than_it():
    """`DistanceBins(near=20)` reports one AP over all pixels nearer than 20 m (not a mix of the 0-10 / 10-20 bins)."""
    from types import SimpleNamespace

    from densehybrid_ros.datasets.base import EvalSample
    from densehybrid_ros.evaluation.metrics import DistanceBins

    metric = DistanceBins(["hybrid"], [0, 10, 20, math.inf], near=20.0)
    images = [scene(seed, n=3000) for seed in range(3)]
    for i, (scores, labels, depth) in enumerate(images):
        sample = EvalSample(name=str(i), image=np.zeros((1, 1, 3), np.uint8), ood=labels, depth=depth)
        metric.update(sample, SimpleNamespace(hybrid=scores, scores={}))
    near = metric.compute()["scores"]["hybrid"]["near"]
    metric.close()
    scores, labels, depth = (np.concatenate(column) for column in zip(*images))
    subset = (depth < 20) & (labels != 255)
    y, s = labels[subset], scores[subset]
    assert (near["lower"], near["upper"]) == (0.0, 20.0)
    assert near["metrics"]["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-9)
    assert near["metrics"]["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert near["num_positives"] == int(y.sum())
