"""~/obstacle_points and ~/obstacle_grid of the perception node as a separate process over real DDS, checked by a
planner-side subscriber against the sim world's ground truth.

The node runs an oracle model: an ONNX graph (backend onnxruntime, the node's ONNX path) whose hybrid score is the
image's normalised red channel, calibrated at 0. The test sends each sim frame's TRUE anomaly mask as the image
(white = anomaly), with the frame's CameraInfo and, through the node's parameter service, the frame's true camera
mount. So the node flags exactly the sim's anomalies, and everything after that (components, placement, points,
grid, messages) is the node's own code. The truth is the sim's: its depth image, its anomaly instances and the
camera pose in the world (z = 0 is the road).

Truth of "the distance of an anomaly": the node places every pixel of an obstacle at the forward distance of its
ground contact (densehybrid_ros/perception/planner_outputs.py). The sim's contact of an anomaly is where its lowest visible
surface is: the median ground range of its true surface points (depth at its pixels) within 2 cm of the lowest one.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY
from test_node_support import (NAMESPACE, NODE, PER_FRAME_OBSTACLES, Harness, image_message, node_name, node_process,
                               publish_until, wait_until)

W, H = 512, 256
SEEDS, FRAMES_PER_SEED, RATE, SPEED = (0, 1, 2), 6, 2.0, 8.0
MIN_AREA = 20
MAX_RANGE = 30.0  # anomalies checked: box centre within this range [m]
REL_TOL = 0.05
GRID = {"grid_resolution": 0.2, "grid_length": 40.0, "grid_width": 20.0}
GRID_FRAME = "base_footprint"  # the sim's ground frame under the camera
FRAME = "camera_optical_frame"
ANOMALY = 15
POINTFIELD_FLOAT32, POINTFIELD_UINT32 = 7, 6


@dataclass
class Scene:
    """One rendered sim frame and which of its anomalies stand on the road (not on the 0.15 m kerb)."""

    frame: object
    on_road: dict  # instance id -> bool


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    from densehybrid_ros.sim.frames import driving_sequence
    from densehybrid_ros.sim.world import SimConfig, SimWorld

    out = []
    with SimWorld(dataclasses.replace(SimConfig(), width=W, height=H)) as world:
        for seed in SEEDS:
            for frame in driving_sequence(world, seed, "test", FRAMES_PER_SEED, RATE, SPEED):
                half = world.street.road_width / 2
                out.append(Scene(frame, {a.instance_id: abs(a.world_position[1]) <= half for a in frame.anomalies}))
    return out


def oracle_onnx(path: Path, width: int, height: int) -> Path:
    """A DenseHybrid-shaped ONNX graph (outputs logits and hybrid) whose hybrid score is the normalised red channel
    of its input, with sim-world metadata calibrated at threshold 0: white pixels are anomalous, black ones not."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from densehybrid_ros.sim.taxonomy import SIM_CLASSES
    from densehybrid_ros.weights import METADATA_KEY, Calibration, ClassInfo, default_metadata

    k = len(SIM_CLASSES)
    metadata = default_metadata(dataclasses.replace(TINY, num_classes=k),
                                classes=tuple(ClassInfo(n, c) for n, c in SIM_CLASSES),
                                calibration=Calibration(threshold=0.0, method="manual"))
    graph = helper.make_graph(
        [helper.make_node("Gather", ["image", "red"], ["hybrid"], axis=1),
         helper.make_node("Gather", ["image", "k_reds"], ["copies"], axis=1),
         helper.make_node("Mul", ["copies", "zero"], ["logits"])],
        "oracle",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, height, width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", k, height, width]),
         helper.make_tensor_value_info("hybrid", TensorProto.FLOAT, ["batch", height, width])],
        [numpy_helper.from_array(np.array(0, np.int64), "red"), numpy_helper.from_array(np.zeros(k, np.int64), "k_reds"),
         numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata.to_json()
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_the_oracle_model_flags_exactly_the_white_pixels(tmp_path):
    from densehybrid_ros.predictor import Predictor

    mask = np.zeros((H, W), bool)
    mask[100:140, 200:260] = True
    mask[7, 3] = True
    image = np.repeat(np.where(mask, 255, 0).astype(np.uint8)[..., None], 3, axis=2)
    prediction = Predictor.from_onnx(oracle_onnx(tmp_path / "oracle.onnx", W, H)).predict(image)
    np.testing.assert_array_equal(prediction.open_set == ANOMALY, mask)


@dataclass
class Served:
    harness: Harness
    node: object
    points: object
    grid: object
    diagnostics: object
    image_pub: object
    info_pub: object


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from diagnostic_msgs.msg import DiagnosticArray
    from nav_msgs.msg import OccupancyGrid
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    tmp = tmp_path_factory.mktemp("planner")
    model = oracle_onnx(tmp / "oracle.onnx", W, H)
    # each frame's obstacles as they come, at any size: every frame is another scene (confirmation across frames and
    # the size rule are tested in test_node_operating_points.py)
    node = node_process(tmp, "backend:=onnxruntime", f"onnx_model:={model}", f"min_obstacle_area:={MIN_AREA}",
                        f"grid_frame:={GRID_FRAME}", *(f"{k}:={v!r}" for k, v in GRID.items()),
                        "diagnostics_period:=0.5", *PER_FRAME_OBSTACLES, name="planner")
    harness = Harness("planner")
    try:
        points = harness.collector(PointCloud2, f"{NODE}/obstacle_points")
        grid = harness.collector(OccupancyGrid, f"{NODE}/obstacle_grid")
        diagnostics = harness.collector(DiagnosticArray, "/diagnostics")
        image_pub = harness.publisher(Image, f"{NAMESPACE}/image")
        info_pub = harness.publisher(CameraInfo, f"{NAMESPACE}/camera_info")
        wait_until(lambda: image_pub.get_subscription_count() > 0 or not node.alive(), 60, message="node subscription")
        assert node.alive(), node.text()
        wait_until(lambda: harness.node.count_publishers(points.topic) and harness.node.count_publishers(grid.topic), 30)
        yield Served(harness, node, points, grid, diagnostics, image_pub, info_pub)
    finally:
        node.stop()
        harness.close()


# ---------------------------------------------------------------- planner-side decoding (from the message alone)
def decode_cloud(msg) -> dict[str, np.ndarray]:
    """The cloud's fields as arrays, read through its own PointField layout."""
    kinds = {POINTFIELD_FLOAT32: "f4", POINTFIELD_UINT32: "u4"}
    order = ">" if msg.is_bigendian else "<"
    dtype = np.dtype({"names": [f.name for f in msg.fields],
                      "formats": [order + kinds[f.datatype] for f in msg.fields],
                      "offsets": [f.offset for f in msg.fields], "itemsize": msg.point_step})
    records = np.frombuffer(bytes(msg.data), dtype, count=msg.width * msg.height)
    return {name: records[name].astype(np.float64 if name != "obstacle_id" else np.int64) for name in dtype.names}


def grid_array(msg) -> np.ndarray:
    return np.asarray(msg.data, np.int8).reshape(msg.info.height, msg.info.width)


# ---------------------------------------------------------------- the sim's truth
def ground_frame(pose) -> tuple[np.ndarray, np.ndarray]:
    """(rotation, origin) of the camera's ground frame in the world: origin on the road below the optical centre,
    x along the horizontal heading of the optical axis, z up."""
    forward = pose.rotation[:, 2]
    heading = math.atan2(forward[1], forward[0])
    c, s = math.cos(heading), math.sin(heading)
    world_from_ground = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return world_from_ground, np.array([pose.position[0], pose.position[1], 0.0])


def to_ground(pose, world: np.ndarray) -> np.ndarray:
    rotation, origin = ground_frame(pose)
    return (world - origin) @ rotation


def true_surface(frame, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """World points of the surface seen at pixels (rows, cols): the pixel ray at the sim's planar depth."""
    k = frame.camera.K()
    optical = np.stack([(cols - k[0, 2]) / k[0, 0], (rows - k[1, 2]) / k[1, 1], np.ones(len(rows))], axis=-1)
    return frame.pose.optical_to_world(optical * frame.depth[rows, cols, None].astype(np.float64))


def off_boundary(x: np.ndarray, period: float = 1.0, phase: float = 0.5, margin: float = 1e-3) -> np.ndarray:
    """x is farther than `margin` from every boundary phase + n * period (pixel edges by default): the node (mount
    parameters, float64) and the test (sim pose, float32 points) cannot disagree about which side it is on."""
    offset = (x - phase) / period
    return np.abs(offset - np.round(offset)) * period > margin


def ground_range(pose, world: np.ndarray) -> np.ndarray:
    """Horizontal distance from the point on the road below the camera [m]."""
    return np.hypot(world[:, 0] - pose.position[0], world[:, 1] - pose.position[1])


def checked_anomalies(scene: Scene) -> list:
    """Anomalies standing on the road within MAX_RANGE, visible as one whole component of >= MIN_AREA pixels of their
    own, not cut by the image border (their ground contact is in view)."""
    from densehybrid_ros.perception.obstacles import extract_components

    frame = scene.frame
    components, labels = extract_components(frame.labels == ANOMALY, None, MIN_AREA)
    out = []
    for a in frame.anomalies:
        mine = frame.instances == a.instance_id
        whole = [c for c in components if ((labels == c.label) == mine).all()]
        if not whole or not scene.on_road[a.instance_id] or np.linalg.norm(a.position) > MAX_RANGE:
            continue
        c = whole[0]
        if c.x0 > 0 and c.y0 > 0 and c.x1 < W and c.y1 < H:
            out.append(a)
    return out


# ---------------------------------------------------------------- the node, live
def serve_frame(served: Served, scene: Scene, sec: int):
    """Set the frame's true mount on the node, send its true anomaly mask with its CameraInfo, and return the
    (cloud, grid) the node answers for that stamp."""
    from sensor_msgs.msg import CameraInfo

    from densehybrid_ros.node.sim_camera import node_mount

    frame = scene.frame
    mount = node_mount(frame.pose)
    results = served.harness.set_parameters(camera_height=mount.height, camera_pitch=mount.pitch,
                                            camera_roll=mount.roll)
    assert all(r.successful for r in results), [r.reason for r in results]
    info = CameraInfo(width=W, height=H, distortion_model="plumb_bob")
    info.header.stamp.sec, info.header.frame_id = sec, FRAME
    info.k = [float(v) for v in frame.camera.K().ravel()]
    mask = np.where(frame.labels == ANOMALY, 255, 0).astype(np.uint8)
    image = image_message(np.repeat(mask[..., None], 3, axis=2), sec, FRAME)

    def send():
        served.info_pub.publish(info)
        served.image_pub.publish(image)

    def answered():
        clouds, grids = served.points.with_stamp(sec), served.grid.with_stamp(sec)
        return (clouds[-1], grids[-1]) if clouds and grids else None

    return publish_until(send, answered, 60, period=2.0)


def test_points_stand_on_the_true_ground_contact_and_the_grid_covers_them(served, scenes):
    """18 sim frames (3 streets), each with its true mount: every point is on an anomalous pixel's ray; every checked
    anomaly (on the road, whole, <= 30 m) has all its pixels as points, their median ground range within 5% of its
    true contact, all of them within 5% of its true extent in range and its lowest ones on the road; every point lies
    over an occupied cell and each checked anomaly's true contact has an occupied cell within 5% of its range."""
    checked = 0
    errors = []
    for index, scene in enumerate(scenes):
        frame = scene.frame
        cloud, grid_msg = serve_frame(served, scene, 500 + index)
        # the cloud: the image's frame and stamp, the documented layout, read as a planner reads it
        assert (cloud.header.frame_id, cloud.header.stamp.sec, cloud.header.stamp.nanosec) == (FRAME, 500 + index, 0)
        assert [(f.name, f.datatype, f.count) for f in cloud.fields] == [
            ("x", POINTFIELD_FLOAT32, 1), ("y", POINTFIELD_FLOAT32, 1), ("z", POINTFIELD_FLOAT32, 1),
            ("score", POINTFIELD_FLOAT32, 1), ("obstacle_id", POINTFIELD_UINT32, 1)]
        assert cloud.height == 1 and cloud.row_step == cloud.point_step * cloud.width and cloud.is_dense
        assert len(cloud.data) == cloud.row_step
        fields = decode_cloud(cloud)
        xyz = np.stack([fields["x"], fields["y"], fields["z"]], axis=-1)
        assert np.isfinite(xyz).all() and (xyz[:, 2] > 0).all()
        # each point lies on the ray of an anomalous pixel (hand projection with the frame's K); its score is the
        # oracle's (white = 2.25 after ImageNet normalisation)
        k = frame.camera.K()
        u = k[0, 0] * xyz[:, 0] / xyz[:, 2] + k[0, 2]
        v = k[1, 1] * xyz[:, 1] / xyz[:, 2] + k[1, 2]
        cols, rows = np.rint(u).astype(int), np.rint(v).astype(int)
        assert (np.abs(u - cols) < 1e-2).all() and (np.abs(v - rows) < 1e-2).all()
        assert (frame.labels[rows, cols] == ANOMALY).all()
        np.testing.assert_allclose(fields["score"], (1.0 - 0.485) / 0.229, rtol=1e-5)
        world = frame.pose.optical_to_world(xyz)
        ranges, heights = ground_range(frame.pose, world), world[:, 2]
        instance_at = frame.instances[rows, cols]

        grid = grid_array(grid_msg)
        assert (grid_msg.header.frame_id, grid_msg.header.stamp.sec) == (GRID_FRAME, 500 + index)
        assert grid_msg.info.resolution == pytest.approx(GRID["grid_resolution"])
        assert grid.shape == (100, 200)  # width 20 m across (rows, y), length 40 m ahead (columns, x)
        origin = np.array([grid_msg.info.origin.position.x, grid_msg.info.origin.position.y])
        np.testing.assert_allclose(origin, [0.0, -10.0], atol=1e-9)
        res = grid_msg.info.resolution

        def cells(ground: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            col = np.floor((ground[:, 0] - origin[0]) / res).astype(int)
            row = np.floor((ground[:, 1] - origin[1]) / res).astype(int)
            return col, row

        # every point of the cloud lies over an occupied cell (points in the grid's extent, off cell edges)
        ground = to_ground(frame.pose, world)
        col, row = cells(ground)
        inside = (col >= 0) & (col < grid.shape[1]) & (row >= 0) & (row < grid.shape[0])
        inside &= off_boundary(ground[:, 0], res, origin[0]) & off_boundary(ground[:, 1], res, origin[1])
        assert (grid[row[inside], col[inside]] == 100).all()

        for a in checked_anomalies(scene):
            mine = instance_at == a.instance_id
            true_rows, true_cols = np.nonzero(frame.instances == a.instance_id)
            assert mine.sum() == len(true_rows) == a.visible_pixels  # every pixel of it, once
            surface = true_surface(frame, true_rows, true_cols)
            true_ranges = ground_range(frame.pose, surface)
            lowest = surface[:, 2] <= surface[:, 2].min() + 0.02
            contact = float(np.median(true_ranges[lowest]))
            placed = float(np.median(ranges[mine]))
            errors.append((placed - contact) / contact)
            assert abs(placed - contact) <= REL_TOL * contact, (index, a.source, placed, contact)
            # all of its points on the ground between its nearest and farthest true surface point, within 5%
            assert ranges[mine].min() >= (1 - REL_TOL) * true_ranges.min(), (index, a.source)
            assert ranges[mine].max() <= (1 + REL_TOL) * true_ranges.max(), (index, a.source)
            assert 0.0 <= heights[mine].min() <= 0.1  # standing on the road
            # the grid: an occupied cell within 5% of the range of its true contact, beside it
            contact_ground = to_ground(frame.pose, surface[lowest])[:, :2]
            occupied = np.argwhere(grid == 100)
            centres = origin + (occupied[:, ::-1] + 0.5) * res
            nearest = np.linalg.norm(centres[:, None, :] - contact_ground[None], axis=-1).min(axis=0)
            assert nearest.max() <= REL_TOL * contact + res / math.sqrt(2), (index, a.source, nearest.max())
            checked += 1
    assert checked >= 20, checked
    print(f"\n{checked} anomalies within {MAX_RANGE} m: relative error of the points' median ground range to the true "
          f"contact: median {np.median(np.abs(errors)):.4f}, max {np.max(np.abs(errors)):.4f}")


def test_grid_cells_are_free_where_the_view_reaches_the_ground_and_unknown_elsewhere(served, scenes):
    """Each cell's centre on the road projected into the image through the sim's own camera pose: out of the image
    = unknown; onto a non-anomalous pixel = free; onto an anomalous pixel = unknown; except the occupied cells (under
    the obstacle points, checked in the test above)."""
    scene = next(s for s in scenes if checked_anomalies(s))
    frame = scene.frame
    _, grid_msg = serve_frame(served, scene, 900)
    grid = grid_array(grid_msg)
    res = grid_msg.info.resolution
    origin = np.array([grid_msg.info.origin.position.x, grid_msg.info.origin.position.y])
    rows, cols = np.indices(grid.shape)
    ground = np.stack([origin[0] + (cols.ravel() + 0.5) * res, origin[1] + (rows.ravel() + 0.5) * res,
                       np.zeros(rows.size)], axis=-1)
    rotation, start = ground_frame(frame.pose)
    optical = frame.pose.world_to_optical(ground @ rotation.T + start)
    k = frame.camera.K()
    z = optical[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u, v = k[0, 0] * optical[:, 0] / z + k[0, 2], k[1, 1] * optical[:, 1] / z + k[1, 2]
    in_view = (z > 0) & (u >= -0.5) & (u < W - 0.5) & (v >= -0.5) & (v < H - 0.5)
    # away from pixel boundaries (the node works from the mount parameters, the test from the pose)
    clear = (z <= 0) | (off_boundary(u) & off_boundary(v))
    cells = grid.ravel()
    pixel = np.clip(np.floor(np.nan_to_num(v) + 0.5), 0, H - 1).astype(int), \
        np.clip(np.floor(np.nan_to_num(u) + 0.5), 0, W - 1).astype(int)
    anomalous = frame.labels[pixel] == ANOMALY
    occupied = cells == 100  # over obstacle points (checked against the cloud above), whatever the view
    assert (cells[clear & ~occupied & ~in_view] == -1).all()
    assert (cells[clear & ~occupied & in_view & ~anomalous] == 0).all()
    assert (cells[clear & ~occupied & in_view & anomalous] == -1).all()
    assert (cells == 0).sum() > 1000 and (cells == -1).sum() > 1000 and occupied.any()
    assert (in_view & anomalous & ~occupied).any()  # the ground hidden by an anomaly is unknown, not free


def test_planner_outputs_alone_run_the_model_and_nobody_listening_runs_nothing(served, scenes):
    """Only ~/obstacle_points and ~/obstacle_grid are subscribed here: a frame is processed for them (none counted
    idle); once their subscriptions are gone, frames are counted idle (the branch that skips the model). Runs in any
    order: it sends its own frame rather than counting on the other tests' frames."""
    def totals():
        for array in reversed(served.diagnostics.messages):
            for status in array.status:
                if status.name.startswith(f"{NODE}:"):
                    values = dict((kv.key, kv.value) for kv in status.values)
                    return int(values["processed (total)"]), int(values["idle, no subscribers (total)"])
        return None

    baseline = wait_until(totals, 30, message="diagnostics")
    serve_frame(served, scenes[0], 940)  # answered on ~/obstacle_points and ~/obstacle_grid
    wait_until(lambda: totals()[0] > baseline[0], 30, message="the frame counted as processed")
    assert totals()[1] == baseline[1] == 0  # the planner outputs alone keep the model running: nothing idle
    from nav_msgs.msg import OccupancyGrid
    from sensor_msgs.msg import PointCloud2

    for collector in (served.points, served.grid):
        served.harness.node.destroy_subscription(collector.subscription)
    try:
        wait_until(lambda: served.harness.node.count_subscribers(served.points.topic) == 0
                   and served.harness.node.count_subscribers(served.grid.topic) == 0, 30, message="unsubscribed")
        frame = scenes[0].frame
        image = image_message(np.repeat(np.where(frame.labels == ANOMALY, 255, 0).astype(np.uint8)[..., None], 3, 2),
                              950, FRAME)
        publish_until(lambda: served.image_pub.publish(image), lambda: (t := totals()) is not None and t[1] >= 1, 30,
                      period=2.0)
    finally:  # the module's other tests listen on these topics: subscribe again whatever the order
        served.points = served.harness.collector(PointCloud2, f"{NODE}/obstacle_points")
        served.grid = served.harness.collector(OccupancyGrid, f"{NODE}/obstacle_grid")
        wait_until(lambda: served.harness.node.count_publishers(served.points.topic)
                   and served.harness.node.count_publishers(served.grid.topic), 30, message="subscribed again")


def placed_at_depth(fields: dict, frame) -> bool:
    """Every point's optical z is the sim's depth at its pixel (float32 precision)."""
    k = frame.camera.K()
    cols = np.rint(k[0, 0] * fields["x"] / fields["z"] + k[0, 2]).astype(int)
    rows = np.rint(k[1, 1] * fields["y"] / fields["z"] + k[1, 2]).astype(int)
    return len(cols) > 0 and np.allclose(fields["z"], frame.depth[rows, cols], rtol=1e-5)


def test_with_a_registered_depth_image_the_points_are_the_true_surface(tmp_path, scenes):
    """depth_topic set: the node places every anomalous pixel at the depth the sim rendered there, so the points are
    the anomalies' true surface points (float32 precision), and the grid is occupied under them."""
    from nav_msgs.msg import OccupancyGrid
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from densehybrid_ros.node.sim_camera import node_mount

    scene = next(s for s in scenes if checked_anomalies(s))
    frame = scene.frame
    true = node_mount(frame.pose)  # for the grid
    mount = {"camera_height": true.height, "camera_pitch": true.pitch, "camera_roll": true.roll}
    model = oracle_onnx(tmp_path / "oracle.onnx", W, H)
    ns = f"{NAMESPACE}_depth"  # its own namespace: the module-scoped node must never answer these frames
    node = node_process(tmp_path, "backend:=onnxruntime", f"onnx_model:={model}", f"min_obstacle_area:={MIN_AREA}",
                        "depth_topic:=depth", *(f"{k}:={v!r}" for k, v in mount.items()), *PER_FRAME_OBSTACLES,
                        name="planner_depth", namespace=ns)
    harness = Harness("planner_depth")
    try:
        points = harness.collector(PointCloud2, f"{node_name(ns)}/obstacle_points")
        grids = harness.collector(OccupancyGrid, f"{node_name(ns)}/obstacle_grid")
        image_pub = harness.publisher(Image, f"{ns}/image")
        info_pub = harness.publisher(CameraInfo, f"{ns}/camera_info")
        depth_pub = harness.publisher(Image, f"{ns}/depth")
        pubs = (image_pub, info_pub, depth_pub)
        wait_until(lambda: all(p.get_subscription_count() for p in pubs) or not node.alive(), 60, message="subscribed")
        assert node.alive(), node.text()
        wait_until(lambda: harness.node.count_publishers(points.topic) and harness.node.count_publishers(grids.topic), 30)
        info = CameraInfo(width=W, height=H, distortion_model="plumb_bob")
        info.header.frame_id = FRAME
        info.k = [float(v) for v in frame.camera.K().ravel()]
        mask = np.where(frame.labels == ANOMALY, 255, 0).astype(np.uint8)

        def attempt(n: int):
            """Send frame (77 s, n ns) with its depth (again every 2 s until answered: the image may be taken before
            the CameraInfo); the node's first (cloud, grid) for it."""
            depth = image_message(frame.depth.astype(np.float32)[..., None], 77, FRAME, encoding="32FC1", nanosec=n)
            image = image_message(np.repeat(mask[..., None], 3, axis=2), 77, FRAME, nanosec=n)
            info.header.stamp.sec, info.header.stamp.nanosec = 77, n

            def send():
                info_pub.publish(info)
                depth_pub.publish(depth)
                image_pub.publish(image)

            return publish_until(send, lambda: (points.with_stamp(77, n), grids.with_stamp(77, n))
                                 if points.with_stamp(77, n) and grids.with_stamp(77, n) else None, 60, period=2.0)

        # Depth and image are separate topics: a frame processed before its depth image arrived is placed on the
        # ground plane (the node's documented fallback). Send new frames until one was placed with its depth.
        for n in range(10):
            answer = attempt(n)
            if placed_at_depth(decode_cloud(answer[0][0]), frame):
                cloud, grid_msg = answer[0][0], answer[1][0]
                break
        else:
            raise AssertionError(f"no frame was placed with its depth image in 10 tries\n{node.text()}")
    finally:
        node.stop()
        harness.close()
    assert grid_msg.header.frame_id == f"{FRAME}_ground"  # grid_frame unset: <image frame_id>_ground
    fields = decode_cloud(cloud)
    xyz = np.stack([fields["x"], fields["y"], fields["z"]], axis=-1)
    k = frame.camera.K()
    cols = np.rint(k[0, 0] * xyz[:, 0] / xyz[:, 2] + k[0, 2]).astype(int)
    rows = np.rint(k[1, 1] * xyz[:, 1] / xyz[:, 2] + k[1, 2]).astype(int)
    assert (frame.labels[rows, cols] == ANOMALY).all()
    np.testing.assert_allclose(xyz, frame.pose.world_to_optical(true_surface(frame, rows, cols)), rtol=1e-5, atol=1e-5)
    for a in checked_anomalies(scene):  # every pixel of each whole anomaly is there
        assert (frame.instances[rows, cols] == a.instance_id).sum() == a.visible_pixels
    grid = grid_array(grid_msg)
    res, origin = grid_msg.info.resolution, np.array([grid_msg.info.origin.position.x, grid_msg.info.origin.position.y])
    ground = to_ground(frame.pose, true_surface(frame, rows, cols))
    col = np.floor((ground[:, 0] - origin[0]) / res).astype(int)
    row = np.floor((ground[:, 1] - origin[1]) / res).astype(int)
    inside = (col >= 0) & (col < grid.shape[1]) & (row >= 0) & (row < grid.shape[0])
    inside &= off_boundary(ground[:, 0], res, origin[0]) & off_boundary(ground[:, 1], res, origin[1])
    assert inside.sum() > 50 and (grid[row[inside], col[inside]] == 100).all()
