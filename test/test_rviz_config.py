"""densehybrid_ros.rviz_config: RViz layouts for a namespace and camera set, the shipped layouts, and densehybrid-rviz
run as a process (rviz2 found through the ament index of a prefix made here, with a stand-in rviz2 that records how
it was started; rviz2 missing; no display)."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from densehybrid_ros.rviz_config import (cameras_from_params_file, output_topics, rviz_config, rviz_decision,
                                         write_rviz_config)

ROOT = Path(__file__).resolve().parents[1]
OBSTACLE_DISPLAYS = {"obstacles": "rviz_default_plugins/MarkerArray",
                     "obstacle_points": "rviz_default_plugins/PointCloud2",  # for planners (issue 16, item 4)
                     "obstacle_grid": "rviz_default_plugins/Map"}


def flat_displays(layout: dict) -> list[dict]:
    """Every display, groups opened."""
    return [d for top in layout["Visualization Manager"]["Displays"] for d in top.get("Displays", [top])]


def node_outputs() -> dict[str, str]:
    """The node's output topics (relative to the node) -> the RViz display class that shows them, from the node."""
    from densehybrid_ros.node.perception_node import IMAGE_OUTPUTS, OBSTACLE_OUTPUTS

    return {**{name: "rviz_default_plugins/Image" for name in IMAGE_OUTPUTS},
            **{name: OBSTACLE_DISPLAYS[name] for name in OBSTACLE_OUTPUTS}}


def test_three_cameras_in_a_namespace_get_a_display_per_output_topic():
    layout = rviz_config(namespace="/car/", cameras=["front", "left", "right"], fixed_frame="base_link")
    by_topic = {d["Topic"]["Value"]: d for d in flat_displays(layout) if "Topic" in d}
    expected = {f"/car/densehybrid_perception/{camera}/{output}": cls
                for camera in ("front", "left", "right") for output, cls in node_outputs().items()}
    assert {t: d["Class"] for t, d in by_topic.items() if not t.endswith("_updates")} == expected
    groups = [d for d in layout["Visualization Manager"]["Displays"] if d["Class"] == "rviz_common/Group"]
    assert [g["Name"] for g in groups] == ["front", "left", "right"]
    for group in groups:  # each group holds exactly its camera's topics
        assert {d["Topic"]["Value"].split("/")[3] for d in group["Displays"]} == {group["Name"]}
    # several cameras: only the overlays on (the node computes visual outputs only for subscribers)
    shown = sorted(t for t, d in by_topic.items() if d["Class"].endswith("/Image") and d["Enabled"])
    assert shown == [f"/car/densehybrid_perception/{c}/overlay" for c in ("front", "left", "right")]
    assert layout["Visualization Manager"]["Global Options"]["Fixed Frame"] == "base_link"
    points = by_topic["/car/densehybrid_perception/left/obstacle_points"]
    from densehybrid_ros.perception.planner_outputs import POINT_DTYPE

    assert points["Color Transformer"] == "Intensity" and points["Channel Name"] in POINT_DTYPE.names  # a real field
    grid = by_topic["/car/densehybrid_perception/left/obstacle_grid"]
    assert grid["Update Topic"]["Value"] == "/car/densehybrid_perception/left/obstacle_grid_updates"
    # Best Effort + Volatile subscriptions receive from reliable and best-effort, volatile and latched publishers
    assert {(d["Topic"]["Reliability Policy"], d["Topic"]["Durability Policy"]) for d in by_topic.values()} == {
        ("Best Effort", "Volatile")}


def test_single_camera_root_namespace_and_window_panels():
    layout = rviz_config()
    displays = flat_displays(layout)
    topics = {d["Topic"]["Value"]: d for d in displays if "Topic" in d}
    assert {t for t in topics if not t.endswith("_updates")} == {f"/densehybrid_perception/{o}" for o in node_outputs()}
    assert not topics["/densehybrid_perception/semantic"]["Enabled"]  # raw class ids: semantic_color shows them
    assert topics["/densehybrid_perception/anomaly_score"]["Enabled"]
    names = [d["Name"] for d in displays]
    assert len(names) == len(set(names))  # RViz keys window panels by display name
    panels = set(layout["Window Geometry"]) - {"Displays", "Height", "Width", "Hide Left Dock", "Hide Right Dock",
                                                "Views"}
    assert panels == {d["Name"] for d in displays if d["Class"].endswith("/Image") and d["Enabled"]}
    assert layout["Visualization Manager"]["Global Options"]["Fixed Frame"] == "camera_optical_frame"
    grid = next(d for d in displays if d["Class"] == "rviz_default_plugins/Grid")
    assert grid["Plane"] == "XZ"  # optical frame: y points down, the ground is an XZ plane
    extra = rviz_config(extra_marker_topics=["/sim_camera/anomalies"])
    assert "/sim_camera/anomalies" in {d["Topic"]["Value"] for d in flat_displays(extra) if "Topic" in d}


def test_output_topics_match_the_node_names():
    assert output_topics("", "")["overlay"] == "/densehybrid_perception/overlay"
    assert output_topics("a/b", "front", node_name="dh")["obstacle_grid"] == "/a/b/dh/front/obstacle_grid"


@pytest.mark.parametrize("kwargs, message", [
    ({"namespace": "car/2x"}, "namespace 'car/2x'"),
    ({"namespace": "a//b"}, "namespace 'a//b'"),
    ({"cameras": ["front", "front-left"]}, "camera name 'front-left'"),
    ({"cameras": ["front", "front"]}, "unique"),
    ({"node_name": "my node"}, "node name 'my node'"),
    ({"fixed_frame": ""}, "fixed_frame"),
])
def test_bad_names_are_rejected_with_the_culprit(kwargs, message):
    with pytest.raises(ValueError, match=message):
        rviz_config(**kwargs)


@pytest.mark.parametrize("shipped, kwargs", [
    ("perception.rviz", {}),
    ("perception_3cam.rviz", {"cameras": ("front", "left", "right"), "fixed_frame": "base_link"}),
])
def test_shipped_layouts_are_the_generator_output(shipped, kwargs):
    """config/*.rviz are written by the generator (README); a hand edit or a new output would show here."""
    assert yaml.safe_load((ROOT / "config" / shipped).read_text()) == rviz_config(**kwargs)


def test_cameras_from_params_files(tmp_path):
    three_cam = ROOT / "config" / "perception_3cam.yaml"
    assert cameras_from_params_file(three_cam) == ("front", "left", "right")  # key /**/densehybrid_perception
    assert cameras_from_params_file(three_cam, namespace="car/x") == ("front", "left", "right")
    assert cameras_from_params_file(ROOT / "config" / "perception.yaml") == ()
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({
        "/**": {"ros__parameters": {"cameras": ["a"]}},
        "/car/densehybrid_perception": {"ros__parameters": {"cameras": ["b", "c"]}},  # later entry wins (rcl order)
        "densehybrid_perception": {"ros__parameters": {"cameras": ["root"]}},  # no leading '/': root namespace
        "/*/other": {"ros__parameters": {"cameras": ["x"]}},
    }))
    assert cameras_from_params_file(params) == ("root",)
    assert cameras_from_params_file(params, namespace="car") == ("b", "c")
    assert cameras_from_params_file(params, namespace="bus") == ("a",)
    assert cameras_from_params_file(params, namespace="bus", node_name="other") == ("x",)
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"cameras": "front"}}}))
    with pytest.raises(ValueError, match="cameras must be a list"):
        cameras_from_params_file(params)
    with pytest.raises(ValueError, match="cannot read parameters file"):
        cameras_from_params_file(tmp_path / "missing.yaml")


def test_rviz_decision():
    rviz2 = Path("/opt/ros/x/lib/rviz2/rviz2")
    assert rviz_decision("auto", rviz2, True)[0] and rviz_decision("true", rviz2, True)[0]
    started, reason = rviz_decision("auto", None, True)
    assert not started and "not installed" in reason
    assert "no display" in rviz_decision("auto", rviz2, False)[1] and not rviz_decision("auto", rviz2, False)[0]
    assert not rviz_decision("false", rviz2, True)[0]
    with pytest.raises(RuntimeError, match="rviz:=true but package 'rviz2' is not installed"):
        rviz_decision("true", None, True)
    with pytest.raises(ValueError, match="rviz must be one of"):
        rviz_decision("yes", rviz2, True)


def test_write_rviz_config_creates_folders(tmp_path):
    path = write_rviz_config(tmp_path / "a" / "b.rviz", cameras=["front"])
    assert yaml.safe_load(path.read_text()) == rviz_config(cameras=["front"])


# ---------------------------------------------------------------- densehybrid-rviz as a process
def ament_prefix_with_rviz2(root: Path) -> Path:
    """A prefix whose ament index lists rviz2, with a stand-in lib/rviz2/rviz2 that writes its argv to argv.txt."""
    (root / "share" / "ament_index" / "resource_index" / "packages").mkdir(parents=True)
    (root / "share" / "ament_index" / "resource_index" / "packages" / "rviz2").write_text("")
    executable = root / "lib" / "rviz2" / "rviz2"
    executable.parent.mkdir(parents=True)
    executable.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{root}/argv.txt"\n')
    executable.chmod(executable.stat().st_mode | stat.S_IXUSR)
    return root


def run_cli(*args: str, prefix: Path, display: str | None, ros_home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(AMENT_PREFIX_PATH=str(prefix), ROS_HOME=str(ros_home), **({"DISPLAY": display} if display else {}))
    return subprocess.run([sys.executable, "-m", "densehybrid_ros.rviz_config", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_cli_execs_rviz2_with_the_layout_for_the_namespace_and_cameras(tmp_path):
    prefix = ament_prefix_with_rviz2(tmp_path / "prefix")
    result = run_cli("--rviz=auto", "--namespace=car", "--cameras=front,left", "--ros-args", "-r", "__node:=viewer",
                     prefix=prefix, display=":99", ros_home=tmp_path / "ros_home")
    assert result.returncode == 0, result.stderr
    argv = (prefix / "argv.txt").read_text().split("\n")[:-1]
    assert argv[0] == "-d" and argv[2:] == ["--ros-args", "-r", "__node:=viewer"]
    layout = Path(argv[1])
    assert layout.parent == tmp_path / "ros_home" / "densehybrid_ros" / "rviz"
    assert yaml.safe_load(layout.read_text()) == rviz_config(namespace="car", cameras=["front", "left"])


def test_cli_without_rviz2_or_display(tmp_path):
    empty = tmp_path / "empty_prefix"
    empty.mkdir()
    auto = run_cli("--rviz=auto", prefix=empty, display=":99", ros_home=tmp_path)
    assert auto.returncode == 0 and "package 'rviz2' is not installed" in auto.stdout and "not started" in auto.stdout
    required = run_cli("--rviz=true", prefix=empty, display=":99", ros_home=tmp_path)
    assert required.returncode == 1 and "rviz:=true but package 'rviz2' is not installed" in required.stderr
    prefix = ament_prefix_with_rviz2(tmp_path / "prefix")
    headless = run_cli("--rviz=auto", prefix=prefix, display=None, ros_home=tmp_path)
    assert headless.returncode == 0 and "no display" in headless.stdout and not (prefix / "argv.txt").exists()
    off = run_cli("--rviz=false", prefix=prefix, display=":99", ros_home=tmp_path)
    assert off.returncode == 0 and "rviz:=false" in off.stdout and not (prefix / "argv.txt").exists()
    bad = run_cli("--rviz=auto", "--cameras=a-b", prefix=prefix, display=":99", ros_home=tmp_path)
    assert bad.returncode == 1 and "camera name 'a-b'" in bad.stderr
