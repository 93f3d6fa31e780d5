"""One camera of the node: its input topics and subscriptions, output publishers, mounting, intrinsics, depth images,
live markers and counters."""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from nav_msgs.msg import OccupancyGrid
from rclpy.lifecycle import LifecycleNode
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from visualization_msgs.msg import MarkerArray

from densehybrid_ros.perception.camera import CameraModel, Mount
from densehybrid_ros.perception.image_codec import ImageRejected, decode_depth_msg, stamp_ns
from densehybrid_ros.perception.settings import Settings
from densehybrid_ros.perception.stats import FrameStats, StageTimes

IMAGE_OUTPUTS = {  # topic -> encoding
    "semantic": "mono8", "semantic_color": "rgb8", "anomaly_score": "32FC1", "open_set": "mono8", "overlay": "rgb8",
}
OBSTACLE_OUTPUTS = ("obstacles", "obstacle_points", "obstacle_grid")  # markers and the planners' forms
DEPTH_HISTORY = 30  # depth images kept per camera to match image stamps
THROTTLE_S = 5.0  # throttle period of repeated per-frame log lines


def qos(reliability: str, depth: int) -> QoSProfile:
    """Keep-last, volatile, `reliability` ("best_effort" or "reliable")."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=depth, durability=DurabilityPolicy.VOLATILE,
        reliability=ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort" else ReliabilityPolicy.RELIABLE,
    )


@dataclass
class Frame:
    """An image message as received, waiting in the mailbox."""

    msg: Any
    compressed: bool


class Channel:
    """One camera. Name "" = the single camera on the plain topics (parameter `cameras` empty); a named camera's
    topics are under <name>/."""

    def __init__(self, name: str, mount: Mount):
        self.name = name
        self.prefix = f"{name}/" if name else ""
        self.mount = mount
        self.pubs: dict[str, Any] = {}
        self.subs: list[Any] = []
        self.stats: FrameStats | None = None
        self.stage_times: StageTimes | None = None
        self.camera: CameraModel | None = None
        self.depth_msgs: deque = deque(maxlen=DEPTH_HISTORY)
        self.depth_lock = threading.Lock()
        self.live_markers: set[int] = set()
        self.image_topic = ""

    @property
    def label(self) -> str:
        """Prefix of this camera's log lines."""
        return f"camera {self.name}: " if self.name else ""

    def create_publishers(self, node: LifecycleNode, reliability: str) -> None:
        """The lifecycle publishers of every output under ~/<prefix>."""
        out = qos(reliability, 1)
        self.pubs = {name: node.create_lifecycle_publisher(Image, f"~/{self.prefix}{name}", out)
                     for name in IMAGE_OUTPUTS}
        self.pubs["obstacles"] = node.create_lifecycle_publisher(
            MarkerArray, f"~/{self.prefix}obstacles", qos(reliability, 5))
        self.pubs["obstacle_points"] = node.create_lifecycle_publisher(
            PointCloud2, f"~/{self.prefix}obstacle_points", out)
        self.pubs["obstacle_grid"] = node.create_lifecycle_publisher(
            OccupancyGrid, f"~/{self.prefix}obstacle_grid", out)

    def destroy_publishers(self, node: LifecycleNode) -> None:
        for pub in self.pubs.values():
            node.destroy_lifecycle_publisher(pub)
        self.pubs = {}

    def subscribe(self, node: LifecycleNode, settings: Settings, on_image: Callable[[Any, bool], None]) -> None:
        """Subscribe to the image (or its compressed form), camera_info and, with a depth_topic, depth; counters reset.
        `on_image(msg, compressed)` gets every image message."""
        inputs = qos(settings.qos_reliability, settings.qos_depth)
        self.stats, self.stage_times = FrameStats(), StageTimes()
        self.image_topic = node.resolve_topic_name(f"{self.prefix}image")
        if settings.use_compressed:
            self.image_topic += "/compressed"
            self.subs.append(node.create_subscription(
                CompressedImage, self.image_topic, lambda m: on_image(m, True), inputs))
        else:
            self.subs.append(node.create_subscription(
                Image, f"{self.prefix}image", lambda m: on_image(m, False), inputs))
        self.subs.append(node.create_subscription(
            CameraInfo, f"{self.prefix}camera_info", lambda m: self._on_camera_info(node, m), inputs))
        if settings.depth_topic:
            depth = (settings.depth_topic if settings.depth_topic.startswith(("/", "~"))
                     else f"{self.prefix}{settings.depth_topic}")
            self.subs.append(node.create_subscription(Image, depth, self._on_depth, inputs))

    def unsubscribe(self, node: LifecycleNode) -> None:
        for sub in self.subs:
            node.destroy_subscription(sub)
        self.subs = []

    def forget_stream(self) -> None:
        """Drop the intrinsics and the depth images (a new stream starts from scratch)."""
        self.camera = None
        with self.depth_lock:
            self.depth_msgs.clear()

    def listened(self, name: str) -> bool:
        """Someone subscribes to output `name`."""
        return self.pubs[name].get_subscription_count() > 0

    def _on_camera_info(self, node: LifecycleNode, msg: CameraInfo) -> None:
        try:
            self.camera = CameraModel.from_k(msg.k, msg.width, msg.height)
        except ValueError as error:
            node.get_logger().warning(f"{self.label}ignoring camera_info: {error}", throttle_duration_sec=THROTTLE_S)

    def _on_depth(self, msg: Image) -> None:
        with self.depth_lock:
            self.depth_msgs.append(msg)

    def matching_depth(self, node: LifecycleNode, stamp: Any, settings: Settings) -> Any:
        """The decoded depth image nearest in time to `stamp` within depth_sync_tolerance, else None (logged: the
        obstacles are then placed on the ground plane)."""
        target = stamp_ns(stamp)
        with self.depth_lock:
            candidates = list(self.depth_msgs)
        log = node.get_logger()
        if not candidates:
            log.warning(f"{self.label}no depth image on {settings.depth_topic} yet: using the ground plane",
                        throttle_duration_sec=THROTTLE_S)
            return None
        best = min(candidates, key=lambda m: abs(stamp_ns(m.header.stamp) - target))
        if abs(stamp_ns(best.header.stamp) - target) > settings.depth_sync_tolerance * 1e9:
            log.warning(f"{self.label}no depth image within {settings.depth_sync_tolerance} s of the image stamp: "
                        "using the ground plane", throttle_duration_sec=THROTTLE_S)
            return None
        try:
            return decode_depth_msg(best)
        except ImageRejected as error:
            log.error(f"{self.label}rejected depth image: {error}", throttle_duration_sec=THROTTLE_S)
            return None
