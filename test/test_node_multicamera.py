"""The perception node serving two cameras (parameter `cameras`) as a separate process over real DDS: per-camera
outputs with their own headers and sizes, batched inference, a stopped camera not stopping the other, per-camera
parameters and diagnostics; then the configure-time validation, the 3-camera example config and the launch file's
`cameras` argument (in-process / with stand-ins, no DDS traffic needed).

Frames: sim driving frames (densehybrid_ros.tools.bench_node.render_frames) of two sizes, with their intrinsics.
Weights: the suite's tiny random model.
"""
from __future__ import annotations

import runpy
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from test_node_ros import OUTPUTS, pixels, tiny_weights_file
from test_node_support import (
    DOMAIN_ID,
    NAMESPACE,
    NODE,
    PER_FRAME_OBSTACLES,
    ROOT,
    Harness,
    node_process,
    publish_until,
    status_values,
    wait_for_quiet,
    wait_until,
)

CAMERAS = {"front": (128, 64), "left": (96, 48)}  # name -> (width, height)
FRAME_IDS = {"front": "front_optical_frame", "left": "left_optical_frame"}


@dataclass
class Rig:
    harness: Harness
    node: object
    outputs: dict  # (camera, output) -> Collector
    markers: dict  # camera -> Collector
    diagnostics: object
    image_pubs: dict
    info_pubs: dict
    frames: dict  # camera -> [(rgb, K)]
    reference: dict  # camera -> Prediction of frames[camera][0][0] in this process


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CameraInfo, Image
    from visualization_msgs.msg import MarkerArray

    from densehybrid_ros.tools.bench_node import render_frames
    from densehybrid_ros.predictor import Predictor

    tmp = tmp_path_factory.mktemp("multicamera")
    weights = tiny_weights_file(tmp)
    frames = {name: render_frames(2, size, seed=i) for i, (name, size) in enumerate(CAMERAS.items())}
    predictor = Predictor.from_weights(weights)
    probe = predictor.predict(frames["front"][0][0])
    threshold = float(np.quantile(probe.hybrid, 0.7))
    reference = {name: predictor.predict(f[0][0], threshold=threshold) for name, f in frames.items()}
    node = node_process(tmp, f"weights:={weights}", "cameras:=[front, left]", f"threshold:={threshold!r}",
                        "min_obstacle_area:=5", "left.camera_pitch:=0.3", "batch_wait_ms:=300.0",
                        "diagnostics_period:=0.3", *PER_FRAME_OBSTACLES,  # each frame's components, at any size
                        params_file=ROOT / "config" / "perception.yaml", name="multicamera")
    harness = Harness("multicamera")
    try:
        outputs = {(c, o): harness.collector(Image, f"{NODE}/{c}/{o}") for c in CAMERAS for o in OUTPUTS}
        markers = {c: harness.collector(MarkerArray, f"{NODE}/{c}/obstacles") for c in CAMERAS}
        diagnostics = harness.collector(DiagnosticArray, "/diagnostics")
        image_pubs = {c: harness.publisher(Image, f"{NAMESPACE}/{c}/image") for c in CAMERAS}
        info_pubs = {c: harness.publisher(CameraInfo, f"{NAMESPACE}/{c}/camera_info") for c in CAMERAS}
        wait_until(lambda: all(p.get_subscription_count() for p in image_pubs.values()) or not node.alive(), 60,
                   message="node subscriptions")
        assert node.alive(), node.text()
        wait_until(lambda: all(harness.node.count_publishers(c.topic) for c in outputs.values()), 30)
        yield Rig(harness, node, outputs, markers, diagnostics, image_pubs, info_pubs, frames, reference)
    finally:
        node.stop()
        harness.close()


def send(rig: Rig, camera: str, sec: int, index: int = 0) -> None:
    from sensor_msgs.msg import CameraInfo
    from test_node_support import image_message

    rgb, k = rig.frames[camera][index]
    width, height = CAMERAS[camera]
    info = CameraInfo(width=width, height=height, distortion_model="plumb_bob")
    info.header.stamp.sec, info.header.frame_id = sec, FRAME_IDS[camera]
    info.k = [float(v) for v in np.asarray(k).ravel()]
    rig.info_pubs[camera].publish(info)
    rig.image_pubs[camera].publish(image_message(rgb, sec, FRAME_IDS[camera], nanosec=index))


def answered(rig: Rig, camera: str, sec: int, names=tuple(OUTPUTS), index: int = 0):
    found = [rig.outputs[(camera, n)].with_stamp(sec, index) for n in names]
    return [f[-1] for f in found] if all(found) else None


def markers_with_stamp(rig: Rig, camera: str, sec: int):
    arrays = rig.markers[camera].matching(lambda a: any(m.header.stamp.sec == sec for m in a.markers))
    return arrays[-1] if arrays else None


def camera_status(rig: Rig, camera: str) -> dict | None:
    return status_values(rig.diagnostics, NODE, camera)


def test_two_cameras_at_once_get_every_output_with_their_own_header_and_size(rig):
    from visualization_msgs.msg import Marker

    def both():
        send(rig, "front", 100)
        send(rig, "left", 100)

    def all_answered():
        got = {c: answered(rig, c, 100) for c in CAMERAS}
        return got if all(got.values()) and all(markers_with_stamp(rig, c, 100) for c in CAMERAS) else None

    got = publish_until(both, all_answered, 30)
    for camera, msgs in got.items():
        width, height = CAMERAS[camera]
        for (name, (encoding, bytes_per_pixel)), msg in zip(OUTPUTS.items(), msgs):
            assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (
                100, 0, FRAME_IDS[camera]), (camera, name)
            assert (msg.encoding, msg.height, msg.width, msg.step) == (encoding, height, width, width * bytes_per_pixel)
        # routed to the right camera: the node's result equals this process's Predictor on that camera's frame
        semantic, score = pixels(msgs[0]), pixels(msgs[2])
        assert (semantic == rig.reference[camera].class_ids).mean() > 0.99, camera
        np.testing.assert_allclose(score, rig.reference[camera].hybrid, atol=1e-3)
        adds = [m for m in markers_with_stamp(rig, camera, 100).markers if m.action == Marker.ADD]
        assert all(m.header.frame_id == FRAME_IDS[camera] for m in adds), camera


def test_frames_of_both_cameras_go_through_the_model_together(rig):
    """With a long batch wait, pairs sent together are batched. The mailbox waits only for cameras that sent within
    the last second, so the first pair after a pause may go one by one: pairs are sent until a batch of two shows in
    /diagnostics (whatever the arrival order)."""
    def batched() -> bool:
        values = camera_status(rig, "front") or {}
        return int(values.get("batched frames (total)", 0)) > int(values.get("batches (total)", 0))

    with rig.harness.parameters(batch_wait_ms=300.0):
        for sec in range(110, 170):  # one pair per round, each answered on both cameras before the next
            publish_until(lambda: (send(rig, "front", sec), send(rig, "left", sec)),
                          lambda: answered(rig, "front", sec, ("semantic",)) and answered(rig, "left", sec, ("semantic",)),
                          30)
            try:
                wait_until(batched, 3, message="a batch of two in /diagnostics")
                break
            except TimeoutError:
                continue
    assert batched(), camera_status(rig, "front")


def test_a_stopped_camera_does_not_stop_the_other(rig):
    publish_until(lambda: (send(rig, "front", 200), send(rig, "left", 200)),
                  lambda: answered(rig, "front", 200, ("semantic",)) and answered(rig, "left", 200, ("semantic",)), 30)
    answers = {c: rig.outputs[(c, "semantic")] for c in CAMERAS}
    before = wait_for_quiet(rig.diagnostics, answers)
    for sec in range(201, 206):  # left has stopped; front goes on (a stalled batch would time out here)
        publish_until(lambda: send(rig, "front", sec, 1), lambda: answered(rig, "front", sec, index=1), 30)
    after = wait_for_quiet(rig.diagnostics, answers)
    assert after["front"]["processed"] >= before["front"]["processed"] + 5
    assert after["left"] == before["left"]  # nothing received, nothing processed for the silent camera
    assert rig.node.alive()


def test_per_camera_parameters_and_diagnostics(rig):
    harness = rig.harness
    wait_until(lambda: camera_status(rig, "left") and camera_status(rig, "front"), 30, message="per-camera status")
    assert camera_status(rig, "left")["mount camera_pitch"] == "0.3"  # from the command line
    assert camera_status(rig, "front")["mount camera_pitch"] == "0"  # the global default
    (bad,) = harness.set_parameters(**{"left.camera_pitch": 3.0})
    assert not bad.successful and "left.camera_pitch" in bad.reason
    (frozen,) = harness.set_parameters(cameras=["front"])
    assert not frozen.successful and "cleanup" in frozen.reason
    with harness.parameters(**{"left.camera_height": 2.25}):
        wait_until(lambda: camera_status(rig, "left")["mount camera_height"] == "2.25", 10)
        assert camera_status(rig, "front")["mount camera_height"] == "1.5"  # the other camera keeps the global one
    wait_until(lambda: camera_status(rig, "left")["mount camera_height"] == "1.5", 10)
    for camera in CAMERAS:
        values = camera_status(rig, camera)
        assert values["camera"] == camera and values["image topic"] == f"{NAMESPACE}/{camera}/image"
        assert values["camera_info"] in ("received", "missing")


def test_sigint_stops_the_multicamera_node_cleanly(tmp_path):
    """A node of its own (the module's node serves the other tests until the module ends)."""
    from sensor_msgs.msg import Image

    namespace = f"{NAMESPACE}_sigint"
    node = node_process(tmp_path, f"weights:={tiny_weights_file(tmp_path)}", "cameras:=[front, left]",
                        name="sigint", namespace=namespace)
    harness = Harness("sigint")
    try:
        pubs = [harness.publisher(Image, f"{namespace}/{c}/image") for c in CAMERAS]
        wait_until(lambda: all(p.get_subscription_count() for p in pubs) or not node.alive(), 60, message="active")
        assert node.alive(), node.text()
    finally:
        harness.close()
    assert node.stop() == 0
    assert "Traceback" not in node.text(), node.text()


# ---------------------------------------------------------------- configure-time validation (in-process node)
def configure_in_process(capfd, *args: str):
    """Create the node in this process with command-line `args`, configure it; (result, stderr, node values)."""
    import rclpy

    from densehybrid_ros.node.perception_node import PerceptionNode
    from densehybrid_ros.perception.settings import MOUNT_PARAMS, mount_value

    context = rclpy.Context()
    rclpy.init(args=["node", "--ros-args", "-r", f"__ns:={NAMESPACE}_inproc", "-p", "autostart:=false", *args],
               context=context, domain_id=DOMAIN_ID)
    try:
        node = PerceptionNode(context=context)
        result = node.trigger_configure()
        channels = {name: {p: mount_value(ch.mount, p) for p in MOUNT_PARAMS} for name, ch in node.channels.items()}
        if node.state == "inactive":
            node.trigger_cleanup()
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
    return result, capfd.readouterr().err, channels


def test_bad_camera_parameters_fail_configure_with_clear_errors(tmp_path, capfd):
    from rclpy.lifecycle import TransitionCallbackReturn

    weights = tiny_weights_file(tmp_path)
    cases = {
        ("cameras:=[front, left, front]",): "duplicate camera name(s) ['front']",
        ("cameras:=[front, 2nd, rear/left]",): "invalid camera name(s) ['2nd', 'rear/left']",
        ("cameras:=[front, left]", "depth_topic:=/depth"): "depth_topic '/depth' is absolute, but there are 2 cameras",
        ("cameras:=[front, left]", "left.camera_height:=-1.0"): "left.camera_height",
        ("cameras:=[front]", "backend:=onnxruntime"): "needs a fixed network grid",
    }
    for params, message in cases.items():
        args = [a for p in (f"weights:={weights}", *params) for a in ("-p", p)]
        result, err, channels = configure_in_process(capfd, *args)
        assert result == TransitionCallbackReturn.FAILURE and channels == {}, params
        assert "configure failed" in err and message in err, (params, err)
    result, err, channels = configure_in_process(capfd, "-p", f"weights:={weights}", "-p", "cameras:=[front, left]",
                                                 "-p", "camera_height:=2.0", "-p", "front.camera_roll:=0.1")
    assert result == TransitionCallbackReturn.SUCCESS, err
    assert channels == {"front": {"camera_height": 2.0, "camera_pitch": 0.0, "camera_roll": 0.1},
                        "left": {"camera_height": 2.0, "camera_pitch": 0.0, "camera_roll": 0.0}}


def test_onnxruntime_backend_configures_from_an_onnx_model(tmp_path, capfd, one_torch_thread):
    pytest.importorskip("onnxruntime")
    import torch

    from conftest import TINY, randomize_batchnorm
    from densehybrid_ros.models import build_model
    from densehybrid_ros.onnx_export import export_onnx
    from densehybrid_ros.weights import default_metadata

    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(TINY)).eval()
    onnx_path = export_onnx(model, default_metadata(TINY), tmp_path / "tiny.onnx", height=64, width=96)
    result, err, channels = configure_in_process(capfd, "-p", "backend:=onnxruntime", "-p", f"onnx_model:={onnx_path}",
                                                 "-p", "cameras:=[front, left]")
    assert str(result).endswith("SUCCESS"), err
    assert "backend onnxruntime [CPUExecutionProvider], cameras front, left" in err and set(channels) == {"front", "left"}
    result, err, _ = configure_in_process(capfd, "-p", "backend:=onnxruntime", "-p", "onnx_model:=/missing.onnx")
    assert str(result).endswith("FAILURE") and "onnx_model file not found: '/missing.onnx'" in err


def test_cameras_of_the_wrong_type_stop_the_process_with_a_hint(tmp_path):
    node = node_process(tmp_path, "cameras:=front", name="badtype")
    try:
        wait_until(lambda: not node.alive(), 60, message="the node to exit")
    finally:
        node.stop()
    assert node.proc.returncode == 2 and "cameras is a string array" in node.text(), node.text()


def test_three_camera_example_config(tmp_path, capfd):
    import yaml

    from densehybrid_ros.perception.settings import MOUNT_PARAMS, SPECS, check_value

    path = ROOT / "config" / "perception_3cam.yaml"
    (key, body), = yaml.safe_load(path.read_text()).items()
    values = body["ros__parameters"]
    assert key == "/**/densehybrid_perception" and values["cameras"] == ["front", "left", "right"]
    for name in values["cameras"]:
        assert set(values[name]) == set(MOUNT_PARAMS)
        assert all(check_value(k, v) is None for k, v in values[name].items())
    assert set(values) - set(values["cameras"]) <= set(SPECS)
    # the ROS parameter parser reads it (nested keys -> front.camera_height) and the node configures with it
    weights = tiny_weights_file(tmp_path)
    result, err, channels = configure_in_process(capfd, "--params-file", str(path), "-p", f"weights:={weights}")
    assert str(result).endswith("SUCCESS"), err
    assert channels == {name: values[name] for name in ("front", "left", "right")}


# ---------------------------------------------------------------- launch file (stand-ins for launch / launch_ros)
class _Made:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def run_launch(monkeypatch, share: Path, **arguments: str) -> dict:
    """Execute launch/perception.launch.py against minimal stand-ins of the (long-stable) classes it uses and return
    the keyword arguments of the Node it would start."""
    declared = {}

    class DeclareLaunchArgument(_Made):
        def __init__(self, name, **kwargs):
            super().__init__(name, **kwargs)
            declared[name] = kwargs.get("default_value")

    class LaunchConfiguration(_Made):
        def perform(self, context):
            return context[self.args[0]]

    modules = {name: types.ModuleType(name) for name in (
        "launch", "launch.actions", "launch.substitutions", "launch_ros", "launch_ros.actions", "ament_index_python",
        "ament_index_python.packages")}
    modules["launch"].LaunchDescription = _Made
    modules["launch.actions"].DeclareLaunchArgument = DeclareLaunchArgument
    modules["launch.actions"].OpaqueFunction = _Made
    modules["launch.actions"].Shutdown = _Made  # on_exit of the node: its exit shuts the launch down
    modules["launch.substitutions"].LaunchConfiguration = LaunchConfiguration
    modules["launch_ros.actions"].Node = _Made
    modules["ament_index_python.packages"].get_package_share_directory = lambda package: str(share / package)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    description = runpy.run_path(str(ROOT / "launch" / "perception.launch.py"))["generate_launch_description"]()
    (entities,) = description.args
    (opaque,) = [e for e in entities if "function" in e.kwargs]
    context = {**declared, **arguments}
    (node,) = opaque.kwargs["function"](context)
    resolved = lambda v: v.perform(context) if isinstance(v, LaunchConfiguration) else v  # noqa: E731
    kwargs = dict(node.kwargs)
    kwargs["remappings"] = [(resolved(a), resolved(b)) for a, b in kwargs["remappings"]]
    kwargs["declared"] = declared
    return kwargs


def test_launch_file_cameras_argument(monkeypatch, tmp_path):
    single = run_launch(monkeypatch, tmp_path, image="/cam/image_raw", camera_info="/cam/camera_info")
    assert single["declared"]["cameras"] == ""
    assert "cameras" not in single["parameters"][1]
    assert single["remappings"] == [("image", "/cam/image_raw"), ("camera_info", "/cam/camera_info")]
    multi = run_launch(monkeypatch, tmp_path, cameras="front, left,right", image="/{camera}/image_raw",
                       weights="/w.safetensors")
    assert multi["parameters"][1]["cameras"] == ["front", "left", "right"]
    assert multi["parameters"][1]["weights"] == "/w.safetensors"
    assert multi["remappings"] == [("front/image", "/front/image_raw"), ("left/image", "/left/image_raw"),
                                   ("right/image", "/right/image_raw")]  # camera_info left at <camera>/camera_info
    with pytest.raises(RuntimeError, match=r"must contain \{camera\}"):
        run_launch(monkeypatch, tmp_path, cameras="front,left", image="/one/image_raw")
    with pytest.raises(RuntimeError, match="pass the cameras too"):
        run_launch(monkeypatch, tmp_path, image="/{camera}/image_raw")
