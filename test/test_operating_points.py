"""Operating points in the weights: the format (old files still load, bad points are named), which threshold applies
(one rule), and evaluate() reporting every point next to the thesis protocol's, checked by numpy counts."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY
from test_weights import rewrite

from densehybrid_ros.weights import (
    Calibration,
    OperatingPoint,
    WeightsError,
    default_metadata,
    read_metadata,
    resolve_threshold,
    save_weights,
)

ROOT = Path(__file__).resolve().parents[1]
TWO_POINTS = Calibration(threshold=-1.5, method="tpr95", target_tpr=0.95, dataset="sim:val",
                         operating_points={"tpr95": OperatingPoint(-1.5, "TPR 95%", 0.95, 0.2),
                                           "fpr1": OperatingPoint(0.75, "FPR 1%", 0.4, 0.01)},
                         default="fpr1")


def test_bundled_default_carries_operating_points_and_defaults_to_the_low_false_alarm_point():
    calibration = read_metadata(ROOT / "models" / "densehybrid_sim.safetensors").calibration
    points = calibration.points()
    assert {"tpr95", "fpr1", "fpr05"} <= set(points) and calibration.default in ("fpr1", "fpr05")
    assert points["tpr95"].threshold == calibration.threshold  # the legacy field stays the thesis's TPR-95% point
    # fewer pixels flagged: at most 1% / 0.5% of the held-out inlier pixels
    assert points["tpr95"].threshold < points["fpr1"].threshold <= points["fpr05"].threshold
    assert points["fpr1"].fpr <= 0.01 and points["fpr05"].fpr <= 0.005
    assert resolve_threshold(calibration).value == points[calibration.default].threshold
    assert resolve_threshold(calibration, operating_point="tpr95").value == points["tpr95"].threshold


def test_weights_written_before_operating_points_still_load_and_apply_their_threshold(tmp_path, tiny_model):
    # the calibration block of a file written before operating points existed (the first synthetic bundle's, verbatim)
    old_block = {"dataset": "sim:data/sim_val split=val images=240", "method": "tpr95", "target_tpr": 0.95,
                 "threshold": -5.904778003692627}
    path = save_weights(tmp_path / "w.safetensors", tiny_model, default_metadata(TINY))
    legacy = rewrite(path, metadata_edit=lambda meta: meta.update(calibration=old_block))
    calibration = read_metadata(legacy).calibration
    assert calibration.operating_points == {} and calibration.default is None
    assert calibration.threshold == old_block["threshold"]
    assert calibration.points() == {"tpr95": OperatingPoint(old_block["threshold"], "tpr95")}
    assert resolve_threshold(calibration) == (old_block["threshold"], "weights calibration")
    assert resolve_threshold(calibration, operating_point="tpr95").value == old_block["threshold"]


def test_operating_points_round_trip(tmp_path, tiny_model):
    metadata = replace(default_metadata(TINY), calibration=TWO_POINTS)
    loaded = read_metadata(save_weights(tmp_path / "w.safetensors", tiny_model, metadata))
    assert loaded.calibration == TWO_POINTS and loaded.threshold == -1.5  # the legacy field stays the tpr95 point


def test_which_threshold_applies():
    uncalibrated = Calibration()
    legacy = Calibration(threshold=2.0, method="manual")
    assert resolve_threshold(uncalibrated) == (None, "none")
    assert resolve_threshold(uncalibrated, threshold=1.0) == (1.0, "parameter")
    assert resolve_threshold(legacy) == (2.0, "weights calibration")
    assert resolve_threshold(TWO_POINTS) == (0.75, "operating point fpr1 (weights default)")
    assert resolve_threshold(TWO_POINTS, operating_point="tpr95") == (-1.5, "operating point tpr95 (parameter)")
    assert resolve_threshold(TWO_POINTS, operating_point="") == (0.75, "operating point fpr1 (weights default)")
    assert resolve_threshold(TWO_POINTS, threshold=3.0, operating_point="tpr95") == (3.0, "parameter")
    without_default = replace(TWO_POINTS, default=None)
    assert resolve_threshold(without_default) == (-1.5, "weights calibration")
    with pytest.raises(ValueError, match=r"'fpr5' is not in the weights; they hold \['fpr1', 'tpr95'\]"):
        resolve_threshold(TWO_POINTS, operating_point="fpr5")
    with pytest.raises(ValueError, match="uncalibrated"):
        resolve_threshold(uncalibrated, operating_point="fpr1")


def with_points(m: dict) -> None:
    m["calibration"].update(threshold=-1.5, method="tpr95", default="fpr1", operating_points={
        "tpr95": {"threshold": -1.5, "method": "TPR 95%"}, "fpr1": {"threshold": 0.75, "method": "FPR 1%"}})


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["calibration"].update(default="fpr5"), "default 'fpr5' is not one of the operating points"),
    (lambda m: m["calibration"]["operating_points"]["tpr95"].update(threshold=-1.0),
     "operating point 'tpr95' has threshold -1.0, but threshold .* is -1.5"),
    (lambda m: m["calibration"]["operating_points"]["fpr1"].update(threshold=math.inf), "threshold must be finite"),
    (lambda m: m["calibration"]["operating_points"]["fpr1"].update(fpr=1.5), "fpr must be in \\[0, 1\\]"),
    (lambda m: m["calibration"]["operating_points"].update({"1% fpr": {"threshold": 0.0, "method": "x"}}),
     "must start with a letter"),
    (lambda m: m["calibration"]["operating_points"]["fpr1"].pop("method"), "method: required field is missing"),
])
def test_tampered_operating_points_are_named(tiny_weights, edit, message):
    read_metadata(rewrite(tiny_weights, metadata_edit=with_points, out=tiny_weights.with_name("ok.safetensors")))
    with pytest.raises(WeightsError, match=message):
        read_metadata(rewrite(tiny_weights, metadata_edit=lambda m: (with_points(m), edit(m))))


# ---------------------------------------------------------------- evaluate() reports every point
class Frames:
    """A few random frames with hand-made labels (classes 0..K-1, anomaly K, void 255)."""

    kind, split, root = "frames", "test", Path(".")

    def __init__(self, classes: list[str]):
        self.classes = classes
        rng = np.random.default_rng(4)
        self.images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
        self.semantic = [rng.integers(0, len(classes), (48, 64)).astype(np.uint8) for _ in range(3)]
        for i, semantic in enumerate(self.semantic):
            semantic[10 + i:25 + i, 20:40] = len(classes)  # the anomaly
            semantic[0, :] = 255  # void

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        from densehybrid_ros.datasets.base import EvalSample

        semantic = self.semantic[i]
        ood = np.where(semantic == len(self.classes), 1, 0).astype(np.uint8)
        ood[semantic == 255] = 255
        return EvalSample(name=f"f{i}", image=self.images[i], ood=ood, semantic=semantic.copy())


def open_miou_by_hand(semantic: np.ndarray, classes: np.ndarray, scores: np.ndarray, t: float, k: int) -> float:
    valid = semantic != 255
    predicted = np.where(scores >= np.float32(t), k, classes)[valid].astype(np.int64)
    truth = semantic[valid].astype(np.int64)
    ious = []
    for c in range(k):
        tp = np.sum((truth == c) & (predicted == c))
        denominator = np.sum((truth == c) | (predicted == c))
        if denominator:
            ious.append(tp / denominator)
    return float(np.mean(ious))


def test_evaluate_takes_the_protocol_point_for_open_miou_and_reports_every_point(tmp_path, tiny_model,
                                                                                  one_torch_thread):
    from densehybrid_ros.evaluation.evaluate import EvalOptions, evaluate
    from densehybrid_ros.predictor import Predictor

    base = default_metadata(TINY)
    probe = Predictor(tiny_model, base).predict(Frames([c.name for c in base.classes]).images[0]).hybrid
    t95, t1 = (float(np.quantile(probe, q)) for q in (0.3, 0.8))  # two levels inside the score range
    calibration = Calibration(threshold=t95, method="tpr95", operating_points={
        "tpr95": OperatingPoint(t95, "TPR 95%"), "fpr1": OperatingPoint(t1, "FPR 1%")}, default="fpr1")
    weights = save_weights(tmp_path / "w.safetensors", tiny_model, replace(base, calibration=calibration))
    predictor = Predictor.from_weights(weights)
    assert predictor.threshold == t1  # the Predictor (and so the node) applies the default point
    frames = Frames([c.name for c in base.classes])
    metrics = evaluate(predictor, frames, EvalOptions(bootstrap_resamples=0), progress=False).metrics
    assert metrics["threshold"] == t95 and metrics["open_set"]["threshold"] == t95  # thesis protocol: tpr95
    predictions = [predictor.predict(image) for image in frames.images]
    scores = np.concatenate([p.hybrid.ravel() for p in predictions])
    classes = np.concatenate([p.class_ids.ravel() for p in predictions])
    semantic = np.concatenate([s.ravel() for s in frames.semantic])
    k = TINY.num_classes
    for name, t in (("tpr95", t95), ("fpr1", t1)):
        entry = metrics["operating_points"][name]
        flagged = scores >= np.float32(t)
        assert entry["threshold"] == t
        assert entry["tpr"] == pytest.approx(flagged[semantic == k].mean(), abs=1e-12)
        assert entry["fpr"] == pytest.approx(flagged[(semantic != k) & (semantic != 255)].mean(), abs=1e-12)
        assert entry["open_miou"] == pytest.approx(open_miou_by_hand(semantic, classes, scores, t, k), abs=1e-12)
    assert metrics["open_set"]["open_miou"] == metrics["operating_points"]["tpr95"]["open_miou"]
    assert metrics["operating_points"]["fpr1"]["tpr"] < metrics["operating_points"]["tpr95"]["tpr"]
    bins = [b for b in metrics["recall_by_size"] if b["num_positives"]]  # recall by size under each point's name
    recall = {name: sum(b["recall"][name] * b["num_positives"] for b in bins) / sum(b["num_positives"] for b in bins)
              for name in ("tpr95", "fpr1")}
    for name in recall:
        assert recall[name] == pytest.approx(metrics["operating_points"][name]["tpr"], abs=1e-12)
