"""Closed-set mIoU (5.3), open-IoU (5.4, 5.5) and mean F1 on hand-built and sklearn-checked cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import f1_score, jaccard_score

from densehybrid_ros.evaluation.segmentation_metrics import (
    OpenSetAccumulator,
    closed_set_confusion,
    f1_per_class,
    iou_per_class,
    mean_f1,
    mean_iou,
    open_iou_per_class,
    open_mean_iou,
    open_set_confusion,
    open_set_prediction,
    ood_labels_from_semantic,
)
from densehybrid_ros.scores import open_set_fusion

# K = 2 known classes; rows = ground truth (0, 1, anomaly), columns = prediction (0, 1, unknown)
OPEN_CM = np.array([[5, 1, 2],
                    [0, 4, 1],
                    [3, 1, 6]])


def pixels_from_confusion(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = [], []
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            gt += [i] * cm[i, j]
            pred += [j] * cm[i, j]
    return np.array(gt, np.uint8), np.array(pred, np.uint8)


def test_open_iou_by_hand():
    # class 0: TP 5, FP^os = 0 (class 1 row) + 3 (anomaly row), FN^os = 1 + 2 (unknown column)
    # class 1: TP 4, FP^os = 1 + 1, FN^os = 0 + 1
    assert open_iou_per_class(OPEN_CM) == pytest.approx([5 / 11, 4 / 7])
    assert open_mean_iou(OPEN_CM) == pytest.approx((5 / 11 + 4 / 7) / 2)
    # F1 over K+1 = 3 classes: 2TP / (2TP + FP + FN)
    assert f1_per_class(OPEN_CM) == pytest.approx([10 / 16, 8 / 11, 12 / 19])
    assert mean_f1(OPEN_CM) == pytest.approx((10 / 16 + 8 / 11 + 12 / 19) / 3)


def test_closed_iou_by_hand_and_absent_class():
    cm = np.array([[3, 1, 0], [2, 4, 0], [0, 0, 0]])  # class 2 never occurs: NaN, left out of the mean
    iou = iou_per_class(cm)
    assert iou[:2] == pytest.approx([3 / 6, 4 / 7]) and np.isnan(iou[2])
    assert mean_iou(cm) == pytest.approx((3 / 6 + 4 / 7) / 2)
    with pytest.raises(ValueError, match="undefined"):
        mean_iou(np.zeros((3, 3)))


def test_confusion_from_pixels_with_void():
    gt, pred = pixels_from_confusion(OPEN_CM)
    gt = np.concatenate([gt, [255, 255]]).astype(np.uint8)
    pred = np.concatenate([pred, [0, 2]]).astype(np.uint8)
    assert (open_set_confusion(gt, pred, 2) == OPEN_CM).all()
    # closed set: anomaly row and void dropped; closed predictions are 0..K-1 only
    closed_pred = np.where(pred == 2, 0, pred)
    assert (closed_set_confusion(gt, closed_pred, 2) == np.array([[7, 1], [1, 4]])).all()


def test_confusion_matches_sklearn():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (40, 60)).astype(np.uint8)
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = rng.integers(0, 5, gt.shape).astype(np.uint8)
    keep = gt != 255
    ref = sk_confusion_matrix(gt[keep], pred[keep], labels=range(5))
    assert (open_set_confusion(gt, pred, 4) == ref).all()


def test_perfect_detector_gives_open_miou_equal_to_miou():
    rng = np.random.default_rng(1)
    K = 4
    semantic = rng.integers(0, K + 1, (3, 50, 50)).astype(np.uint8)  # K = anomaly
    semantic[rng.random(semantic.shape) < 0.05] = 255
    right = rng.random(semantic.shape) < 0.7
    class_pred = np.where(right, np.minimum(semantic, K - 1), rng.integers(0, K, semantic.shape)).astype(np.uint8)
    scores = (semantic == K).astype(np.float32)  # perfect detector
    acc = OpenSetAccumulator(K, threshold=0.5)
    for i in range(3):
        acc.update(semantic[i], class_pred[i], scores[i])
    result = acc.compute()
    assert result.open_miou == pytest.approx(result.miou, abs=1e-12)
    assert result.open_iou == pytest.approx(result.iou, abs=1e-12)
    # independent closed-set reference
    known = semantic < K
    ref = jaccard_score(semantic[known], class_pred[known], average="macro", labels=range(K))
    assert result.miou == pytest.approx(ref, abs=1e-12)
    # an imperfect detector costs open-mIoU
    noisy = OpenSetAccumulator(K, threshold=0.5)
    noisy.update(semantic[0], class_pred[0], rng.random(semantic[0].shape))
    assert noisy.compute().open_miou < noisy.compute().miou


def test_mean_f1_matches_sklearn_macro_f1():
    rng = np.random.default_rng(2)
    K = 3
    semantic = rng.integers(0, K + 1, (60, 60)).astype(np.uint8)
    class_pred = rng.integers(0, K, semantic.shape).astype(np.uint8)
    scores = rng.random(semantic.shape) + (semantic == K)
    open_pred = open_set_prediction(class_pred, scores, 0.8, K)
    cm = open_set_confusion(semantic, open_pred, K)
    assert mean_f1(cm) == pytest.approx(f1_score(semantic.ravel(), open_pred.ravel(), average="macro"), abs=1e-12)


def test_open_set_prediction_is_the_runtime_fusion():
    rng = np.random.default_rng(3)
    class_pred = rng.integers(0, 5, (2, 16, 16))
    scores = np.round(rng.normal(size=(2, 16, 16)), 1).astype(np.float32)
    ours = open_set_prediction(class_pred, scores, 0.3, 5)
    runtime = open_set_fusion(torch.from_numpy(class_pred), torch.from_numpy(scores), 0.3, 5).numpy()
    assert (ours == runtime).all()


def test_ood_labels_from_semantic_and_errors():
    semantic = np.array([[0, 2, 3], [255, 1, 3]], np.uint8)
    assert ood_labels_from_semantic(semantic, 3).tolist() == [[0, 0, 1], [255, 0, 1]]
    with pytest.raises(ValueError, match="semantic labels must lie in"):
        ood_labels_from_semantic(np.array([4], np.uint8), 3)
    with pytest.raises(ValueError, match="prediction must lie in"):
        closed_set_confusion(np.array([0, 1], np.uint8), np.array([0, 3], np.uint8), 3)
    with pytest.raises(ValueError, match="shape mismatch"):
        open_set_confusion(np.zeros(3, np.uint8), np.zeros(4, np.uint8), 2)
    with pytest.raises(ValueError, match="square"):
        open_mean_iou(np.zeros((2, 3)))
