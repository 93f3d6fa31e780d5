"""SMIYC component metrics (sIoU, PPV, F1) on hand-drawn masks with hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from densehybrid_ros.evaluation.component_metrics import (
    ANOMALY_TRACK,
    OBSTACLE_TRACK,
    SIOU_THRESHOLDS,
    ComponentMetrics,
    ComponentSizeFilter,
    image_component_stats,
)

# Ground truth: A = 2x2 top-left (4 px), B = 2x2 at columns 6-7 (4 px), C = single pixel (4, 0).
GT = np.array([
    [1, 1, 0, 0, 0, 0, 1, 1, 0, 0],
    [1, 1, 0, 0, 0, 0, 1, 1, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
], dtype=np.uint8)
# Prediction: P1 = row 0 cols 0-6 + row 1 cols 0-4 (12 px: all of A, one pixel of B);
# P2 = (4, 9) and (5, 8), diagonal neighbours: ONE component under 8-connectivity, no ground truth.
PRED = np.array([
    [1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    [1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    [0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
], dtype=bool)


def test_siou_and_ppv_by_hand():
    stats = image_component_stats(PRED, GT)
    # sIoU(A) = |A n P1| / (|P1| + |A| - |A n P1| - |P1 n B|) = 4 / (12 + 4 - 4 - 1) = 4/11
    # sIoU(B) = 1 / (12 + 4 - 1 - |P1 n A| = 4) = 1/11;  sIoU(C) = 0 (not hit)
    assert sorted(stats.siou) == pytest.approx([0.0, 1 / 11, 4 / 11])
    # PPV(P1) = (4 + 1) / 12, PPV(P2) = 0; 8-connectivity makes P2 one component
    assert sorted(stats.ppv) == pytest.approx([0.0, 5 / 12])


def test_f1_over_tau_by_hand():
    acc = ComponentMetrics()
    acc.update(PRED, GT)
    result = acc.compute()
    assert result.siou == pytest.approx((4 / 11 + 1 / 11) / 3)
    assert result.ppv == pytest.approx((5 / 12) / 2)
    # tau 0.25, 0.30, 0.35: TP 1 (4/11 = 0.364), FN 2, FP 1 (P2)  -> F1 = 2 / 5
    # tau 0.40: TP 0, FN 3, FP 1 -> 0;  tau >= 0.45: P1 (0.417) also FP -> 0
    expected = [0.4, 0.4, 0.4] + [0.0] * 8
    assert result.f1 == pytest.approx(expected)
    assert result.mean_f1 == pytest.approx(1.2 / 11)
    assert result.tp.tolist() == [1, 1, 1] + [0] * 8
    assert result.fp.tolist() == [1] * 4 + [2] * 7
    assert SIOU_THRESHOLDS == pytest.approx(np.arange(25, 80, 5) / 100)


def test_void_removes_predictions_before_labelling():
    labels = GT.copy()
    labels[1, 3:5] = 255  # two pixels of P1 become void: |P1| = 10 inside the region of interest
    stats = image_component_stats(PRED, labels)
    assert sorted(stats.siou) == pytest.approx([0.0, 1 / 9, 4 / 9])
    assert sorted(stats.ppv) == pytest.approx([0.0, 5 / 10])


def test_void_can_split_a_prediction():
    labels = GT.copy()
    labels[:, 5] = 255  # cuts P1 between columns 4 and 6: the pixel (0, 6) on B becomes its own component
    stats = image_component_stats(PRED, labels)
    # P1' = row 0 cols 0-4 + row 1 cols 0-4 (10 px, 4 on A); P3 = (0, 6) (1 px, on B)
    assert sorted(stats.ppv) == pytest.approx([0.0, 0.4, 1.0])
    assert sorted(stats.siou) == pytest.approx([0.0, 1 / 4, 4 / 10])


def test_size_filters():
    stats = image_component_stats(PRED, GT, ComponentSizeFilter(min_pred_size=3, min_gt_size=2))
    # P2 (2 px) is deleted; C (1 px) becomes void
    assert sorted(stats.siou) == pytest.approx([1 / 11, 4 / 11])
    assert stats.ppv == pytest.approx([5 / 12])
    assert (ANOMALY_TRACK.min_pred_size, ANOMALY_TRACK.min_gt_size) == (500, 100)
    assert (OBSTACLE_TRACK.min_pred_size, OBSTACLE_TRACK.min_gt_size) == (50, 10)
    # under the AnomalyTrack filter every component of this tiny image is gone
    with pytest.raises(ValueError, match="no ground-truth anomaly component"):
        acc = ComponentMetrics(ANOMALY_TRACK)
        acc.update(PRED, GT)
        acc.compute()


def test_pooling_over_images_and_scores():
    acc = ComponentMetrics()
    acc.update(PRED, GT)
    scores = np.where(GT == 1, 0.9, 0.1)  # a perfect second image, thresholded at score > 0.5
    acc.update_scores(scores, GT, 0.5)
    result = acc.compute()
    assert result.num_gt_components == 6 and result.num_pred_components == 5
    # tau 0.25..0.35: TP 1 + 3, FN 2, FP 1 -> 8 / 11; tau 0.40: TP 3, FN 3, FP 1 -> 6/10; then FP 2 -> 6/11
    assert result.f1[:3] == pytest.approx([8 / 11] * 3)
    assert result.f1[3] == pytest.approx(6 / 10)
    assert result.f1[4:] == pytest.approx([6 / 11] * 7)
    assert result.siou == pytest.approx((4 / 11 + 1 / 11 + 3) / 6)


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape mismatch"):
        image_component_stats(PRED[:, :5], GT)
    with pytest.raises(ValueError, match="2-D"):
        image_component_stats(PRED[None], GT[None])
    with pytest.raises(ValueError, match="0 and 1"):
        image_component_stats(PRED * 2, GT)
