"""training's calibrate() and export(): the thresholds written into the weights are the TPR-95% and the FPR-1%
operating points counted by hand (and by sklearn) on the same held-out frames; export copies a checkpoint's tensors
one by one into node weights with the checkpoint's classes, colours and grid."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from conftest import TINY, make_sim_weights, randomize_batchnorm, render_small_sim


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """4 sim `val` frames (128x64) with anomalies in every frame."""
    return render_small_sim(tmp_path_factory.mktemp("calval"), "val", 4, seed=5, frames_per_scene=2)


def test_calibrate_writes_the_tpr95_threshold_counted_by_hand(held_out, tmp_path, one_torch_thread):
    from densehybrid_ros.datasets import open_dataset
    from densehybrid_ros.datasets.base import OOD_ANOMALY, OOD_INLIER
    from densehybrid_ros.predictor import Predictor, PredictorConfig
    from densehybrid_ros.weights import load_weights
    from densehybrid_training.calibrate import calibrate

    weights = make_sim_weights(tmp_path / "sim.safetensors", threshold=123.0)
    out = tmp_path / "calibrated.safetensors"
    threshold, metrics = calibrate(weights, f"sim:{held_out}", "val", out, progress=False)
    # the same frames through the same weights here, pooled (void left out)
    predictor = Predictor.from_weights(weights)
    dataset = open_dataset(f"sim:{held_out}", "val")
    scores, labels = [], []
    for i in range(len(dataset)):
        sample = dataset[i]
        keep = (sample.ood == OOD_INLIER) | (sample.ood == OOD_ANOMALY)
        scores.append(predictor.predict(sample.image).hybrid[keep])
        labels.append(sample.ood[keep] == OOD_ANOMALY)
    s, y = np.concatenate(scores).astype(np.float64), np.concatenate(labels)
    assert y.sum() > 100 and (~y).sum() > 100
    # by hand: TPR(t) = share of anomaly pixels with score >= t; the operating point is the highest attained score
    # whose TPR reaches 95% (the next higher attained score detects fewer than 95%)
    candidates = np.unique(s)[::-1]
    tpr = np.array([(s[y] >= t).mean() for t in candidates])
    first = int(np.flatnonzero(tpr >= 0.95)[0])
    assert first > 0 and tpr[first - 1] < 0.95
    assert threshold == candidates[first]  # an attained score, stored as it is (rule: score >= threshold)
    fpr, sk_tpr, sk_thr = roc_curve(y, s, drop_intermediate=False)  # sklearn agrees
    assert threshold == sk_thr[np.flatnonzero(sk_tpr >= 0.95)[0]]
    assert metrics["tpr"] == pytest.approx(tpr[first], abs=1e-12)
    assert metrics["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-9)
    assert metrics["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert metrics["fpr95"] == pytest.approx((s[~y] >= threshold).mean(), abs=1e-12)
    # the low-false-alarm point: the lowest attained score flagging at most 1% of the inlier pixels
    negatives = np.sort(s[~y])
    fpr_at = (negatives.size - np.searchsorted(negatives, candidates, side="left")) / negatives.size  # share >= t
    last = int(np.flatnonzero(fpr_at <= 0.01)[-1])
    low = candidates[last]
    assert last + 1 < candidates.size and fpr_at[last + 1] > 0.01  # the next lower score flags more than 1%
    assert low == sk_thr[np.flatnonzero(fpr <= 0.01)[-1]]  # sklearn agrees
    assert low > threshold
    # written into the weights: both thresholds and how they were chosen (default: fpr1); every tensor unchanged
    _, meta = load_weights(out)
    cal = meta.calibration
    assert (cal.threshold, cal.method, cal.target_tpr) == (threshold, "tpr95", 0.95)
    assert cal.dataset == f"sim:{held_out} split=val images=4"
    points = cal.operating_points
    assert cal.default == "fpr1" and (points["tpr95"].threshold, points["fpr1"].threshold) == (threshold, low)
    assert points["fpr1"].fpr == pytest.approx(fpr_at[last], abs=1e-12)
    assert points["fpr1"].tpr == pytest.approx((s[y] >= low).mean(), abs=1e-12)
    assert points["tpr95"].tpr == pytest.approx(tpr[first], abs=1e-12)
    assert metrics["operating_points"]["fpr1"]["threshold"] == low
    # fpr05: the same count at 0.5% of the inlier pixels
    last05 = int(np.flatnonzero(fpr_at <= 0.005)[-1])
    assert points["fpr05"].threshold == candidates[last05] == sk_thr[np.flatnonzero(fpr <= 0.005)[-1]]
    assert points["fpr05"].threshold >= low and points["fpr05"].fpr == pytest.approx(fpr_at[last05], abs=1e-12)
    before, after = load_file(str(weights)), load_file(str(out))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    # the Predictor of the calibrated weights flags exactly the pixels scoring >= the default point's threshold, or
    # >= the tpr95 one when that point is named
    calibrated = Predictor.from_weights(out)
    sample = dataset[0]
    prediction = calibrated.predict(sample.image)
    np.testing.assert_array_equal(prediction.open_set == calibrated.num_classes, prediction.hybrid >= low)
    protocol = Predictor.from_weights(out, PredictorConfig(operating_point="tpr95"))
    prediction = protocol.predict(sample.image)
    np.testing.assert_array_equal(prediction.open_set == protocol.num_classes, prediction.hybrid >= threshold)


def test_calibrate_writes_the_chosen_default_point(held_out, tmp_path, one_torch_thread):
    from densehybrid_ros.predictor import Predictor
    from densehybrid_ros.weights import read_metadata
    from densehybrid_training.calibrate import calibrate

    weights = make_sim_weights(tmp_path / "sim.safetensors", threshold=123.0)
    out = tmp_path / "calibrated.safetensors"
    calibrate(weights, f"sim:{held_out}", "val", out, progress=False, default_point="fpr05")
    calibration = read_metadata(out).calibration
    assert calibration.default == "fpr05"
    assert Predictor.from_weights(out).threshold == calibration.operating_points["fpr05"].threshold
    with pytest.raises(ValueError, match="default point 'fpr2'"):
        calibrate(weights, f"sim:{held_out}", "val", tmp_path / "x.safetensors", progress=False, default_point="fpr2")


def test_export_copies_the_checkpoint_tensor_by_tensor(tmp_path):
    from densehybrid_ros.models import build_model
    from densehybrid_ros.weights import load_weights, read_metadata
    from densehybrid_training.checkpoint import save_checkpoint
    from densehybrid_training.export import export

    arch = dataclasses.replace(TINY, num_classes=3)
    torch.manual_seed(1)
    model = randomize_batchnorm(build_model(arch), seed=1)
    with torch.no_grad():  # not a fresh initialisation: export must load these values, not build new ones
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    classes = [{"name": "road", "color": [128, 64, 128]}, {"name": "car", "color": [0, 0, 142]},
               {"name": "sky", "color": [70, 130, 180]}]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpoint = save_checkpoint(
        tmp_path / "step_0000042.pt", step=42, model=model, optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0), scaler=None,
        config={"mode": "finetune", "steps": 42}, extra={"architecture": dataclasses.asdict(arch), "classes": classes})
    out = export(checkpoint, tmp_path / "w.safetensors", input_size=(96, 64), onnx=tmp_path / "w.onnx")
    stored, state = load_file(str(out)), torch.load(checkpoint, weights_only=True)["model"]
    assert stored.keys() == state.keys()
    for name, tensor in state.items():
        expected = tensor.float() if tensor.is_floating_point() else tensor
        assert stored[name].dtype == expected.dtype and torch.equal(stored[name], expected), name
    meta = read_metadata(out)
    assert [(c.name, tuple(c.color)) for c in meta.classes] == [(c["name"], tuple(c["color"])) for c in classes]
    assert meta.architecture == arch and meta.input_size == (96, 64) and meta.calibration.threshold is None
    assert meta.provenance["step"] == 42 and meta.provenance["mode"] == "finetune"
    loaded, _ = load_weights(out)
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x).logits, model.eval()(x).logits, rtol=0, atol=0)
    import onnx

    graph_input = onnx.load(str(tmp_path / "w.onnx")).graph.input[0]
    assert [d.dim_value for d in graph_input.type.tensor_type.shape.dim][2:] == [64, 96]  # the input_size grid
