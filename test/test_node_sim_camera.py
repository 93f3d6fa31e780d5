"""densehybrid-sim-camera as a separate process over real DDS: one header per frame on every topic, encodings and
sizes, the rendered pixels equal to the sim's own frames, and the camera mount pushed to a perception node."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from test_node_support import NAMESPACE, Harness, Process, wait_until

W, H = 128, 64
SEED, FRAMES, RATE, SPEED = 1, 6, 20.0, 8.0
CAMERA = f"{NAMESPACE}/sim_camera"
TOPICS = ("image_raw", "camera_info", "labels", "depth", "anomalies")


@pytest.fixture(scope="module")
def sim_frames():
    from densehybrid_ros.sim.frames import driving_sequence
    from densehybrid_ros.sim.world import SimConfig, SimWorld

    with SimWorld(dataclasses.replace(SimConfig(), width=W, height=H)) as world:
        return list(driving_sequence(world, SEED, "test", FRAMES, RATE, SPEED))


def pixels(msg, dtype, channels=1) -> np.ndarray:
    data = np.frombuffer(bytes(msg.data), dtype)
    shape = (msg.height, msg.width, channels) if channels > 1 else (msg.height, msg.width)
    return data.reshape(shape)


def test_sim_camera_publishes_one_header_per_frame_with_the_sim_frames(tmp_path, sim_frames):
    from sensor_msgs.msg import CameraInfo, Image
    from visualization_msgs.msg import MarkerArray

    from densehybrid_ros.node.sim_camera import node_mount

    harness = Harness("simcam")
    # stands in for the perception node: the camera sets these through the standard parameter service
    for name in ("camera_height", "camera_pitch", "camera_roll"):
        harness.node.declare_parameter(name, 0.0)
    target = harness.node.get_fully_qualified_name()
    camera = None
    try:
        types = {"image_raw": Image, "camera_info": CameraInfo, "labels": Image, "depth": Image, "anomalies": MarkerArray}
        collectors = {name: harness.collector(types[name], f"{CAMERA}/{name}") for name in TOPICS}
        camera = Process(["-m", "densehybrid_ros.node.sim_camera", "--ros-args", "-r", f"__ns:={NAMESPACE}",
                          "-p", f"size:={W}x{H}", "-p", f"rate:={int(RATE)}", "-p", f"speed:={SPEED}", "-p", f"seed:={SEED}",
                          "-p", f"frames:={FRAMES}", "-p", f"perception_node:={target}"], tmp_path / "sim_camera.log")

        def stamps(name):
            if name == "anomalies":
                return {(m.markers[0].header.stamp.sec, m.markers[0].header.stamp.nanosec)
                        for m in collectors[name].messages if m.markers}
            return {(m.header.stamp.sec, m.header.stamp.nanosec) for m in collectors[name].messages}

        def complete():
            assert camera.alive(), camera.text()
            common = set.intersection(*(stamps(n) for n in TOPICS if n != "anomalies"))
            return common if len(common) >= 4 and stamps("anomalies") & common else None

        common = wait_until(complete, 60, 0.1, "frames on every topic")
        wait_until(lambda: harness.node.get_parameter("camera_height").value > 0, 20, message="mount pushed")
    finally:
        if camera is not None:
            assert camera.stop() == 0, camera.text()
        mount = [harness.node.get_parameter(n).value for n in ("camera_height", "camera_pitch", "camera_roll")]
        messages = {name: list(collectors[name].messages) for name in TOPICS}
        harness.close()

    # the mount, in the perception node's convention, is the true pose of the rendered camera
    true = node_mount(sim_frames[0].pose)
    np.testing.assert_allclose(mount, [true.height, true.pitch, true.roll], atol=1e-9)
    assert 1.2 <= mount[0] <= 1.7 and abs(mount[1]) < 0.1
    expected_k = sim_frames[0].camera.K()
    now = time.time()
    checked = 0
    for stamp in sorted(common):
        by_topic = {}
        for name in TOPICS:
            if name == "anomalies":
                found = [m for m in messages[name] if m.markers and (m.markers[0].header.stamp.sec,
                                                                     m.markers[0].header.stamp.nanosec) == stamp]
            else:
                found = [m for m in messages[name] if (m.header.stamp.sec, m.header.stamp.nanosec) == stamp]
            if found:
                by_topic[name] = found[0]
        image, info, labels, depth = (by_topic[n] for n in ("image_raw", "camera_info", "labels", "depth"))
        assert abs(stamp[0] + stamp[1] * 1e-9 - now) < 120  # the node clock (wall time), not the bag epoch
        for msg in (image, info, labels, depth):
            assert msg.header.frame_id == "camera_optical_frame"
        assert (image.encoding, image.width, image.height, image.step, len(image.data)) == ("rgb8", W, H, 3 * W, 3 * W * H)
        assert (labels.encoding, labels.step, len(labels.data)) == ("mono8", W, W * H)
        assert (depth.encoding, depth.step, len(depth.data), depth.is_bigendian) == ("32FC1", 4 * W, 4 * W * H, 0)
        assert (info.width, info.height, info.distortion_model) == (W, H, "plumb_bob")
        k = np.asarray(info.k).reshape(3, 3)
        np.testing.assert_allclose(k, expected_k)  # one camera per pass
        assert k[0, 2] == W / 2 and k[1, 2] == H / 2 - 1 and k[0, 0] == k[1, 1]  # the measured TinyRenderer model
        np.testing.assert_allclose(np.asarray(info.p).reshape(3, 4), np.hstack([k, np.zeros((3, 1))]))
        # the pixels are those of one of the sim's own frames of this sequence (same seed: same bytes)
        rgb = pixels(image, np.uint8, 3)
        (index,) = [i for i, f in enumerate(sim_frames) if np.array_equal(f.rgb, rgb)]
        frame = sim_frames[index]
        np.testing.assert_array_equal(pixels(labels, np.uint8), frame.labels)
        np.testing.assert_array_equal(pixels(depth, "<f4"), frame.depth)
        if "anomalies" in by_topic:
            markers = by_topic["anomalies"].markers
            assert {m.id for m in markers} == {a.instance_id for a in frame.anomalies}
            for m in markers:
                a = next(a for a in frame.anomalies if a.instance_id == m.id)
                assert m.ns == "anomaly" and m.header.frame_id == "camera_optical_frame"
                assert (m.header.stamp.sec, m.header.stamp.nanosec) == stamp
                np.testing.assert_allclose([m.pose.position.x, m.pose.position.y, m.pose.position.z], a.position)
                assert f"visible_px={a.visible_pixels}" in m.text
        checked += 1
    assert checked >= 4


def test_sim_camera_rejects_bad_parameters(tmp_path):
    bad = Process(["-m", "densehybrid_ros.node.sim_camera", "--ros-args", "-r", f"__ns:={NAMESPACE}", "-p", "size:=12x5",
                   "-p", "split:=nope"], tmp_path / "bad.log")
    wait_until(lambda: not bad.alive(), 30)
    assert bad.proc.returncode == 2
    assert "size must be WxH" in bad.text() and "split must be one of" in bad.text()


def test_node_mount_matches_the_render_geometry(sim_frames):
    """Ground pixels back-projected with the node's ground-plane model at the pushed mount land at the rendered depth
    (independent of the sim's own pitch sign convention: the depth buffer is the reference)."""
    from densehybrid_ros.perception.camera import CameraModel, ground_point
    from densehybrid_ros.node.sim_camera import node_mount

    frame = sim_frames[2]
    mount = node_mount(frame.pose)
    camera = CameraModel.from_k(frame.camera.K().ravel())
    rows, cols = np.nonzero((frame.labels == 0) & (frame.depth < 25.0))  # road within 25 m
    pick = np.random.default_rng(0).choice(rows.size, 50, replace=False)
    for r, c in zip(rows[pick], cols[pick]):
        point = ground_point(float(c), float(r), camera, mount)
        # lane markings (class road) lie 1 cm above the asphalt: < 1% at a 1.2-1.7 m camera height
        assert point is not None and point[2] == pytest.approx(float(frame.depth[r, c]), rel=1e-2)
