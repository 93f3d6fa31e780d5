"""The perception node as a separate process over real DDS: outputs, runtime parameters, bad input, lifecycle.

One node process serves the first group of tests (started once per module, with config/perception.yaml and
overrides); the lifecycle test starts its own. Weights: the suite's tiny random model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import TINY, randomize_batchnorm
from test_node_support import (
    NAMESPACE,
    NODE,
    PER_FRAME_OBSTACLES,
    ROOT,
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

H, W = 64, 96
FRAME = "camera_optical_frame"
OUTPUTS = {"semantic": ("mono8", 1), "semantic_color": ("rgb8", 3), "anomaly_score": ("32FC1", 4),
           "open_set": ("mono8", 1), "overlay": ("rgb8", 3)}


def tiny_weights_file(directory: Path) -> Path:
    from densehybrid_ros.models import build_model
    from densehybrid_ros.weights import default_metadata, save_weights

    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(TINY)).eval()
    return save_weights(directory / "tiny.safetensors", model, default_metadata(TINY))


def scene_image() -> np.ndarray:
    rng = np.random.default_rng(3)
    image = cv2.resize(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8), (W, H), interpolation=cv2.INTER_LINEAR)
    image[40:60, 30:50] = (250, 20, 200)  # an odd patch low in the image
    return image


def pixels(msg) -> np.ndarray:
    dtype = np.float32 if msg.encoding == "32FC1" else np.uint8
    channels = 3 if msg.encoding == "rgb8" else 1
    data = np.frombuffer(msg.data, dtype)
    return data.reshape(msg.height, msg.width, channels) if channels > 1 else data.reshape(msg.height, msg.width)


@dataclass
class Served:
    harness: Harness
    node: object
    outputs: dict
    markers: object
    diagnostics: object
    image_pub: object
    info_pub: object
    threshold: float
    reference: object  # the Predictor's output on scene_image() in this process
    weights: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CameraInfo, Image
    from visualization_msgs.msg import MarkerArray

    from densehybrid_ros.predictor import Predictor

    tmp = tmp_path_factory.mktemp("node")
    weights = tiny_weights_file(tmp)
    reference = Predictor.from_weights(weights).predict(scene_image())
    threshold = float(np.quantile(reference.hybrid, 0.7))
    node = node_process(tmp, f"weights:={weights}", f"threshold:={threshold!r}", "min_obstacle_area:=10",
                        "camera_pitch:=0.2", "diagnostics_period:=0.5", "marker_lifetime:=2.0",
                        params_file=ROOT / "config" / "perception.yaml")
    harness = Harness("served")
    try:
        outputs = {name: harness.collector(Image, f"{NODE}/{name}") for name in OUTPUTS}
        markers = harness.collector(MarkerArray, f"{NODE}/obstacles")
        diagnostics = harness.collector(DiagnosticArray, "/diagnostics")
        image_pub = harness.publisher(Image, f"{NAMESPACE}/image")
        info_pub = harness.publisher(CameraInfo, f"{NAMESPACE}/camera_info")
        # active = it subscribed to our image topic and its outputs matched our collectors
        wait_until(lambda: image_pub.get_subscription_count() > 0 or not node.alive(), 60, message="node subscription")
        assert node.alive(), node.text()
        wait_until(lambda: all(harness.node.count_publishers(c.topic) for c in outputs.values()), 30)
        yield Served(harness, node, outputs, markers, diagnostics, image_pub, info_pub, threshold, reference, weights)
    finally:
        node.stop()
        harness.close()


def send(served: Served, sec: int, image: np.ndarray | None = None, encoding: str = "rgb8", **overrides) -> None:
    image = scene_image() if image is None else image
    served.info_pub.publish(camera_info_message(W, H, 60.0, sec, FRAME))
    served.image_pub.publish(image_message(image, sec, FRAME, encoding, **overrides))


def answered(served: Served, sec: int, names=("semantic",)):
    found = [served.outputs[n].with_stamp(sec) for n in names]
    return [f[-1] for f in found] if all(found) else None


def markers_with_stamp(served: Served, sec: int):
    arrays = served.markers.matching(lambda a: any(m.header.stamp.sec == sec for m in a.markers))
    return arrays[-1] if arrays else None


def test_every_output_carries_the_input_header_at_camera_resolution(served):
    from visualization_msgs.msg import Marker

    got = publish_until(lambda: send(served, 1001),
                        lambda: answered(served, 1001, tuple(OUTPUTS)) if markers_with_stamp(served, 1001) else None, 30)
    msgs = dict(zip(OUTPUTS, got))
    for name, (encoding, bytes_per_pixel) in OUTPUTS.items():
        msg = msgs[name]
        assert msg.header.frame_id == FRAME and msg.header.stamp.nanosec == 0, name
        assert (msg.encoding, msg.height, msg.width, msg.step) == (encoding, H, W, W * bytes_per_pixel), name
        assert len(msg.data) == H * W * bytes_per_pixel
    semantic, score, open_set = pixels(msgs["semantic"]), pixels(msgs["anomaly_score"]), pixels(msgs["open_set"])
    k = TINY.num_classes
    assert semantic.max() < k and np.isfinite(score).all()
    # the node runs the same Predictor: same class ids and scores as in this process
    assert (semantic == served.reference.class_ids).mean() > 0.99
    np.testing.assert_allclose(score, served.reference.hybrid, atol=1e-3)
    # open set = class ids, overridden with K where s_H >= threshold (thesis 4.2.2), away from ties
    expected = np.where(score >= np.float32(served.threshold), k, semantic)
    clear = np.abs(score - served.threshold) > 1e-4
    np.testing.assert_array_equal(open_set[clear], expected[clear])
    assert 0.1 < (open_set == k).mean() < 0.5
    colors = pixels(msgs["semantic_color"])
    assert len({tuple(c) for c in colors[semantic == semantic.flat[0]]}) == 1  # one colour per class
    # obstacle markers: in the image frame, one CUBE + one TEXT per id, lifetime from the parameter
    array = markers_with_stamp(served, 1001)
    adds = [m for m in array.markers if m.action == Marker.ADD]
    assert adds and all(m.header.frame_id == FRAME and m.header.stamp.sec == 1001 for m in adds)
    cubes = {m.id: m for m in adds if m.ns == "obstacles" and m.type == Marker.CUBE}
    texts = {m.id: m for m in adds if m.ns == "obstacle_labels" and m.type == Marker.TEXT_VIEW_FACING}
    assert cubes.keys() == texts.keys()
    for m in cubes.values():
        assert m.pose.position.z > 0 and min(m.scale.x, m.scale.y, m.scale.z) > 0
        assert (m.lifetime.sec, m.lifetime.nanosec) == (2, 0)
        assert f"#{m.id} " in texts[m.id].text and " m" in texts[m.id].text


def test_node_open_set_and_evaluate_flag_the_same_pixels_at_an_attained_threshold(served, one_torch_thread):
    """One threshold rule (score >= t): at a threshold equal to a score the node produced (where `>` and `>=` differ),
    the node's ~/open_set over DDS and evaluate()'s open-set map flag the same pixels. evaluate() is given the node's
    open-set map as ground truth: its (K+1)-way confusion is then diagonal (mean F1 = 1) exactly when the two agree."""
    from densehybrid_ros.datasets.base import OOD_ANOMALY, OOD_INLIER, EvalSample
    from densehybrid_ros.evaluation.evaluate import EvalOptions, evaluate
    from densehybrid_ros.predictor import Predictor

    k = TINY.num_classes
    probe = publish_until(lambda: send(served, 1040), lambda: answered(served, 1040, ("anomaly_score",)), 20)[0]
    scores = pixels(probe)
    t = float(np.sort(scores, axis=None)[scores.size // 2])  # an attained score: > t and >= t differ at its pixels
    ties = scores == np.float32(t)
    assert ties.any()
    with served.harness.parameters(threshold=t):
        msgs = publish_until(lambda: send(served, 1041),
                             lambda: answered(served, 1041, ("semantic", "anomaly_score", "open_set")), 20)
    semantic, score, open_set = (pixels(m) for m in msgs)
    np.testing.assert_array_equal(score, scores)  # the same frame, the same scores
    # the node's rule, by numpy: unknown exactly where score >= t (the tied pixels included)
    np.testing.assert_array_equal(open_set, np.where(score >= np.float32(t), k, semantic))
    assert (open_set[ties] == k).all() and not np.array_equal(open_set, np.where(score > np.float32(t), k, semantic))
    # evaluate() in this process (one thread, as the node): bit-identical scores and classes, then the same open set
    predictor = Predictor.from_weights(served.weights)
    local = predictor.predict(scene_image())
    np.testing.assert_array_equal(local.hybrid, score)
    np.testing.assert_array_equal(local.class_ids, semantic)

    class NodeOpenSetAsTruth:
        kind, split, root, classes = "node_open_set", "test", Path("."), [c.name for c in predictor.metadata.classes]

        def __len__(self):
            return 1

        def __getitem__(self, i):
            ood = np.where(open_set == k, OOD_ANOMALY, OOD_INLIER).astype(np.uint8)
            return EvalSample(name="1041", image=scene_image(), ood=ood, semantic=open_set.copy())

    metrics = evaluate(predictor, NodeOpenSetAsTruth(), EvalOptions(threshold=t), progress=False).metrics
    assert metrics["open_set"]["threshold"] == t
    assert metrics["open_set"]["mean_f1"] == 1.0, metrics["open_set"]


def test_bgr8_input_gives_the_same_segmentation(served):
    rgb_msg = publish_until(lambda: send(served, 1002), lambda: answered(served, 1002), 20)[0]
    bgr_msg = publish_until(lambda: send(served, 1003, scene_image()[..., ::-1].copy(), "bgr8"),
                            lambda: answered(served, 1003), 20)[0]
    np.testing.assert_array_equal(pixels(bgr_msg), pixels(rgb_msg))


def test_obstacle_ids_are_stable_and_vanished_ones_deleted(served):
    from visualization_msgs.msg import Marker

    first = publish_until(lambda: send(served, 1010), lambda: markers_with_stamp(served, 1010), 20)
    second = publish_until(lambda: send(served, 1011), lambda: markers_with_stamp(served, 1011), 20)
    ids = lambda a: {m.id for m in a.markers if m.action == Marker.ADD and m.ns == "obstacles"}  # noqa: E731
    assert ids(first) and ids(second) == ids(first)  # same scene -> same ids
    with served.harness.parameters(threshold=1e6):
        def deleted():
            arrays = served.markers.matching(lambda a: any(m.action == Marker.DELETE for m in a.markers))
            return {(m.ns, m.id) for a in arrays for m in a.markers if m.action == Marker.DELETE}
        # nothing flagged any more: frames are sent until the obstacles' markers are deleted
        publish_until(lambda: send(served, 1012),
                      lambda: deleted() >= {(ns, i) for i in ids(first) for ns in ("obstacles", "obstacle_labels")}, 30)


def test_runtime_threshold_changes_the_open_set_and_bad_values_are_rejected(served):
    k = TINY.num_classes
    with served.harness.parameters(threshold=1e6):
        none = publish_until(lambda: send(served, 1020), lambda: answered(served, 1020, ("open_set",)), 20)[0]
    assert (pixels(none) < k).all()
    with served.harness.parameters(threshold=-1e6):
        every = publish_until(lambda: send(served, 1021), lambda: answered(served, 1021, ("open_set",)), 20)[0]
    assert (pixels(every) == k).all()
    for values, reason in ((dict(threshold=math.inf), "finite"), (dict(min_obstacle_area=0), ""),
                           (dict(weights="/elsewhere.safetensors"), "cleanup"), (dict(camera_height="high"), "")):
        (result,) = served.harness.set_parameters(**values)
        assert not result.successful and reason in result.reason, (values, result.reason)
    back = publish_until(lambda: send(served, 1022), lambda: answered(served, 1022, ("open_set",)), 20)[0]
    assert 0 < (pixels(back) == k).mean() < 1


def test_bad_frames_are_rejected_and_the_node_keeps_serving(served):
    image = scene_image()
    payload = H * W * 3
    bad = {  # kind -> (message overrides, the reason the node must give)
        "unsupported encoding": (dict(encoding="8UC3"), "unsupported encoding '8UC3'"),
        "truncated data": (dict(data=image_message(image, 0).data[:-100]), f"truncated data: {payload - 100} bytes"),
        "zero size": (dict(width=0, height=0, step=0, data=image_message(image[:0], 0).data),
                      "zero-size image: width 0, height 0"),
        "wrong step": (dict(step=W * 3 - 1), f"step {W * 3 - 1} is smaller than width {W}"),
        "height larger than the data": (dict(height=H + 5), f"step {W * 3} x height {H + 5} = {W * 3 * (H + 5)}"),
    }
    before = quiet(served)
    for i, (kind, (overrides, reason)) in enumerate(bad.items()):
        overrides = dict(overrides)
        encoding = overrides.pop("encoding", "rgb8")
        # sent (again, should best-effort transport lose it) until /diagnostics names this frame's rejection; a good
        # frame goes only after that, so it can never replace the bad one in the node's mailbox
        publish_until(lambda: send(served, 2000 + i, image, encoding, **overrides),
                      lambda: reason in (status_values(served.diagnostics) or {}).get("last rejection", ""), 30,
                      period=2.0)
        publish_until(lambda: send(served, 3000 + i), lambda: answered(served, 3000 + i), 20)
        assert served.node.alive(), (kind, served.node.text())
        assert not any(c.with_stamp(2000 + i) for c in served.outputs.values()), kind
    after = quiet(served)
    assert after["rejected"] - before["rejected"] >= len(bad) and after["errors"] == before["errors"]
    assert "rejected frame" in served.node.text()


def quiet(served: Served) -> dict[str, int]:
    """The node's counters with nothing in flight (test_node_support.wait_for_quiet on its ~/semantic answers)."""
    return wait_for_quiet(served.diagnostics, {None: served.outputs["semantic"]})[None]


def test_diagnostics_report_counters_latency_and_threshold(served):
    """The node's counters against the frames answered here, its stamp-to-publish latency against the time measured
    here (same host clock), and the threshold in force."""
    import time

    before = quiet(served)
    reports_before = len(served.diagnostics.messages)
    stamps = set()
    first_ns = time.time_ns()
    for _ in range(4):
        sec, nanosec = divmod(time.time_ns(), 10**9)

        def publish():
            served.info_pub.publish(camera_info_message(W, H, 60.0, sec, FRAME))
            served.image_pub.publish(image_message(scene_image(), sec, FRAME, nanosec=nanosec))
        # one frame at a time, re-sent only after 10 s without an answer (a frame lost in transport)
        publish_until(publish, lambda: served.outputs["semantic"].with_stamp(sec, nanosec), 40, period=10.0)
        stamps.add((sec, nanosec))
    after = quiet(served)
    delta = {k: after[k] - before[k] for k in after}
    ours = len(served.outputs["semantic"].matching(lambda m: (m.header.stamp.sec, m.header.stamp.nanosec) in stamps))
    assert delta["processed"] >= ours >= 4
    assert delta["dropped"] == delta["rejected"] == delta["errors"] == delta["idle, no subscribers"] == 0, delta
    assert delta["received"] == delta["processed"]
    # latency = publish time - stamp (the send time here, same host clock): positive, shorter than the time since the
    # first send, and at least the frame's processing time (the frame arrived after its stamp); same windows
    elapsed_ms = (time.time_ns() - first_ns) / 1e6
    reports = [dict((v.key, v.value) for v in st.values) for a in served.diagnostics.messages[reports_before:]
               for st in a.status if st.name.startswith(f"{NODE}:")]
    windows = [r for r in reports if r["latency max [ms]"] != "nan"]
    assert windows
    for r in windows:
        assert 0 < float(r["latency max [ms]"]) <= elapsed_ms, (r, elapsed_ms)
        assert float(r["latency mean [ms]"]) >= float(r["processing mean [ms]"]) - 1.0, r
    values = status_values(served.diagnostics)
    assert values["state"] == "active" and values["threshold source"] == "parameter"
    assert values["class bias"] == "none (plain argmax)"  # these weights hold none
    assert float(values["threshold"]) == pytest.approx(served.threshold, rel=1e-5)
    assert values["camera_info"] == "received" and values["image topic"] == f"{NAMESPACE}/image"
    status = [st for a in served.diagnostics.messages for st in a.status if st.name.startswith(f"{NODE}:")][-1]
    assert status.hardware_id == "cpu"


def test_sigint_stops_the_node_cleanly(tmp_path):
    """A node of its own (the module's node serves the other tests until the module ends)."""
    from sensor_msgs.msg import Image

    namespace = f"{NAMESPACE}_sigint"
    node = node_process(tmp_path, f"weights:={tiny_weights_file(tmp_path)}", name="sigint", namespace=namespace)
    harness = Harness("sigint")
    try:
        image_pub = harness.publisher(Image, f"{namespace}/image")
        wait_until(lambda: image_pub.get_subscription_count() > 0 or not node.alive(), 60, message="node active")
        assert node.alive(), node.text()
    finally:
        harness.close()
    assert node.stop() == 0
    assert "Traceback" not in node.text(), node.text()


def test_lifecycle_transitions_through_the_services(tmp_path):
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image
    from visualization_msgs.msg import Marker, MarkerArray

    weights = tiny_weights_file(tmp_path)
    namespace = f"{NAMESPACE}_lifecycle"  # not the module node's
    name = node_name(namespace)
    node = node_process(tmp_path, "autostart:=false", "weights:=/nonexistent/model.safetensors",
                        "use_compressed:=true", "threshold:=-1000000.0", f"depth_topic:={namespace}/depth",
                        *PER_FRAME_OBSTACLES, name="lifecycle", namespace=namespace)  # any size: the whole image
    harness = Harness("lifecycle")
    try:
        semantic = harness.collector(Image, f"{name}/semantic")
        markers = harness.collector(MarkerArray, f"{name}/obstacles")
        compressed = harness.publisher(CompressedImage, f"{namespace}/image/compressed")
        info_pub = harness.publisher(CameraInfo, f"{namespace}/camera_info")
        depth_pub = harness.publisher(Image, f"{namespace}/depth")
        assert harness.get_state(name) == "unconfigured"
        # configure fails cleanly on a bad weights path: FAILURE, still unconfigured, process alive
        assert harness.change_state("configure", name) is False
        assert harness.get_state(name) == "unconfigured" and node.alive()
        assert "weights file not found" in node.text()
        (result,) = harness.set_parameters(name, weights=str(weights))
        assert result.successful, result.reason
        assert harness.change_state("configure", name) is True and harness.get_state(name) == "inactive"
        assert not harness.set_parameters(name, use_compressed=False)[0].successful  # read at configure
        assert compressed.get_subscription_count() == 0  # inactive: no input subscription
        assert harness.change_state("activate", name) is True and harness.get_state(name) == "active"
        wait_until(lambda: compressed.get_subscription_count() > 0, 20)
        ok, jpeg = cv2.imencode(".jpg", scene_image())
        msg = CompressedImage(format="jpeg")
        msg.header.stamp.sec, msg.header.frame_id = 500, FRAME
        msg.data = jpeg.tobytes()
        out = publish_until(lambda: compressed.publish(msg), lambda: semantic.with_stamp(500), 20)[-1]
        assert (out.height, out.width, out.header.frame_id) == (H, W, FRAME)
        # no camera_info: markers are published without obstacles, and one warning says why
        wait_until(lambda: markers.messages, 10)
        assert all(not a.markers for a in markers.messages)
        assert node.text().count("no camera_info received yet") == 1
        # with camera_info and a depth image of the same stamp (7 m everywhere), the obstacle (threshold
        # -1e6: the whole image) sits at the depth: centroid ray through the principal point -> 7.0 m
        depth = image_message(np.full((H, W), 7.0, np.float32)[..., None], 501, FRAME, "32FC1")
        msg.header.stamp.sec = 501

        def send_with_depth():
            info_pub.publish(camera_info_message(W, H, 60.0, 501, FRAME))
            depth_pub.publish(depth)
            compressed.publish(msg)

        def labels():
            return [m.text for a in markers.messages for m in a.markers
                    if m.type == Marker.TEXT_VIEW_FACING and m.header.stamp.sec == 501]
        assert any(text.endswith("| 7.0 m") for text in publish_until(send_with_depth, labels, 20)), labels()
        assert harness.change_state("deactivate", name) is True and harness.get_state(name) == "inactive"
        wait_until(lambda: compressed.get_subscription_count() == 0, 10)
        assert harness.change_state("cleanup", name) is True and harness.get_state(name) == "unconfigured"
        assert harness.change_state("shutdown", name) is True
        wait_until(lambda: not node.alive(), 15, message="the node to exit after shutdown")
        assert node.proc.returncode == 0 and "Traceback" not in node.text(), node.text()
    finally:
        node.stop()
        harness.close()
