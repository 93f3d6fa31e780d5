"""bench_node runs end to end on a few small sim frames (the node as a subprocess over real DDS, its per-stage
/diagnostics, the in-process Predictor). No timing is asserted: numbers belong to `make bench`."""
from __future__ import annotations

import dataclasses

import torch

from conftest import TINY, randomize_batchnorm


def test_bench_node_reports_both_sides_and_the_node_stages(tmp_path, monkeypatch):
    from densehybrid_ros.models import build_model
    from densehybrid_ros.node.bench_node import bench_node, table
    from densehybrid_ros.sim.taxonomy import SIM_CLASSES
    from densehybrid_ros.weights import Calibration, ClassInfo, default_metadata, save_weights
    from test_node_support import DOMAIN_ID

    arch = dataclasses.replace(TINY, num_classes=len(SIM_CLASSES))
    torch.manual_seed(0)
    meta = default_metadata(arch, classes=tuple(ClassInfo(n, c) for n, c in SIM_CLASSES),
                            calibration=Calibration(threshold=0.0, method="manual"))
    weights = save_weights(tmp_path / "sim.safetensors", randomize_batchnorm(build_model(arch)).eval(), meta)
    monkeypatch.setenv("ROS_DOMAIN_ID", str(DOMAIN_ID))
    threads = torch.get_num_threads()
    result = bench_node(weights, frames=4, size=(128, 64), warmup=1, threads=1, log=tmp_path / "node.log")
    assert torch.get_num_threads() == threads  # restored
    assert result["outputs"] == ["semantic", "anomaly_score", "open_set"]  # calibrated weights: open_set too
    assert result["size"] == "128x64" and result["torch_threads"] == 1
    node, predictor = result["node"], result["predictor"]
    for run in (node["steady_state"], node["closed_loop"]):
        assert run["frames"] == 4 and run["answered"] + run["lost"] == 4 and run["answered"] >= 3
    assert set(node["stages_ms"]) == {"decode", "process", "publish"} and all(v > 0 for v in node["stages_ms"].values())
    assert set(predictor["stages_ms"]) == {"preprocess", "forward", "postprocess"}
    assert predictor["fps"] > 0 and node["fps"] > 0
    assert abs(result["ratio"] - node["fps"] / predictor["fps"]) < 1e-3 * result["ratio"] + 1e-4
    assert node["errors_in_log"] == 0, (tmp_path / "node.log").read_text()
    assert "ratio" in table(result)
