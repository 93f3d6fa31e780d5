"""`make demo` (densehybrid_ros/demo.py) end to end on a small configuration: sim bag -> the perception node in its
own process over DDS -> densehybrid-record -> densehybrid-eval-bag (live outputs and offline baselines) -> report."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from conftest import make_sim_weights
from densehybrid_ros.demo import BASELINES, main

FRAMES, SIZE, RATE = 8, (256, 128), 4.0


def in_unit(value) -> bool:
    return value is not None and 0.0 <= value <= 1.0


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One demo run (its own process, as `make demo` runs it) with small random sim weights."""
    root = tmp_path_factory.mktemp("demo")
    weights = make_sim_weights(root / "sim.safetensors")
    out = root / "out"
    result = subprocess.run(
        [sys.executable, "-m", "densehybrid_ros.demo", "--out", str(out), "--weights", str(weights),
         "--frames", str(FRAMES), "--size", f"{SIZE[0]}x{SIZE[1]}", "--rate", str(RATE), "--seed", "7"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return result, out, weights


def test_demo_end_to_end(demo_run):
    result, out, weights = demo_run
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads((out / "metrics.json").read_text())

    assert metrics["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert metrics["bag"]["frames"] == FRAMES and metrics["bag"]["size"] == list(SIZE)
    assert metrics["bag"]["seed"] == 7 and metrics["bag"]["rate"] == RATE
    assert set(metrics["timings_s"]) >= {"write_bag", "live_startup", "live_replay", "score_live", "score_offline",
                                         "total"}

    live, offline = metrics["live"], metrics["offline"]
    # every frame went through the node and came back through the recorder
    assert live["node"]["processed"] == FRAMES and live["node"]["dropped"] == 0
    assert live["scored_frames"] == FRAMES and live["missing_outputs"] == 0
    assert live["obstacles_from"] == "recorded markers"
    assert list(live["scores"]) == ["hybrid"] and list(offline["scores"]) == list(BASELINES)
    for entry in (live, offline):
        for score in entry["scores"].values():
            assert all(in_unit(score[k]) for k in ("ap", "fpr95", "auroc")), score
        assert in_unit(entry["closed_set"]["miou"]) and in_unit(entry["open_set"]["open_miou"])
        obstacles = entry["obstacles"]
        assert obstacles["frames"] == FRAMES and obstacles["eligible"] > 0
        assert in_unit(obstacles["detection_rate"])
        assert set(obstacles["distance_error"]) == {"mean_abs_m", "median_abs_m", "mean_rel", "median_rel", "max_rel"}
    # the same Predictor on the same frames, in the node's process and offline: equal up to float noise
    assert live["scores"]["hybrid"]["ap"] == pytest.approx(offline["scores"]["hybrid"]["ap"], abs=1e-3)
    assert live["closed_set"]["miou"] == pytest.approx(offline["closed_set"]["miou"], abs=1e-3)

    from PIL import Image

    with Image.open(out / "overlay.gif") as gif:
        assert gif.n_frames == FRAMES > 1 and gif.size == SIZE  # narrower than 320 px: not downscaled
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
