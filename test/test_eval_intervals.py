"""Operating points, street-grouped bootstrap intervals and the size / distance breakdown, against
independent computations (sklearn's ROC curve, scipy's connected components, direct resampling)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_curve

from densehybrid_ros.evaluation.anomaly_metrics import compute_anomaly_metrics
from densehybrid_ros.evaluation.bootstrap import (GroupedConfusion, GroupedScoreHistograms, GroupIndex, group_weights,
                                                  paired_difference, percentile_interval)
from densehybrid_ros.evaluation.breakdown import RecallByBin, SizeBinnedAnomalyMetrics, component_sizes


def _scores(seed: int, n: int = 20000, shift: float = 2.0):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.08).astype(np.uint8)
    scores = rng.normal(size=n) + shift * labels
    scores = np.round(scores, 2)  # ties, as in real quantised score maps
    return scores, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_operating_points_match_sklearn_roc_curve(seed):
    scores, labels = _scores(seed)
    m = compute_anomaly_metrics(scores, labels)
    fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
    for level in (0.01, 0.001):
        ok = np.flatnonzero(fpr <= level)
        j = ok[-1]  # lowest threshold within the false-alarm budget
        got = m.tpr_at_fpr[str(level)]
        assert got["tpr"] == pytest.approx(tpr[j])
        assert got["fpr"] == pytest.approx(fpr[j])
        if np.isfinite(thr[j]):
            assert got["threshold"] == pytest.approx(thr[j])
            flagged = scores >= got["threshold"]
            assert flagged[labels == 0].mean() <= level
    for level in (0.5, 0.95):
        j = np.flatnonzero(tpr >= level)[0]
        got = m.fpr_at_tpr[str(level)]
        assert (got["tpr"], got["fpr"], got["threshold"]) == pytest.approx((tpr[j], fpr[j], thr[j]))
    assert m.fpr_at_tpr["0.95"]["fpr"] == pytest.approx(m.fpr95)


def test_nothing_flagged_is_the_operating_point_when_the_top_score_is_a_false_alarm():
    scores = np.array([9.0, 5.0, 4.0, 1.0])
    labels = np.array([0, 1, 1, 0], np.uint8)
    m = compute_anomaly_metrics(scores, labels)
    assert m.tpr_at_fpr["0.01"] == {"tpr": 0.0, "fpr": 0.0, "threshold": float("inf")}


def test_group_weights_draw_as_many_groups_as_there_are():
    w = group_weights(7, 50, seed=3)
    assert w.shape == (50, 7)
    assert (w.sum(axis=1) == 7).all()
    assert (w >= 0).all() and w.max() > 1  # with replacement


def test_percentile_interval_by_hand():
    values = np.arange(1, 101, dtype=float)  # 1..100
    lo, hi = percentile_interval(values, 0.9)
    assert lo == pytest.approx(np.quantile(values, 0.05))
    assert hi == pytest.approx(np.quantile(values, 0.95))
    assert percentile_interval(np.array([np.nan, 2.0, 2.0])) == (2.0, 2.0)


def _groups(num_groups: int = 12, per_group: int = 3000):
    rng = np.random.default_rng(5)
    out = []
    for g in range(num_groups):
        shift = rng.uniform(0.5, 3.5)  # groups (streets) differ: the interval must reflect that
        labels = (rng.random(per_group) < rng.uniform(0.02, 0.15)).astype(np.uint8)
        scores = rng.normal(size=per_group) + shift * labels
        out.append((scores, labels))
    return out


def test_bootstrap_replicates_equal_metrics_of_the_resampled_groups():
    """Each replicate's AP is the sklearn AP of the concatenated pixels of the drawn groups (up to binning)."""
    data = _groups()
    index = GroupIndex()
    hist = GroupedScoreHistograms(num_bins=1 << 15)
    for g, (s, l) in enumerate(data):
        hist.update(index(f"street{g}"), s, l)
    weights = group_weights(len(data), 40, seed=1)
    exact = compute_anomaly_metrics(np.concatenate([s for s, _ in data]), np.concatenate([l for _, l in data]))
    iv = hist.intervals(exact, weights)
    direct = []
    for w in weights:
        s = np.concatenate([np.tile(data[g][0], k) for g, k in enumerate(w) if k])
        l = np.concatenate([np.tile(data[g][1], k) for g, k in enumerate(w) if k])
        direct.append(average_precision_score(l, s))
    lo, hi = percentile_interval(np.array(direct))
    assert iv["ap"].low == pytest.approx(lo, abs=2e-3)
    assert iv["ap"].high == pytest.approx(hi, abs=2e-3)
    assert iv["ap"].point == exact.ap
    assert iv["ap"].binned_point == pytest.approx(exact.ap, abs=1e-3)
    assert iv["ap"].low < exact.ap < iv["ap"].high


def test_paired_difference_equals_the_differences_of_the_resampled_groups():
    """The paired interval of AP(a) - AP(b) is the percentile interval of sklearn's AP difference on each replicate's
    drawn groups; with streets of very different difficulty, a score slightly better on every street differs beyond
    the noise although its own interval overlaps the other's."""
    data = _groups()
    rng = np.random.default_rng(9)
    index = GroupIndex()
    hist_a, hist_b = GroupedScoreHistograms(num_bins=1 << 15), GroupedScoreHistograms(num_bins=1 << 15)
    worse = []
    for g, (s, l) in enumerate(data):
        s_b = s + rng.normal(scale=0.35, size=s.size)  # the same score with extra noise: worse on every street
        worse.append(s_b)
        hist_a.update(index(f"street{g}"), s, l)
        hist_b.update(index(f"street{g}"), s_b, l)
    weights = group_weights(len(data), 60, seed=2)
    labels = np.concatenate([l for _, l in data])
    exact_a = compute_anomaly_metrics(np.concatenate([s for s, _ in data]), labels)
    exact_b = compute_anomaly_metrics(np.concatenate(worse), labels)
    rep_a, rep_b = hist_a.replicates(weights), hist_b.replicates(weights)
    diff = paired_difference(exact_a.ap, exact_b.ap, rep_a["ap"], rep_b["ap"])
    direct = []
    for w in weights:
        pick = [g for g, k in enumerate(w) for _ in range(k)]
        l = np.concatenate([data[g][1] for g in pick])
        direct.append(average_precision_score(l, np.concatenate([data[g][0] for g in pick]))
                      - average_precision_score(l, np.concatenate([worse[g] for g in pick])))
    lo, hi = percentile_interval(np.array(direct))
    assert diff.point == pytest.approx(exact_a.ap - exact_b.ap)
    assert diff.low == pytest.approx(lo, abs=3e-3) and diff.high == pytest.approx(hi, abs=3e-3)
    iv_a, iv_b = hist_a.intervals(exact_a, weights), hist_b.intervals(exact_b, weights)
    assert iv_b["ap"].high > iv_a["ap"].low  # side by side the intervals overlap ...
    assert diff.low > 0  # ... paired, a is better beyond the noise
    same = paired_difference(exact_a.ap, exact_a.ap, rep_a["ap"], rep_a["ap"])
    assert (same.point, same.low, same.high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same weights"):
        paired_difference(0.5, 0.4, rep_a["ap"], rep_b["ap"][:10])


def test_grouped_confusion_interval_by_hand():
    """Two groups; every replicate is (2,0), (1,1) or (0,2) copies: the mIoU values are computable by hand."""
    a = np.array([[8, 2], [0, 10]])
    b = np.array([[10, 0], [5, 5]])
    cm = GroupedConfusion(2)
    cm.update(0, a)
    cm.update(1, b)

    def miou(c):
        inter = np.diag(c)
        union = c.sum(0) + c.sum(1) - inter
        return np.mean(inter / union)

    weights = np.array([[2, 0], [1, 1], [0, 2], [1, 1]])
    ci = cm.intervals(weights, level=0.5)
    reps = np.array([miou(2 * a), miou(a + b), miou(2 * b), miou(a + b)])
    assert ci["miou"].point == pytest.approx(miou(a + b))
    assert (ci["miou"].low, ci["miou"].high) == pytest.approx((np.quantile(reps, 0.25), np.quantile(reps, 0.75)))


def test_component_sizes_match_scipy_labelling():
    rng = np.random.default_rng(0)
    ood = np.zeros((60, 80), np.uint8)
    ood[rng.random(ood.shape) < 0.15] = 1
    ood[:5, :5] = 255
    sizes = component_sizes(ood)
    lab, n = ndimage.label(ood == 1, structure=np.ones((3, 3)))
    counts = np.bincount(lab.ravel())
    expected = np.where(lab > 0, counts[lab], np.nan)
    np.testing.assert_array_equal(np.isnan(sizes), np.isnan(expected))
    np.testing.assert_array_equal(sizes[~np.isnan(sizes)], expected[~np.isnan(expected)])


def test_size_bins_and_recall_by_hand():
    """A 3-pixel object with scores 5 and a 12-pixel object with scores 1; inliers score 0..2."""
    ood = np.zeros((10, 10), np.uint8)
    scores = np.zeros((10, 10))
    ood[0, :3] = 1
    scores[0, :3] = 5.0
    ood[5:8, 2:6] = 1
    scores[5:8, 2:6] = 1.0
    scores[9, :] = 2.0  # ten inlier pixels above the big object's score
    sizes = SizeBinnedAnomalyMetrics(edges=(0, 10, 100), num_bins=4096)
    sizes.update(scores, ood)
    small, large = sizes.compute()
    assert (small.num_positives, small.num_components, large.num_positives, large.num_components) == (3, 1, 12, 1)
    inl = ood == 0
    assert small.ap == pytest.approx(average_precision_score(np.r_[np.ones(3), np.zeros(inl.sum())],
                                                             np.r_[scores[ood == 1][:3], scores[inl]]), abs=1e-9)
    big = ood.copy()
    big[0, :3] = 255
    assert large.ap == pytest.approx(average_precision_score(big[big != 255].ravel(), scores[big != 255].ravel()),
                                     abs=1e-9)
    rec = RecallByBin((0, 10, 100), {"t": 3.0, "u": 1.0})
    rec.update(scores, ood, component_sizes(ood))
    a, b = rec.compute()
    assert a.recall == {"t": 1.0, "u": 1.0} and b.recall == {"t": 0.0, "u": 1.0}
    assert (a.num_positives, b.num_positives) == (3, 12)
