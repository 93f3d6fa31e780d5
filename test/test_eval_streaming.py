"""Streaming (spill + k-way merge) metrics against the in-memory exact ones and sklearn."""
from __future__ import annotations

import gc

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from densehybrid_ros.evaluation.anomaly_metrics import compute_anomaly_metrics
from densehybrid_ros.evaluation.streaming import StreamingAnomalyMetrics, combine_equal_scores


def dataset(seed: int, n: int, decimals: int | None):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.1).astype(np.uint8)
    scores = rng.normal(size=n) + 1.5 * labels
    if decimals is not None:
        scores = np.round(scores, decimals)  # few distinct values: every tie spans many runs
    labels[rng.random(n) < 0.05] = 255
    return scores.astype(np.float32), labels


def stream(scores, labels, pieces: int, tmp_path, **kwargs) -> StreamingAnomalyMetrics:
    acc = StreamingAnomalyMetrics(tmp_dir=tmp_path, **kwargs)
    for index in np.array_split(np.arange(scores.size), pieces):
        acc.update(scores[index], labels[index])
    return acc


@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_tiny_buffer_many_runs_equals_exact(decimals, tmp_path):
    scores, labels = dataset(1, 12000, decimals)
    exact = compute_anomaly_metrics(scores, labels)
    with stream(scores, labels, 120, tmp_path, max_buffer_pixels=300, max_runs=1000) as acc:
        assert acc.num_runs >= 25  # many sorted runs on disk
        result = acc.compute()
    assert result == exact  # bit-identical, threshold included
    keep = labels != 255
    assert abs(result.ap - average_precision_score(labels[keep], scores[keep])) < 1e-9
    assert abs(result.auroc - roc_auc_score(labels[keep], scores[keep])) < 1e-9


def test_run_compaction_keeps_results_exact(tmp_path):
    scores, labels = dataset(2, 15000, 2)
    with stream(scores, labels, 150, tmp_path, max_buffer_pixels=250, max_runs=6) as acc:
        assert acc.num_runs <= 7  # runs were merged on disk along the way
        assert acc.compute() == compute_anomaly_metrics(scores, labels)


def test_identical_scores_in_every_run(tmp_path):
    # the same three scores in every image: each threshold is the sum of counts from all runs
    images = [(np.array([0.5, 0.5, 0.2, 0.9]), np.array([1, 0, 0, 1], np.uint8)) for _ in range(40)]
    with StreamingAnomalyMetrics(max_buffer_pixels=4, tmp_dir=tmp_path) as acc:
        for scores, labels in images:
            acc.update(scores, labels)
        assert acc.num_runs == 40
        result = acc.compute()
    all_scores = np.concatenate([s for s, _ in images])
    all_labels = np.concatenate([y for _, y in images])
    assert result == compute_anomaly_metrics(all_scores, all_labels)
    assert result.threshold95 == 0.5  # TP 40 at 0.9 (50%), then 80 at 0.5


def test_without_spill_and_repeated_compute(tmp_path):
    scores, labels = dataset(3, 5000, 1)
    acc = StreamingAnomalyMetrics(max_buffer_pixels=10**6, tmp_dir=tmp_path)
    acc.update(scores[:2500], labels[:2500])
    assert acc.compute() == compute_anomaly_metrics(scores[:2500], labels[:2500])
    assert acc.temp_directory is None  # nothing written
    acc.update(scores[2500:], labels[2500:])
    assert acc.compute() == compute_anomaly_metrics(scores, labels)


def test_temp_directory_is_removed(tmp_path):
    scores, labels = dataset(4, 3000, 1)
    acc = stream(scores, labels, 30, tmp_path, max_buffer_pixels=200)
    directory = acc.temp_directory
    assert directory is not None and any(directory.iterdir())
    acc.compute()
    acc.close()
    assert not directory.exists()
    with pytest.raises(ValueError, match="closed"):
        acc.compute()
    second = stream(scores, labels, 30, tmp_path, max_buffer_pixels=200)
    directory = second.temp_directory
    del second
    gc.collect()
    assert not directory.exists()


def test_errors(tmp_path):
    acc = StreamingAnomalyMetrics(tmp_dir=tmp_path)
    acc.update(np.array([0.1, 0.2]), np.array([0, 0], np.uint8))
    with pytest.raises(ValueError, match="no anomaly"):
        acc.compute()
    with pytest.raises(ValueError, match="shape mismatch"):
        acc.update(np.zeros(3), np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="max_buffer_pixels"):
        StreamingAnomalyMetrics(max_buffer_pixels=0)


def test_combine_equal_scores_adds_counts():
    combined = combine_equal_scores(np.array([0.3, 0.1, 0.3, 0.2, 0.1]), np.array([1, 0, 2, 0, 1]),
                                    np.array([0, 1, 1, 5, 0]))
    assert combined.values.tolist() == [0.3, 0.2, 0.1]
    assert combined.positives.tolist() == [3, 0, 1]
    assert combined.negatives.tolist() == [1, 5, 1]


def test_small_integration_blocks_bit_identical(tmp_path, monkeypatch):
    # many summation blocks, fed in slices that do not align with them: still bit-identical to exact
    from densehybrid_ros.evaluation import anomaly_metrics as module

    monkeypatch.setattr(module, "INTEGRATION_BLOCK", 7)
    scores, labels = dataset(5, 6000, None)
    exact = compute_anomaly_metrics(scores, labels)
    with stream(scores, labels, 40, tmp_path, max_buffer_pixels=333) as acc:
        assert acc.compute() == exact
    keep = labels != 255
    assert abs(exact.ap - average_precision_score(labels[keep], scores[keep])) < 1e-9
    assert abs(exact.auroc - roc_auc_score(labels[keep], scores[keep])) < 1e-9


def test_updates_after_compute_with_runs(tmp_path):
    scores, labels = dataset(6, 8000, 1)
    with stream(scores[:4000], labels[:4000], 20, tmp_path, max_buffer_pixels=500) as acc:
        assert acc.compute() == compute_anomaly_metrics(scores[:4000], labels[:4000])
        for index in np.array_split(np.arange(4000, 8000), 20):
            acc.update(scores[index], labels[index])
        assert acc.compute() == compute_anomaly_metrics(scores, labels)
