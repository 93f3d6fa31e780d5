"""The perception node as its own process over real DDS: the weights' low-false-alarm operating point by default, the
`operating_point` parameter switching it, and obstacles confirmed across frames (a one-frame blip never published,
a persistent obstacle published one frame after it appears, one reaching the instant confirmation point at once,
with one stable id, its last view held through the miss budget with hold_missed_obstacles, then dropped).

The node runs the oracle model of test_node_planner_outputs (ONNX, backend onnxruntime): its hybrid score is the
normalised red channel of the image, s = (r - 0.485 * 255) / (0.229 * 255), and every pixel's class is 0 ("road"),
so the expectations are worked out here from the red values of the images sent. The oracle's weights metadata gets
three operating points: tpr95 at s = 0 (r >= 124), fpr1 at s = 1 (r >= 183), default fpr1, and f1 at s = 2
(r >= 241), the default instant_confirm_point: a new obstacle reaching it is published at once.

Camera: f = 128 px at 256x128, principal point at the centre (127.5, 63.5), 1.5 m high, level. A contact at bottom
edge v lies 1.5 * 128 / (v - 63.5) m ahead, and a span of n pixels there is n * z / 128 m.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest

from test_node_planner_outputs import decode_cloud, oracle_onnx
from test_node_support import (
    NAMESPACE,
    Harness,
    camera_info_message,
    image_message,
    node_name,
    node_process,
    publish_until,
    status_values,
    wait_until,
)

W, H, F = 256, 128, 128.0
CX, CY = (W - 1) / 2, (H - 1) / 2
UNKNOWN = 15  # the sim world's 15 classes: unknown is class 15
RED_TPR95, RED_FPR1 = 124, 183  # smallest red values flagged at s >= 0 and at s >= 1
FRAME = "camera_optical_frame"
NS = f"{NAMESPACE}_points"
NODE = node_name(NS)
# persistent obstacle P: rows 72..87, columns 100..115 -> contact at v = 87.5, z = 8 m; 1 m wide, 1 m tall
# one-frame blip B: rows 80..95, columns 180..195 -> z = 6 m, 0.75 m wide and tall; 4.5 m from P's ground contact
P_ROWS, P_COLS = (72, 88), (100, 116)
B_ROWS, B_COLS = (80, 96), (180, 196)
RED_WEAK = 200  # s = 1.31: flagged at fpr1 (s >= 1), below the instant confirmation point f1 (s >= 2)


def oracle_with_operating_points(path):
    """The oracle model with tpr95 (s = 0), fpr1 (s = 1, the default) and f1 (s = 2: the node's instant confirmation
    point) in its embedded weights metadata."""
    import onnx

    from densehybrid_ros.onnx_backend import read_onnx_metadata
    from densehybrid_ros.weights import METADATA_KEY, Calibration, OperatingPoint

    oracle_onnx(path, W, H)
    calibration = Calibration(threshold=0.0, method="tpr95", operating_points={
        "tpr95": OperatingPoint(0.0, "TPR 95% (test)"), "fpr1": OperatingPoint(1.0, "FPR 1% (test)"),
        "f1": OperatingPoint(2.0, "best F1 (test)")}, default="fpr1")
    metadata = dataclasses.replace(read_onnx_metadata(path), calibration=calibration)
    model = onnx.load(str(path))
    (entry,) = [p for p in model.metadata_props if p.key == METADATA_KEY]
    entry.value = metadata.to_json()
    onnx.save(model, str(path))
    return path


@dataclass
class Served:
    harness: Harness
    node: object
    open_set: object
    points: object
    markers: object
    diagnostics: object
    image_pub: object
    info_pub: object

    def send(self, sec: int, image: np.ndarray) -> None:
        self.info_pub.publish(camera_info_message(W, H, F, sec, FRAME))
        self.image_pub.publish(image_message(image, sec, FRAME))

    def frame(self, sec: int, image: np.ndarray):
        """Send one frame once (reliable inputs) and return its ~/obstacle_points cloud once answered."""
        self.send(sec, image)
        return wait_until(lambda: (self.points.with_stamp(sec) or [None])[-1], 60, message=f"points of frame {sec}")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from visualization_msgs.msg import MarkerArray

    tmp = tmp_path_factory.mktemp("points")
    model = oracle_with_operating_points(tmp / "oracle.onnx")
    node = node_process(tmp, "backend:=onnxruntime", f"onnx_model:={model}", "min_obstacle_area:=20",
                        "qos_reliability:=reliable", "qos_depth:=10", "marker_lifetime:=0.0", "diagnostics_period:=0.3",
                        name="points", namespace=NS)
    harness = Harness("points")
    try:
        served = Served(harness, node, harness.collector(Image, f"{NODE}/open_set"),
                        harness.collector(PointCloud2, f"{NODE}/obstacle_points"),
                        harness.collector(MarkerArray, f"{NODE}/obstacles"),
                        harness.collector(DiagnosticArray, "/diagnostics"),
                        harness.publisher(Image, f"{NS}/image"), harness.publisher(CameraInfo, f"{NS}/camera_info"))
        wait_until(lambda: served.image_pub.get_subscription_count() > 0 or not node.alive(), 60, message="node active")
        assert node.alive(), node.text()
        wait_until(lambda: harness.node.count_publishers(served.points.topic) > 0, 30)
        # the camera model has arrived once a black frame is answered with a cloud (nothing is flagged in it)
        publish_until(lambda: served.send(1, black()), lambda: served.points.with_stamp(1), 60)
        yield served
    finally:
        node.stop()
        harness.close()


def black() -> np.ndarray:
    return np.zeros((H, W, 3), np.uint8)


def gradient() -> np.ndarray:
    """Red rising 0..255 across the columns in the top 40 rows (above the horizon: no ground contact, no obstacle)."""
    image = black()
    image[:40, :, 0] = np.round(np.linspace(0, 255, W)).astype(np.uint8)
    return image


def open_set_of(served: Served, sec: int, image: np.ndarray) -> np.ndarray:
    msg = publish_until(lambda: served.send(sec, image), lambda: (served.open_set.with_stamp(sec) or [None])[-1], 30)
    return np.frombuffer(bytes(msg.data), np.uint8).reshape(H, W)


def flagged_where(red_min: int) -> np.ndarray:
    """The open-set map expected from the red channel alone: unknown where red >= red_min, else class 0."""
    return np.where(gradient()[..., 0] >= red_min, UNKNOWN, 0).astype(np.uint8)


def test_the_low_false_alarm_point_by_default_and_operating_point_switches_it(served):
    np.testing.assert_array_equal(open_set_of(served, 100, gradient()), flagged_where(RED_FPR1))
    wait_until(lambda: (status_values(served.diagnostics, NODE) or {}).get("threshold source")
               == "operating point fpr1 (weights default)", 10)
    assert float(status_values(served.diagnostics, NODE)["threshold"]) == 1.0
    with served.harness.parameters(NODE, operating_point="tpr95"):
        np.testing.assert_array_equal(open_set_of(served, 101, gradient()), flagged_where(RED_TPR95))
        wait_until(lambda: (status_values(served.diagnostics, NODE) or {}).get("threshold source")
                   == "operating point tpr95 (parameter)", 10)
        with served.harness.parameters(NODE, threshold=2.0):  # an explicit threshold wins: r >= 0.485*255 + 2*0.229*255
            np.testing.assert_array_equal(open_set_of(served, 102, gradient()), flagged_where(241))
    for name in ("operating_point", "instant_confirm_point"):  # a point the weights lack: rejected, the held named
        (result,) = served.harness.set_parameters(NODE, **{name: "fpr5"})
        assert not result.successful and "'fpr5' is not in the weights" in result.reason and "tpr95" in result.reason
    np.testing.assert_array_equal(open_set_of(served, 103, gradient()), flagged_where(RED_FPR1))  # unchanged


def with_boxes(*boxes: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    image = black()
    for rows, cols in boxes:
        image[rows[0]:rows[1], cols[0]:cols[1]] = 255
    return image


def pixels_of(cloud: dict) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) image positions of the cloud's points (pinhole projection)."""
    return F * cloud["x"] / cloud["z"] + CX, F * cloud["y"] / cloud["z"] + CY


def inside(u: np.ndarray, v: np.ndarray, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    return (u > cols[0] - 0.5) & (u < cols[1] - 0.5) & (v > rows[0] - 0.5) & (v < rows[1] - 0.5)


def test_a_one_frame_blip_is_never_published_a_persistent_obstacle_is_with_a_stable_id(served):
    from visualization_msgs.msg import Marker

    def cubes(sec: int) -> set[int]:
        arrays = served.markers.matching(lambda a: True)
        return {m.id for a in arrays for m in a.markers
                if m.action == Marker.ADD and m.ns == "obstacles" and m.header.stamp.sec == sec}

    def deleted() -> set[int]:
        return {m.id for a in served.markers.matching(lambda a: True) for m in a.markers
                if m.action == Marker.DELETE and m.ns == "obstacles"}

    # the N-of-M rule alone: instant confirmation off (the boxes, red 255, s = 2.25, would reach f1)
    with served.harness.parameters(NODE, instant_confirm_point=""):
        for sec in (7, 8, 9):  # nothing flagged for three frames: no track of an earlier test survives (miss budget 2)
            served.frame(sec, black())
        scene = {10: with_boxes((P_ROWS, P_COLS), (B_ROWS, B_COLS)), 11: with_boxes((P_ROWS, P_COLS)),
                 12: with_boxes((P_ROWS, P_COLS)), 13: with_boxes((P_ROWS, P_COLS)),
                 14: black(), 15: black(), 16: black()}
        with served.harness.parameters(NODE, hold_missed_obstacles=True):
            clouds = {sec: decode_cloud(served.frame(sec, image)) for sec, image in scene.items()}
        # frame 10: P and B seen once: neither is published yet (added latency: confirm_hits - 1 = 1 frame)
        assert clouds[10]["x"].size == 0
        ids = set()
        for sec in (11, 12, 13):  # P in 2 of the last 3 frames: published, every point on P's pixels 8 m ahead
            cloud = clouds[sec]
            u, v = pixels_of(cloud)
            assert cloud["x"].size == 16 * 16 and inside(u, v, P_ROWS, P_COLS).all(), sec
            np.testing.assert_allclose(cloud["z"], 8.0, atol=1e-4)
            ids |= set(cloud["obstacle_id"].tolist())
        assert len(ids) == 1  # one obstacle, one id over the frames
        (p_id,) = ids
        for sec in (14, 15, 16):  # P gone: no points of it in this frame
            assert clouds[sec]["x"].size == 0
        # markers: P from frame 11 on, its last box held through 2 missed frames (14, 15: hold_missed_obstacles),
        # deleted at the third (16)
        wait_until(lambda: p_id in deleted(), 30, message=f"DELETE of obstacle {p_id}")
        assert [cubes(sec) for sec in range(10, 17)] == [set(), {p_id}, {p_id}, {p_id}, {p_id}, {p_id}, set()]
        # the blip: no point of any frame lies on B's pixels, and no marker but P's was ever added in this sequence
        for cloud in clouds.values():
            assert not inside(*pixels_of(cloud), B_ROWS, B_COLS).any()

        # the default (hold_missed_obstacles false): a missed frame publishes no box of P, but its track and id go on
        for sec in (17, 18, 19):
            served.frame(sec, black())
        again = {20: with_boxes((P_ROWS, P_COLS)), 21: with_boxes((P_ROWS, P_COLS)), 22: black(),
                 23: with_boxes((P_ROWS, P_COLS))}
        for sec, image in again.items():
            served.frame(sec, image)
        wait_until(lambda: cubes(23), 30, message="the obstacle's marker at frame 23")
        (q_id,) = cubes(21)
        assert q_id != p_id  # dropped ids are never reused
        assert [cubes(sec) for sec in range(20, 24)] == [set(), {q_id}, set(), {q_id}]  # back under the same id


def test_an_obstacle_reaching_the_instant_point_is_published_at_once_a_weak_blip_is_not(served):
    """instant_confirm_point f1 (the default): P (red 255, s = 2.25 >= 2) is published in the frame it first appears,
    the weak blip B (red 200, s = 1.31: flagged, below f1) in none."""
    for sec in (30, 31, 32):  # nothing flagged for three frames: no track of an earlier test survives
        served.frame(sec, black())
    image = with_boxes((P_ROWS, P_COLS))
    image[B_ROWS[0]:B_ROWS[1], B_COLS[0]:B_COLS[1], 0] = RED_WEAK
    first = decode_cloud(served.frame(33, image))
    u, v = pixels_of(first)
    assert first["x"].size == 16 * 16 and inside(u, v, P_ROWS, P_COLS).all()
    np.testing.assert_allclose(first["z"], 8.0, atol=1e-4)
    assert len(set(first["obstacle_id"].tolist())) == 1
    assert not inside(u, v, B_ROWS, B_COLS).any()
    after = decode_cloud(served.frame(34, black()))  # B gone after one frame: never published
    assert after["x"].size == 0
