"""`make demo` (densehybrid_ros/tools/demo.py) end to end on a small configuration: sim bag -> the perception node in its
own process over DDS -> densehybrid-record -> densehybrid-eval-bag (live outputs and offline baselines) -> report."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_sim_weights
from densehybrid_ros.tools.demo import BASELINES, main

FRAMES, SIZE, RATE = 8, (256, 128), 4.0


def in_unit(value) -> bool:
    return value is not None and 0.0 <= value <= 1.0


def bag_images(path, topics: dict[str, str]) -> dict[str, dict[int, np.ndarray]]:
    """key -> header stamp [ns] -> image array of the bag's Image topics (read with rosbags and numpy only)."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    out: dict[str, dict[int, np.ndarray]] = {key: {} for key in topics}
    keys = {topic: key for key, topic in topics.items()}
    with AnyReader([path], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
        connections = [c for c in reader.connections if c.topic in keys]
        for conn, _, raw in reader.messages(connections=connections):
            msg = reader.deserialize(raw, conn.msgtype)
            dtype, channels = {"32FC1": (np.float32, 1), "mono8": (np.uint8, 1), "rgb8": (np.uint8, 3)}[msg.encoding]
            rows = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)
            pixels = rows[:, :msg.width * channels * np.dtype(dtype).itemsize].copy().view(dtype)
            stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            out[keys[conn.topic]][stamp] = pixels.reshape(msg.height, msg.width, channels).squeeze(-1) \
                if channels == 1 else pixels.reshape(msg.height, msg.width, 3)
    return out


def pooled_ap_auroc(scores: list[np.ndarray], labels: list[np.ndarray]) -> tuple[float, float]:
    """sklearn's AP and AUROC over the pooled pixels (anomaly = the sim's class 15, void 255 left out)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from densehybrid_ros.sim.taxonomy import ANOMALY_ID

    s, y = np.concatenate([a.ravel() for a in scores]), np.concatenate([b.ravel() for b in labels])
    keep = y != 255
    return average_precision_score(y[keep] == ANOMALY_ID, s[keep]), roc_auc_score(y[keep] == ANOMALY_ID, s[keep])


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One demo run (its own process, as `make demo` runs it) with small random sim weights."""
    root = tmp_path_factory.mktemp("demo")
    weights = make_sim_weights(root / "sim.safetensors")
    out = root / "out"
    result = subprocess.run(
        [sys.executable, "-m", "densehybrid_ros.tools.demo", "--out", str(out), "--weights", str(weights),
         "--frames", str(FRAMES), "--size", f"{SIZE[0]}x{SIZE[1]}", "--rate", str(RATE), "--seed", "7"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return result, out, weights


def test_demo_end_to_end(demo_run, one_torch_thread):  # one thread, as the demo's scoring (OMP_NUM_THREADS=1)
    result, out, weights = demo_run
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads((out / "metrics.json").read_text())

    assert metrics["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert metrics["bag"]["frames"] == FRAMES and metrics["bag"]["size"] == list(SIZE)
    assert metrics["bag"]["seed"] == 7 and metrics["bag"]["rate"] == RATE
    assert set(metrics["timings_s"]) >= {"write_bag", "live_startup", "live_replay", "score_live", "score_offline",
                                         "total"}

    live, offline = metrics["live"], metrics["offline"]
    # every frame the replay sent is accounted for by the node (processed, or dropped on a busy machine: the replay is
    # open-loop), and every processed frame came back through the recorder
    node = live["node"]
    assert node["received"] == FRAMES and node["processed"] + node["dropped"] == FRAMES and node["processed"] >= 1
    assert node["rejected"] == node["errors"] == 0
    assert live["scored_frames"] == node["processed"] and live["missing_outputs"] == node["dropped"]
    assert live["obstacles_from"] == "recorded markers"
    assert list(live["scores"]) == ["hybrid"] and list(offline["scores"]) == list(BASELINES)
    for entry in (live, offline):
        assert in_unit(entry["closed_set"]["miou"]) and in_unit(entry["open_set"]["open_miou"])
        obstacles = entry["obstacles"]
        assert obstacles["eligible"] > 0 and in_unit(obstacles["detection_rate"])
        assert set(obstacles["distance_error"]) == {"mean_abs_m", "median_abs_m", "mean_rel", "median_rel", "max_rel"}
    assert live["obstacles"]["frames"] == node["processed"] and offline["obstacles"]["frames"] == FRAMES
    # the scores against sklearn: live = the recorded ~/anomaly_score maps, offline = this process's Predictor on the
    # bag's images (all frames); and the node's maps equal the Predictor's on the frames it answered
    from densehybrid_ros.predictor import Predictor, PredictorConfig

    bag = bag_images(out / "bag", {"image": "/camera/image_raw", "labels": "/camera/labels"})
    recorded = bag_images(out / "recorded", {"score": "/demo/densehybrid_perception/anomaly_score"})["score"]
    assert len(recorded) == node["processed"] and set(recorded) <= set(bag["labels"])
    predictor = Predictor.from_weights(weights, PredictorConfig(extra_scores=("msp",)))
    predictions = {stamp: predictor.predict(image) for stamp, image in bag["image"].items()}
    for stamp, score in recorded.items():
        np.testing.assert_allclose(score, predictions[stamp].hybrid, atol=1e-3)
    ap, auroc = pooled_ap_auroc(list(recorded.values()), [bag["labels"][t] for t in recorded])
    assert live["scores"]["hybrid"]["ap"] == pytest.approx(ap, abs=1e-9)
    assert live["scores"]["hybrid"]["auroc"] == pytest.approx(auroc, abs=1e-9)
    stamps = sorted(bag["labels"])
    for name, key in (("hybrid", "hybrid"), ("msp", "msp")):
        maps = [predictions[t].hybrid if key == "hybrid" else predictions[t].scores["msp"] for t in stamps]
        ap, auroc = pooled_ap_auroc(maps, [bag["labels"][t] for t in stamps])
        assert offline["scores"][name]["ap"] == pytest.approx(ap, abs=1e-6), name  # float noise of another process
        assert offline["scores"][name]["auroc"] == pytest.approx(auroc, abs=1e-6), name
        assert in_unit(offline["scores"][name]["fpr95"])

    from PIL import Image

    with Image.open(out / "overlay.gif") as gif:
        assert gif.n_frames == node["processed"] and gif.size == SIZE  # narrower than 320 px: not downscaled
    assert metrics["overlay"]["png"] and all((out / p).is_file() for p in metrics["overlay"]["png"])

    report = (out / "report.md").read_text()
    assert "| score | live AP |" in report and "| hybrid |" in report and "| msp |" in report
    assert "(eval_offline/report.md)" in report and (out / "eval_offline" / "curves.png").is_file()
    assert "![overlay](overlay.gif)" in report
    assert "hybrid" in result.stdout and "open-mIoU" in result.stdout
    for log in ("node", "record", "replay", "eval_live", "eval_offline"):
        assert (out / "logs" / f"{log}.log").is_file()


@pytest.mark.parametrize("content", [None, b"not a safetensors file"])
def test_missing_or_invalid_weights_fail_clearly(tmp_path, capsys, content):
    weights = tmp_path / "model.safetensors"
    if content is not None:
        weights.write_bytes(content)
    assert main(["--out", str(tmp_path / "out"), "--weights", str(weights)]) == 2
    err = capsys.readouterr().err
    assert "densehybrid-demo: error:" in err and str(weights) in err
    assert ("weights file not found" if content is None else "invalid weights") in err
    assert not (tmp_path / "out").exists()  # nothing was started
