"""The models that ship in models/ (the node's default weights among them): each file matches its record (sha256,
metadata, classes, threshold), and its recorded metrics are reproduced on the small check split, rendered afresh
here from the recorded seed, with metrics computed independently (sklearn for AP / AUROC, a numpy confusion
matrix for mIoU).

Tolerance: 2e-3 absolute on AP, AUROC, FPR95 and mIoU (fractions). The render is byte-identical for a seed
(test_sim_world) and the network is deterministic on CPU up to float summation order, which differs with the
thread count between the bundling run and this one; that moves scores by ~1e-6, and metrics far less than 2e-3.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from densehybrid_ros.datasets import open_dataset
from densehybrid_ros.predictor import Predictor, PredictorConfig
from densehybrid_ros.sim.taxonomy import SIM_CLASSES
from densehybrid_ros.weights import load_weights, read_metadata

ROOT = Path(__file__).resolve().parents[1]
RECORDS = sorted((ROOT / "models").glob("*.json"))
TOL = 2e-3
SCORE_SIGN = {"hybrid": "hybrid", "max_logit": "max_logit", "msp": "msp"}


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread):
    """Single-threaded (see conftest.one_torch_thread)."""


def test_models_are_bundled():
    names = {r.stem for r in RECORDS}
    assert {"densehybrid_sim", "densehybrid_sim_synthetic"} <= names, names


@pytest.mark.parametrize("record_path", RECORDS, ids=[r.stem for r in RECORDS])
def test_weights_match_their_record_and_metadata(record_path):
    import hashlib

    record = json.loads(record_path.read_text())
    weights = record_path.with_name(record["weights"])
    data = weights.read_bytes()
    assert hashlib.sha256(data).hexdigest() == record["sha256"] and len(data) == record["bytes"]
    assert len(data) <= 25 * 2**20
    model, metadata = load_weights(weights)  # validates every tensor and field
    assert [c.name for c in metadata.classes] == [name for name, _ in SIM_CLASSES] == record["classes"]
    assert metadata.calibration.threshold == record["threshold"]
    assert metadata.calibration.method == record["calibration"]["method"]
    bias = metadata.class_bias
    assert record.get("class_bias") == (None if bias is None else {"values": list(bias.values), "method": bias.method})
    assert sum(p.numel() for p in model.parameters()) == record["parameters"]
    assert read_metadata(weights).input_size == tuple(record["input_size"])


def _independent_metrics(weights: Path, root: Path) -> dict:
    predictor = Predictor.from_weights(weights, PredictorConfig(extra_scores=("max_logit", "msp")))
    dataset = open_dataset(f"sim:{root}")
    k = len(SIM_CLASSES)
    scores = {name: [] for name in SCORE_SIGN}
    labels, confusion = [], np.zeros((k, k), np.int64)
    for i in range(len(dataset)):
        sample = dataset[i]
        pred = predictor.predict(sample.image)
        valid = sample.ood != 255
        labels.append(sample.ood[valid] == 1)
        scores["hybrid"].append(pred.hybrid[valid])
        for name in ("max_logit", "msp"):
            scores[name].append(pred.scores[name][valid])
        known = sample.semantic < k
        confusion += np.bincount(sample.semantic[known].astype(np.int64) * k + pred.class_ids[known],
                                 minlength=k * k).reshape(k, k)
    y = np.concatenate(labels)
    out = {}
    for name, parts in scores.items():
        s = np.concatenate(parts).astype(np.float64)
        fpr, tpr, _ = roc_curve(y, s)
        out[name] = {"ap": average_precision_score(y, s), "auroc": roc_auc_score(y, s),
                     "fpr95": float(fpr[np.argmax(tpr >= 0.95)])}
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = union > 0
    return {"scores": out, "miou": float((tp[present] / union[present]).mean())}


@pytest.mark.parametrize("record_path", RECORDS, ids=[r.stem for r in RECORDS])
def test_recorded_metrics_are_reproduced_on_a_fresh_check_split(record_path, tmp_path):
    from densehybrid_training.bundle import render_check_split

    record = json.loads(record_path.read_text())
    check = record["check_split"]
    root = render_check_split(tmp_path / "check")
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["frames"] == check["frames"] and manifest["seed"] == check["seed"]
    ours = _independent_metrics(record_path.with_name(record["weights"]), root)
    recorded = check["metrics"]
    for name, values in ours["scores"].items():
        for key in ("ap", "auroc", "fpr95"):
            assert values[key] == pytest.approx(recorded["scores"][name][key], abs=TOL), (name, key)
    assert ours["miou"] == pytest.approx(recorded["miou"], abs=TOL)
    # what the README claims for the full test split is what the record holds
    assert readme_claims(record_path.stem) == recorded_test_metrics(record)


README_SCORES = {"hybrid": "hybrid", "generative": "generative", "discriminative": "discriminative", "MSP": "msp",
                 "max-logit": "max_logit"}


def readme_claims(stem: str) -> dict:
    """The README's "Sim-world results" rows of the bundled model `stem`: score -> (AP, FPR95, AUROC), and its mIoU and
    open-mIoU from the second table (percent, as printed)."""
    rows = [[c.strip().strip("*").strip() for c in line.strip().strip("|").split("|")]
            for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("|")]
    start = next(i for i, r in enumerate(rows) if f"(bundled `{stem}`)" in r[0])
    model = re.sub(r"\s*\([^)]*\)", "", rows[start][0]).strip("* ")  # "synthetic negatives, 200 steps"
    claims = {}
    for row in rows[start:]:
        if row is not rows[start] and row[0]:
            break
        claims[README_SCORES[row[1]]] = tuple(float(v) for v in row[2:5])
    (seg,) = [r for r in rows if r[0] == model and len(r) == 5]
    return {"scores": claims, "miou": float(seg[1]), "open_miou": float(seg[2])}


def recorded_test_metrics(record: dict) -> dict:
    """The record's sim_test metrics as the README prints them (percent, 2 decimals), for the scores it lists."""
    test = record["sim_test"]
    pct = lambda v: round(100 * v, 2)  # noqa: E731
    return {"scores": {name: (pct(v["ap"]), pct(v["fpr95"]), pct(v["auroc"])) for name, v in test["scores"].items()
                       if name in README_SCORES.values()},
            "miou": pct(test["miou"]), "open_miou": pct(test["open_miou"])}


def test_weights_default_resolves_to_the_bundled_model_from_any_directory(tmp_path, monkeypatch):
    from densehybrid_ros.perception.settings import DEFAULTS, resolve_weights

    monkeypatch.chdir(tmp_path)  # not the checkout: found through the package's share directory
    assert resolve_weights(DEFAULTS["weights"]).resolve() == (ROOT / "models" / "densehybrid_sim.safetensors").resolve()


def test_node_without_a_weights_parameter_serves_the_bundled_model(tmp_path):
    """Over real DDS: no `weights` given -> the bundled model answers a sim frame with its 15 classes, like the
    in-process Predictor."""
    from sensor_msgs.msg import Image

    from test_node_support import NODE, NAMESPACE, Harness, image_message, node_process, publish_until
    from densehybrid_training.bundle import render_check_split

    root = render_check_split(tmp_path / "frames")
    sample = open_dataset(f"sim:{root}")[0]
    node = node_process(tmp_path, "qos_reliability:=reliable")
    harness = Harness("bundled")
    try:
        semantic = harness.collector(Image, f"{NODE}/semantic")
        publisher = harness.publisher(Image, f"{NAMESPACE}/image")
        got = publish_until(lambda: publisher.publish(image_message(sample.image, 7)),
                            lambda: semantic.with_stamp(7) or (None if node.alive() else node.text()), 60)
        assert isinstance(got, list), got
    finally:
        node.stop()
        harness.close()
    msg = got[0]
    ids = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width)
    expected = Predictor.from_weights(ROOT / "models" / "densehybrid_sim.safetensors").predict(sample.image).class_ids
    assert (msg.height, msg.width) == sample.image.shape[:2] and ids.max() < len(SIM_CLASSES)
    assert (ids == expected).mean() > 0.99
    assert "densehybrid_sim.safetensors" in node.text()
