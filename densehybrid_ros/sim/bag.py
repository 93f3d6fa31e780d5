"""`densehybrid-sim bag`: a driving sequence written as a ROS 2 bag with rosbags (sqlite3 or mcap).

Topics (all stamped with the frame's time, frame_id = the camera optical frame):
    /camera/image_raw     sensor_msgs/msg/Image       rgb8
    /camera/camera_info   sensor_msgs/msg/CameraInfo  plumb_bob, zero distortion, K/P of the sim camera
    /camera/labels        sensor_msgs/msg/Image       mono8 ground truth (0..K-1, K = anomaly, 255 = void)
    /camera/depth         sensor_msgs/msg/Image       32FC1 planar depth in metres (+inf = sky)
    /sim/anomalies        visualization_msgs/msg/MarkerArray  true anomaly boxes (optical frame), ns "anomaly",
                          id = instance id, text in the marker's `text`: pool and source
    /tf                   tf2_msgs/msg/TFMessage      base_footprint -> camera optical frame per frame (the camera
                          bounces): the mounting height/pitch/roll the obstacle geometry needs
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from densehybrid_ros.sim.world import SimFrame

FRAME_ID = "camera_optical_frame"
START_NS = 1_700_000_000_000_000_000  # fixed epoch: same seed -> same bag
TOPICS = {
    "/camera/image_raw": "sensor_msgs/msg/Image",
    "/camera/camera_info": "sensor_msgs/msg/CameraInfo",
    "/camera/labels": "sensor_msgs/msg/Image",
    "/camera/depth": "sensor_msgs/msg/Image",
    "/sim/anomalies": "visualization_msgs/msg/MarkerArray",
    "/tf": "tf2_msgs/msg/TFMessage",
}
FOOTPRINT_FRAME = "base_footprint"
STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}


class SimBagMessages:
    """Builds rosbags message objects for sim frames (one typestore: ROS 2 Kilted)."""

    def __init__(self, frame_id: str = FRAME_ID) -> None:
        self.store = get_typestore(Stores.ROS2_KILTED)
        self.frame_id = frame_id
        self.t = self.store.types

    def header(self, stamp_ns: int):
        Time = self.t["builtin_interfaces/msg/Time"]
        return self.t["std_msgs/msg/Header"](stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9),
                                             frame_id=self.frame_id)

    def image(self, stamp_ns: int, array: np.ndarray, encoding: str):
        data = np.ascontiguousarray(array)
        h, w = data.shape[:2]
        return self.t["sensor_msgs/msg/Image"](header=self.header(stamp_ns), height=h, width=w, encoding=encoding,
                                               is_bigendian=0, step=data.nbytes // h,
                                               data=data.view(np.uint8).reshape(-1))

    def camera_info(self, stamp_ns: int, frame: SimFrame):
        cam = frame.camera
        roi = self.t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        return self.t["sensor_msgs/msg/CameraInfo"](
            header=self.header(stamp_ns), height=cam.height, width=cam.width, distortion_model="plumb_bob",
            d=np.zeros(5), k=cam.K().ravel(), r=np.eye(3).ravel(), p=cam.P().ravel(), binning_x=0, binning_y=0, roi=roi)

    def anomalies(self, stamp_ns: int, frame: SimFrame, lifetime_ns: int):
        t = self.t
        Marker = t["visualization_msgs/msg/Marker"]
        Duration = t["builtin_interfaces/msg/Duration"]
        markers = []
        for a in frame.anomalies:
            pose = t["geometry_msgs/msg/Pose"](position=t["geometry_msgs/msg/Point"](x=a.position[0], y=a.position[1], z=a.position[2]),
                                               orientation=t["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0))
            markers.append(Marker(
                header=self.header(stamp_ns), ns="anomaly", id=a.instance_id, type=Marker.CUBE, action=Marker.ADD,
                pose=pose, scale=t["geometry_msgs/msg/Vector3"](x=a.size[0], y=a.size[1], z=a.size[2]),
                color=t["std_msgs/msg/ColorRGBA"](r=1.0, g=0.55, b=0.0, a=0.6),
                lifetime=Duration(sec=lifetime_ns // 10**9, nanosec=lifetime_ns % 10**9), frame_locked=False,
                points=[], colors=[], texture_resource="", texture=t["sensor_msgs/msg/CompressedImage"](
                    header=self.header(stamp_ns), format="", data=np.zeros(0, np.uint8)),
                uv_coordinates=[], text=f"{a.pool} {a.source} visible_px={a.visible_pixels}",
                mesh_resource="", mesh_file=t["visualization_msgs/msg/MeshFile"](filename="", data=np.zeros(0, np.uint8)),
                mesh_use_embedded_materials=False))
        return t["visualization_msgs/msg/MarkerArray"](markers=markers)

    def transform(self, stamp_ns: int, frame: SimFrame):
        t = self.t
        (x, y, z), (qx, qy, qz, qw) = frame.pose.footprint_transform()
        header = self.header(stamp_ns)
        header = t["std_msgs/msg/Header"](stamp=header.stamp, frame_id=FOOTPRINT_FRAME)
        tf = t["geometry_msgs/msg/TransformStamped"](
            header=header, child_frame_id=self.frame_id,
            transform=t["geometry_msgs/msg/Transform"](translation=t["geometry_msgs/msg/Vector3"](x=x, y=y, z=z),
                                                       rotation=t["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw)))
        return t["tf2_msgs/msg/TFMessage"](transforms=[tf])

    def frame_messages(self, stamp_ns: int, frame: SimFrame, period_ns: int) -> dict[str, object]:
        return {
            "/camera/image_raw": self.image(stamp_ns, frame.rgb, "rgb8"),
            "/camera/camera_info": self.camera_info(stamp_ns, frame),
            "/camera/labels": self.image(stamp_ns, frame.labels, "mono8"),
            "/camera/depth": self.image(stamp_ns, frame.depth.astype("<f4"), "32FC1"),
            "/sim/anomalies": self.anomalies(stamp_ns, frame, 2 * period_ns),
            "/tf": self.transform(stamp_ns, frame),
        }


def write_bag(path: Path, frames: Iterable[SimFrame], rate_hz: float, storage: str = "sqlite3",
              frame_id: str = FRAME_ID) -> int:
    """Write `frames` at `rate_hz` to a new bag directory `path`; returns the number of frames written."""
    if storage not in STORAGES:
        raise ValueError(f"unknown bag storage {storage!r}; choose one of {sorted(STORAGES)}")
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"bag {path} already exists; rosbags never overwrites a bag")
    msgs = SimBagMessages(frame_id)
    period_ns = int(round(1e9 / rate_hz))
    count = 0
    with Writer(path, version=9, storage_plugin=STORAGES[storage]) as writer:
        conns = {topic: writer.add_connection(topic, msgtype, typestore=msgs.store) for topic, msgtype in TOPICS.items()}
        for i, frame in enumerate(frames):
            stamp = START_NS + i * period_ns
            for topic, msg in msgs.frame_messages(stamp, frame, period_ns).items():
                writer.write(conns[topic], stamp, msgs.store.serialize_cdr(msg, TOPICS[topic]))
            count += 1
    return count
