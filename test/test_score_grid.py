"""The score grid behind bootstrap intervals and per-size AP grows to cover later values exactly.

Regression: the grid used to be fixed by the first image's range and clipped later scores into its end cells;
on a 1,200-frame test split that pulled the binned AP to 31.7 against an exact 40.4, so the bootstrap interval
did not contain its own point estimate.
"""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from densehybrid_ros.evaluation.anomaly_metrics import compute_anomaly_metrics
from densehybrid_ros.evaluation.bootstrap import GroupedScoreHistograms, GroupIndex, group_weights
from densehybrid_ros.evaluation.breakdown import SizeBinnedAnomalyMetrics
from densehybrid_ros.evaluation.score_grid import ScoreGrid


def _hand_histogram(grid: ScoreGrid, values: np.ndarray) -> np.ndarray:
    """Counts per cell [lo + i step, lo + (i + 1) step), from the grid's current edges by numpy."""
    edges = grid.lo + grid.step * np.arange(grid.num_bins + 1)
    return np.histogram(values, bins=edges)[0]


@pytest.mark.parametrize("later", [(-40.0, 1.0), (0.0, 35.0), (-300.0, 500.0)])
def test_merged_histogram_equals_histogram_on_the_grown_grid(later):
    rng = np.random.default_rng(0)
    grid = ScoreGrid(num_bins=64, margin=0.5)  # no value sits on a cell edge
    first = rng.uniform(0.0, 1.0, 500)
    grid.extend(first)
    hist = np.bincount(grid.cells(first), minlength=64)
    assert np.array_equal(hist, _hand_histogram(grid, first))
    second = rng.uniform(*later, 500)
    merges = grid.extend(second)
    assert merges, "a wider range must grow the grid"
    assert grid.lo <= second.min() and second.max() < grid.hi
    carried = grid.merge(hist, merges)
    assert np.array_equal(carried, _hand_histogram(grid, first))
    assert np.array_equal(np.bincount(grid.cells(second), minlength=64), _hand_histogram(grid, second))


def test_cells_refuse_values_off_the_grid_and_non_finite_scores():
    grid = ScoreGrid(num_bins=16)
    grid.extend(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="outside the score grid"):
        grid.cells(np.array([100.0]))
    with pytest.raises(ValueError, match="finite"):
        grid.extend(np.array([0.0, np.inf]))
    with pytest.raises(ValueError, match="even"):
        ScoreGrid(num_bins=17)


def _narrow_first_then_wide(num_frames: int = 8, per_frame: int = 4000):
    """The first frame's scores span a tiny range; later frames' anomalies score far above it."""
    rng = np.random.default_rng(3)
    frames = [(rng.normal(0.0, 0.01, per_frame), np.zeros(per_frame, np.uint8))]
    frames[0][1][:40] = 1
    for _ in range(num_frames - 1):
        labels = (rng.random(per_frame) < 0.05).astype(np.uint8)
        scores = rng.normal(0.0, 2.0, per_frame) + 6.0 * labels
        frames.append((scores, labels))
    return frames


def test_bootstrap_binned_point_matches_sklearn_when_later_frames_leave_the_first_range():
    frames = _narrow_first_then_wide()
    index = GroupIndex()
    hist = GroupedScoreHistograms(num_bins=1 << 14)
    for i, (s, lab) in enumerate(frames):
        hist.update(index(f"street{i % 4}"), s, lab)
    scores = np.concatenate([s for s, _ in frames])
    labels = np.concatenate([lab for _, lab in frames])
    exact = compute_anomaly_metrics(scores, labels)
    iv = hist.intervals(exact, group_weights(len(index), 50, seed=0))
    assert iv["ap"].binned_point == pytest.approx(average_precision_score(labels, scores), abs=2e-3)
    assert iv["ap"].low <= exact.ap <= iv["ap"].high


def test_size_bin_ap_matches_sklearn_when_later_frames_leave_the_first_range():
    frames = _narrow_first_then_wide(num_frames=4, per_frame=60 * 80)
    metrics = SizeBinnedAnomalyMetrics(edges=(0.0, np.inf), num_bins=1 << 14)
    for s, lab in frames:
        metrics.update(s.reshape(60, 80), lab.reshape(60, 80))
    scores = np.concatenate([s for s, _ in frames])
    labels = np.concatenate([lab for _, lab in frames])
    (only,) = metrics.compute()
    assert only.ap == pytest.approx(average_precision_score(labels, scores), abs=2e-3)
