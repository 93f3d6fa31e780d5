"""The closed-set decision's class bias (post-hoc logit adjustment, Menon et al. 2021): argmax_k (s_k + b_k) on
hand-built logits; b = -tau ln w undoes the lean a w-weighted cross-entropy gives the logits (checked by fitting
free logits with autograd); the bias travels in the weights (validated) and moves the class ids of both backends
but not the anomaly scores; calibration picks the tau whose mIoU, computed here with sklearn, is the best; the
per-class refinement finds a brute-forced best threshold, never lowers mIoU, and calibration keeps it only when it
helps the held-out half of the streets."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, jaccard_score

from conftest import TINY, make_sim_weights, render_small_sim
from test_weights import rewrite

from densehybrid_ros.predictor import Predictor, PredictorConfig
from densehybrid_ros.scores import closed_set_decision
from densehybrid_ros.weights import ClassBias, WeightsError, default_metadata, load_weights, read_metadata, \
    save_weights
from densehybrid_training.class_balance import logit_adjustment_bias, refine_class_bias


def test_decision_adds_the_bias_before_the_argmax():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.5, 0.4]]).T.reshape(1, 3, 1, 2)  # pixel 0: class 0; pixel 1: 1
    assert closed_set_decision(logits).tolist() == [[[0, 1]]]
    # class 0 loses 1.5: pixel 0 goes to class 1 (2 - 1.5 < 1); class 2 gains 0.2: pixel 1 goes to class 2
    assert closed_set_decision(logits, torch.tensor([-1.5, 0.0, 0.2])).tolist() == [[[1, 2]]]
    with pytest.raises(ValueError, match="class_bias has shape \\(2,\\), the logits 3 classes"):
        closed_set_decision(logits, torch.tensor([0.0, 1.0]))


def test_bias_is_minus_tau_log_weight():
    w = [4.0, 12.0, 50.0]
    assert logit_adjustment_bias(w, 0.0) == (0.0, 0.0, 0.0)
    assert logit_adjustment_bias(w, 0.5) == pytest.approx([-0.5 * np.log(4), -0.5 * np.log(12), -0.5 * np.log(50)])
    for bad in ([1.0, 0.0], [1.0, float("nan")], []):
        with pytest.raises(ValueError, match="class weights must be positive and finite"):
            logit_adjustment_bias(bad, 0.5)
    with pytest.raises(ValueError, match="tau must be finite and >= 0"):
        logit_adjustment_bias(w, -0.1)


def test_full_adjustment_recovers_the_unweighted_posterior():
    """Free logits fitted to a class distribution p under a w-weighted cross-entropy end at softmax ~ w p (the lean);
    adding b = -1 ln w brings them back to p, and tau = 0.5 to the normalised sqrt(w) p."""
    p = torch.tensor([0.6, 0.3, 0.08, 0.02], dtype=torch.float64)
    w = torch.tensor([3.5, 8.0, 30.0, 48.0], dtype=torch.float64)
    logits = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([logits], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14)

    def loss():  # E_y~p [w_y * -ln softmax(s)_y], normalised like a weighted mean
        optimizer.zero_grad()
        value = -(p * w * torch.log_softmax(logits, 0)).sum() / (p * w).sum()
        value.backward()
        return value

    optimizer.step(loss)
    fitted = torch.softmax(logits.detach(), 0)
    leaned = w * p / (w * p).sum()
    assert torch.allclose(fitted, leaned, atol=1e-6)
    adjusted = torch.softmax(logits.detach() + torch.tensor(logit_adjustment_bias(w.tolist(), 1.0)), 0)
    assert torch.allclose(adjusted, p, atol=1e-6)
    half = torch.softmax(logits.detach() + torch.tensor(logit_adjustment_bias(w.tolist(), 0.5)), 0)
    assert torch.allclose(half, w.sqrt() * p / (w.sqrt() * p).sum(), atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_the_weights_bias_moves_the_class_ids_and_not_the_scores(tmp_path, tiny_model, backend, one_torch_thread):
    K = TINY.num_classes
    bias = tuple(5000.0 if k == 2 else 0.0 for k in range(K))  # class 2 wins everywhere
    plain = dataclasses.replace(default_metadata(TINY), input_size=(64, 32))
    biased = dataclasses.replace(plain, class_bias=ClassBias(bias, "test: class 2 everywhere"))
    image = np.random.default_rng(1).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    config = PredictorConfig(backend=backend)
    a = Predictor.from_weights(save_weights(tmp_path / "plain.safetensors", tiny_model, plain), config).predict(image)
    b = Predictor.from_weights(save_weights(tmp_path / "biased.safetensors", tiny_model, biased), config).predict(image)
    assert np.any(a.class_ids != 2) and np.all(b.class_ids == 2)
    np.testing.assert_array_equal(a.hybrid, b.hybrid)


def test_class_bias_round_trips_and_bad_ones_are_named(tmp_path, tiny_model):
    K = TINY.num_classes
    meta = dataclasses.replace(default_metadata(TINY), class_bias=ClassBias(tuple(0.1 * k for k in range(K)), "hand"))
    path = save_weights(tmp_path / "w.safetensors", tiny_model, meta)
    assert load_weights(path)[1].class_bias == meta.class_bias
    for edit, message in [
        (lambda m: m["class_bias"].update(values=[0.0] * (K - 1)), f"class_bias has {K - 1} values but the model "
                                                                   f"has {K} classes"),
        (lambda m: m["class_bias"].update(values=[float("inf")] * K), "class bias values must be finite"),
        (lambda m: m["class_bias"].update(method=""), "must say how the bias was chosen"),
        (lambda m: m["class_bias"].pop("values"), "values: required field is missing"),
    ]:
        with pytest.raises(WeightsError, match=message):
            read_metadata(rewrite(path, metadata_edit=edit))


def test_calibration_picks_the_tau_with_the_best_miou(tmp_path_factory, tmp_path, one_torch_thread):
    from densehybrid_ros.datasets import open_dataset
    from densehybrid_training.calibrate import CLASS_BIAS_TAUS, calibrate

    held_out = render_small_sim(tmp_path_factory.mktemp("biasval"), "val", 3, seed=7, frames_per_scene=3)
    weights = make_sim_weights(tmp_path / "sim.safetensors")
    model, meta = load_weights(weights)
    K = meta.num_classes
    class_weights = [float(w) for w in np.linspace(3.0, 50.0, K)]
    trained = save_weights(tmp_path / "trained.safetensors", model, dataclasses.replace(
        meta, provenance={"config": {"class_balance": "enet", "class_weights": class_weights}}))
    out = tmp_path / "calibrated.safetensors"
    _, metrics = calibrate(trained, f"sim:{held_out}", "val", out, progress=False, class_bias="tau")
    # each tau's mIoU here: the Predictor with that bias in its weights, confusion by sklearn, classes that occur
    dataset = open_dataset(f"sim:{held_out}", "val")
    by_hand = {}
    for tau in CLASS_BIAS_TAUS:
        bias = ClassBias(logit_adjustment_bias(class_weights, tau), "test")
        predictor = Predictor(model, dataclasses.replace(meta, class_bias=bias))
        cm = np.zeros((K, K), np.int64)
        for i in range(len(dataset)):
            sample = dataset[i]
            known = sample.semantic < K
            cm += confusion_matrix(sample.semantic[known], predictor.predict(sample.image).class_ids[known],
                                   labels=list(range(K)))
        union = cm.sum(0) + cm.sum(1) - np.diag(cm)
        by_hand[tau] = float(np.mean(np.diag(cm)[union > 0] / union[union > 0]))
    assert metrics["class_bias_miou"] == pytest.approx(by_hand, abs=1e-12)
    assert len(set(round(v, 6) for v in by_hand.values())) > 1  # the taus decide differently on these frames
    best = max(by_hand, key=lambda t: (by_hand[t], -t))
    written = load_weights(out)[1].class_bias
    assert written.values == pytest.approx(logit_adjustment_bias(class_weights, best), abs=0)
    assert f"b = -{best:g} ln w" in written.method and f"sim:{held_out} split=val images=3" in written.method
    # calibrating again reads the raw logits, not the bias the file holds: the same choice
    _, again = calibrate(out, f"sim:{held_out}", "val", tmp_path / "twice.safetensors", progress=False,
                         class_bias="tau")
    assert again["class_bias_miou"] == metrics["class_bias_miou"]
    # auto: the same tau search, then per-class offsets written only where the street split kept them
    _, auto = calibrate(trained, f"sim:{held_out}", "val", tmp_path / "auto.safetensors", progress=False)
    assert auto["class_bias_miou"] == metrics["class_bias_miou"]
    auto_bias = load_weights(tmp_path / "auto.safetensors")[1].class_bias
    assert auto_bias.method.startswith(written.method)
    if auto["class_bias_refinement"]["kept"]:
        assert "per-class offsets by coordinate ascent" in auto_bias.method
    else:
        assert "per-class offsets not kept" in auto_bias.method and auto_bias.values == written.values
    # none asked for, or no class weights in the provenance: no bias
    calibrate(trained, f"sim:{held_out}", "val", tmp_path / "none.safetensors", progress=False, class_bias="none")
    calibrate(weights, f"sim:{held_out}", "val", tmp_path / "plain.safetensors", progress=False)
    assert load_weights(tmp_path / "none.safetensors")[1].class_bias is None
    assert load_weights(tmp_path / "plain.safetensors")[1].class_bias is None
    with pytest.raises(ValueError, match="class_bias must be one of"):
        calibrate(trained, f"sim:{held_out}", "val", tmp_path / "x.safetensors", progress=False, class_bias="on")


def _miou_by_sklearn(logits, labels, bias):
    prediction = (np.asarray(logits) + np.asarray(bias)).argmax(1)
    present = np.union1d(np.unique(labels), np.unique(prediction))
    return jaccard_score(labels, prediction, labels=present, average="macro")


def test_refinement_finds_the_brute_forced_best_threshold_of_two_classes():
    """Two classes: only b_1 - b_0 matters (class 1 wins when d = s_1 - s_0 > b_0 - b_1); the best difference on the
    0.1 grid, found by trying every one with sklearn's Jaccard, is the one the coordinate ascent reaches."""
    rng = np.random.default_rng(3)
    d = np.concatenate([rng.uniform(-3.0, 1.0, 6000), rng.uniform(-1.0, 3.0, 2000)])  # class 1 rarer
    labels = np.repeat([0, 1], [6000, 2000])
    logits = np.stack([np.zeros_like(d), d], 1).astype(np.float32)
    grid = np.round(np.arange(-1.5, 1.51, 0.1), 1)
    by_hand = {t: _miou_by_sklearn(logits, labels, [0.0, t]) for t in grid}
    best = max(by_hand, key=by_hand.get)
    assert sorted(by_hand.values())[-1] > sorted(by_hand.values())[-2]  # one best difference
    bias = refine_class_bias(logits, labels, [0.0, 0.0])
    assert bias[1] - bias[0] == pytest.approx(best, abs=1e-5)
    assert _miou_by_sklearn(logits, labels, bias) == pytest.approx(by_hand[best], abs=1e-12)


def test_refinement_never_lowers_miou_and_bad_input_is_named():
    rng = np.random.default_rng(4)
    K, n = 5, 4000
    labels = rng.integers(0, K, n)
    logits = rng.normal(0.0, 1.0, (n, K)).astype(np.float32)
    logits[np.arange(n), labels] += rng.uniform(0.0, 2.0, n).astype(np.float32)  # informative, not perfect
    start = rng.normal(0.0, 1.0, K)
    bias = refine_class_bias(logits, labels, start, sweeps=1)
    assert _miou_by_sklearn(logits, labels, bias) > _miou_by_sklearn(logits, labels, start)
    again = refine_class_bias(logits, labels, bias, sweeps=1)
    assert _miou_by_sklearn(logits, labels, again) >= _miou_by_sklearn(logits, labels, bias)
    with pytest.raises(ValueError, match="logits must be"):
        refine_class_bias(logits[:, :, None], labels, start)
    with pytest.raises(ValueError, match="labels must be class ids"):
        refine_class_bias(logits, np.where(labels == 0, 255, labels), start)
    with pytest.raises(ValueError, match="start must hold 5"):
        refine_class_bias(logits, labels, start[:3])


def _search_with_pixels(shift_by_group):
    """A ClassBiasSearch holding hand-made pixels: per street, two classes whose logit difference is shifted by
    that street's value (the tau search itself is not used: tau 0 with unit weights is no bias)."""
    from densehybrid_training.calibrate import ClassBiasSearch

    search = ClassBiasSearch((1.0, 1.0), taus=(0.0,))
    rng = np.random.default_rng(5)
    for group, shift in shift_by_group.items():
        for _ in range(3):  # frames
            labels = rng.integers(0, 2, 800)
            d = np.where(labels == 1, rng.uniform(-1.0, 3.0, 800), rng.uniform(-3.0, 1.0, 800)) + shift
            search.logits.append(np.stack([np.zeros_like(d), d], 1).astype(np.float32))
            search.labels.append(labels)
            search.groups.append(group)
    search.confusion[0.0][:] = np.eye(2, dtype=np.int64)  # any: only the method text reads it
    return search


def test_per_class_offsets_are_kept_only_when_they_help_the_other_half_of_the_streets():
    import zlib

    groups = [f"scene{i}" for i in range(12)]
    halves = {g: zlib.crc32(repr(g).encode()) % 2 for g in groups}
    assert set(halves.values()) == {0, 1}
    # every street's class-1 logits lean 1.0 too high: both halves learn the same correction, so it is kept
    search = _search_with_pixels({g: 1.0 for g in groups})
    bias = search.best("hand-made")
    assert search.refinement["kept"] and min(search.refinement["held_out_gain"]) > 0
    x, y = np.concatenate(search.logits), np.concatenate(search.labels)
    assert bias.values == pytest.approx(refine_class_bias(x, y, [0.0, 0.0]), abs=1e-6)
    assert bias.values[1] - bias.values[0] == pytest.approx(-1.0, abs=0.25)
    assert "per-class offsets by coordinate ascent" in bias.method
    # the two halves lean opposite ways: what one half learns hurts the other, so the tau bias stays
    search = _search_with_pixels({g: (1.5 if halves[g] else -1.5) for g in groups})
    bias = search.best("hand-made")
    assert not search.refinement["kept"] and max(search.refinement["held_out_gain"]) < 0
    assert bias.values == (0.0, 0.0) and "per-class offsets not kept" in bias.method
    # one street: no two halves to check with
    search = _search_with_pixels({"scene0": 1.0})
    assert search.best("hand-made").values == (0.0, 0.0) and "two halves" in search.best("x").method


def test_kept_pixels_decide_as_the_predictor(tmp_path_factory, tmp_path, one_torch_thread):
    """The pixels kept for the refinement carry the logits the Predictor decides from at that pixel (resized as its
    class ids are): with every labelled pixel kept, their confusion under a bias equals sklearn's of the Predictor's
    class ids with that bias in its weights."""
    from densehybrid_ros.datasets import open_dataset
    from densehybrid_training.calibrate import ClassBiasSearch

    held_out = render_small_sim(tmp_path_factory.mktemp("pixval"), "val", 2, seed=9, frames_per_scene=2)
    model, meta = load_weights(make_sim_weights(tmp_path / "sim.safetensors"))
    K = meta.num_classes
    dataset = open_dataset(f"sim:{held_out}", "val")
    search = ClassBiasSearch(tuple([1.0] * K), taus=(0.0,), pixels_per_frame=10 ** 9)
    plain = Predictor(model, meta)
    bias = np.linspace(-0.3, 0.3, K)
    biased = Predictor(model, dataclasses.replace(meta, class_bias=ClassBias(tuple(bias), "test")))
    want = np.zeros((K, K), np.int64)
    for i in range(len(dataset)):
        sample = dataset[i]
        batch = plain.preprocess([sample.image])
        search.update(plain, batch, plain.forward(batch), sample.semantic, dataset.group(i))
        known = sample.semantic < K
        want += confusion_matrix(sample.semantic[known], biased.predict(sample.image).class_ids[known],
                                 labels=list(range(K)))
    x, y = np.concatenate(search.logits), np.concatenate(search.labels)
    assert len(y) == sum(int((dataset[i].semantic < K).sum()) for i in range(len(dataset)))
    got = confusion_matrix(y, (x + bias).argmax(1), labels=list(range(K)))
    assert np.array_equal(got, want)
    assert search.groups == [dataset.group(i) for i in range(len(dataset))]
