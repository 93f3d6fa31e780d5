"""The perception node's parameters and outputs over real DDS, each against an expectation computed here: the weights'
calibrated threshold and class colours, overlay_alpha, the publish toggles and "no subscriber, no inference", obstacles
placed from a registered depth image (32FC1 metres and 16UC1 millimetres) with the markers' pose and scale from the
component geometry, max_obstacles, obstacle_max_distance, track_match_distance, depth_sync_tolerance, marker orientation
on the ground plane, output_reliability, and an exception inside inference.

Components are counted here with scipy.ndimage.label (8-connected) on the node's own ~/open_set map, not with the node's
code. Weights: the suite's tiny random model, with class colours and a calibrated threshold in its metadata.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from conftest import TINY, randomize_batchnorm
from test_node_ros import FRAME, OUTPUTS, H, W, pixels, scene_image
from test_node_support import (
    NAMESPACE,
    PER_FRAME_OBSTACLES,
    Harness,
    camera_info_message,
    image_message,
    node_name,
    node_process,
    publish_until,
    status_values,
    wait_for_quiet,
    wait_until,
)

K = TINY.num_classes
F = 60.0  # focal length of the test camera [px]
CX, CY = (W - 1) / 2, (H - 1) / 2
PITCH = 0.2
MIN_AREA = 3
COLOURS = ((200, 10, 10), (10, 200, 10), (10, 10, 200), (250, 250, 0), (120, 0, 160))
NS = f"{NAMESPACE}_behaviour"
NODE = node_name(NS)


@dataclass
class Served:
    harness: Harness
    node: object
    outputs: dict
    markers: object
    diagnostics: object
    image_pub: object
    info_pub: object
    depth_pub: object
    calibrated: float  # the threshold stored in the weights (no `threshold` parameter given)


def calibrated_weights(directory: Path, threshold: float | None) -> Path:
    from densehybrid_ros.models import build_model
    from densehybrid_ros.weights import Calibration, ClassInfo, default_metadata, save_weights

    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(TINY)).eval()
    with torch.no_grad():  # a classifier without biases and with unit-variance weights: several classes in the image
        classifier = model.segmenter.classifier
        classifier.conv.bias.zero_()
        classifier.norm.bias.zero_()
        classifier.conv.weight.copy_(torch.randn(classifier.conv.weight.shape, generator=torch.Generator().manual_seed(0)))
    calibration = Calibration(threshold=threshold, method="manual") if threshold is not None else Calibration()
    meta = default_metadata(TINY, classes=tuple(ClassInfo(f"class{i}", c) for i, c in enumerate(COLOURS)),
                            calibration=calibration)
    return save_weights(directory / "calibrated.safetensors", model, meta)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CameraInfo, Image
    from visualization_msgs.msg import MarkerArray

    from densehybrid_ros.predictor import Predictor

    tmp = tmp_path_factory.mktemp("behaviour")
    probe = Predictor.from_weights(calibrated_weights(tmp, None)).predict(scene_image())
    calibrated = float(np.quantile(probe.hybrid, 0.7))
    weights = calibrated_weights(tmp, calibrated)
    # obstacles of each frame as they come, at any size: these tests check one frame's components and their geometry
    # (confirmation and the size rule: test_obstacle_rules.py, test_node_operating_points.py)
    node = node_process(tmp, f"weights:={weights}", f"min_obstacle_area:={MIN_AREA}", f"camera_pitch:={PITCH}",
                        "depth_topic:=depth", "qos_reliability:=reliable", "qos_depth:=5", "marker_lifetime:=0.0",
                        "diagnostics_period:=0.3", *PER_FRAME_OBSTACLES, name="behaviour", namespace=NS)
    harness = Harness("behaviour")
    try:
        outputs = {name: harness.collector(Image, f"{NODE}/{name}") for name in OUTPUTS}
        markers = harness.collector(MarkerArray, f"{NODE}/obstacles")
        diagnostics = harness.collector(DiagnosticArray, "/diagnostics")
        image_pub = harness.publisher(Image, f"{NS}/image")
        info_pub = harness.publisher(CameraInfo, f"{NS}/camera_info")
        depth_pub = harness.publisher(Image, f"{NS}/depth")
        wait_until(lambda: image_pub.get_subscription_count() > 0 or not node.alive(), 60, message="node subscription")
        assert node.alive(), node.text()
        wait_until(lambda: all(harness.node.count_publishers(c.topic) for c in outputs.values()), 30)
        yield Served(harness, node, outputs, markers, diagnostics, image_pub, info_pub, depth_pub, calibrated)
    finally:
        node.stop()
        harness.close()


def depth_message(depth: np.ndarray, sec: int, nanosec: int = 0):
    encoding = "16UC1" if depth.dtype == np.uint16 else "32FC1"
    return image_message(depth[..., None], sec, FRAME, encoding, nanosec=nanosec)


def send(served: Served, sec: int, depth: np.ndarray | None = None, depth_offset_ns: int = 0) -> None:
    served.info_pub.publish(camera_info_message(W, H, F, sec, FRAME))
    if depth is not None:
        served.depth_pub.publish(depth_message(depth, sec + depth_offset_ns // 10**9, depth_offset_ns % 10**9))
    served.image_pub.publish(image_message(scene_image(), sec, FRAME))


def outputs_of(served: Served, sec: int, names: tuple[str, ...]):
    found = [served.outputs[n].with_stamp(sec) for n in names]
    return [pixels(f[-1]) for f in found] if all(found) else None


def request(served: Served, sec: int, names: tuple[str, ...], **kwargs):
    return publish_until(lambda: send(served, sec, **kwargs), lambda: outputs_of(served, sec, names), 30)


def markers_after(served: Served, sec: int, seen: int):
    """The newest MarkerArray stamped `sec` among those received after the first `seen`."""
    arrays = [a for a in served.markers.messages[seen:] if any(m.header.stamp.sec == sec for m in a.markers)]
    return arrays[-1] if arrays else None


def cubes(array) -> list:
    from visualization_msgs.msg import Marker

    return [m for m in array.markers if m.action == Marker.ADD and m.type == Marker.CUBE]


def with_cubes(array):
    """`array` when it holds at least one cube, else None."""
    return array if array is not None and cubes(array) else None


def depth_placed(array) -> bool:
    """Every cube in camera axes (identity orientation): placed with the depth image, not on the pitched ground."""
    found = cubes(array) if array is not None else []
    return bool(found) and all(m.pose.orientation.w == 1.0 for m in found)


def depth_array(served: Served, sec: int, seen: int):
    """The newest MarkerArray stamped `sec` (received after the first `seen`) once it was placed with depth."""
    array = markers_after(served, sec, seen)
    return array if depth_placed(array) else None


@dataclass
class Box:
    area: int
    x0: int
    x1: int
    y0: int
    y1: int
    cu: float
    cv: float

    def expected(self, z: float) -> tuple[np.ndarray, np.ndarray, float]:
        """(centre, scale, range) of the box placed at depth z: the centroid ray at z, extent from the pixel box."""
        w = max((self.x1 - self.x0) * z / F, 0.05)
        h = max((self.y1 - self.y0) * z / F, 0.05)
        anchor = np.array([(self.cu - CX) / F * z, (self.cv - CY) / F * z, z])
        return anchor + np.array([0.0, 0.0, w / 2]), np.array([w, h, w]), float(np.linalg.norm(anchor))


def components(open_set: np.ndarray) -> list[Box]:
    """8-connected components of the unknown pixels with at least MIN_AREA pixels, largest first."""
    labels, n = ndimage.label(open_set == K, structure=np.ones((3, 3), bool))
    boxes = []
    for i in range(1, n + 1):
        ys, xs = np.nonzero(labels == i)
        if ys.size >= MIN_AREA:
            boxes.append(Box(int(ys.size), int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1,
                             float(xs.mean()), float(ys.mean())))
    return sorted(boxes, key=lambda b: -b.area)


def match(found: list, boxes: list[Box], z: float) -> None:
    """Each expected box has one cube with its centre and scale (and camera-axes orientation)."""
    assert len(found) == len(boxes), (len(found), [b.area for b in boxes])
    for box in boxes:
        centre, scale, _ = box.expected(z)
        (m,) = [m for m in found if np.allclose([m.pose.position.x, m.pose.position.y, m.pose.position.z], centre,
                                                atol=1e-4)]
        np.testing.assert_allclose([m.scale.x, m.scale.y, m.scale.z], scale, atol=1e-4)
        assert (m.pose.orientation.x, m.pose.orientation.y, m.pose.orientation.z, m.pose.orientation.w) == (0, 0, 0, 1)


@pytest.fixture(scope="module")
def several(served):
    """A threshold (an attained score) whose open set has at least 3 components of distinct sizes; its open set."""
    (score,) = request(served, 4000, ("anomaly_score",))
    for q in np.linspace(0.95, 0.5, 46):
        t = float(np.sort(score, axis=None)[int(q * (score.size - 1))])
        boxes = components(np.where(score >= np.float32(t), K, 0))
        areas = [b.area for b in boxes]
        if len(boxes) >= 3 and len(set(areas[:3])) == 3:
            return t
    pytest.fail("no threshold gives three components of distinct sizes on the test image")


def test_open_set_uses_the_weights_calibrated_threshold_and_class_colours(served):
    semantic, colours, score, open_set = request(served, 4010, ("semantic", "semantic_color", "anomaly_score", "open_set"))
    # no threshold parameter: the weights' one, with the project's rule (score >= t)
    np.testing.assert_array_equal(open_set, np.where(score >= np.float32(served.calibrated), K, semantic))
    assert 0 < (open_set == K).mean() < 1
    np.testing.assert_array_equal(colours, np.array(COLOURS, np.uint8)[semantic])  # the weights' colours
    assert len(np.unique(semantic)) >= 3  # several classes, so that the colours are told apart
    wait_until(lambda: (status_values(served.diagnostics, NODE) or {}).get("threshold source") == "weights calibration",
               10)
    assert float(status_values(served.diagnostics, NODE)["threshold"]) == pytest.approx(served.calibrated, rel=1e-5)


def test_overlay_blends_the_class_colours_with_overlay_alpha(served):
    rgb = scene_image().astype(np.float64)
    for sec, alpha in ((4020, 0.25), (4021, 0.0), (4022, 1.0)):
        with served.harness.parameters(NODE, threshold=1e6, overlay_alpha=alpha):  # nothing unknown: no outlines, boxes
            semantic, overlay = request(served, sec, ("semantic", "overlay"))
        expected = (1 - alpha) * rgb + alpha * np.array(COLOURS, np.float64)[semantic]
        assert np.abs(overlay - expected).max() <= 0.5 + 1e-9, alpha  # rounded to the nearest integer


def test_publish_toggles_and_no_inference_without_anything_to_publish(served):
    with served.harness.parameters(NODE, publish_overlay=False, publish_semantic_color=False):
        request(served, 4030, ("semantic", "anomaly_score", "open_set"))
        request(served, 4031, ("semantic",))  # a later frame answered: 4030's outputs are all out (published in order)
    assert not served.outputs["overlay"].with_stamp(4030) and not served.outputs["semantic_color"].with_stamp(4030)
    answers = {None: served.outputs["semantic"]}
    before = wait_for_quiet(served.diagnostics, answers, NODE)[None]
    toggles = {f"publish_{name}": False for name in (*OUTPUTS, "obstacles")}
    with served.harness.parameters(NODE, **toggles):
        # every output off: the frame is not run through the model, it is counted idle
        publish_until(lambda: send(served, 4032),
                      lambda: int((status_values(served.diagnostics, NODE) or {}).get("idle, no subscribers (total)", 0))
                      > before["idle, no subscribers"], 30, period=2.0)
        after = wait_for_quiet(served.diagnostics, answers, NODE)[None]
    assert after["processed"] == before["processed"] and after["errors"] == before["errors"]
    assert not any(c.with_stamp(4032) for c in served.outputs.values())
    assert not served.markers.matching(lambda a: any(m.header.stamp.sec == 4032 for m in a.markers))


@pytest.mark.parametrize("encoding", ["32FC1", "16UC1"])
def test_depth_places_the_largest_components_with_their_geometry(served, several, encoding):
    depth = np.full((H, W), 7000, np.uint16) if encoding == "16UC1" else np.full((H, W), 7.0, np.float32)
    sec = 4040 if encoding == "32FC1" else 4041
    with served.harness.parameters(NODE, threshold=several, max_obstacles=2, obstacle_max_distance=1000.0):
        seen = len(served.markers.messages)
        # re-sent (same stamp) until the depth image had arrived before the frame was processed
        array = publish_until(lambda: send(served, sec, depth), lambda: depth_array(served, sec, seen), 30, period=1.0)
        (open_set,) = outputs_of(served, sec, ("open_set",))
    boxes = components(open_set)
    assert len(boxes) >= 3
    match(cubes(array), boxes[:2], 7.0)  # max_obstacles = 2: the two largest


def test_obstacle_max_distance_drops_the_farther_components(served, several):
    depth = np.full((H, W), 7.0, np.float32)
    with served.harness.parameters(NODE, threshold=several, max_obstacles=1000, obstacle_max_distance=1000.0):
        seen = len(served.markers.messages)
        publish_until(lambda: send(served, 4050, depth), lambda: depth_placed(markers_after(served, 4050, seen)), 30,
                      period=1.0)
        (open_set,) = outputs_of(served, 4050, ("open_set",))
        boxes = components(open_set)
        ranges = sorted(b.expected(7.0)[2] for b in boxes)
        gaps = [i for i in range(1, len(ranges)) if ranges[i] - ranges[i - 1] > 1e-3]
        assert gaps, ranges
        limit = (ranges[gaps[len(gaps) // 2] - 1] + ranges[gaps[len(gaps) // 2]]) / 2  # between two ranges
        with served.harness.parameters(NODE, obstacle_max_distance=limit):
            seen = len(served.markers.messages)
            array = publish_until(lambda: send(served, 4051, depth), lambda: depth_array(served, 4051, seen), 30,
                                  period=1.0)
    match(cubes(array), [b for b in boxes if b.expected(7.0)[2] <= limit], 7.0)


def test_track_match_distance_gates_the_id_of_a_moved_obstacle(served, several):
    """The same components 1 m deeper: within the gate they keep their ids, beyond it they get new ones; the gate
    grows by track_match_relative x the track's range."""
    def ids_at(sec: int, z: float) -> dict[int, np.ndarray]:
        seen = len(served.markers.messages)
        array = publish_until(lambda: send(served, sec, np.full((H, W), z, np.float32)),
                              lambda: depth_array(served, sec, seen), 30, period=1.0)
        return {m.id: np.array([m.pose.position.x, m.pose.position.y, m.pose.position.z]) for m in cubes(array)}

    with served.harness.parameters(NODE, threshold=several, max_obstacles=1000, obstacle_max_distance=1000.0,
                                   track_match_distance=1000.0):
        near = ids_at(4060, 7.0)
        far = ids_at(4061, 8.0)
        assert set(far) == set(near)  # a generous gate: every obstacle keeps an id of the last frame
        gap = min(float(np.linalg.norm(a - b)) for a in near.values() for b in far.values())
        assert gap > 0  # every centre moved (the range grew by 1 m)
        with served.harness.parameters(NODE, track_match_distance=gap / 2, track_match_relative=0.0):
            nearer = ids_at(4062, 7.0)
        # the same fixed part, plus gap / 7 per metre of range: every anchor lies >= 7 m away, so the gate >= 1.5 gap
        with served.harness.parameters(NODE, track_match_distance=gap / 2, track_match_relative=gap / 7.0):
            farther = ids_at(4063, 8.0)
    assert not set(nearer) & set(far) and min(nearer) > max(far)  # nothing within the gate: fresh ids
    assert set(farther) == set(nearer)  # within the range-grown gate: the ids go on


def test_depth_sync_tolerance_decides_whether_a_depth_image_is_used(served, several):
    depth = np.full((H, W), 7.0, np.float32)
    with served.harness.parameters(NODE, threshold=several, max_obstacles=1000, depth_sync_tolerance=0.1):
        seen = len(served.markers.messages)  # depth stamped 50 ms after the image: within 0.1 s, used
        publish_until(lambda: send(served, 4070, depth, depth_offset_ns=50_000_000),
                      lambda: depth_placed(markers_after(served, 4070, seen)), 30, period=1.0)
        with served.harness.parameters(NODE, depth_sync_tolerance=0.02):  # the same depth image is now too far off
            seen = len(served.markers.messages)
            array = publish_until(lambda: send(served, 4070), lambda: markers_after(served, 4070, seen), 30)
    assert not depth_placed(array)  # on the pitched ground plane instead (or nothing placeable)


def test_ground_plane_markers_stand_upright_in_the_pitched_camera(served, several):
    """No depth image: boxes stand on the ground, so each cube's up axis (its -y) is the world's up seen from a camera
    pitched down by PITCH: (0, -cos p, -sin p) in the optical frame; the label floats above it along that axis."""
    from visualization_msgs.msg import Marker

    with served.harness.parameters(NODE, threshold=several, max_obstacles=1000, obstacle_max_distance=1000.0,
                                   depth_sync_tolerance=0.0):
        seen = len(served.markers.messages)
        array = publish_until(lambda: send(served, 4080), lambda: with_cubes(markers_after(served, 4080, seen)), 30)
    up = np.array([0.0, -math.cos(PITCH), -math.sin(PITCH)])
    for m in cubes(array):
        q = np.array([m.pose.orientation.x, m.pose.orientation.y, m.pose.orientation.z, m.pose.orientation.w])
        x, y, z, w = q / np.linalg.norm(q)
        rotation = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                             [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                             [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
        np.testing.assert_allclose(rotation @ np.array([0.0, -1.0, 0.0]), up, atol=1e-9)
        np.testing.assert_allclose(rotation @ np.array([1.0, 0.0, 0.0]), [1.0, 0.0, 0.0], atol=1e-9)  # no roll
        # the bottom of the box touches the ground plane 1.5 m (camera_height) below the camera
        centre = np.array([m.pose.position.x, m.pose.position.y, m.pose.position.z])
        bottom = centre - up * m.scale.y / 2
        assert float(-up @ bottom) == pytest.approx(1.5, abs=1e-6)
        (label,) = [t for t in array.markers if t.type == Marker.TEXT_VIEW_FACING and t.id == m.id]
        lifted = np.array([label.pose.position.x, label.pose.position.y, label.pose.position.z]) - centre
        np.testing.assert_allclose(lifted, up * (m.scale.y / 2 + 0.3), atol=1e-6)


# ---------------------------------------------------------------- a node of its own: nobody listening, best-effort
# outputs, an exception inside inference
FAULT_WIDTH = 77
SITECUSTOMIZE = f'''
"""Fault injection for the test node (loaded at interpreter start-up through PYTHONPATH): the Predictor raises on
frames {FAULT_WIDTH} pixels wide, as a failing model would; every other frame goes through unchanged."""
from densehybrid_ros.predictor import Predictor

_predict_many = Predictor.predict_many


def predict_many(self, images, *args, **kwargs):
    if any(image.shape[1] == {FAULT_WIDTH} for image in images):
        raise RuntimeError("injected inference fault")
    return _predict_many(self, images, *args, **kwargs)


Predictor.predict_many = predict_many
'''


def test_no_subscriber_best_effort_outputs_and_an_exception_inside_inference(tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    namespace = f"{NAMESPACE}_fault"
    name = node_name(namespace)
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    node = node_process(tmp_path, f"weights:={calibrated_weights(tmp_path, 0.0)}", "output_reliability:=best_effort",
                        "qos_reliability:=reliable", "diagnostics_period:=0.3", name="fault", namespace=namespace,
                        env={"PYTHONPATH": str(tmp_path / "inject")})
    harness = Harness("fault")
    try:
        diagnostics = harness.collector(DiagnosticArray, "/diagnostics")
        image_pub = harness.publisher(Image, f"{namespace}/image")
        info_pub = harness.publisher(CameraInfo, f"{namespace}/camera_info")
        wait_until(lambda: image_pub.get_subscription_count() > 0 or not node.alive(), 60, message="node active")
        assert node.alive(), node.text()

        def totals():
            values = status_values(diagnostics, name)
            return None if values is None else {k: int(values[f"{k} (total)"]) for k in
                                                ("received", "processed", "errors", "idle, no subscribers")}

        def send(sec: int, image: np.ndarray) -> None:
            info_pub.publish(camera_info_message(image.shape[1], image.shape[0], F, sec, FRAME))
            image_pub.publish(image_message(image, sec, FRAME))
        # nobody subscribes to any output: frames are received but never run through the model
        publish_until(lambda: send(5000, scene_image()), lambda: (totals() or {}).get("idle, no subscribers", 0) >= 1,
                      30, period=2.0)
        assert totals()["processed"] == 0
        # the outputs are best effort: a best-effort subscriber gets them, a reliable one is never matched
        best_effort = harness.collector(Image, f"{name}/semantic", reliable=False)
        reliable = harness.collector(Image, f"{name}/semantic", reliable=True)
        wait_until(lambda: harness.node.count_publishers(f"{name}/semantic") > 0, 30)
        (info,) = harness.node.get_publishers_info_by_topic(f"{name}/semantic")
        assert info.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
        publish_until(lambda: send(5001, scene_image()), lambda: best_effort.with_stamp(5001), 30)
        # an exception inside inference: counted and reported, and the node serves the next frame
        faulty = np.zeros((H, FAULT_WIDTH, 3), np.uint8)
        publish_until(lambda: send(5002, faulty), lambda: (totals() or {}).get("errors", 0) >= 1, 30, period=2.0)
        assert "injected inference fault" in status_values(diagnostics, name)["last error"]
        publish_until(lambda: send(5003, scene_image()), lambda: best_effort.with_stamp(5003), 30)
        assert not best_effort.with_stamp(5002) and node.alive()
        assert reliable.messages == []  # incompatible QoS: never matched, never delivered
        assert "frame failed: RuntimeError: injected inference fault" in node.text()
    finally:
        harness.close()
    assert node.stop() == 0 and "Traceback" not in node.text(), node.text()
