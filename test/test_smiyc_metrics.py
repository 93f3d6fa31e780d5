"""SMIYC benchmark-mode pixel metrics against the official road-anomaly-benchmark procedure worked by hand.

Each hand case writes out the benchmark's steps: per-frame bin edges (quantiles of positives and negatives, or
equal bins over [0, 1]), per-bin counts, the merged bins ordered by threshold, the collapse of equal thresholds
(entry 0 and the last entry of every run kept; (0, 0) in front when the first kept point predicts something),
then AP = sum (R_n - R_n-1) Prec_n from recall 0, AUROC by trapezoids from (0, 0), FPR at the first TPR >= 0.95,
best F1 = max 2TP / (2TP + FP + FN) and its threshold read from the UNcollapsed threshold list at the best
point's index (the benchmark's indexing). Fractions keep the hand arithmetic exact.
"""
from __future__ import annotations

import json
from fractions import Fraction as F

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from densehybrid_ros.evaluation import BinnedAnomalyMetrics, SmiycPixelMetrics, smiyc_pixel_metrics
from densehybrid_ros.evaluation.smiyc_metrics import as_submitted, percentile_edges


def curve_by_hand(points, P, N):
    """AP, AUROC, FPR95, best F1 and the best point's index from hand-listed (TP, FP) curve points."""
    recall = [F(tp, P) for tp, _ in points]
    fpr = [F(fp, N) for _, fp in points]
    precision = [F(tp, tp + fp) if tp + fp else F(1) for tp, fp in points]
    ap = sum((recall[n] - recall[n - 1]) * precision[n] for n in range(1, len(points)))
    auroc = sum((fpr[n] - fpr[n - 1]) * (recall[n] + recall[n - 1]) / 2 for n in range(1, len(points)))
    fpr95 = next(fpr[n] for n in range(len(points)) if recall[n] >= F(95, 100))
    f1 = [F(2 * tp, 2 * tp + fp + (P - tp)) for tp, fp in points]
    best = max(range(len(points)), key=lambda n: (f1[n], -n))  # first maximum
    return ap, auroc, fpr95, f1[best], best


def check(result, ap, auroc, fpr95, best_f1, threshold):
    assert set(result) == {"AP", "AUROC", "FPR95", "best_F1", "best_F1_threshold"}
    assert result["AP"] == pytest.approx(float(ap), rel=1e-12)
    assert result["AUROC"] == pytest.approx(float(auroc), rel=1e-12)
    assert result["FPR95"] == pytest.approx(float(fpr95), rel=1e-12)
    assert result["best_F1"] == pytest.approx(float(best_f1), rel=1e-12)
    assert result["best_F1_threshold"] == threshold


# ---- percentile bins ---------------------------------------------------------------------------------------

A_SCORES = np.array([[0.125, 0.25, 0.75, 0.5], [0.375, 0.9, 0.875, 0.625]])
A_LABELS = np.array([[0, 0, 1, 1], [0, 255, 1, 0]], np.uint8)
B_SCORES = np.array([[0.875, 0.0625, 0.5, 0.3125, 0.75]])
B_LABELS = np.array([[1, 0, 0, 1, 0]], np.uint8)


def test_percentile_bins_two_frames_by_hand():
    # num_bins = 6 -> k = 3 quantiles per class, at q = 0, 0.5, 1 (NumPy linear interpolation, position q*(n-1)).
    # Frame A (void 0.9 dropped): positives {0.5, 0.75, 0.875} -> positions 0, 1, 2 -> 0.5, 0.75, 0.875;
    # negatives {0.125, 0.25, 0.375, 0.625} -> positions 0, 1.5, 3 -> 0.125, (0.25+0.375)/2 = 0.3125, 0.625.
    edges_a = [0, 0.125, 0.3125, 0.5, 0.625, 0.75, 0.875, 1]  # with 0 and 1, sorted, distinct
    # Frame B: positives {0.3125, 0.875}: min(3, 2) = 2 quantiles -> 0.3125, 0.875; negatives {0.0625, 0.5, 0.75}.
    edges_b = [0, 0.0625, 0.3125, 0.5, 0.75, 0.875, 1]
    pos_a, neg_a = np.array([0.75, 0.5, 0.875]), np.array([0.125, 0.25, 0.375, 0.625])
    np.testing.assert_array_equal(percentile_edges(pos_a, neg_a, 6), edges_a)
    pos_b, neg_b = np.array([0.875, 0.3125]), np.array([0.0625, 0.5, 0.75])
    np.testing.assert_array_equal(percentile_edges(pos_b, neg_b, 6), edges_b)
    # Bins [e_i, e_i+1), lower edge = threshold, high to low, as (threshold, positives, negatives):
    # A: (.875,1,0) (.75,1,0) (.625,0,1) (.5,1,0) (.3125,0,1) (.125,0,2) (0,0,0)
    # B: (.875,1,0) (.75,0,1) (.5,0,1) (.3125,1,0) (.0625,0,1) (0,0,0)
    # Merged, thresholds high to low (13 entries, index: threshold):
    thresholds = [.875, .875, .75, .75, .625, .5, .5, .3125, .3125, .125, .0625, 0, 0]
    # Cumulative (TP, FP) kept at entry 0 (a partial sum: one of the two .875 bins, (1, 0) either way) and at
    # the last entry of each run (entries 1, 3, 4, 6, 8, 9, 10, 12); (0, 0) put in front because (1, 0) != 0.
    points = [(0, 0), (1, 0), (2, 0), (3, 1), (3, 2), (4, 3), (5, 4), (5, 6), (5, 7), (5, 7)]
    P, N = 5, 7
    ap, auroc, fpr95, best_f1, best = curve_by_hand(points, P, N)
    # AP = .2*1 + .2*1 + .2*3/4 + .2*4/7 + .2*5/9 = 977/1260; AUROC = (.5+.6+.7+.9)/7 + 2/7 + 1/7 = 5.7/7
    assert (ap, auroc, fpr95, best_f1, best) == (F(977, 1260), F(57, 70), F(4, 7), F(5, 7), 6)
    result = smiyc_pixel_metrics([A_SCORES, B_SCORES], [A_LABELS, B_LABELS], "percentiles", num_bins=6)
    # the benchmark reads thresholds[6] = 0.5, although point 6 was produced by the threshold 0.3125
    check(result, ap, auroc, fpr95, best_f1, thresholds[best])


def test_default_bins_are_the_benchmarks():
    assert SmiycPixelMetrics().num_bins == 768 and SmiycPixelMetrics("uniform").num_bins == 4096
    rng = np.random.default_rng(0)
    pos, neg = rng.uniform(0.01, 0.99, 1000), rng.uniform(0.01, 0.99, 257)
    # 768 // 2 = 384 quantiles of the 1000 positives, min(384, 257) = 257 of the negatives (all of them: with
    # 257 = 2^8 + 1 values the positions q * 256 are exact integers), plus 0 and 1
    edges = percentile_edges(pos, neg, 768)
    assert edges.size == 384 + 257 + 2 and edges[0] == 0 and edges[-1] == 1
    np.testing.assert_array_equal(np.intersect1d(edges, neg), np.sort(neg))
    acc = SmiycPixelMetrics()
    for seed in range(3):  # bounded memory: at most num_bins + 1 bins per frame are kept, never the pixels
        r = np.random.default_rng(seed)
        acc.update(r.random((100, 100)), (r.random((100, 100)) < 0.2).astype(np.uint8))
    assert acc.merged_bins().thresholds.size <= 3 * (768 + 1)


def test_percentiles_equal_sklearn_when_every_score_is_a_bin_edge():
    # With at most num_bins // 2 pixels per class and frame, every score is a quantile edge: each bin holds one
    # distinct score, the binned curve is the exact one, and AP / AUROC / FPR95 / best F1 are sklearn's.
    # Class sizes 2^m + 1 keep the quantile positions q*(n-1) exact integers.
    rng = np.random.default_rng(3)
    sizes = [(17, 33), (9, 65), (5, 17)]
    scores, labels = [], []
    for n_pos, n_neg in sizes:
        frame = np.concatenate([rng.beta(4, 2, n_pos), rng.beta(2, 4, n_neg), rng.random(7)])
        lab = np.concatenate([np.ones(n_pos), np.zeros(n_neg), np.full(7, 255)]).astype(np.uint8)
        perm = rng.permutation(frame.size)
        scores.append(frame[perm])
        labels.append(lab[perm])
    result = smiyc_pixel_metrics(scores, labels, "percentiles", num_bins=130)
    valid = np.concatenate(labels) != 255
    y, s = np.concatenate(labels)[valid] == 1, np.concatenate(scores)[valid]
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    precision, recall, _ = precision_recall_curve(y, s)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0)
    assert result["AP"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert result["AUROC"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert result["FPR95"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)
    assert result["best_F1"] == pytest.approx(f1.max(), abs=1e-12)


# ---- uniform bins ------------------------------------------------------------------------------------------

def test_uniform_bins_two_frames_by_hand():
    # num_bins = 4: edges 0, .25, .5, .75, 1 (the top bin closed, so 1.0 counts).
    a_scores = np.array([[1.0, 0.1, 0.6], [0.3, 0.2, 0.75]])
    a_labels = np.array([[1, 0, 1], [0, 255, 1]], np.uint8)
    b_scores = np.array([[0.8, 0.55], [0.05, 0.5]])
    b_labels = np.array([[0, 1], [0, 0]], np.uint8)
    # Counts added over frames, bins high to low (threshold: pos, neg):
    # .75: A {1.0, .75} + B {.8 neg} = (2, 1); .5: A {.6} + B {.55 pos, .5 neg} = (2, 1); .25: A {.3 neg} = (0, 1);
    # 0: A {.1 neg} + B {.05 neg} = (0, 2). P = 4, N = 5. Thresholds [.75, .5, .25, 0].
    # Cumulative (2,1) (4,2) (4,3) (4,5); kept entries 0, 0, 1, 2, 3; (0, 0) in front.
    points = [(0, 0), (2, 1), (2, 1), (4, 2), (4, 3), (4, 5)]
    ap, auroc, fpr95, best_f1, best = curve_by_hand(points, 4, 5)
    assert (ap, auroc, fpr95, best_f1, best) == (F(2, 3), F(4, 5), F(2, 5), F(4, 5), 3)
    result = smiyc_pixel_metrics([a_scores, b_scores], [a_labels, b_labels], "uniform", num_bins=4)
    check(result, ap, auroc, fpr95, best_f1, [.75, .5, .25, 0][best])  # point 3 came from .5; 0 is read


ONE_FRAME_SCORES = np.array([0.1, 0.3, 0.6, 0.7, 0.55, 0.2])
ONE_FRAME_LABELS = np.array([0, 1, 1, 0, 1, 0], np.uint8)


def test_uniform_bins_with_empty_top_bins_by_hand():
    # num_bins = 8, edges k/8. Bins high to low (threshold: pos, neg): .875 (0,0) .75 (0,0) .625 {.7} (0,1)
    # .5 {.6,.55} (2,0) .375 (0,0) .25 {.3} (1,0) .125 {.2} (0,1) 0 {.1} (0,1). P = N = 3.
    thresholds = [.875, .75, .625, .5, .375, .25, .125, 0]
    # Cumulative (0,0) (0,0) (0,1) (2,1) (2,1) (3,1) (3,2) (3,3); kept entries 0, 0, 1, ..., 7; the first
    # point predicts nothing, so no (0, 0) is put in front.
    points = [(0, 0), (0, 0), (0, 0), (0, 1), (2, 1), (2, 1), (3, 1), (3, 2), (3, 3)]
    ap, auroc, fpr95, best_f1, best = curve_by_hand(points, 3, 3)
    # AP = 2/3 * 2/3 + 1/3 * 3/4 = 25/36; AUROC = 1/3 * 1 + 1/3 * 1 = 2/3
    assert (ap, auroc, fpr95, best_f1, best) == (F(25, 36), F(2, 3), F(1, 3), F(6, 7), 6)
    result = smiyc_pixel_metrics([ONE_FRAME_SCORES], [ONE_FRAME_LABELS], "uniform", num_bins=8)
    check(result, ap, auroc, fpr95, best_f1, thresholds[best])  # .125, one bin below the .25 that made point 6


def test_old_binned_mode_differs_by_rule_and_starting_point():
    # The project's BinnedAnomalyMetrics on the same bins starts at the first bin with a prediction,
    # (R, Prec) = (0, 0), (2/3, 2/3), (2/3, 2/3), (1, 3/4), (1, 3/5), (1, 1/2), and integrates trapezoids:
    # 2/3 * (0 + 2/3)/2 + 1/3 * (2/3 + 3/4)/2 = 33/72, where the benchmark's step rule from recall 0 gives 25/36.
    old = BinnedAnomalyMetrics(num_bins=8)
    old.update(ONE_FRAME_SCORES, ONE_FRAME_LABELS)
    assert old.compute().ap == pytest.approx(33 / 72, rel=1e-12)
    new = smiyc_pixel_metrics([ONE_FRAME_SCORES], [ONE_FRAME_LABELS], "uniform", num_bins=8)
    assert new["AP"] == pytest.approx(25 / 36, rel=1e-12)


def test_best_f1_at_the_last_point_reads_the_lowest_threshold():
    # num_bins = 4: bins high to low .75 {.9 pos} (1,0), .5 (0,0), .25 (0,0), 0 {.1 pos, .2 neg} (1,1); P=2, N=1.
    # Points (0,0) (1,0) (1,0) (1,0) (1,0) (2,1): F1 = 0, 2/3, 2/3, 2/3, 2/3, 4/5. The best point, 5, lies
    # beyond the 4 thresholds (the benchmark raises IndexError there): the lowest threshold, 0, is used.
    points = [(0, 0), (1, 0), (1, 0), (1, 0), (1, 0), (2, 1)]
    ap, auroc, fpr95, best_f1, best = curve_by_hand(points, 2, 1)
    assert (ap, auroc, fpr95, best_f1, best) == (F(5, 6), F(3, 4), F(1), F(4, 5), 5)
    result = smiyc_pixel_metrics([np.array([0.9, 0.1, 0.2])], [np.array([1, 1, 0], np.uint8)], "uniform", num_bins=4)
    check(result, ap, auroc, fpr95, best_f1, 0.0)


def test_uniform_equals_sklearn_on_bin_aligned_scores():
    # Scores on the lower bin edges k/64: binning loses nothing, every bin is one distinct score (ties included).
    rng = np.random.default_rng(5)
    scores = [rng.integers(0, 64, size=(6, 9)) / 64 for _ in range(4)]
    labels = [(rng.random((6, 9)) < 0.3 + 0.2 * (s > 0.5)).astype(np.uint8) for s in scores]
    labels[0][0, :4] = 255
    result = smiyc_pixel_metrics(scores, labels, "uniform", num_bins=64)
    valid = np.concatenate([lab.ravel() for lab in labels]) != 255
    y = np.concatenate([lab.ravel() for lab in labels])[valid] == 1
    s = np.concatenate([sc.ravel() for sc in scores])[valid]
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert result["AP"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert result["AUROC"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert result["FPR95"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)


# ---- void, float16 storage, bad input ----------------------------------------------------------------------

def test_void_pixels_are_ignored_whatever_their_scores():
    a = A_SCORES.copy()
    a[A_LABELS == 255] = np.nan  # non-finite and out-of-range scores are fine where the label is void
    b = np.concatenate([B_SCORES, [[1e9, -5.0]]], axis=1)
    b_labels = np.concatenate([B_LABELS, [[255, 255]]], axis=1)
    all_void = (np.full((3, 3), np.inf), np.full((3, 3), 255, np.uint8))
    with_void = smiyc_pixel_metrics([a, b, all_void[0]], [A_LABELS, b_labels, all_void[1]], num_bins=6)
    roi = A_LABELS != 255
    without = smiyc_pixel_metrics([A_SCORES[roi], B_SCORES.ravel()], [A_LABELS[roi], B_LABELS.ravel()], num_bins=6)
    assert with_void == without
    assert without["AP"] == pytest.approx(977 / 1260, rel=1e-12)  # the hand case above
    uniform = smiyc_pixel_metrics([np.array([0.2, 7.0, 0.8])], [np.array([0, 255, 1], np.uint8)], "uniform")
    assert uniform["AP"] == 1.0 and uniform["AUROC"] == 1.0


def test_as_submitted_is_the_benchmarks_float16_storage():
    stored = as_submitted(np.array([0.1, -3.25, 1000.3], np.float32))
    assert stored.dtype == np.float16
    np.testing.assert_array_equal(stored, np.array([0.1, -3.25, 1000.3], np.float32).astype(np.float16))
    with pytest.raises(ValueError, match="exceed float16's range"):
        as_submitted(np.array([1.0, 7e4]))


@pytest.mark.parametrize("call, message", [
    (lambda: smiyc_pixel_metrics([np.zeros((2, 3))], [np.zeros((3, 2), np.uint8)]),
     r"frame 0: shape mismatch: scores has shape \(2, 3\), labels has shape \(3, 2\)"),
    (lambda: smiyc_pixel_metrics([np.zeros(3), np.zeros(2)],
                                 [np.array([0, 1, 0], np.uint8), np.array([2, 0], np.uint8)]),
     r"frame 1: labels may hold only 0 \(inlier\), 1 \(anomaly\), 255 \(void\); found \[2\]"),
    (lambda: smiyc_pixel_metrics([np.array([0.1, 0.2])], [np.array([0, 0], np.uint8)]),
     "no anomaly \\(positive\\) pixels"),
    (lambda: smiyc_pixel_metrics([np.array([0.1, 0.2])], [np.array([1, 255], np.uint8)]),
     "no inlier \\(negative\\) pixels"),
    (lambda: smiyc_pixel_metrics([np.array([0.1])], [np.array([1], np.uint8)] * 2), "1 score maps but 2 label maps"),
    (lambda: smiyc_pixel_metrics(np.zeros((2, 2)), [np.zeros((2, 2), np.uint8)]), "list of per-frame arrays"),
    (lambda: smiyc_pixel_metrics([], []), "no frame was given"),
    (lambda: smiyc_pixel_metrics([np.array([0.5, np.nan])], [np.array([0, 1], np.uint8)]), "1 NaN"),
    (lambda: smiyc_pixel_metrics([np.array([0.5, 1.5])], [np.array([0, 1], np.uint8)], "uniform"),
     r"uniform bins span \[0, 1\].*\[0.5, 1.5\]"),
    (lambda: smiyc_pixel_metrics([np.array([0.5, 0.7])], [np.array([0, 1], np.float32)]), "must be an integer array"),
    (lambda: smiyc_pixel_metrics([np.array(["a", "b"])], [np.array([0, 1], np.uint8)]), "real-valued numeric"),
    (lambda: smiyc_pixel_metrics([np.array([0.5, 0.7])], [np.array([0, 1], np.uint8)], "quantiles"),
     "bin_strategy must be one of"),
    (lambda: SmiycPixelMetrics("percentiles", 3), "num_bins must be >= 4 for 'percentiles'"),
    (lambda: SmiycPixelMetrics("uniform", 0), "num_bins must be >= 1 for 'uniform'"),
    (lambda: smiyc_pixel_metrics([np.array([0.5, 0.7], np.float16)], [np.array([0, 1], np.uint8)], "uniform"),
     "frame 0: 4096 equal bins over \\[0, 1\\] are not distinct in float16"),
    (lambda: smiyc_pixel_metrics([np.array([0.5, 0.7], np.float32), np.array([0.5, 0.7])],
                                 [np.array([0, 1], np.uint8)] * 2, "uniform", 10),
     "frame 1: its uniform bin edges differ"),
])
def test_bad_input_gets_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---- densehybrid-eval on a SMIYC fixture -------------------------------------------------------------------

def test_densehybrid_eval_reports_smiyc_mode_and_best_f1_components(tmp_path, capsys):
    from conftest import make_sim_weights
    from test_datasets_common import noise_rgb, write_gray, write_rgb
    from test_datasets_smiyc import H, W, make_anomaly_track, mask

    from densehybrid_ros.datasets import open_dataset
    from densehybrid_ros.evaluation.cli import main as eval_main
    from densehybrid_ros.evaluation.component_metrics import OBSTACLE_TRACK, ComponentMetrics
    from densehybrid_ros.predictor import Predictor, PredictorConfig

    root = tmp_path / "dataset_ObstacleTrack"
    make_anomaly_track(root)  # the track layout: validation0000 labelled, airplane0000 and validation0001 not
    write_rgb(root / "images" / "validation0001.jpg", noise_rgb(H, W, 7))
    write_gray(root / "labels_masks" / "validation0001_labels_semantic.png", mask())
    weights = make_sim_weights(tmp_path / "w.safetensors", threshold=0.0)
    rc = eval_main(["--weights", str(weights), "--dataset", f"smiyc-obstacle:{root}", "--scores", "hybrid,msp",
                    "--out", str(tmp_path / "out"), "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "SMIYC benchmark mode" in out and "components at the best-F1 threshold" in out
    assert "## SMIYC benchmark mode" in (tmp_path / "out" / "report.md").read_text()
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())

    # the same predictions, stored as the benchmark stores them (float16), scored here
    predictor = Predictor.from_weights(weights, PredictorConfig(extra_scores=("msp",)))
    dataset = open_dataset(f"smiyc-obstacle:{root}")
    frames = [dataset[i] for i in range(len(dataset)) if dataset[i].ood is not None]
    preds = [predictor.predict(f.image) for f in frames]
    maps = {"hybrid": [p.hybrid.astype(np.float16) for p in preds],
            "msp": [p.scores["msp"].astype(np.float16) for p in preds]}
    labels = [f.ood for f in frames]
    pixel = metrics["smiyc_pixel"]
    assert pixel["labelled_images"] == 2 and pixel["maps"]["percentiles"].startswith("float16")
    for name in ("hybrid", "msp"):
        got = pixel["scores"][name]
        assert got["percentiles"] == {"num_bins": 768, **smiyc_pixel_metrics(maps[name], labels)}
        assert "uniform bins span [0, 1]" in got["uniform"]["skipped"]  # neither score is a probability
    # the exact metrics stay next to them
    assert set(metrics["scores"]["hybrid"]["anomaly"]) >= {"ap", "auroc", "fpr95"}

    threshold = pixel["scores"]["hybrid"]["percentiles"]["best_F1_threshold"]
    best = metrics["components_best_f1"]
    assert best["threshold"] == threshold and best["score"] == "hybrid"
    reference = ComponentMetrics(OBSTACLE_TRACK)
    for hybrid, ood in zip(maps["hybrid"], labels):
        reference.update(hybrid > threshold, ood)  # SegEval: anomaly where score > threshold
    ref = reference.compute()
    assert best["num_gt_components"] == ref.num_gt_components == 2
    assert best["siou"] == pytest.approx(ref.siou, abs=1e-12)
    assert best["mean_f1"] == pytest.approx(ref.mean_f1, abs=1e-12)
    assert best["num_pred_components"] == ref.num_pred_components
    assert "components" in metrics  # the calibrated-threshold ones, from the exact pass

    rc = eval_main(["--weights", str(weights), "--dataset", f"smiyc-obstacle:{root}", "--scores", "hybrid",
                    "--out", str(tmp_path / "out2"), "--quiet", "--no-smiyc-mode"])
    assert rc == 0
    assert "smiyc_pixel" not in json.loads((tmp_path / "out2" / "metrics.json").read_text())
