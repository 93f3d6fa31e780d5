"""launch/perception.launch.py against the recording stand-ins of test/launch_fakes.py: the node's exit shuts the launch
down, RViz is optional (rviz:=false by default) and goes through densehybrid-rviz with this launch's namespace, cameras
and params file, and the layout those arguments produce shows that namespace's and those cameras' topics."""
from __future__ import annotations

from pathlib import Path

import yaml

from launch_fakes import (STABLE_API, ProcessExited, declared_defaults, imported_names, kind, load_launch,
                          resolve)

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "perception.launch.py"


def launch(monkeypatch, share: Path, **arguments: str) -> tuple[dict, dict, dict]:
    """(launch file globals, node kwargs, rviz kwargs with 'argv' resolved) for the given launch arguments."""
    namespace = load_launch(monkeypatch, LAUNCH, share)
    (entities,) = namespace["generate_launch_description"]().args
    context = {**declared_defaults(entities), **arguments}
    (opaque,) = [e for e in entities if kind(e) == "OpaqueFunction"]
    (node,) = opaque.kwargs["function"](context)
    (rviz,) = [e.kwargs for e in entities if kind(e) == "Node"]
    rviz = {**rviz, "argv": [resolve(a, context) for a in rviz["arguments"]], "defaults": declared_defaults(entities)}
    return namespace, node.kwargs, rviz


def test_imports_only_stable_launch_apis():
    imports = imported_names(LAUNCH)
    assert set(imports) <= set(STABLE_API) | {"os"}
    for module, names in imports.items():
        assert names <= STABLE_API.get(module, set()), module


def test_node_exit_shuts_the_launch_down_and_rviz_failure_too(monkeypatch, tmp_path):
    namespace, node, rviz = launch(monkeypatch, tmp_path)
    assert node["executable"] == "densehybrid_perception"
    assert kind(node["on_exit"]) == "Shutdown" and "densehybrid_perception" in node["on_exit"].kwargs["reason"]
    assert rviz["on_exit"] is namespace["_on_rviz_exit"]
    (action,) = rviz["on_exit"](ProcessExited(1), context=None)
    assert kind(action) == "Shutdown"
    assert rviz["on_exit"](ProcessExited(0), context=None) is None  # window closed / RViz not wanted: node goes on


def test_rviz_is_off_by_default_and_gets_the_launch_namespace_cameras_and_params(monkeypatch, tmp_path):
    from densehybrid_ros.rviz_config import build_parser

    _, _, rviz = launch(monkeypatch, tmp_path)
    assert rviz["package"] == "densehybrid_ros" and rviz["executable"] == "densehybrid-rviz"
    assert rviz["defaults"]["rviz"] == "false" and rviz["defaults"]["rviz_fixed_frame"] == "camera_optical_frame"
    assert build_parser().parse_args(rviz["argv"]).rviz == "false"
    _, _, rviz = launch(monkeypatch, tmp_path, rviz="auto", namespace="car", cameras="front,left",
                        params_file="/p.yaml", rviz_fixed_frame="base_link")
    args = build_parser().parse_args(rviz["argv"])
    assert (args.rviz, args.namespace, args.cameras, args.params_file, args.fixed_frame, args.node_name) == (
        "auto", "car", "front,left", "/p.yaml", "base_link", "densehybrid_perception")


def layout_topics(path: Path) -> set[str]:
    displays = yaml.safe_load(path.read_text())["Visualization Manager"]["Displays"]
    flat = [d for top in displays for d in top.get("Displays", [top])]
    return {d["Topic"]["Value"] for d in flat if "Topic" in d}


def test_the_layout_follows_the_launch_arguments(monkeypatch, tmp_path):
    """densehybrid-rviz run (write-only) with the launch's own arguments: namespace `car` and the cameras of
    config/perception_3cam.yaml (cameras argument empty) give car's topics of those three cameras."""
    from densehybrid_ros.rviz_config import main

    three_cam = str(ROOT / "config" / "perception_3cam.yaml")
    _, _, rviz = launch(monkeypatch, tmp_path, rviz="true", namespace="car", params_file=three_cam)
    out = tmp_path / "layout.rviz"
    assert main([*rviz["argv"], "--write-only", f"--out={out}"]) == 0
    topics = layout_topics(out)
    for camera in ("front", "left", "right"):
        for output in ("overlay", "anomaly_score", "obstacles", "obstacle_points", "obstacle_grid"):
            assert f"/car/densehybrid_perception/{camera}/{output}" in topics
    assert not any(t.startswith("/densehybrid_perception") for t in topics)
    # a cameras argument wins over the params file; the default params file (no cameras) gives the plain topics
    _, _, rviz = launch(monkeypatch, tmp_path, namespace="car", cameras="rear", params_file=three_cam)
    assert main([*rviz["argv"], "--write-only", f"--out={out}"]) == 0
    assert {t.split("/")[3] for t in layout_topics(out)} == {"rear"}
    _, _, rviz = launch(monkeypatch, tmp_path, params_file=str(ROOT / "config" / "perception.yaml"))
    assert main([*rviz["argv"], "--write-only", f"--out={out}"]) == 0
    assert "/densehybrid_perception/overlay" in layout_topics(out)
