"""densehybrid-sim-camera: the sim world rendered live as a ROS 2 camera (a driving sequence, frame by frame).

    densehybrid-sim-camera [--ros-args -p rate:=5.0 -p size:=512x256 -p seed:=3 -p perception_node:=/densehybrid_perception]

Renders `densehybrid_ros.sim.frames.driving_sequence` (the camera drives down the ego lane past static anomalies)
and publishes each frame, stamped with the node clock at the tick that renders it (one header for every topic of
a frame: same stamp, frame_id `frame_id`):

  ~/image_raw     sensor_msgs/Image       rgb8
  ~/camera_info   sensor_msgs/CameraInfo  plumb_bob, zero distortion, K/P of the sim camera
  with publish_ground_truth (default true):
  ~/labels        sensor_msgs/Image       mono8 ground truth (0..14 classes, 15 = anomaly, 255 = void)
  ~/depth         sensor_msgs/Image       32FC1 planar depth [m] (+inf = sky)
  ~/anomalies     visualization_msgs/MarkerArray  true anomaly boxes (ns "anomaly", id = instance id, text with the
                  pool, source and visible_px=N), lifetime two periods

The messages are the ones `densehybrid-sim bag` writes (densehybrid_ros.sim.bag.SimBagMessages), converted to rclpy
classes, so a live run and a bag of the same sequence carry the same fields. Rendering runs in the timer callback:
when a frame takes longer than 1/rate (TinyRenderer: ~0.1 s at 512x256 on 2 cores) the node publishes as fast as
it renders and says so once; the motion is per frame (speed / rate metres per frame), so the world stays
consistent.

Parameters: rate [Hz] (10.0), speed [m/s] (8.0), size WxH ("512x256"), seed (0), split (test | val | train),
frames per pass (600; the street is built for that route), loop (true: start the same pass again; false: exit after
it), publish_ground_truth (true), frame_id ("camera_optical_frame"), reliability (reliable | best_effort),
perception_node (""): the fully qualified name of a densehybrid_perception node whose camera_height, camera_pitch
and camera_roll this node sets (through its set_parameters service, whenever that service appears) to the sim
camera's true mount, in the node's convention (pitch > 0 = looking down), so that ground-plane obstacles land at the
right distance whatever the seed (the sim samples the mount per seed).
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from visualization_msgs.msg import MarkerArray

from densehybrid_ros.cli_args import parse_size
from densehybrid_ros.node.dds import init_ros_process
from densehybrid_ros.node.messages import to_rclpy
from densehybrid_ros.perception.camera import Mount

NODE_NAME = "sim_camera"
SPLITS = ("test", "val", "train")
DEFAULTS: dict[str, Any] = {
    "rate": 10.0, "speed": 8.0, "size": "512x256", "seed": 0, "split": "test", "frames": 600, "loop": True,
    "publish_ground_truth": True, "frame_id": "camera_optical_frame", "reliability": "reliable", "perception_node": "",
}
DESCRIPTIONS = {
    "rate": "frames per second [Hz] (publishing is as fast as rendering when that is slower)",
    "speed": "camera speed along the ego lane [m/s]",
    "size": "image size WxH, e.g. 512x256",
    "seed": "world seed (street, look, camera mount, anomalies)",
    "split": "anomaly pool: test, val or train",
    "frames": "frames per pass (the street is built for speed * frames / rate metres)",
    "loop": "start the same pass again after the last frame (false: exit)",
    "publish_ground_truth": "also publish ~/labels, ~/depth and ~/anomalies",
    "frame_id": "header frame_id of every message (the camera optical frame)",
    "reliability": "publisher reliability: reliable (serves best-effort subscribers too) or best_effort",
    "perception_node": "fully qualified name of a densehybrid_perception node to set camera_height/pitch/roll on "
                       "(empty = none)",
}


def check_parameters(values: dict[str, Any]) -> dict[str, Any]:
    """Validated, typed parameter values; ValueError naming every bad one."""
    out, errors = dict(values), []
    for name, positive in (("rate", True), ("speed", False)):
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            errors.append(f"{name} must be a number, got {value!r}")
        elif (value <= 0) if positive else (value < 0):
            errors.append(f"{name} must be {'> 0' if positive else '>= 0'}, got {value}")
        else:
            out[name] = float(value)
    try:
        out["size"] = parse_size(values["size"])
    except ValueError as error:
        errors.append(str(error))
    for name, low in (("seed", 0), ("frames", 1)):
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            errors.append(f"{name} must be an integer >= {low}, got {value!r}")
    if values["split"] not in SPLITS:
        errors.append(f"split must be one of {list(SPLITS)}, got {values['split']!r}")
    if values["reliability"] not in ("reliable", "best_effort"):
        errors.append(f"reliability must be reliable or best_effort, got {values['reliability']!r}")
    if not str(values["frame_id"]):
        errors.append("frame_id must not be empty")
    for name in ("loop", "publish_ground_truth"):
        if not isinstance(values[name], bool):
            errors.append(f"{name} must be true or false, got {values[name]!r}")
    if errors:
        raise ValueError("invalid parameters:\n  " + "\n  ".join(errors))
    return out


def node_mount(pose: Any) -> Mount:
    """The `Mount` of a sim camera pose in the perception node's convention (`Mount.from_pose`: pitch > 0 = optical
    axis below the horizon, yaw 0), from the pose itself: the road is the world's z = 0 plane and the world is z up."""
    return Mount.from_pose(pose.position, pose.rotation)


class SimCameraNode(Node):
    def __init__(self, **kwargs: Any):
        super().__init__(NODE_NAME, **kwargs)
        for name, default in DEFAULTS.items():
            # rate/speed accept integers too (rate:=5 from a launch file or the command line)
            dynamic = name in ("rate", "speed")
            self.declare_parameter(name, default, ParameterDescriptor(description=DESCRIPTIONS[name], read_only=True,
                                                                      dynamic_typing=dynamic))
        p = check_parameters({name: self.get_parameter(name).value for name in DEFAULTS})
        from densehybrid_ros.sim.bag import SimBagMessages
        from densehybrid_ros.sim.world import SimConfig, SimWorld

        self.p = p
        width, height = p["size"]
        self.world = SimWorld(SimConfig(width=width, height=height))
        self.messages = SimBagMessages(p["frame_id"])
        self.period_ns = int(round(1e9 / p["rate"]))
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, durability=DurabilityPolicy.VOLATILE,
                         reliability=ReliabilityPolicy.RELIABLE if p["reliability"] == "reliable" else ReliabilityPolicy.BEST_EFFORT)
        self.pubs = {"image_raw": self.create_publisher(Image, "~/image_raw", qos),
                     "camera_info": self.create_publisher(CameraInfo, "~/camera_info", qos)}
        if p["publish_ground_truth"]:
            self.pubs["labels"] = self.create_publisher(Image, "~/labels", qos)
            self.pubs["depth"] = self.create_publisher(Image, "~/depth", qos)
            self.pubs["anomalies"] = self.create_publisher(MarkerArray, "~/anomalies", qos)
        self.param_client = None
        if p["perception_node"]:
            from rcl_interfaces.srv import SetParameters

            self.param_client = self.create_client(SetParameters, p["perception_node"].rstrip("/") + "/set_parameters")
        self.service_was_ready = False
        self.mount: Mount | None = None
        self.sequence = None
        self.index = self.passes = self.published = 0
        self.finished = False
        self.warned_slow = False
        self.started = time.monotonic()
        self.timer = self.create_timer(1.0 / p["rate"], self._tick)
        self.get_logger().info(
            f"rendering {width}x{height} at {p['rate']} Hz, {p['speed']} m/s, seed {p['seed']}, split {p['split']}, "
            f"{p['frames']} frames per pass -> {self.resolve_topic_name('~/image_raw')}")

    def close(self) -> None:
        self.world.close()

    def _next_frame(self):
        from densehybrid_ros.sim.frames import driving_sequence

        for _ in range(2):
            if self.sequence is None:
                p = self.p
                self.sequence = driving_sequence(self.world, p["seed"], p["split"], p["frames"], p["rate"], p["speed"])
                self.index = 0
            try:
                frame = next(self.sequence)
                self.index += 1
                return frame
            except StopIteration:
                self.passes += 1
                self.sequence = None
                if not self.p["loop"]:
                    return None
        return None

    def _tick(self) -> None:
        if self.finished:
            return
        stamp_ns = self.get_clock().now().nanoseconds
        tick = time.perf_counter()
        frame = self._next_frame()
        if frame is None:
            self.finished = True
            self.get_logger().info(f"sequence finished after {self.published} frame(s); loop is off: exiting")
            return
        m = self.messages
        # CameraInfo first: a subscriber then has the intrinsics when the first image arrives
        out: dict[str, tuple[Any, type]] = {
            "camera_info": (m.camera_info(stamp_ns, frame), CameraInfo),
            "image_raw": (m.image(stamp_ns, frame.rgb, "rgb8"), Image),
        }
        if self.p["publish_ground_truth"]:
            out["labels"] = (m.image(stamp_ns, frame.labels, "mono8"), Image)
            out["depth"] = (m.image(stamp_ns, frame.depth.astype("<f4"), "32FC1"), Image)
            out["anomalies"] = (m.anomalies(stamp_ns, frame, 2 * self.period_ns), MarkerArray)
        for name, (msg, cls) in out.items():
            self.pubs[name].publish(to_rclpy(msg, cls))
        self.published += 1
        if self.index == 1:
            self.mount = node_mount(frame.pose)  # the pass's mount (the camera bounce is zero at t = 0)
            if self.passes == 0:
                mount = self.mount
                self.get_logger().info(f"camera mount (perception node convention): "
                                       f"camera_height {mount.height:.4f} m, camera_pitch {mount.pitch:.5f} rad "
                                       f"(> 0 = down), camera_roll {mount.roll:.5f} rad")
        self._push_mount()
        spent = time.perf_counter() - tick
        if spent > 1.2 / self.p["rate"] and not self.warned_slow and self.published > 2:
            self.warned_slow = True
            self.get_logger().warning(f"rendering takes {spent * 1e3:.0f} ms per frame: publishing below {self.p['rate']} Hz")

    def _push_mount(self) -> None:
        """Set the perception node's camera_* parameters whenever its parameter service (re)appears."""
        if self.param_client is None or self.mount is None:
            return
        ready = self.param_client.service_is_ready()
        if ready and not self.service_was_ready:
            from rcl_interfaces.srv import SetParameters
            from rclpy.parameter import Parameter

            request = SetParameters.Request()
            mount = self.mount  # the perception node's mounting parameters (perception.settings.MOUNT_FIELDS)
            values = {"camera_height": mount.height, "camera_pitch": mount.pitch, "camera_roll": mount.roll}
            request.parameters = [Parameter(name, value=float(value)).to_parameter_msg()
                                  for name, value in values.items()]
            future = self.param_client.call_async(request)
            future.add_done_callback(self._mount_pushed)
        self.service_was_ready = ready

    def _mount_pushed(self, future: Any) -> None:
        try:
            results = future.result().results
        except Exception as error:  # noqa: BLE001
            self.get_logger().warning(f"could not set the camera mount on {self.p['perception_node']}: {error}")
            return
        failed = [r.reason for r in results if not r.successful]
        if failed:
            self.get_logger().warning(f"{self.p['perception_node']} rejected the camera mount: {'; '.join(failed)}")
        else:
            self.get_logger().info(f"set camera_height/pitch/roll on {self.p['perception_node']}")


def main(argv: list[str] | None = None) -> int:
    stop = init_ros_process(argv if argv is not None else sys.argv)
    try:
        node = SimCameraNode()
    except Exception as error:  # noqa: BLE001  bad parameters: fail fast, clearly
        print(f"[{NODE_NAME}] cannot start: {type(error).__name__}: {error}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while not stop.is_set() and not node.finished and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    executor.remove_node(node)
    node.close()
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
