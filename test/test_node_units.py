"""ROS-free parts of the node, against hand computations: geometry, components, ids, decoding, parameters,
diagnostics, message conversion, one frame through the perception pipeline; plus static checks of the launch, params
and RViz files."""
from __future__ import annotations

import array
import ast
import configparser
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from densehybrid_ros.perception import stats as diagnostics
from densehybrid_ros.perception.image_codec import (
    ImageRejected,
    decode_compressed,
    decode_depth,
    decode_image,
    image_fields,
)
from densehybrid_ros.perception.obstacles import extract_components, locate_on_ground, locate_with_depth
from densehybrid_ros.perception.camera import (CameraModel, Mount, ground_point, level_from_camera,
                                               rotation_to_quaternion)
from densehybrid_ros.perception.settings import DEFAULTS, PARAMS, SPECS, Settings, SettingsError, check_update, check_value

ROOT = Path(__file__).resolve().parents[1]
CAM = CameraModel(fx=400.0, fy=410.0, cx=319.5, cy=239.5)


# ---------------------------------------------------------------- ground-plane geometry
def project(camera, x, y, z):
    return camera.fx * x / z + camera.cx, camera.fy * y / z + camera.cy


@pytest.mark.parametrize("pitch", [0.0, 0.1, 0.3, -0.05])
@pytest.mark.parametrize("lateral,forward", [(0.0, 8.0), (-2.5, 15.0), (3.0, 30.0)])
def test_ground_point_inverts_hand_projection_with_pitch(pitch, lateral, forward):
    h = 1.6
    # A ground point (level frame: x right, y down = h on the ground, z forward) seen by a camera pitched
    # down by `pitch`: y_c = h cos - z sin, z_c = h sin + z cos (rotation about x).
    c, s = math.cos(pitch), math.sin(pitch)
    p_cam = np.array([lateral, h * c - forward * s, h * s + forward * c])
    u, v = project(CAM, *p_cam)
    back = ground_point(u, v, CAM, Mount(h, pitch, 0.0))
    assert back is not None
    np.testing.assert_allclose(back, p_cam, atol=1e-6)


@pytest.mark.parametrize("roll", [0.05, -0.2])
def test_ground_point_inverts_hand_projection_with_roll(roll):
    h, lateral, forward = 1.2, 1.5, 12.0
    # roll about the optical axis, positive = x_c turns towards y_c: x_c = cos X + sin h, y_c = -sin X + cos h
    c, s = math.cos(roll), math.sin(roll)
    p_cam = np.array([c * lateral + s * h, -s * lateral + c * h, forward])
    u, v = project(CAM, *p_cam)
    np.testing.assert_allclose(ground_point(u, v, CAM, Mount(h, 0.0, roll)), p_cam, atol=1e-6)


def test_pitch_sign_convention_and_horizon():
    h = 1.5
    # Optical axis (principal point): meets the ground at h / tan(pitch) ahead only when looking down.
    hit = ground_point(CAM.cx, CAM.cy, CAM, Mount(h, 0.1, 0.0))
    assert hit[0] == pytest.approx(0.0) and hit[1] == pytest.approx(0.0)
    assert hit[2] == pytest.approx(h / math.sin(0.1))  # range along the axis
    assert ground_point(CAM.cx, CAM.cy, CAM, Mount(h, 0.0, 0.0)) is None  # level: the axis is the horizon
    assert ground_point(CAM.cx, CAM.cy, CAM, Mount(h, -0.1, 0.0)) is None  # looking up
    assert ground_point(CAM.cx, CAM.cy - 50, CAM, Mount(h, 0.0, 0.0)) is None  # above the horizon
    r = level_from_camera(0.2, 0.0)
    np.testing.assert_allclose(r @ [0, 0, 1], [0, math.sin(0.2), math.cos(0.2)], atol=1e-12)


def test_camera_model_from_k_and_scaling():
    k = [400.0, 0, 319.5, 0, 410.0, 239.5, 0, 0, 1]
    cam = CameraModel.from_k(k, 640, 480)
    half = cam.for_image(320, 240)
    assert (half.fx, half.fy) == (200.0, 205.0)
    assert (half.cx, half.cy) == (159.5, 119.5)  # pixel centres stay at integers
    assert cam.for_image(640, 480) is cam
    with pytest.raises(ValueError, match="focal"):
        CameraModel.from_k([0.0] * 9)
    with pytest.raises(ValueError, match="9 finite"):
        CameraModel.from_k([1.0] * 8)


def quaternion_rotate(q, v):
    x, y, z, w = q
    u = np.array([x, y, z])
    return 2 * np.dot(u, v) * u + (w * w - np.dot(u, u)) * np.asarray(v) + 2 * w * np.cross(u, v)


@pytest.mark.parametrize("pitch,roll", [(0.0, 0.0), (0.3, 0.0), (0.2, -0.4), (1.5, 1.2), (-1.4, 3.0)])
def test_rotation_to_quaternion_matches_matrix(pitch, roll):
    r = level_from_camera(pitch, roll).T
    q = rotation_to_quaternion(r)
    assert np.linalg.norm(q) == pytest.approx(1.0)
    for v in np.eye(3):
        np.testing.assert_allclose(quaternion_rotate(q, v), r @ v, atol=1e-9)


# ---------------------------------------------------------------- components and placement
def test_components_on_hand_drawn_mask():
    mask = np.zeros((20, 30), bool)
    mask[2:6, 3:10] = True  # 28 px rectangle
    mask[10:18, 20:24] = True  # 32 px rectangle
    mask[12, 5] = mask[13, 6] = True  # 2 px diagonal pair: one component with 8-connectivity
    mask[0, 29] = True  # 1 px speck
    score = np.zeros(mask.shape, np.float32)
    score[10:18, 20:24] = np.arange(32, dtype=np.float32).reshape(8, 4)
    comps, labels = extract_components(mask, score, min_area=2)
    assert [c.area for c in comps] == [32, 28, 2]
    big = comps[0]
    assert (big.x0, big.y0, big.x1, big.y1) == (20, 10, 24, 18)
    assert big.mean_score == pytest.approx(15.5) and big.max_score == 31
    assert big.bottom_u == pytest.approx(21.5) and big.bottom_v == pytest.approx(17.5)
    assert np.all(labels[mask & (labels == big.label)] == big.label) and (labels == big.label).sum() == 32
    pair = comps[2]
    assert (pair.x0, pair.y0, pair.x1, pair.y1) == (5, 12, 7, 14) and pair.bottom_u == 6.0
    assert [c.area for c in extract_components(mask, None, min_area=30)[0]] == [32]
    assert len(extract_components(mask, None, min_area=1, max_components=2)[0]) == 2
    assert extract_components(np.zeros((4, 4), bool), None)[0] == []


def test_locate_on_ground_distance_and_size_by_hand():
    h, d, pitch = 1.5, 10.0, 0.0
    cam = CameraModel(fx=500.0, fy=500.0, cx=319.5, cy=239.5)
    # bottom edge of the component at the image row where the ground at d projects: v = cy + f h / d
    v_bottom = cam.cy + cam.fy * h / d  # 314.5 -> lowest pixel row 314, its edge at 314.5
    x0, x1, y0 = 300, 340, 254  # 40 px wide, rows 254..314 (61 px tall)
    mask = np.zeros((480, 640), bool)
    mask[y0:int(v_bottom - 0.5) + 1, x0:x1] = True
    (comp,), _ = extract_components(mask, np.ones(mask.shape, np.float32))
    ob = locate_on_ground(comp, cam, Mount(h, pitch, 0.0))
    assert ob.anchor[2] == pytest.approx(d) and ob.anchor[1] == pytest.approx(h)
    assert ob.distance == pytest.approx(math.hypot(ob.anchor[0], h, d))
    assert ob.size[0] == pytest.approx(40 * d / cam.fx)  # width: pixel extent x depth / f
    assert ob.size[1] == pytest.approx((v_bottom - (y0 - 0.5)) * d / cam.fy)
    np.testing.assert_allclose(ob.up, [0, -1, 0], atol=1e-12)
    assert ob.center[2] == pytest.approx(d + ob.size[2] / 2)
    assert locate_on_ground(comp, cam, Mount(h, pitch, 0.0), max_distance=5.0) is None
    # a component above the horizon has no ground contact
    sky = np.zeros((480, 640), bool)
    sky[10:40, 10:40] = True
    (up,), _ = extract_components(sky, None)
    assert locate_on_ground(up, cam, Mount(h, 0.0, 0.0)) is None


def test_locate_with_depth_uses_median_depth_along_centroid_ray():
    cam = CameraModel(fx=100.0, fy=100.0, cx=49.5, cy=49.5)
    mask = np.zeros((100, 100), bool)
    mask[40:60, 40:60] = True
    depth = np.full((100, 100), np.nan, np.float32)
    depth[40:60, 40:60] = 5.0
    depth[40, 40:45] = 50.0  # outliers do not move the median
    comps, labels = extract_components(mask, None)
    ob = locate_with_depth(comps[0], labels, depth, cam)
    np.testing.assert_allclose(ob.anchor, [0.0, 0.0, 5.0], atol=1e-9)
    assert ob.size[0] == pytest.approx(20 * 5.0 / 100)
    assert locate_with_depth(comps[0], labels, np.full((100, 100), np.nan, np.float32), cam) is None


# ---------------------------------------------------------------- image decoding
RNG = np.random.default_rng(1)
RGB = RNG.integers(0, 256, (5, 6, 3), dtype=np.uint8)


def raw(a):
    return a.tobytes()


@pytest.mark.parametrize("encoding,payload,expected", [
    ("rgb8", raw(RGB), RGB),
    ("bgr8", raw(RGB[..., ::-1]), RGB),
    ("rgba8", raw(np.dstack([RGB, np.full((5, 6), 7, np.uint8)])), RGB),
    ("bgra8", raw(np.dstack([RGB[..., ::-1], np.full((5, 6), 7, np.uint8)])), RGB),
    ("mono8", raw(RGB[..., 0]), np.repeat(RGB[..., :1], 3, axis=2)),
])
def test_decode_8bit_encodings(encoding, payload, expected):
    channels = len(payload) // 30
    np.testing.assert_array_equal(decode_image(encoding, 6, 5, 6 * channels, 0, payload), expected)


@pytest.mark.parametrize("bigendian", [0, 1])
def test_decode_mono16_both_byte_orders(bigendian):
    values = RNG.integers(0, 65536, (5, 6), dtype=np.uint16)
    payload = values.astype(">u2" if bigendian else "<u2").tobytes()
    out = decode_image("mono16", 6, 5, 12, bigendian, payload)
    expected = (values.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)
    np.testing.assert_array_equal(out, np.repeat(expected[..., None], 3, axis=2))


@pytest.mark.parametrize("encoding,order", [("yuv422", "UYVY"), ("uyvy", "UYVY"), ("yuyv", "YUYV"), ("yuv422_yuy2", "YUYV")])
def test_decode_yuv422_against_bt601(encoding, order):
    y, u, v = 120, 90, 200
    quad = {"UYVY": [u, y, v, y], "YUYV": [y, u, y, v]}[order]
    payload = bytes(quad * 2 * 3)  # 4x3 image
    out = decode_image(encoding, 4, 3, 8, 0, payload)
    # ITU-R BT.601 limited range (what video YUV422 uses)
    r = 1.164 * (y - 16) + 1.596 * (v - 128)
    g = 1.164 * (y - 16) - 0.813 * (v - 128) - 0.391 * (u - 128)
    b = 1.164 * (y - 16) + 2.018 * (u - 128)
    np.testing.assert_allclose(out.reshape(-1, 3), np.tile([r, g, b], (12, 1)), atol=2.0)


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("bits", [8, 16])
def test_decode_bayer_of_a_uniform_colour(pattern, bits):
    colour = {"r": 200, "g": 100, "b": 30}
    mosaic = np.zeros((8, 8), np.uint16 if bits == 16 else np.uint8)
    scale = 257 if bits == 16 else 1
    for i, ch in enumerate(pattern):
        mosaic[i // 2::2, i % 2::2] = colour[ch] * scale
    out = decode_image(f"bayer_{pattern}{bits}", 8, 8, 8 * bits // 8, 0, mosaic.tobytes())
    np.testing.assert_allclose(out[2:6, 2:6].reshape(-1, 3), np.tile([200, 100, 30], (16, 1)), atol=1)


def test_row_padding_is_skipped():
    padded = np.zeros((5, 6 * 3 + 7), np.uint8)
    padded[:, :18] = RGB.reshape(5, 18)
    padded[:, 18:] = 99
    np.testing.assert_array_equal(decode_image("rgb8", 6, 5, 25, 0, padded.tobytes()), RGB)


@pytest.mark.parametrize("args,match", [
    (("8UC3", 6, 5, 18, 0, raw(RGB)), "unsupported encoding"),
    (("rgb8", 0, 0, 0, 0, b""), "zero-size"),
    (("rgb8", 6, 5, 17, 0, raw(RGB)), "step 17 is smaller"),
    (("rgb8", 6, 5, 18, 0, raw(RGB)[:-1]), "truncated"),
    (("rgb8", 6, 4, 18, 0, raw(RGB)), "do not describe"),
    (("yuv422", 5, 2, 10, 0, bytes(20)), "even width"),
])
def test_bad_images_are_rejected_with_a_reason(args, match):
    with pytest.raises(ImageRejected, match=match):
        decode_image(*args)


def test_decode_accepts_rclpy_style_array_payload():
    data = array.array("B")
    data.frombytes(raw(RGB))
    out = decode_image("rgb8", 6, 5, 18, 0, data)
    np.testing.assert_array_equal(out, RGB)
    out[0, 0] = 0
    assert data[0] == RGB[0, 0, 0]  # the decoded image owns its pixels


def test_decode_compressed():
    ok, png = cv2.imencode(".png", RGB[..., ::-1])
    np.testing.assert_array_equal(decode_compressed("png", png.tobytes()), RGB)
    ok, gray = cv2.imencode(".png", RGB[..., 0])
    np.testing.assert_array_equal(decode_compressed("png", gray.tobytes()), np.repeat(RGB[..., :1], 3, axis=2))
    ok, jpg = cv2.imencode(".jpg", np.full((16, 16, 3), (30, 100, 200), np.uint8))  # BGR
    np.testing.assert_allclose(decode_compressed("jpeg", jpg.tobytes())[8, 8], [200, 100, 30], atol=3)
    for data, fmt in ((b"", "jpeg"), (b"not an image", "jpeg"), (png.tobytes(), "16UC1; compressedDepth png")):
        with pytest.raises(ImageRejected):
            decode_compressed(fmt, data)


def test_decode_depth_units_and_invalid_pixels():
    mm = np.array([[0, 1500], [65535, 250]], np.uint16)
    np.testing.assert_allclose(decode_depth("16UC1", 2, 2, 4, 0, mm.tobytes()), [[np.nan, 1.5], [65.535, 0.25]])
    m = np.array([[np.inf, 2.0], [-1.0, 0.5]], np.float32)
    np.testing.assert_allclose(decode_depth("32FC1", 2, 2, 8, 0, m.tobytes()), [[np.nan, 2.0], [np.nan, 0.5]])
    with pytest.raises(ImageRejected, match="depth encoding"):
        decode_depth("rgb8", 2, 2, 6, 0, bytes(12))


def test_image_fields_for_outputs():
    f = image_fields(np.arange(6, dtype=np.float32).reshape(2, 3), "32FC1")
    assert (f["height"], f["width"], f["step"], f["is_bigendian"]) == (2, 3, 12, 0)
    assert np.frombuffer(f["data"], np.float32).tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError):
        image_fields(np.zeros((2, 3), np.float32), "mono8")


# ---------------------------------------------------------------- diagnostics, parameters
def test_diagnostics_levels_and_rates():
    now = [0.0]
    stats = diagnostics.FrameStats(clock=lambda: now[0])
    for _ in range(10):
        stats.frame_received(replaced_pending=False)
    stats.frame_received(replaced_pending=True)
    for _ in range(8):
        stats.frame_processed(20.0, 50.0)
    now[0] = 2.0
    report = stats.report(latency_warn_ms=500)
    values = dict(report.values)
    assert report.level == diagnostics.OK
    assert values["input rate [Hz]"] == "5.50" and values["output rate [Hz]"] == "4.00"
    assert values["dropped (total)"] == "1" and values["processing mean [ms]"] == "20.0"
    stats.frame_rejected("truncated data")
    now[0] = 3.0
    report = stats.report()
    assert report.level == diagnostics.ERROR and "truncated" in report.message  # every frame of the window rejected
    stats.frame_rejected("bad step")
    stats.frame_processed(20.0, 900.0)
    now[0] = 4.0
    report = stats.report(latency_warn_ms=500)
    assert report.level == diagnostics.WARN and "rejected" in report.message and "latency" in report.message
    assert dict(report.values)["rejected (total)"] == "2"
    now[0] = 20.0
    assert stats.report(stale_after_s=3.0).level == diagnostics.WARN  # no input for 16 s
    stats.frame_failed("RuntimeError: boom")
    assert stats.report().level == diagnostics.ERROR


def test_settings_defaults_and_validation():
    s = Settings.from_values({"weights": "w.safetensors"})
    assert s.threshold is None and s.qos_depth == 1 and s.qos_reliability == "best_effort"
    assert Settings.from_values({"threshold": 2}).threshold == 2.0
    with pytest.raises(SettingsError) as error:
        Settings.from_values({"device": "gpu", "min_obstacle_area": 0, "qos_reliability": "fast", "threshold": math.inf})
    for name in ("device", "min_obstacle_area", "qos_reliability", "threshold"):
        assert name in str(error.value)
    with pytest.raises(SettingsError, match="fp16 needs"):
        Settings.from_values({"fp16": True})
    assert check_value("threshold", math.nan) is None and "NaN" in check_value("camera_height", math.nan)
    assert "bool" in check_value("publish_overlay", 1)
    assert check_update("threshold", 1.5, configured=True) is None
    assert "cleanup" in check_update("weights", "x", configured=True)
    assert check_update("weights", "x", configured=False) is None
    assert s.replace(threshold=3.0).threshold == 3.0 and s.replace(min_obstacle_area=7).threshold is None


def test_camera_mounts_from_the_mounting_parameters():
    from densehybrid_ros.perception.settings import MOUNT_PARAMS, mount_value, with_mount_values

    s = Settings.from_values({"camera_height": 2.0, "camera_pitch": 0.1, "camera_roll": -0.05})
    assert s.mount == Mount(height=2.0, pitch=0.1, roll=-0.05, yaw=0.0)
    assert [mount_value(s.mount, name) for name in MOUNT_PARAMS] == [2.0, 0.1, -0.05]
    assert with_mount_values(s.mount, {"camera_pitch": 0.3}) == Mount(2.0, 0.3, -0.05)
    with pytest.raises(SettingsError) as error:
        with_mount_values(s.mount, {"camera_height": 0.0, "camera_roll": 3.0, "threshold": 1.0})
    for text in ("camera_height must be in", "camera_roll must be in", "threshold is not a mounting parameter"):
        assert text in str(error.value)


def test_params_file_matches_the_specification():
    data = yaml.safe_load((ROOT / "config" / "perception.yaml").read_text())
    (key, node), = data.items()
    assert key.endswith("densehybrid_perception")
    values = node["ros__parameters"]
    assert set(values) == set(SPECS)
    for name, value in values.items():
        default = DEFAULTS[name]
        assert type(value) is type(default), name  # rclpy types are strict: 2 is not a double
        assert value == default or (isinstance(value, float) and math.isnan(value) and math.isnan(default)), name
    assert Settings.from_values(values).threshold is None
    assert {f for f in Settings.__dataclass_fields__} == {p.name for p in PARAMS}


# ---------------------------------------------------------------- launch and RViz files
def _console_scripts() -> set[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    scripts = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and " = " in node.value:
            scripts.add(node.value.split("=")[0].strip())
    return scripts


def test_launch_file_parses_and_names_installed_things():
    source = (ROOT / "launch" / "perception.launch.py").read_text()
    tree = ast.parse(source)
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"os", "launch", "launch_ros", "ament_index_python"}
    constants = {n.targets[0].id: n.value.value for n in tree.body
                 if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)}
    assert constants["PACKAGE"] == "densehybrid_ros"
    assert constants["EXECUTABLE"] in _console_scripts(), "setup.py must install the densehybrid_perception script"
    arguments = {n.args[0].value for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and getattr(n.func, "id", "") == "DeclareLaunchArgument"}
    assert {"weights", "image", "camera_info", "namespace", "params_file", "use_sim_time", "device"} <= arguments
    assert '"config", "perception.yaml"' in source and (ROOT / "config" / "perception.yaml").is_file()


def test_console_scripts_of_the_node_tools():
    assert {"densehybrid_perception", "densehybrid-replay", "densehybrid-record"} <= _console_scripts()


def test_rviz_config_shows_the_node_outputs():
    data = yaml.safe_load((ROOT / "config" / "perception.rviz").read_text())
    manager = data["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "camera_optical_frame"
    displays = {d["Class"]: [] for d in manager["Displays"]}
    for d in manager["Displays"]:
        displays[d["Class"]].append(d.get("Topic", {}).get("Value"))
    assert sorted(displays["rviz_default_plugins/Image"]) == [
        "/densehybrid_perception/anomaly_score", "/densehybrid_perception/open_set", "/densehybrid_perception/overlay",
        "/densehybrid_perception/semantic", "/densehybrid_perception/semantic_color"]
    assert displays["rviz_default_plugins/MarkerArray"] == ["/densehybrid_perception/obstacles"]
    assert displays["rviz_default_plugins/PointCloud2"] == ["/densehybrid_perception/obstacle_points"]
    assert displays["rviz_default_plugins/Map"] == ["/densehybrid_perception/obstacle_grid"]


def test_setup_cfg_still_installs_scripts_where_ros2_run_looks():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["install"]["install_scripts"] == "$base/lib/densehybrid_ros"


# ---------------------------------------------------------------- replay helpers and message conversion
def test_replay_helpers():
    from densehybrid_ros.node.replay import parse_remaps, play_offset, split_ros_args

    assert parse_remaps(["/a:=/b", "c:=/d/e"]) == {"/a": "/b", "c": "/d/e"}
    with pytest.raises(ValueError, match="OLD:=NEW"):
        parse_remaps(["/a=/b"])
    assert play_offset(3_000_000_000, 1_000_000_000, 2.0) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        play_offset(0, 0, 0.0)
    assert split_ros_args(["prog", "bag", "--remap", "/a:=/b", "--ros-args", "-r", "x:=y"]) == (
        ["bag", "--remap", "/a:=/b"], ["prog", "--ros-args", "-r", "x:=y"])


def test_replay_closed_loop_counts_answers_by_stamp():
    from sensor_msgs.msg import Image

    from densehybrid_ros.node.replay import Answers, header_stamp, main

    a, b = Image(), Image()
    a.header.stamp.sec, a.header.stamp.nanosec = 3, 5
    b.header.stamp.sec = 4
    assert header_stamp(a) == (3, 5) and header_stamp(object()) is None
    answers = Answers()
    answers.send((3, 5))
    assert not answers.done((3, 5))
    answers.receive(b)  # another frame's answer does not count
    assert not answers.done((3, 5))
    answers.receive(a)
    assert answers.done((3, 5))
    answers.send((3, 5))  # a --loop pass sends the same stamp again: it needs its own answer
    assert not answers.done((3, 5))
    # options that cannot work are refused before anything is played
    assert main(["prog", "missing.bag", "--answer-topic", "/out"]) == 2
    assert main(["prog", "missing.bag", "--answer-for", "/in", "--answer-topic", "/out", "--answer-timeout", "0"]) == 2


def test_rosbags_to_rclpy_conversion_keeps_every_field():
    from rclpy.serialization import serialize_message
    from rosbags.typesys import Stores, get_typestore

    from densehybrid_ros.node.messages import message_class, to_rclpy

    store = get_typestore(Stores.ROS2_KILTED)
    from sensor_msgs.msg import CameraInfo, Image
    from visualization_msgs.msg import Marker, MarkerArray

    image = Image(height=2, width=3, encoding="rgb8", step=9)
    image.header.frame_id, image.header.stamp.sec = "cam", 7
    image.data = array.array("B", range(18))
    info = CameraInfo(width=640, height=480, distortion_model="plumb_bob")
    info.k = [400.0, 0.0, 319.5, 0.0, 400.0, 239.5, 0.0, 0.0, 1.0]
    info.d = [0.1, -0.2, 0.0, 0.0, 0.01]
    marker = Marker(ns="obstacles", id=3, type=Marker.CUBE, text="#3")
    marker.pose.position.z = 12.5
    marker.lifetime.nanosec = 500_000_000
    markers = MarkerArray(markers=[marker, Marker(ns="obstacle_labels", id=3, action=Marker.DELETE)])
    for msg in (image, info, markers):
        cls = type(msg)
        name = f"{cls.__module__.split('.')[0]}/msg/{cls.__name__}"
        assert message_class(name) is cls
        wire = serialize_message(msg)
        converted = to_rclpy(store.deserialize_cdr(wire, name), cls)
        # compared after a rosbags round trip: Fast-CDR leaves alignment padding bytes uninitialised
        canonical = lambda b: bytes(store.serialize_cdr(store.deserialize_cdr(b, name), name))  # noqa: E731
        assert canonical(serialize_message(converted)) == canonical(wire)


# ---------------------------------------------------------------- one frame through the perception pipeline
def test_perception_runs_the_predictor_and_builds_outputs(tiny_weights):
    from densehybrid_ros.perception.pipeline import CameraFrame, Perception, Wanted
    from densehybrid_ros.predictor import Predictor

    predictor = Predictor.from_weights(tiny_weights)
    perception = Perception(predictor)
    rgb = RNG.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    reference = Predictor.from_weights(tiny_weights).predict(rgb)
    # every frame's obstacles published as they come (1 of 1 frames, no miss budget) and no size limit: the outputs of
    # one frame are under test here; the obstacle rules are in test_obstacle_rules.py
    settings = Settings.from_values({"min_obstacle_area": 1, "camera_pitch": 0.2, "confirm_hits": 1, "confirm_window": 1,
                                     "miss_budget": 0, "obstacle_max_width": 1000.0, "obstacle_max_height": 1000.0})
    (result,) = perception.run([CameraFrame(rgb, Wanted(semantic=True))], settings)
    assert result.threshold is None and result.prediction.open_set is None  # uncalibrated, no parameter
    assert result.semantic_color is None and result.overlay is None and result.obstacles == []
    np.testing.assert_array_equal(result.prediction.class_ids, reference.class_ids)
    np.testing.assert_allclose(result.prediction.hybrid, reference.hybrid, rtol=1e-5, atol=1e-5)

    everything = Wanted(True, True, True, True, True, True)
    low = float(reference.hybrid.min()) - 1.0  # every pixel unknown: one component covering the image
    cam = CameraModel(fx=60.0, fy=60.0, cx=39.5, cy=23.5)
    frame = CameraFrame(rgb, everything, intrinsics=cam)  # mounted as the settings say
    (result,) = perception.run([frame], settings.replace(threshold=low))
    assert result.threshold == low and (result.prediction.open_set == predictor.num_classes).all()
    assert result.semantic_color.shape == (48, 80, 3) and result.overlay.shape == (48, 80, 3)
    (ob,) = result.obstacles
    assert ob.component.area == 48 * 80 and ob.id == 0 and result.located
    assert ob.distance == pytest.approx(np.linalg.norm(ground_point(39.5, 47.5, cam, Mount(1.5, 0.2, 0.0))))
    (own,) = perception.run([CameraFrame(rgb, everything, intrinsics=cam, mount=Mount(2.0, 0.3, 0.0))],
                            settings.replace(threshold=low))[0].obstacles  # its own mount
    assert own.distance == pytest.approx(np.linalg.norm(ground_point(39.5, 47.5, cam, Mount(2.0, 0.3, 0.0))))
    palette_unknown = perception.palette[predictor.num_classes]
    assert (result.overlay[5:-5, 5:-5] == palette_unknown).all(axis=-1).mean() > 0.5  # highlighted
    assert result.points is None and result.grid is None  # not wanted
    high = float(reference.hybrid.max()) + 1.0
    (result,) = perception.run([frame], settings.replace(threshold=high))
    assert not (result.prediction.open_set == predictor.num_classes).any() and result.obstacles == []
    assert predictor.threshold is None  # the pipeline passes its threshold per call, never sets the predictor's
