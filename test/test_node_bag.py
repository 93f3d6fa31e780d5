"""densehybrid-replay -> DDS -> densehybrid-record (sqlite3 and mcap), read back with rosbags: types, stamps, data."""
from __future__ import annotations

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import Writer
from rosbags.typesys import Stores, get_typestore

from densehybrid_ros.node.record import recorded_counts
from test_node_support import NAMESPACE, Process, wait_until

STORE = get_typestore(Stores.ROS2_KILTED)
T = STORE.types
N = 4  # messages per topic
T0 = 1_700_000_000_000_000_000  # bag receive time of the first message [ns]


def header(i: int) -> object:
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=100 + i, nanosec=1000 * i),
                                    frame_id="camera_optical_frame")


def bag_messages(i: int) -> dict[str, tuple[str, object]]:
    rng = np.random.default_rng(i)
    image = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    k = np.array([50.0, 0, 3.5, 0, 50.0, 2.5, 0, 0, 1])
    roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    point = T["geometry_msgs/msg/Point"]
    pose = T["geometry_msgs/msg/Pose"](position=point(x=1.0 * i, y=0.5, z=10.0),
                                       orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0))
    marker = T["visualization_msgs/msg/Marker"](
        header=header(i), ns="obstacles", id=i, type=1, action=0, pose=pose,
        scale=T["geometry_msgs/msg/Vector3"](x=1.0, y=2.0, z=1.0),
        color=T["std_msgs/msg/ColorRGBA"](r=0.0, g=1.0, b=1.0, a=0.5),
        lifetime=T["builtin_interfaces/msg/Duration"](sec=0, nanosec=500_000_000), frame_locked=False,
        points=[point(x=0.0, y=0.0, z=float(i))], colors=[], texture_resource="",
        texture=T["sensor_msgs/msg/CompressedImage"](header=header(i), format="", data=np.zeros(0, np.uint8)),
        uv_coordinates=[], text=f"#{i}", mesh_resource="",
        mesh_file=T["visualization_msgs/msg/MeshFile"](filename="", data=np.zeros(0, np.uint8)),
        mesh_use_embedded_materials=False)
    return {
        "/cam/image": ("sensor_msgs/msg/Image", T["sensor_msgs/msg/Image"](
            header=header(i), height=6, width=8, encoding="rgb8", is_bigendian=0, step=24, data=image.reshape(-1))),
        "/cam/camera_info": ("sensor_msgs/msg/CameraInfo", T["sensor_msgs/msg/CameraInfo"](
            header=header(i), height=6, width=8, distortion_model="plumb_bob", d=np.zeros(5), k=k, r=np.eye(3).reshape(-1),
            p=np.zeros(12), binning_x=0, binning_y=0, roi=roi)),
        "/cam/image/compressed": ("sensor_msgs/msg/CompressedImage", T["sensor_msgs/msg/CompressedImage"](
            header=header(i), format="jpeg", data=np.frombuffer(bytes([255, 216, i, 255, 217]), np.uint8))),
        "/markers": ("visualization_msgs/msg/MarkerArray", T["visualization_msgs/msg/MarkerArray"](markers=[marker])),
    }


@pytest.fixture
def source_bag(tmp_path):
    path = tmp_path / "source"
    with Writer(path, version=9) as writer:
        connections = {topic: writer.add_connection(topic, msgtype, typestore=STORE)
                       for topic, (msgtype, _) in bag_messages(0).items()}
        for i in range(N):
            for j, (topic, (msgtype, msg)) in enumerate(bag_messages(i).items()):
                writer.write(connections[topic], T0 + i * 50_000_000 + j, STORE.serialize_cdr(msg, msgtype))
    return path


def read_bag(path) -> dict[str, list[tuple[str, object]]]:
    out: dict[str, list] = {}
    with AnyReader([path], default_typestore=STORE) as reader:
        for conn, _, raw in reader.messages():
            out.setdefault(conn.topic, []).append((conn.msgtype, reader.deserialize(raw, conn.msgtype)))
    return out


def test_replay_into_recorders_round_trips(tmp_path, source_bag):
    remaps = {"/cam/image": f"{NAMESPACE}/image", "/cam/camera_info": f"{NAMESPACE}/camera_info",
              "/cam/image/compressed": f"{NAMESPACE}/image/compressed", "/markers": f"{NAMESPACE}/markers"}
    topics = [*remaps.values(), "/clock"]
    recorders = {storage: Process(["-m", "densehybrid_ros.node.record", "--out", str(tmp_path / storage),
                                   "--storage", storage, "--status-period", "0.2", "--topics", *topics],
                                  tmp_path / f"record_{storage}.log")
                 for storage in ("sqlite3", "mcap")}
    replay = None
    try:
        remap_args = [arg for old, new in remaps.items() for arg in ("--remap", f"{old}:={new}")]
        replay = Process(["-m", "densehybrid_ros.node.replay", str(source_bag), "--rate", "2", "--clock", "50",
                          "--wait-for-subscribers", "30", "--min-subscribers", "2", *remap_args], tmp_path / "replay.log")
        # the recorders subscribe once the replayer's topics appear; the replayer waits for them, then plays
        wait_until(lambda: not replay.alive(), 60, message="replay to finish")
        assert replay.proc.returncode == 0, replay.text()
        assert "without subscribers" not in replay.text(), replay.text()
        assert f"published {4 * N} message(s)" in replay.text(), replay.text()
        # both recorders have written every message of the bag before they are stopped
        wait_until(lambda: all(all(recorded_counts(r.text()).get(t, 0) >= N for t in remaps.values())
                               for r in recorders.values()), 120, message="the recorders' writes")
    finally:
        if replay is not None:
            replay.stop()
        codes = {storage: rec.stop() for storage, rec in recorders.items()}
    assert codes == {"sqlite3": 0, "mcap": 0}, {s: r.text() for s, r in recorders.items()}
    source = read_bag(source_bag)
    for storage in recorders:
        recorded = read_bag(tmp_path / storage)
        for old, new in remaps.items():
            got = recorded.get(new, [])
            assert len(got) == N, (storage, new, recorders[storage].text())
            for (msgtype, msg), (src_type, src) in zip(got, source[old]):
                assert msgtype == src_type
                # serialised bytes equal: every field survived rosbags -> rclpy -> DDS -> rosbags
                assert bytes(STORE.serialize_cdr(msg, msgtype)) == bytes(STORE.serialize_cdr(src, src_type))
        stamps = [m.header.stamp.sec for _, m in recorded[f"{NAMESPACE}/image"]]
        assert stamps == [100 + i for i in range(N)]
        clock = [m.clock.sec * 10**9 + m.clock.nanosec for _, m in recorded.get("/clock", [])]
        assert clock, "no /clock recorded"
        assert all(T0 <= c <= T0 + N * 50_000_000 for c in clock)
        assert clock == sorted(clock)  # bag time never runs backwards within one pass


def test_replay_rejects_bad_arguments(tmp_path, source_bag):
    bad = Process(["-m", "densehybrid_ros.node.replay", str(source_bag), "--remap", "no_separator"], tmp_path / "bad.log")
    wait_until(lambda: not bad.alive(), 30)
    assert bad.proc.returncode == 2 and "OLD:=NEW" in bad.text()
    missing = Process(["-m", "densehybrid_ros.node.replay", str(tmp_path / "nope")], tmp_path / "missing.log")
    wait_until(lambda: not missing.alive(), 30)
    assert missing.proc.returncode == 2 and "nope" in missing.text()
