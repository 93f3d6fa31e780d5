"""Dataset kind `bag`: sim bags (sqlite3 and mcap) read back equal to the rendered frames; YAML specs, other encodings,
row padding, stamp matching, and a named DatasetError for every broken input."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import Writer
from rosbags.typesys import Stores, get_typestore

import densehybrid_ros.datasets.rosbag as rosbag_dataset  # noqa: F401  (registers the kind `bag`)
from densehybrid_ros.datasets.base import DatasetError, open_dataset
from densehybrid_ros.datasets.rosbag import SIM_ANOMALY_ID, open_bag

STORE = get_typestore(Stores.ROS2_KILTED)
T = STORE.types
W, H, N, RATE = 128, 64, 6, 10.0


@pytest.fixture(scope="module")
def frames():
    from densehybrid_ros.sim.frames import driving_sequence
    from densehybrid_ros.sim.world import SimConfig, SimWorld

    with SimWorld(dataclasses.replace(SimConfig(), width=W, height=H)) as world:
        return list(driving_sequence(world, 4, "test", N, RATE, 8.0))


@pytest.fixture(scope="module", params=["sqlite3", "mcap"])
def sim_bag(request, frames, tmp_path_factory):
    from densehybrid_ros.sim.bag import write_bag

    path = tmp_path_factory.mktemp("bag") / f"sim_{request.param}"
    assert write_bag(path, frames, RATE, storage=request.param) == N
    return path


def test_sim_bag_samples_equal_the_rendered_frames(sim_bag, frames):
    from densehybrid_ros.sim.bag import START_NS
    from densehybrid_ros.sim.taxonomy import ANOMALY_ID, CLASS_NAMES

    assert SIM_ANOMALY_ID == ANOMALY_ID
    dataset = open_dataset(f"bag:{sim_bag}")
    try:
        assert (dataset.kind, dataset.split, len(dataset)) == ("bag", "all", N)
        assert dataset.classes == list(CLASS_NAMES) and dataset.unlabelled == 0
        for i in [3, 0, 5, 1, 2, 4]:  # any order: lazy reads by stamp
            frame, sample = frames[i], dataset[i]
            stamp = START_NS + i * int(1e9 / RATE)
            assert sample.extras["stamp_ns"] == stamp and sample.name == f"{stamp // 10**9}.{stamp % 10**9:09d}"
            assert sample.image.dtype == np.uint8 and sample.image.tobytes() == frame.rgb.tobytes()
            np.testing.assert_array_equal(sample.semantic, frame.labels)
            expected_ood = np.where(frame.labels == ANOMALY_ID, 1, np.where(frame.labels == 255, 255, 0))
            np.testing.assert_array_equal(sample.ood, expected_ood)
            finite = np.isfinite(frame.depth)
            assert (~finite).any()  # sky
            np.testing.assert_array_equal(sample.depth[finite], frame.depth[finite])
            assert np.isnan(sample.depth[~finite]).all()  # +inf sky -> NaN (unknown), the EvalSample convention
            info = sample.extras["camera_info"]
            assert (info["width"], info["height"]) == (W, H)
            np.testing.assert_allclose(info["k"], frame.camera.K().ravel())
            truth = {a["id"]: a for a in sample.extras["anomalies"]}
            assert set(truth) == {a.instance_id for a in frame.anomalies}
            for a in frame.anomalies:
                np.testing.assert_allclose(truth[a.instance_id]["position"], a.position)
                assert truth[a.instance_id]["visible_pixels"] == a.visible_pixels
            assert sample.extras["frame_id"] == "camera_optical_frame"
            mount = sample.extras["mount"]  # from the bag's /tf: the sim's own mount (same sign conventions)
            assert sample.extras["mount_source"] == "tf" and mount.height == pytest.approx(frame.mount.height, abs=1e-6)
            assert mount.pitch == pytest.approx(frame.mount.pitch, abs=1e-6)
            assert mount.roll == pytest.approx(frame.mount.roll, abs=1e-6)
    finally:
        dataset.close()
    with pytest.raises(DatasetError, match="no splits"):
        open_dataset(f"bag:{sim_bag}", "val")


def header(stamp: int, frame_id: str = "cam"):
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9),
                                    frame_id=frame_id)


def image(stamp: int, array: np.ndarray, encoding: str, step: int | None = None):
    h, w = array.shape[:2]
    row = array.reshape(h, -1).view(np.uint8)
    if step is not None and step > row.shape[1]:  # row padding
        row = np.hstack([row, np.full((h, step - row.shape[1]), 7, np.uint8)])
    return T["sensor_msgs/msg/Image"](header=header(stamp), height=h, width=w, encoding=encoding, is_bigendian=0,
                                      step=row.shape[1], data=np.ascontiguousarray(row).reshape(-1))


def write(path: Path, messages: list[tuple[str, str, int, object]], storage: str = "sqlite3") -> Path:
    """messages: (topic, msgtype, receive time, message)."""
    from rosbags.rosbag2 import StoragePlugin

    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {}
        for topic, msgtype, t, msg in messages:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=STORE)
            writer.write(conns[topic], t, STORE.serialize_cdr(msg, msgtype))
    return path


def rgb_and_labels(i: int):
    rng = np.random.default_rng(i)
    rgb = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    labels = rng.choice(np.array([0, 1, 7, 255], np.uint8), (6, 10))
    labels[2:4, 3:6] = 7
    return rgb, labels


def test_yaml_spec_other_topics_encodings_padding_and_stamp_matching(tmp_path):
    msgs = []
    for i in range(4):
        stamp = 5_000_000_000 + i * 40_000_000
        rgb, labels = rgb_and_labels(i)
        receive = 9_000_000_000 + i  # receive times differ from the stamps
        if i == 0:  # bgr8 with row padding
            msgs.append(("/front/image", "sensor_msgs/msg/Image", receive, image(stamp, rgb[..., ::-1].copy(), "bgr8", step=36)))
        elif i == 1:  # rgba8
            rgba = np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])
            msgs.append(("/front/image", "sensor_msgs/msg/Image", receive, image(stamp, rgba, "rgba8")))
        else:
            msgs.append(("/front/image", "sensor_msgs/msg/Image", receive, image(stamp, rgb, "rgb8")))
        if i != 2:  # frame 2 has no label image: skipped
            msgs.append(("/front/gt", "sensor_msgs/msg/Image", receive + 10, image(stamp, labels, "mono8", step=16)))
    msgs.append(("/front/image", "sensor_msgs/msg/Image", 9_500_000_000, image(5_000_000_000, rgb_and_labels(9)[0], "rgb8")))
    write(tmp_path / "front", sorted(msgs, key=lambda m: m[2]))
    spec = tmp_path / "front.yaml"
    spec.write_text("bag: front\nimage: /front/image\nlabels: /front/gt\nanomaly_id: 7\nclasses: [a, b]\n")
    dataset = open_dataset(f"bag:{spec}")
    try:
        assert len(dataset) == 3 and dataset.unlabelled == 1 and dataset.duplicates == 1
        assert dataset.classes == ["a", "b"]
        for sample, i in zip((dataset[k] for k in range(3)), (0, 1, 3)):
            rgb, labels = rgb_and_labels(i)
            np.testing.assert_array_equal(sample.image, rgb)  # every encoding -> RGB, padding stripped
            np.testing.assert_array_equal(sample.semantic, labels)
            np.testing.assert_array_equal(sample.ood, np.where(labels == 7, 1, np.where(labels == 255, 255, 0)))
            assert sample.depth is None and sample.extras["camera_info"] is None and sample.extras["anomalies"] is None
    finally:
        dataset.close()
    # a depth topic named in a spec is required
    spec.write_text("bag: front\nimage: /front/image\nlabels: /front/gt\ndepth: /front/depth\n")
    with pytest.raises(DatasetError, match="no depth topic '/front/depth'.*/front/gt"):
        open_dataset(f"bag:{spec}")
    spec.write_text("bag: front\nimage: /front/image\nlabel: /front/gt\n")
    with pytest.raises(DatasetError, match=r"unknown key\(s\) \['label'\]"):
        open_dataset(f"bag:{spec}")


def test_compressed_images_are_decoded(tmp_path):
    rgb, labels = rgb_and_labels(1)
    ok, png = cv2.imencode(".png", rgb[..., ::-1])
    compressed = T["sensor_msgs/msg/CompressedImage"](header=header(10), format="png", data=png.reshape(-1))
    bag = write(tmp_path / "c", [("/camera/image_raw", "sensor_msgs/msg/CompressedImage", 1, compressed),
                                 ("/camera/labels", "sensor_msgs/msg/Image", 2, image(10, labels, "mono8"))], "mcap")
    with open_bag(bag) as dataset:
        np.testing.assert_array_equal(dataset[0].image, rgb)
        assert dataset.classes is None  # no sim anomaly markers: no class names


def test_named_errors_for_broken_bags(tmp_path, sim_bag):
    rgb, labels = rgb_and_labels(0)
    only_images = write(tmp_path / "only_images", [("/camera/image_raw", "sensor_msgs/msg/Image", 1, image(1, rgb, "rgb8"))])
    with pytest.raises(DatasetError, match="no labels topic '/camera/labels'; its topics: /camera/image_raw"):
        open_bag(only_images)
    unmatched = write(tmp_path / "unmatched", [("/camera/image_raw", "sensor_msgs/msg/Image", 1, image(1, rgb, "rgb8")),
                                               ("/camera/labels", "sensor_msgs/msg/Image", 1, image(2, labels, "mono8"))])
    with pytest.raises(DatasetError, match="none of the 1 image.*same header stamp"):
        open_bag(unmatched)
    # a message that does not decode or fit is skipped and counted; with no usable frame left, the error says why
    bad_labels = write(tmp_path / "rgb_labels", [("/camera/image_raw", "sensor_msgs/msg/Image", 1, image(1, rgb, "rgb8")),
                                                 ("/camera/labels", "sensor_msgs/msg/Image", 1, image(1, rgb, "rgb8"))])
    with pytest.raises(DatasetError, match="no usable frame.*label image rejected.*label images must be mono8"):
        open_bag(bad_labels)
    small = write(tmp_path / "size", [("/camera/image_raw", "sensor_msgs/msg/Image", 1, image(1, rgb, "rgb8")),
                                      ("/camera/labels", "sensor_msgs/msg/Image", 1, image(1, labels[:3], "mono8"))])
    with pytest.raises(DatasetError, match="no usable frame.*the labels are 10x3 but the image is 10x6"):
        open_bag(small)
    broken = image(1, rgb, "rgb8")
    broken.data = broken.data[:-5]
    truncated_msg = write(tmp_path / "truncated_msg", [("/camera/image_raw", "sensor_msgs/msg/Image", 1, broken),
                                                       ("/camera/labels", "sensor_msgs/msg/Image", 1, image(1, labels, "mono8"))])
    with pytest.raises(DatasetError, match=r"no usable frame.*image rejected \(/camera/image_raw\).*truncated data"):
        open_bag(truncated_msg)
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(f"bag:{tmp_path / 'nothing'}")
    # a storage file that is no bag at all (damaged bags are read as far as they go: test_bags_damaged.py)
    data_file = next(f for f in Path(sim_bag).iterdir() if f.suffix in (".mcap", ".db3"))
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / data_file.name).write_bytes(bytes(range(256)) * 64)
    with pytest.raises(DatasetError, match="cannot read .*junk"):
        open_bag(junk)


def transform(stamp: int, z: float, quaternion: np.ndarray, child: str = "cam"):
    """base_footprint -> `child` at height z (quaternion x, y, z, w)."""
    qx, qy, qz, qw = (float(v) for v in quaternion)
    return T["geometry_msgs/msg/TransformStamped"](
        header=header(stamp, "base_footprint"), child_frame_id=child,
        transform=T["geometry_msgs/msg/Transform"](translation=T["geometry_msgs/msg/Vector3"](x=0.3, y=0.0, z=z),
                                                   rotation=T["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw)))


def test_mount_from_tf_and_frames_without_a_valid_mount_are_dropped(tmp_path):
    """/tf base_footprint -> camera: the frame's Mount (height = z, pitch from the rotation; scipy builds the rotation:
    the optical frame pitched down by p about the footprint's y axis) and its source; a camera below the ground gives
    no mount: that frame is dropped and counted, the others read."""
    from scipy.spatial.transform import Rotation

    from densehybrid_ros.perception.camera import Mount

    optical = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # columns: x right, y down, z forward
    pitches, heights = (0.1, -0.05, 0.2), (1.3, 1.7, -0.4)
    msgs = []
    for i, (p, z) in enumerate(zip(pitches, heights)):
        stamp = 7_000_000_000 + i * 100_000_000
        rgb, labels = rgb_and_labels(i)
        q = Rotation.from_matrix(Rotation.from_euler("y", p).as_matrix() @ optical).as_quat()  # x, y, z, w
        msgs += [("/camera/image_raw", "sensor_msgs/msg/Image", stamp, image(stamp, rgb, "rgb8")),
                 ("/camera/labels", "sensor_msgs/msg/Image", stamp + 1, image(stamp, labels, "mono8")),
                 ("/tf", "tf2_msgs/msg/TFMessage", stamp + 2, T["tf2_msgs/msg/TFMessage"](transforms=[transform(stamp, z, q)]))]
    with open_bag(write(tmp_path / "tf", msgs)) as dataset:
        assert len(dataset) == 2 and dataset.dropped == {
            "no camera mount from /tf: camera height must be > 0 m, got -0.4": 1}
        for i in range(2):
            sample = dataset[i]
            mount = sample.extras["mount"]
            assert isinstance(mount, Mount) and sample.extras["mount_source"] == "tf"
            assert (mount.height, mount.pitch, mount.roll) == pytest.approx((heights[i], pitches[i], 0.0), abs=1e-9)
