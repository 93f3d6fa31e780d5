"""Sim world: camera model, determinism, exact depth/labels, anomaly geometry and pools, bags, loader, CLI."""
from __future__ import annotations

import dataclasses
import filecmp
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pybullet as pb
import pytest

from densehybrid_ros.datasets import open_dataset
from densehybrid_ros.perception.camera import Mount
from densehybrid_ros.sim import anomalies
from densehybrid_ros.sim.camera import CameraPose, SimCamera
from densehybrid_ros.sim.dataset import render_dataset
from densehybrid_ros.sim.frames import driving_sequence, scene_frames
from densehybrid_ros.sim.taxonomy import ANOMALY_ID, CLASS_NAMES, NUM_CLASSES, class_id
from densehybrid_ros.sim.world import SimConfig, SimWorld

SMALL = dataclasses.replace(SimConfig(), width=160, height=96, frames_per_scene=4)


@pytest.fixture(scope="module")
def frames():
    """Frames of every split from two scenes each (module-scoped: rendering is the slow part)."""
    out = []
    with SimWorld(dataclasses.replace(SMALL, width=256, height=128)) as world:
        for split in ("train", "val", "test"):
            for scene in range(2):
                out += [(split, f) for f in scene_frames(world, 3, split, scene, 4)]
    return out


def test_intrinsics_match_rendered_spheres():
    """Spheres at known 3D points, seen by a pitched/rolled/yawed camera, land where K projects them."""
    cid = pb.connect(pb.DIRECT)
    try:
        cam = SimCamera(320, 240, 45.0)
        shape = pb.createVisualShape(pb.GEOM_SPHERE, radius=0.2, physicsClientId=cid)
        points = [(12.0, 1.0, 1.2), (9.0, -1.5, 0.4), (15.0, 0.3, 2.5)]
        bodies = [pb.createMultiBody(0, -1, shape, basePosition=p, physicsClientId=cid) for p in points]
        for mount in (Mount(1.5, 0.0, 0.0, 0.0), Mount(1.3, 0.08, 0.15, -0.1)):
            pose = CameraPose.mounted(0.0, 0.3, mount)
            _, _, _, _, seg = pb.getCameraImage(cam.width, cam.height, pose.view_matrix(), cam.projection_matrix(),
                                                renderer=pb.ER_TINY_RENDERER, physicsClientId=cid)
            seg = np.reshape(seg, (cam.height, cam.width))
            for body, p in zip(bodies, points):
                v, u = np.nonzero(seg == body)
                assert len(u) > 10
                expected = cam.project(pose.world_to_optical(np.array(p)))[0]
                assert abs(u.mean() - expected[0]) < 0.25 and abs(v.mean() - expected[1]) < 0.25
    finally:
        pb.disconnect(cid)


def test_same_seed_identical_bytes_any_worker_count(tmp_path):
    cfg = dataclasses.replace(SMALL, width=96, height=64, frames_per_scene=2)
    a = render_dataset(tmp_path / "a", "test", 3, seed=5, config=cfg, workers=1, progress=False)
    b = render_dataset(tmp_path / "b", "test", 3, seed=5, config=cfg, workers=2, progress=False)
    c = render_dataset(tmp_path / "c", "test", 3, seed=6, config=cfg, workers=1, progress=False)
    assert a == b and a != c
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 1 + 3 * 5
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert not filecmp.cmp(tmp_path / "a" / "rgb" / "000000.png", tmp_path / "c" / "rgb" / "000000.png", shallow=False)


def test_anomaly_depths_lie_on_their_object(frames):
    checked = 0
    for _, f in frames:
        for a in f.anomalies:
            if a.visible_pixels == 0:
                continue
            d = f.depth[f.instances == a.instance_id]
            zmin, zmax = a.depth_range
            # every anomaly pixel within the object's depth extent (5% slack); the centre distance too
            assert np.all(d >= 0.95 * zmin) and np.all(d <= 1.05 * zmax)
            assert abs(np.median(d) - a.position[2]) <= 0.05 * a.position[2] + (zmax - zmin) / 2
            assert (f.labels[f.instances == a.instance_id] == ANOMALY_ID).all()
            checked += 1
    assert checked >= 5


def test_anomaly_centre_projects_into_its_mask(frames):
    checked = 0
    for _, f in frames:
        for a in f.anomalies:
            if a.visible_pixels < 20:
                continue
            u, v = np.rint(f.camera.project(np.array([a.position]))[0]).astype(int)
            if not (0 <= u < f.camera.width and 0 <= v < f.camera.height):
                continue  # centre outside the image (object cut by the border)
            if f.instances[v, u] != a.instance_id:
                assert f.depth[v, u] < a.depth_range[0], "centre pixel neither on the object nor occluded"
            checked += 1
    assert checked >= 5


def test_pools_disjoint_and_frames_use_their_split_pool(frames):
    sets = {p: set(anomalies.urdf_indices(p)) for p in anomalies.POOLS}
    assert not (sets["train-negatives"] & sets["val"]) and not (sets["val"] & sets["test"])
    assert not (sets["train-negatives"] & sets["test"])
    assert all(i % 5 == 3 for i in sets["val"]) and all(i % 5 == 4 for i in sets["test"])
    assert not anomalies.usable_urdf(168)  # its mesh holds NaN vertices
    assert sum(anomalies.usable_urdf(i) for i in range(0, 1000, 10)) >= 85
    fam = anomalies.PROCEDURAL_FAMILIES
    assert len(set(fam["train-negatives"]) | set(fam["val"]) | set(fam["test"])) == sum(len(v) for v in fam.values())
    pool_of = {"train": "train-negatives", "val": "val", "test": "test"}
    seen = set()
    for split, f in frames:
        for a in f.anomalies:
            assert a.pool == pool_of[split]
            if a.source.startswith("random_urdfs/"):
                index = int(a.source.split("/")[1])
                assert anomalies.urdf_pool(index) == a.pool and anomalies.usable_urdf(index)
            else:
                assert a.source.split("/")[1] in fam[a.pool]
            seen.add(split)
    assert seen == {"train", "val", "test"}


def test_road_pixels_back_project_onto_the_ground(frames):
    road = class_id("road")
    for _, f in frames[::3]:
        meta = f.meta()
        K = np.array(meta["K"]).reshape(3, 3)
        cam = SimCamera(meta["width"], meta["height"], meta["fov_v_deg"])
        np.testing.assert_allclose(cam.K(), K)
        pose = CameraPose.mounted(meta["camera_position_world"][0], meta["camera_position_world"][1],
                                  Mount(**meta["mount"]))
        v, u = np.nonzero(f.labels == road)
        z = f.depth[v, u].astype(np.float64)
        rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(z)], axis=1)
        world = pose.optical_to_world(rays * z[:, None])
        # road surface at z = 0, lane markings 1 cm above it
        assert np.percentile(np.abs(world[:, 2]), 99) < 0.02
        assert np.abs(world[:, 2]).max() < 0.05


def test_labels_cover_known_classes_and_anomalies(frames):
    present = set()
    for _, f in frames:
        present |= set(np.unique(f.labels).tolist())
        assert f.rgb.dtype == np.uint8 and f.labels.dtype == np.uint8 and f.depth.dtype == np.float32
        assert set(np.unique(f.labels)) <= set(range(NUM_CLASSES)) | {ANOMALY_ID, 255}
        assert np.isinf(f.depth[f.labels == class_id("sky")]).all()
    for name in ("road", "sidewalk", "building", "vegetation", "sky", "car", "pole"):
        assert CLASS_NAMES.index(name) in present, name
    assert ANOMALY_ID in present
    assert any(not f.anomalies for _, f in frames), "some frames must have no anomaly"


def _read_bag(path: Path):
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    out: dict[str, list] = {}
    with AnyReader([path], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
        for conn, stamp, raw in reader.messages():
            out.setdefault(conn.topic, []).append((conn.msgtype, stamp, reader.deserialize(raw, conn.msgtype)))
    return out


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_bag_reads_back(tmp_path, storage):
    from densehybrid_ros.sim.bag import FRAME_ID, write_bag

    cfg = dataclasses.replace(SMALL, width=128, height=64)
    with SimWorld(cfg) as world:
        frames = list(driving_sequence(world, 1, "test", 4, rate_hz=5.0, speed_mps=10.0))
    write_bag(tmp_path / "bag", iter(frames), 5.0, storage)
    msgs = _read_bag(tmp_path / "bag")
    expected = {"/camera/image_raw": ("sensor_msgs/msg/Image", "rgb8"), "/camera/labels": ("sensor_msgs/msg/Image", "mono8"),
                "/camera/depth": ("sensor_msgs/msg/Image", "32FC1"), "/camera/camera_info": ("sensor_msgs/msg/CameraInfo", None),
                "/sim/anomalies": ("visualization_msgs/msg/MarkerArray", None), "/tf": ("tf2_msgs/msg/TFMessage", None)}
    assert set(msgs) == set(expected)
    for topic, (msgtype, encoding) in expected.items():
        assert len(msgs[topic]) == 4 and all(m[0] == msgtype for m in msgs[topic])
        stamps = [m[1] for m in msgs[topic]]
        assert np.all(np.diff(stamps) == 200_000_000)
        for (_, stamp, msg), frame in zip(msgs[topic], frames):
            header = msg.markers[0].header if topic == "/sim/anomalies" and msg.markers else getattr(msg, "header", None)
            if topic == "/tf":
                header = msg.transforms[0].header
                assert header.frame_id == "base_footprint" and msg.transforms[0].child_frame_id == FRAME_ID
                assert msg.transforms[0].transform.translation.z == pytest.approx(frame.mount.height, abs=0.02)
            elif header is not None:
                assert header.frame_id == FRAME_ID
            if header is not None:
                assert header.stamp.sec * 10**9 + header.stamp.nanosec == stamp
            if encoding:
                assert (msg.encoding, msg.height, msg.width) == (encoding, 64, 128)
                assert msg.step * msg.height == len(msg.data)
    first = msgs["/camera/image_raw"][0][2]
    np.testing.assert_array_equal(np.frombuffer(first.data, np.uint8).reshape(64, 128, 3), frames[0].rgb)
    depth = np.frombuffer(msgs["/camera/depth"][1][2].data, "<f4").reshape(64, 128)
    np.testing.assert_array_equal(depth, frames[1].depth)
    info = msgs["/camera/camera_info"][0][2]
    np.testing.assert_allclose(info.k.reshape(3, 3), frames[0].camera.K())
    markers = msgs["/sim/anomalies"][2][2].markers
    assert [m.id for m in markers] == [a.instance_id for a in frames[2].anomalies]
    for m, a in zip(markers, frames[2].anomalies):
        np.testing.assert_allclose([m.pose.position.x, m.pose.position.y, m.pose.position.z], a.position)
    # the camera drives forward: anomalies get nearer by speed / rate per frame
    first_ids = {a.instance_id: a.position[2] for a in frames[0].anomalies}
    for a in frames[1].anomalies:
        if a.instance_id in first_ids:
            assert first_ids[a.instance_id] - a.position[2] == pytest.approx(2.0, abs=0.1)


def test_sim_loader_roundtrip(tmp_path):
    cfg = dataclasses.replace(SMALL, width=96, height=64, frames_per_scene=2)
    render_dataset(tmp_path / "ds", "val", 2, seed=1, config=cfg, workers=1, progress=False)
    ds = open_dataset(f"sim:{tmp_path / 'ds'}", "val")
    assert len(ds) == 2 and ds.classes == list(CLASS_NAMES)
    s = ds[1]
    assert s.image.shape == (64, 96, 3) and s.image.dtype == np.uint8
    np.testing.assert_array_equal(s.ood == 1, s.semantic == ANOMALY_ID)
    np.testing.assert_array_equal(s.ood == 255, s.semantic == 255)
    meta = json.loads((tmp_path / "ds" / "meta" / "000001.json").read_text())
    assert s.extras["meta"] == meta
    from densehybrid_ros.datasets import DatasetError

    with pytest.raises(DatasetError, match="holds split 'val'"):
        open_dataset(f"sim:{tmp_path / 'ds'}", "test")
    (tmp_path / "ds" / "depth" / "000000.npy").unlink()
    with pytest.raises(DatasetError, match="missing file .*000000.npy"):
        ds[0]


def test_cli_rejects_bad_arguments(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "densehybrid_ros.sim", *a], capture_output=True, text=True)  # noqa: E731
    bad = run("render", "--out", str(tmp_path / "x"), "--split", "test", "--frames", "1", "--size", "512by256")
    assert bad.returncode == 2 and "size must be WxH, e.g. 512x256" in bad.stderr  # cli_args.parse_size
    (tmp_path / "exists").mkdir()
    again = run("bag", "--out", str(tmp_path / "exists"), "--frames", "1", "--size", "64x32")
    assert again.returncode == 2 and "already exists" in again.stderr


def test_mount_sign_conventions():
    """pitch > 0 looks down (the horizon moves up in the image); roll > 0 turns the camera clockwise seen from
    behind (its right side dips, so the scene turns counter-clockwise in the image); yaw > 0 looks left."""
    cam = SimCamera(320, 240, 45.0)
    far_ahead = np.array([[1000.0, 0.0, 1.5]])  # on the horizon, at camera height
    level = CameraPose.mounted(0.0, 0.0, Mount(1.5, 0.0, 0.0, 0.0))
    down = CameraPose.mounted(0.0, 0.0, Mount(1.5, 0.1, 0.0, 0.0))
    assert abs(cam.project(level.world_to_optical(far_ahead))[0][1] - cam.intrinsics.cy) < 1e-6
    assert cam.project(down.world_to_optical(far_ahead))[0][1] < cam.intrinsics.cy - 20  # horizon above the centre
    # looking down, the optical axis meets the road ahead at height / tan(pitch)
    axis = down.rotation[:, 2]
    assert axis[2] < 0 and abs(-1.5 / axis[2] * axis[0] - 1.5 / np.tan(0.1)) < 1e-6
    left = CameraPose.mounted(0.0, 0.0, Mount(1.5, 0.0, 0.0, 0.2))
    assert left.rotation[1, 2] > 0  # optical axis towards +y (left of the road direction)
    rolled = CameraPose.mounted(0.0, 0.0, Mount(1.5, 0.0, 0.2, 0.0))
    right_point = np.array([[10.0, -3.0, 1.5]])  # to the right, at camera height
    u, v = cam.project(rolled.world_to_optical(right_point))[0]
    assert u > cam.intrinsics.cx and v < cam.intrinsics.cy  # the camera's right side dips: right-hand points move up in the image


def _vehicle_boxes(world: SimWorld) -> list[tuple[float, float, float, float]]:
    """Ground boxes of every car, truck and bicycle body, straight from pybullet."""
    kinds = {class_id("car"), class_id("truck"), class_id("bicycle")}
    boxes = []
    for body, cls in world.body_class.items():
        if cls in kinds:
            lo, hi = pb.getAABB(body, physicsClientId=world.client)
            boxes.append((lo[0], hi[0], lo[1], hi[1]))
    return boxes


def test_camera_clearance_path_shows_kerb_parked_vehicles_ahead_without_touching_them():
    """'lane' (the default) keeps vehicles parked at the camera's kerb out of the 25 m ahead; 'path' lets them in,
    as driving does, but never puts a vehicle's side within 0.3 m of the camera's path."""
    ahead = {"lane": 0, "path": 0}
    draws = 0
    for clearance in ("lane", "path"):
        with SimWorld(dataclasses.replace(SMALL, camera_clearance=clearance)) as world:
            for scene in range(4):
                rng = np.random.default_rng([5, scene])
                world.build_scene(rng)
                boxes = _vehicle_boxes(world)
                for _ in range(40):
                    y = world.ego_lateral(rng)
                    x = world.free_camera_x(rng, y, 5.0, world.config.street_length - 60.0)
                    near = [b for b in boxes if b[0] < x + 25.0 and b[1] > x]
                    # a vehicle on the camera's right (kerb side), its near side less than 1.5 m from the path
                    ahead[clearance] += any(b[3] < y and y - b[3] < 1.5 for b in near)
                    if clearance == "path":
                        assert all(b[3] + 0.3 <= y or b[2] - 0.3 >= y for b in near if b[1] > x - 1.0)
                    draws += clearance == "path"
    assert ahead["lane"] <= 0.05 * draws  # only where 50 draws found no clear spot
    assert ahead["path"] >= 0.2 * draws, ahead


def test_camera_clearance_is_validated():
    with pytest.raises(ValueError, match="camera_clearance"):
        dataclasses.replace(SimConfig(), camera_clearance="kerb").validate()
