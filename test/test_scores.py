"""Every score against a direct float64 numpy formula on random logits."""
import numpy as np
import pytest
import torch

from densehybrid_ros import scores

RNG = np.random.default_rng(1234)
LOGITS = RNG.normal(0, 4, size=(2, 7, 5, 6))  # B, K, H, W
INLIER = RNG.normal(0, 3, size=(2, 1, 5, 6))


def np_lse(s):
    return np.log(np.exp(s).sum(axis=1))


def np_softmax(s):
    e = np.exp(s)
    return e / e.sum(axis=1, keepdims=True)


def np_p_out(g):
    return 1.0 - 1.0 / (1.0 + np.exp(-g[:, 0]))


def run(fn, *arrays):
    return fn(*(torch.tensor(a, dtype=torch.float32) for a in arrays)).numpy()


def test_hybrid_score_matches_log_ratio_formula():
    expected = np.log(np_p_out(INLIER)) - np_lse(LOGITS)  # thesis 4.11
    np.testing.assert_allclose(run(scores.hybrid_score, LOGITS, INLIER), expected, rtol=1e-5, atol=1e-5)


def test_components_and_baselines_match_numpy():
    p = np_softmax(LOGITS)
    expected = {
        "generative": -np_lse(LOGITS),
        "discriminative": np.log(np_p_out(INLIER)),
        "msp": -p.max(axis=1),
        "max_logit": -LOGITS.max(axis=1),
        "energy": -np_lse(LOGITS),
        "entropy": -(p * np.log(p)).sum(axis=1),
    }
    s, g = torch.tensor(LOGITS, dtype=torch.float32), torch.tensor(INLIER, dtype=torch.float32)
    got = scores.compute_scores(tuple(expected) + ("hybrid",), s, g)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name].numpy(), value, rtol=1e-5, atol=1e-5, err_msg=name)
        assert got[name].dtype == torch.float32 and got[name].shape == (2, 5, 6)


def test_energy_temperature_and_posterior():
    t = 2.5
    expected = -t * np.log(np.exp(LOGITS / t).sum(axis=1))
    np.testing.assert_allclose(run(lambda s: scores.energy_score(s, t), LOGITS), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run(scores.class_posterior, LOGITS), np_softmax(LOGITS), atol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        scores.energy_score(torch.zeros(1, 2, 1, 1), 0.0)


def test_outlier_posterior_is_stable_for_confident_inliers():
    g = torch.tensor([[[[50.0, -50.0, 0.0]]]])  # P(d_in) ~ 1, ~ 0, 1/2
    got = scores.log_outlier_posterior(g)[0, 0]
    assert torch.isfinite(got).all()
    np.testing.assert_allclose(got.numpy(), [-50.0, -1.9287e-22, np.log(0.5)], rtol=1e-4, atol=1e-6)


def test_inlier_posterior_is_stable_and_complements_the_outlier_posterior():
    g = torch.tensor([[[[50.0, -50.0, 0.0, 3.0]]]])  # P(d_in) ~ 1, ~ 0, 1/2, sigmoid(3)
    got = scores.log_inlier_posterior(g)[0, 0]
    assert torch.isfinite(got).all()
    np.testing.assert_allclose(got.numpy(), [-1.9287e-22, -50.0, np.log(0.5), -np.log1p(np.exp(-3.0))], rtol=1e-4,
                               atol=1e-6)
    total = torch.exp(got) + torch.exp(scores.log_outlier_posterior(g)[0, 0])  # P(d_in|x) + P(d_out|x) = 1
    np.testing.assert_allclose(total.numpy(), 1.0, atol=1e-6)


def test_hybrid_shifts_with_logit_offset_but_classes_do_not():
    """Adding c to all logits leaves P(y|x) unchanged and lowers s_H by exactly c (thesis 4.9 remark)."""
    s, g = torch.tensor(LOGITS, dtype=torch.float32), torch.tensor(INLIER, dtype=torch.float32)
    shifted = scores.hybrid_score(s + 3.0, g)
    np.testing.assert_allclose((scores.hybrid_score(s, g) - shifted).numpy(), 3.0, atol=1e-5)
    np.testing.assert_allclose(scores.class_posterior(s + 3.0).numpy(), scores.class_posterior(s).numpy(), atol=1e-6)


def test_open_set_fusion_by_hand():
    ids = torch.tensor([[[0, 1], [2, 3]]])
    score = torch.tensor([[[0.5, 2.0], [1.0, -1.0]]])
    fused = scores.open_set_fusion(ids, score, threshold=1.0, unknown_id=4)
    assert fused.tolist() == [[[0, 4], [4, 3]]]  # at or above the threshold becomes unknown (the score 1.0 too)


def test_open_set_fusion_on_numpy_arrays_by_hand():
    """Recorded outputs (numpy): the same rule, the class ids' dtype kept, the inputs left alone."""
    ids = np.array([[0, 1, 2], [3, 4, 5]], np.uint8)
    score = np.array([[0.5, 2.0, 1.0], [-1.0, np.float32(0.3), 7.0]], np.float32)
    fused = scores.open_set_fusion(ids, score, threshold=1.0, unknown_id=6)
    assert isinstance(fused, np.ndarray) and fused.dtype == np.uint8
    assert fused.tolist() == [[0, 6, 6], [3, 4, 6]]  # 2.0, 1.0 (equal: unknown) and 7.0 reach the threshold
    assert ids.tolist() == [[0, 1, 2], [3, 4, 5]]  # not modified in place
    # a float64 threshold that rounds to an attained float32 score flags it (compared in float32, as in torch)
    t = float(np.float32(0.3)) + 1e-12
    assert scores.open_set_fusion(ids, score, t, 6).tolist() == [[6, 6, 6], [3, 6, 6]]  # 0.3 flagged too
    # broadcasting as torch's masked_fill: one row of scores for both rows of ids
    assert scores.open_set_fusion(ids, score[0], 1.0, 9).tolist() == [[0, 9, 9], [3, 9, 9]]
    with pytest.raises(TypeError, match="must both be torch tensors or both numpy arrays"):
        scores.open_set_fusion(torch.from_numpy(ids), score, 1.0, 6)
    with pytest.raises(ValueError, match="does not fit"):
        scores.open_set_fusion(ids, score, 1.0, 256)


def test_threshold_rule_is_score_at_least_threshold_in_the_scores_dtype():
    values = np.array([0.25, 0.5, 0.75, 1.0], np.float32)
    for t, expected in ((0.5, [False, True, True, True]), (0.75, [False, False, True, True]),
                        (0.7500001, [False, False, False, True]), (-np.inf, [True] * 4)):
        assert scores.is_anomalous(values, t).tolist() == expected, t
        assert scores.is_anomalous(torch.from_numpy(values), t).tolist() == expected, t
    # a float64 threshold that rounds to an attained float32 score flags it, in numpy as in torch (float32 compare)
    a = np.float32(0.3)
    t = float(a) + 1e-12
    assert float(a) < t and np.float32(t) == a
    assert scores.is_anomalous(np.array([a]), t).tolist() == [True]
    assert scores.is_anomalous(torch.tensor([a]), t).tolist() == [True]


def test_unknown_score_name_is_refused():
    with pytest.raises(ValueError, match="unknown score.*available"):
        scores.compute_scores(("hybrid", "mahalanobis"), torch.zeros(1, 2, 1, 1), torch.zeros(1, 1, 1, 1))
