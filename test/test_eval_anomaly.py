"""Anomaly metrics against sklearn, the published StreetHazards code and SMIYC's binned curves."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from densehybrid_ros.evaluation.anomaly_metrics import (
    BinnedAnomalyMetrics,
    compute_anomaly_metrics,
    auroc,
    average_precision,
    binned_anomaly_metrics,
    fpr_at_95_tpr,
    per_image_anomaly_metrics,
)

TOL = 1e-9


def make_data(seed: int, n: int = 6000, ties: bool = False, shape=None):
    """Scores with anomalies shifted up, ~5% void; `ties` rounds scores to one decimal."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.12).astype(np.uint8)
    scores = rng.normal(size=n) + 1.3 * labels
    if ties:
        scores = np.round(scores, 1)
    labels[rng.random(n) < 0.05] = 255
    if shape is not None:
        scores, labels = scores.reshape(shape), labels.reshape(shape)
    return scores, labels


def sklearn_reference(scores, labels):
    keep = labels != 255
    y, s = labels[keep].ravel(), scores[keep].ravel()
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    i = np.flatnonzero(tpr >= 0.95)[0]  # first point from high to low threshold
    return average_precision_score(y, s), roc_auc_score(y, s), fpr[i], thr[i], tpr[i]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_metrics_match_sklearn(seed, ties):
    scores, labels = make_data(seed, ties=ties, shape=(3, 40, 50))
    result = compute_anomaly_metrics(scores, labels)
    ap, auc, fpr95, thr95, tpr95 = sklearn_reference(scores, labels)
    assert result.ap == pytest.approx(ap, abs=TOL)
    assert result.auroc == pytest.approx(auc, abs=TOL)
    assert result.fpr95 == pytest.approx(fpr95, abs=TOL)
    assert result.threshold95 == thr95
    assert result.tpr95 == pytest.approx(tpr95, abs=TOL)
    assert result.num_positives + result.num_negatives == int((labels != 255).sum())


def test_float32_scores_and_heavy_ties_at_the_operating_point():
    rng = np.random.default_rng(5)
    labels = (rng.random(3000) < 0.3).astype(np.uint8)
    scores = rng.integers(0, 4, 3000).astype(np.float32) + labels  # 5 distinct values only
    result = compute_anomaly_metrics(scores, labels)
    ap, auc, fpr95, thr95, _ = sklearn_reference(scores, labels)
    assert (result.ap, result.auroc, result.fpr95) == pytest.approx((ap, auc, fpr95), abs=TOL)
    assert result.threshold95 == thr95
    # the operating point really detects >= 95% of anomalies with `score >= threshold95`
    assert (scores[labels == 1] >= result.threshold95).mean() >= 0.95


def test_best_f1_matches_precision_recall_curve():
    scores, labels = make_data(3, ties=True)
    keep = labels != 255
    precision, recall, thresholds = precision_recall_curve(labels[keep], scores[keep])
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    result = compute_anomaly_metrics(scores, labels)
    assert result.best_f1 == pytest.approx(np.nanmax(f1[:-1]), abs=TOL)


def test_wrappers_agree():
    scores, labels = make_data(4)
    ap, auc, fpr95, thr95, _ = sklearn_reference(scores, labels)
    assert average_precision(scores, labels) == pytest.approx(ap, abs=TOL)
    assert auroc(scores, labels) == pytest.approx(auc, abs=TOL)
    assert fpr_at_95_tpr(scores, labels) == pytest.approx((fpr95, thr95), abs=TOL)


@pytest.mark.parametrize("scores, labels, message", [
    (np.zeros(4), np.zeros(5, np.uint8), "shape mismatch"),
    (np.arange(4.0), np.array([0, 0, 255, 0], np.uint8), "no anomaly"),
    (np.arange(4.0), np.array([1, 1, 255, 1], np.uint8), "no inlier"),
    (np.array([0.1, np.nan, 0.3, 0.4]), np.array([0, 1, 0, 1], np.uint8), "NaN"),
    (np.arange(4.0), np.array([0, 1, 2, 1], np.uint8), "0 \\(inlier\\)"),
    (np.arange(4.0), np.array([0, 1, 0, 1], np.float32), "integer"),
])
def test_bad_input_raises(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        compute_anomaly_metrics(scores, labels)


def test_nan_score_on_void_pixel_is_ignored():
    scores = np.array([0.1, np.nan, 0.3, 0.9])
    labels = np.array([0, 255, 0, 1], np.uint8)
    assert compute_anomaly_metrics(scores, labels).ap == 1.0


# ---- StreetHazards per-image variant -------------------------------------------------------------------

def hendrycks_fpr_at_recall(y_true, y_score, recall_level=0.95):
    """Transcription of `fpr_and_fdr_at_recall` from Hendrycks et al.'s anomaly_seg code (reference)."""
    order = np.argsort(y_score, kind="mergesort")[::-1]
    y_score, y_true = y_score[order], y_true[order]
    distinct = np.where(np.diff(y_score))[0]
    threshold_idxs = np.r_[distinct, y_true.size - 1]
    tps = np.cumsum(y_true)[threshold_idxs]
    fps = 1 + threshold_idxs - tps
    recall = tps / tps[-1]
    last_ind = tps.searchsorted(tps[-1])
    sl = slice(last_ind, None, -1)
    recall, fps = np.r_[recall[sl], 1], np.r_[fps[sl], 0]
    cutoff = np.argmin(np.abs(recall - recall_level))
    return fps[cutoff] / np.sum(np.logical_not(y_true))


def test_per_image_matches_hendrycks_protocol():
    images = []
    for seed in range(6):
        scores, labels = make_data(seed, n=900, ties=seed % 2 == 0, shape=(30, 30))
        images.append((scores, labels))
    images.append((np.ones((5, 5)), np.zeros((5, 5), np.uint8)))  # no anomaly: skipped
    images.append((np.ones((5, 5)), np.ones((5, 5), np.uint8)))  # no inlier: skipped
    result = per_image_anomaly_metrics(images)
    ref = {"ap": [], "auroc": [], "fpr": []}
    for scores, labels in images[:6]:
        keep = labels != 255
        y, s = labels[keep].astype(np.int64), scores[keep]
        ref["ap"].append(average_precision_score(y, s))
        ref["auroc"].append(roc_auc_score(y, s))
        ref["fpr"].append(hendrycks_fpr_at_recall(y, s))
    assert result.num_images == 6
    assert (result.skipped_without_anomaly, result.skipped_without_inlier) == (1, 1)
    assert result.ap == pytest.approx(np.mean(ref["ap"]), abs=TOL)
    assert result.auroc == pytest.approx(np.mean(ref["auroc"]), abs=TOL)
    assert result.fpr95 == pytest.approx(np.mean(ref["fpr"]), abs=TOL)


# ---- SMIYC binned mode --------------------------------------------------------------------------------

def test_binned_mode_equals_trapezoid_curves_on_bin_aligned_scores():
    # scores on the bin lower edges k/16: binning is then lossless and the binned operating points are
    # exactly sklearn's; SMIYC integrates them with trapezoids (ROC without the origin).
    rng = np.random.default_rng(7)
    labels = (rng.random(5000) < 0.2).astype(np.uint8)
    k = np.clip(rng.integers(0, 12, 5000) + 4 * labels, 0, 15)
    scores = k / 16.0
    labels[rng.random(5000) < 0.05] = 255
    result = binned_anomaly_metrics(scores, labels, num_bins=16)
    keep = labels != 255
    fpr, tpr, thr = roc_curve(labels[keep], scores[keep], drop_intermediate=False)
    precision, recall, _ = precision_recall_curve(labels[keep], scores[keep])
    i = np.flatnonzero(tpr >= 0.95)[0]
    assert result.auroc == pytest.approx(np.trapezoid(tpr[1:], fpr[1:]), abs=TOL)
    assert result.ap == pytest.approx(np.trapezoid(precision[:-1][::-1], recall[:-1][::-1]), abs=TOL)
    assert result.fpr95 == pytest.approx(fpr[i], abs=TOL)
    assert result.threshold95 == thr[i]


def test_binned_accumulates_over_images_and_checks_range():
    scores, labels = make_data(8, n=4000)
    probs = 1 / (1 + np.exp(-scores))
    acc = BinnedAnomalyMetrics(num_bins=256)
    acc.update(probs[:2000], labels[:2000])
    acc.update(probs[2000:], labels[2000:])
    assert acc.compute() == binned_anomaly_metrics(probs, labels, num_bins=256)
    exact = compute_anomaly_metrics(probs, labels)
    assert abs(acc.compute().fpr95 - exact.fpr95) < 0.02  # an approximation, close with 256 bins
    with pytest.raises(ValueError, match="outside score_range"):
        binned_anomaly_metrics(scores, labels)
    clipped = binned_anomaly_metrics(scores, labels, clip=True)
    assert clipped.num_positives == exact.num_positives
