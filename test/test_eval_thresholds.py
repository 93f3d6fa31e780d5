"""Cross-fold TPR-95% threshold protocol against an independent sklearn computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, jaccard_score, roc_curve

from densehybrid_ros.evaluation.thresholds import cross_fold_open_set, fusion_threshold, iterate_fold
from densehybrid_ros.scores import open_set_fusion

K = 3


def make_fold(seed: int, num_images: int):
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(num_images):
        semantic = rng.integers(0, K + 1, (24, 32)).astype(np.uint8)  # K = anomaly
        semantic[rng.random(semantic.shape) < 0.05] = 255
        good = rng.random(semantic.shape) < 0.6
        class_pred = np.where(good, np.minimum(semantic, K - 1), rng.integers(0, K, semantic.shape)).astype(np.uint8)
        scores = np.round(rng.normal(size=semantic.shape) + 1.5 * (semantic == K), 1).astype(np.float32)  # ties
        images.append((scores, semantic, class_pred))
    return images


def reference_fold(images_threshold_fold, images_eval_fold):
    """sklearn: operating point of one fold (first TPR >= 0.95), metrics of the other fold at `score >= t`."""
    s = np.concatenate([im[0].ravel() for im in images_threshold_fold])
    y = np.concatenate([im[1].ravel() for im in images_threshold_fold])
    keep = y != 255
    fpr, tpr, thr = roc_curve((y[keep] == K).astype(int), s[keep], drop_intermediate=False)
    t = thr[np.flatnonzero(tpr >= 0.95)[0]]
    s = np.concatenate([im[0].ravel() for im in images_eval_fold])
    gt = np.concatenate([im[1].ravel() for im in images_eval_fold])
    pred = np.concatenate([im[2].ravel() for im in images_eval_fold])
    open_pred = np.where(s >= t, K, pred)
    keep = gt != 255
    gt, pred, open_pred = gt[keep], pred[keep], open_pred[keep]
    # open-IoU_k: TP / (TP + FP^os + FN^os) straight from the pixel sets (5.4, 5.5)
    open_iou = []
    for k in range(K):
        tp = np.sum((gt == k) & (open_pred == k))
        fp = np.sum((gt != k) & (open_pred == k))  # includes anomalies predicted as k
        fn = np.sum((gt == k) & (open_pred != k))  # includes k flagged unknown
        open_iou.append(tp / (tp + fp + fn))
    known = gt < K
    return dict(
        threshold=t, open_miou=np.mean(open_iou),
        mean_f1=f1_score(gt, open_pred, average="macro", labels=range(K + 1)),
        miou=jaccard_score(gt[known], pred[known], average="macro", labels=range(K)))


def test_cross_fold_protocol_matches_reference(tmp_path):
    fold_a, fold_b = make_fold(0, 3), make_fold(1, 5)
    result = cross_fold_open_set(fold_a, lambda: iter(fold_b), K, max_buffer_pixels=1000, tmp_dir=str(tmp_path))
    on_b = reference_fold(fold_a, fold_b)  # threshold from A, measured on B
    on_a = reference_fold(fold_b, fold_a)
    assert result.fold_b.anomaly.threshold95 == pytest.approx(on_a["threshold"])
    assert result.fold_a.anomaly.threshold95 == pytest.approx(on_b["threshold"])
    for ours, ref in ((result.fold_a.segmentation, on_a), (result.fold_b.segmentation, on_b)):
        assert ours.open_miou == pytest.approx(ref["open_miou"], abs=1e-12)
        assert ours.mean_f1 == pytest.approx(ref["mean_f1"], abs=1e-12)
        assert ours.miou == pytest.approx(ref["miou"], abs=1e-12)
    assert result.open_miou == pytest.approx((3 * on_a["open_miou"] + 5 * on_b["open_miou"]) / 8, abs=1e-12)
    assert result.mean_f1 == pytest.approx((3 * on_a["mean_f1"] + 5 * on_b["mean_f1"]) / 8, abs=1e-12)
    assert result.miou == pytest.approx((3 * on_a["miou"] + 5 * on_b["miou"]) / 8, abs=1e-12)
    assert (result.fold_a.num_images, result.fold_b.num_images) == (3, 5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_attained_operating_point_is_applied_as_it_is_by_the_runtime_fusion(dtype):
    """threshold95 is an attained score: the runtime's open-set fusion flags exactly the scores >= it."""
    scores = np.round(np.random.default_rng(3).normal(size=(1, 40, 40)), 1).astype(dtype)
    for t in (float(v) for v in np.unique(scores)[::37]):
        fused = open_set_fusion(torch.zeros(scores.shape, dtype=torch.long), torch.from_numpy(scores), t, 9).numpy()
        assert ((fused == 9) == (scores.astype(np.float64) >= t)).all()  # exact comparison with t


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fusion_threshold_gives_the_operating_point_to_a_strict_binariser(dtype):
    """SMIYC's component binarisation keeps the benchmark's `score > value`: fusion_threshold(t) makes it flag exactly
    the scores >= t (the project's rule)."""
    from densehybrid_ros.evaluation.component_metrics import threshold_scores

    scores = np.round(np.random.default_rng(3).normal(size=(40, 40)), 1).astype(dtype)
    ood = np.zeros(scores.shape, np.uint8)
    for t in (0.3, 0.0, -1.2, float(np.float32(0.7)), 0.30000000000000004):
        assert (threshold_scores(scores, ood, fusion_threshold(t, dtype)) == (scores.astype(np.float64) >= t)).all()


def test_one_shot_iterator_is_rejected():
    fold = make_fold(2, 2)
    with pytest.raises(ValueError, match="re-iterable"):
        cross_fold_open_set(iter(fold), fold, K)
    assert len(list(iterate_fold(lambda: iter(fold)))) == 2


def test_fold_changing_between_passes_is_detected():
    fold_a, fold_b = make_fold(4, 2), make_fold(5, 2)
    calls = []

    def shrinking():
        calls.append(1)
        return iter(fold_b[: 3 - len(calls)])

    with pytest.raises(ValueError, match="changed between its two passes"):
        cross_fold_open_set(fold_a, shrinking, K)
