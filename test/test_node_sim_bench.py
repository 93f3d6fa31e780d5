"""bench_node runs end to end on a few small sim frames (the node as a subprocess over real DDS, its per-stage
/diagnostics, the in-process Predictor). No timing is asserted: numbers belong to `make bench`. What is asserted holds
on any machine: every frame is answered (a frame replaced in the node's mailbox is sent again), the node's own count of
processed frames equals the frames answered here, and the reported rates follow from the measured round trips."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import TINY, randomize_batchnorm


def test_bench_node_reports_both_sides_and_the_node_stages(tmp_path):
    from densehybrid_ros.models import build_model
    from densehybrid_ros.tools.bench_node import bench_node, table
    from densehybrid_ros.sim.taxonomy import SIM_CLASSES
    from densehybrid_ros.weights import Calibration, ClassInfo, default_metadata, save_weights

    arch = dataclasses.replace(TINY, num_classes=len(SIM_CLASSES))
    torch.manual_seed(0)
    meta = default_metadata(arch, classes=tuple(ClassInfo(n, c) for n, c in SIM_CLASSES),
                            calibration=Calibration(threshold=0.0, method="manual"))
    weights = save_weights(tmp_path / "sim.safetensors", randomize_batchnorm(build_model(arch)).eval(), meta)
    threads = torch.get_num_threads()
    frames = 4
    result = bench_node(weights, frames=frames, size=(128, 64), warmup=1, threads=1, log=tmp_path / "node.log")
    assert torch.get_num_threads() == threads  # restored
    assert result["outputs"] == ["semantic", "anomaly_score", "open_set"]  # calibrated weights: open_set too
    assert result["size"] == "128x64" and result["torch_threads"] == 1
    node, predictor = result["node"], result["predictor"]
    steady, closed = node["steady_state"], node["closed_loop"]
    for run in (steady, closed):
        assert (run["frames"], run["answered"], run["lost"]) == (frames, frames, 0), run
        assert len(run["latencies_ms"]) == frames and min(run["latencies_ms"]) > 0
    # the node's /diagnostics counted exactly the frames answered here (replaced frames are never processed)
    assert steady["node_processed"] == frames, steady
    # closed loop: one frame in flight, fps = frames over the sum of their round trips
    assert closed["fps"] == pytest.approx(frames / (sum(closed["latencies_ms"]) / 1e3), rel=1e-2)
    assert set(node["stages_ms"]) == {"decode", "process", "publish"} and all(v > 0 for v in node["stages_ms"].values())
    assert set(predictor["stages_ms"]) == {"preprocess", "forward", "postprocess"}
    assert node["errors_in_log"] == 0, (tmp_path / "node.log").read_text()
    assert "ratio" in table(result)


def test_answers_count_a_stamp_once_every_wanted_output_arrived():
    """bench_node.Answers on hand-made messages: answered = all wanted topics with the stamp; other topics ignored;
    a frame answered after a later one is overtaken (dropped by the node); waits time out with None."""
    from types import SimpleNamespace

    from densehybrid_ros.tools.bench_node import Answers

    def msg(sec: int, nanosec: int = 0) -> SimpleNamespace:
        return SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec)))

    answers = Answers(["/a", "/b"])
    answers.output("/a", msg(1))
    answers.output("/other", msg(1))
    assert not answers.answered((1, 0)) and answers.wait((1, 0), 0.01) is None
    answers.output("/b", msg(1))
    assert answers.answered((1, 0)) and answers.wait((1, 0), 0.01) is not None
    answers.output("/a", msg(3))
    answers.output("/b", msg(3))
    answers.output("/a", msg(2))  # frame 2 never completes, frame 3 did: 2 was replaced in the node's mailbox
    assert answers.overtaken((2, 0)) and not answers.overtaken((3, 0)) and answers.wait((2, 0), 10.0) is None
    assert answers.answered_since((2, 0)) == 1 and answers.answered_since((1, 0)) == 2
    assert answers.latest_diagnostics() == {} and answers.diagnostics_count == 0
    assert answers.wait_diagnostics(lambda v: True, 0.01) is None
    answers.diagnostic({"stage frames (total)": "4"})
    assert answers.diagnostics_count == 1
    assert answers.wait_diagnostics(lambda v: v["stage frames (total)"] == "4", 0.01) == {"stage frames (total)": "4"}
