"""`densehybrid_perception`: the DenseHybrid open-set segmentation lifecycle node (a thin ROS shell).

Lifecycle (managed node, yolo_ros style):
  configure   validate all parameters (fail fast, every bad one named), declare the per-camera mounting parameters,
              load the weights into a `Predictor` (backend torch, or onnxruntime), create the (lifecycle) output
              publishers and the /diagnostics timer. Any problem: an error log and a FAILURE result (the node stays
              unconfigured and alive; fix the parameters and configure again).
  activate    subscribe to the inputs and start the worker thread (its first act: a warm-up forward).
  deactivate  unsubscribe, stop the worker, delete live markers, free memory (torch.cuda.empty_cache on CUDA).
  cleanup     drop the publishers and the model.    shutdown: all of the above; the process then exits.
  With `autostart` (default true) the node configures and activates itself, so `ros2 run` serves at once.

Inputs: `image` (sensor_msgs/Image: rgb8, bgr8, rgba8, bgra8, mono8, mono16, yuv422/uyvy, yuv422_yuy2/yuyv,
bayer_*8/16, rgb16...) or, with use_compressed, `<image>/compressed` (CompressedImage jpeg/png); `camera_info`;
optionally `depth_topic` (32FC1 m / 16UC1 mm). Sensor-data QoS by default (best effort, depth 1).
The executor thread only posts frames into a one-slot-per-camera mailbox; a worker thread decodes and runs the
Predictor on the newest frame. A frame replaced before it was taken is counted as dropped; a malformed one as rejected.

Several cameras (parameter `cameras`, e.g. [front, left]): per camera the inputs `<camera>/image` (or
`<camera>/image/compressed`) and `<camera>/camera_info` (relative: namespaces and remaps apply; a relative
`depth_topic` becomes `<camera>/<depth_topic>`), the outputs below under `~/<camera>/`, the mounting parameters
`<camera>.camera_height|camera_pitch|camera_roll` (declared at configure, default = the global ones then), its own
obstacle ids, counters and /diagnostics status. Per cycle the worker takes the newest frame of every camera
(waiting at most `batch_wait_ms` after the first for the other cameras that sent a frame within the last
LIVE_S s, so a slow or silent camera never stalls the others), runs them through the Predictor in one call (one
forward per network grid size: one forward for all cameras when the weights have an input_size) and publishes
each camera's results with its own header.

Outputs (all with the input header, at camera resolution; each only while it has a subscriber and its
publish_* toggle is on; a frame nobody listens to is not run through the model at all):
  ~/semantic        mono8   closed-set class ids 0..K-1
  ~/semantic_color  rgb8    the class ids in the weights' class colours
  ~/anomaly_score   32FC1   hybrid score s_H = ln P(d_out|x) - logsumexp_y s_y(x) (thesis eq. 4.11): unbounded
                            log-ratio, higher = more anomalous; compare it with the threshold (diagnostics
                            report the one in force)
  ~/open_set        mono8   class ids with K = unknown where s_H >= threshold (only when a threshold is known)
  ~/overlay         rgb8    open-set colours blended over the image, unknown pixels highlighted, obstacle boxes
  ~/obstacles       visualization_msgs/MarkerArray in the image's frame (optical frame): a CUBE (ns "obstacles")
                    and a TEXT_VIEW_FACING (ns "obstacle_labels", "#id score distance") per confirmed obstacle: an
                    anomaly component standing on the drivable surface, of a real object's size, seen in confirm_hits
                    of the last confirm_window frames (densehybrid_ros/perception/obstacles.py; a new obstacle appears
                    confirm_hits - 1 frames after it is first seen), kept (its last box) through miss_budget missed
                    frames; ids are stable across frames, dropped ids get DELETE markers (no DELETEALL)
  ~/obstacle_points sensor_msgs/PointCloud2 in the image's frame: every anomalous pixel of every confirmed obstacle seen
                    in this frame, in
                    3D (fields x, y, z, score float32, obstacle_id uint32; densehybrid_ros/perception/planner_outputs.py): on the
                    ground plane at the obstacle's ground contact (its front face), or at the depth image's depth;
                    a Nav2 obstacle-layer marking source (data_type PointCloud2)
  ~/obstacle_grid   nav_msgs/OccupancyGrid on the ground under the camera, frame grid_frame (default
                    <image frame_id>_ground), grid_resolution / grid_length / grid_width: 100 under obstacle points,
                    0 where the view reaches the ground, -1 unknown (out of view, under or behind an anomaly)
                    (neither is published while the camera's intrinsics or a threshold are missing)
  /diagnostics      diagnostic_msgs/DiagnosticArray every diagnostics_period: one status
                    "<node>: open-set segmentation", or per camera "<node>: open-set segmentation (<camera>)" with
                    its counters, mounting and the batch statistics (batch size, batched forward time)

GPU: device cuda / cuda:N, fp16 (autocast; scores stay float32), uploads from page-locked memory, a warm-up forward
at activation, torch.cuda.empty_cache on deactivate. backend onnxruntime: the model's ONNX export (onnx_model, or the
weights exported at their input_size at configure, cached) on TensorRT/CUDA providers when present, else CPU.
"""
from __future__ import annotations

import array
import gc
import math
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from nav_msgs.msg import OccupancyGrid
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from visualization_msgs.msg import Marker, MarkerArray

from densehybrid_ros.perception import stats as diagnostics
from densehybrid_ros.node.dds import init_ros_process
from densehybrid_ros.perception.image_codec import ImageRejected, decode_compressed_msg, decode_depth_msg, decode_image_msg
from densehybrid_ros.perception.mailbox import BatchMailbox
from densehybrid_ros.node.messages import image_msg, stamp_ns
from densehybrid_ros.perception.obstacles import Obstacle, ObstacleTracker
from densehybrid_ros.perception.camera import CameraModel
from densehybrid_ros.perception.settings import (
    MOUNT_PARAMS,
    PARAMS,
    SPECS,
    Settings,
    check_update,
    check_value,
    mount_param,
    resolve_onnx_model,
    resolve_weights,
    split_mount_param,
)
from densehybrid_ros.perception.pipeline import FrameProcessor, FrameResult, Wanted
from densehybrid_ros.perception.planner_outputs import ObstaclePoints, encode_points, obstacle_points, occupancy_grid
from densehybrid_ros.predictor import Predictor, PredictorConfig

NODE_NAME = "densehybrid_perception"
IMAGE_OUTPUTS = {  # topic -> encoding
    "semantic": "mono8", "semantic_color": "rgb8", "anomaly_score": "32FC1", "open_set": "mono8", "overlay": "rgb8",
}
OBSTACLE_OUTPUTS = ("obstacles", "obstacle_points", "obstacle_grid")  # markers and the planners' forms
PARAM_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
               float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
               list: ParameterType.PARAMETER_STRING_ARRAY}
THROTTLE_S = 5.0
LIVE_S = 1.0  # a camera that sent a frame within this long is waited for (batch_wait_ms) when batching


@dataclass
class Frame:
    msg: Any
    compressed: bool


class Channel:
    """One camera of the node: its topics, publishers, mounting, counters, camera model, depth images, markers and
    obstacle tracker. Name "" = the single camera on the plain topics (parameter `cameras` empty)."""

    def __init__(self, name: str, settings: Settings, mount: dict[str, float]):
        self.name = name
        self.prefix = f"{name}/" if name else ""
        self.mount = dict(mount)
        self.settings = settings.with_mount(self.mount)  # the node's settings with this camera's mounting
        self.pubs: dict[str, Any] = {}
        self.tracker = ObstacleTracker()
        self.stats: diagnostics.FrameStats | None = None
        self.stage_times: StageTimes | None = None
        self.camera: CameraModel | None = None
        self.depth_msgs: deque = deque(maxlen=30)
        self.depth_lock = threading.Lock()
        self.live_markers: set[int] = set()
        self.image_topic = ""

    @property
    def label(self) -> str:
        return f"camera {self.name}: " if self.name else ""


@dataclass
class Job:
    """A decoded frame of one camera waiting for the batched forward."""

    channel: Channel
    msg: Any
    rgb: Any
    wanted: Wanted
    camera: CameraModel | None
    depth: Any
    decode_ms: float
    subscribed: dict[str, bool]  # output -> publish toggle on and someone listens (IMAGE_OUTPUTS, OBSTACLE_OUTPUTS)


def qos(reliability: str, depth: int) -> QoSProfile:
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=depth, durability=DurabilityPolicy.VOLATILE,
        reliability=ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort" else ReliabilityPolicy.RELIABLE,
    )


def descriptor(spec) -> ParameterDescriptor:
    d = ParameterDescriptor(name=spec.name, type=PARAM_TYPES[spec.type], description=spec.description,
                            additional_constraints=spec.constraints)
    if spec.low is not None and spec.type is int:
        d.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
    elif spec.low is not None:
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high), step=0.0)]
    return d


class StageTimes:
    """Wall time per stage of the processed frames (worker thread) for /diagnostics: the mean over the diagnostics
    window and running totals since activation (densehybrid_ros/tools/bench_node.py differences two reports).
    decode = message -> RGB; process = FrameProcessor.process (Predictor.predict + colours/overlay/obstacles);
    publish = arrays -> messages -> publish."""

    STAGES = ("decode", "process", "publish")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.totals = dict.fromkeys(self.STAGES, 0.0)
        self.frames = 0
        self._window = dict.fromkeys(self.STAGES, 0.0)
        self._window_frames = 0

    def add(self, **ms: float) -> None:
        with self._lock:
            for stage in self.STAGES:
                self.totals[stage] += ms[stage]
                self._window[stage] += ms[stage]
            self.frames += 1
            self._window_frames += 1

    def report(self) -> list[tuple[str, str]]:
        with self._lock:
            window, n = self._window, self._window_frames
            self._window, self._window_frames = dict.fromkeys(self.STAGES, 0.0), 0
            totals, frames = dict(self.totals), self.frames
        means = [(f"stage {s} mean [ms]", f"{window[s] / n:.2f}" if n else "nan") for s in self.STAGES]
        return [*means, *((f"stage {s} total [ms]", f"{totals[s]:.3f}") for s in self.STAGES),
                ("stage frames (total)", str(frames))]


class PerceptionNode(LifecycleNode):
    def __init__(self, **kwargs: Any):
        super().__init__(NODE_NAME, **kwargs)
        for spec in PARAMS:
            if spec.type is list:  # string array: typed explicitly ([] alone would infer a byte array)
                declared = self.declare_parameter(spec.name, Parameter.Type.STRING_ARRAY, descriptor(spec))
                if declared.type_ == Parameter.Type.NOT_SET:  # no override (a YAML [] also arrives unset)
                    self.set_parameters([Parameter(spec.name, Parameter.Type.STRING_ARRAY, list(spec.default))])
            else:
                self.declare_parameter(spec.name, spec.default, descriptor(spec))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.state = "unconfigured"  # mirrors the lifecycle state (read by the parameter callback)
        self.settings: Settings | None = None
        self.processor: FrameProcessor | None = None
        self.channels: dict[str, Channel] = {}
        self.diag_pub = self.diag_timer = None
        self.subs: list[Any] = []
        self.mailbox: BatchMailbox[Frame] | None = None
        self.worker: threading.Thread | None = None
        self.batch_stats: diagnostics.BatchStats | None = None
        self.warned: set[str] = set()
        self.model_path = ""

    # ---------------------------------------------------------------- parameters
    def _on_set_parameters(self, params: list) -> SetParametersResult:
        configured = self.state in ("inactive", "active")
        ours = [p for p in params if p.name in SPECS]
        mounts = [(p, split) for p in params if p.name not in SPECS and (split := split_mount_param(p.name))]
        for p in ours:
            reason = check_update(p.name, p.value, configured)
            if reason is not None:
                self.get_logger().warning(f"rejected parameter {p.name}={p.value!r}: {reason}")
                return SetParametersResult(successful=False, reason=reason)
        for p, (_, base) in mounts:
            reason = check_value(base, p.value)
            if reason is not None:
                reason = f"{p.name}: {reason}"
                self.get_logger().warning(f"rejected parameter {p.name}={p.value!r}: {reason}")
                return SetParametersResult(successful=False, reason=reason)
        if configured and self.settings is not None and (ours or mounts):
            try:
                settings = self.settings.replace(**{p.name: p.value for p in ours}) if ours else self.settings
                self.processor.threshold_choice(settings)  # an operating_point the weights lack is rejected, named
                channel_mounts = {name: dict(ch.mount) for name, ch in self.channels.items()}
                for p, (camera, base) in mounts:
                    if camera in channel_mounts:
                        channel_mounts[camera][base] = float(p.value)
                channel_settings = {name: settings.with_mount(m) for name, m in channel_mounts.items()}
            except ValueError as error:
                return SetParametersResult(successful=False, reason=str(error))
            self.settings = settings
            for name, ch in self.channels.items():
                ch.mount, ch.settings = channel_mounts[name], channel_settings[name]
            if any(p.name == "drivable_classes" for p in ours):
                self._warn_unknown_drivable(settings)
            changed = [*ours, *(p for p, _ in mounts)]
            self.get_logger().info("updated " + ", ".join(f"{p.name}={p.value!r}" for p in changed))
        return SetParametersResult(successful=True)

    def _declare_mounts(self, settings: Settings) -> dict[str, dict[str, float]]:
        """Declare <camera>.camera_height/pitch/roll for every camera (default: the global value now) and return
        their values. A rejected override (type, range) is a configure error naming it."""
        mounts: dict[str, dict[str, float]] = {}
        errors = []
        for camera in settings.cameras:
            mounts[camera] = {}
            for base in MOUNT_PARAMS:
                name, default = mount_param(camera, base), float(getattr(settings, base))
                if not self.has_parameter(name):
                    spec = SPECS[base]
                    desc = descriptor(spec)
                    desc.name = name
                    desc.description = f"camera {camera}: {spec.description} (default: the global {base} at configure)"
                    try:
                        self.declare_parameter(name, default, desc)
                    except Exception as error:  # noqa: BLE001  bad override: name it, declare the default instead
                        hint = " (doubles need a decimal point)" if "DOUBLE" in str(error) else ""
                        errors.append(f"{name}: {error}{hint}; declared with the default {default} instead")
                        self.declare_parameter(name, default, desc, ignore_override=True)
                mounts[camera][base] = float(self.get_parameter(name).value)
        if errors:
            raise ValueError("invalid per-camera parameters:\n  " + "\n  ".join(errors))
        return mounts

    # ---------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            settings = Settings.from_values({spec.name: self.get_parameter(spec.name).value for spec in PARAMS})
            mounts = self._declare_mounts(settings)
            channels = {name: Channel(name, settings, mounts.get(name, {})) for name in settings.cameras or ("",)}
            predictor, model_path = self._load_predictor(settings)
            processor = FrameProcessor(predictor)
            processor.threshold_choice(settings)  # an operating_point the weights lack fails here, named
        except Exception as error:  # noqa: BLE001  any configure problem is a clean FAILURE, never a crash
            self.get_logger().error(f"configure failed: {error}")
            return TransitionCallbackReturn.FAILURE
        self.settings, self.processor, self.channels = settings, processor, channels
        self._warn_unknown_drivable(settings)
        self.model_path = str(model_path)
        out = qos(settings.output_reliability, 1)
        for ch in channels.values():
            ch.pubs = {name: self.create_lifecycle_publisher(Image, f"~/{ch.prefix}{name}", out)
                       for name in IMAGE_OUTPUTS}
            ch.pubs["obstacles"] = self.create_lifecycle_publisher(
                MarkerArray, f"~/{ch.prefix}obstacles", qos(settings.output_reliability, 5))
            ch.pubs["obstacle_points"] = self.create_lifecycle_publisher(
                PointCloud2, f"~/{ch.prefix}obstacle_points", out)
            ch.pubs["obstacle_grid"] = self.create_lifecycle_publisher(
                OccupancyGrid, f"~/{ch.prefix}obstacle_grid", out)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.diag_timer = self.create_timer(settings.diagnostics_period, self._publish_diagnostics)
        choice = self.processor.threshold_choice(settings)
        cameras = f", cameras {', '.join(settings.cameras)}" if settings.cameras else ""
        self.get_logger().info(
            f"configured: {model_path} ({predictor.num_classes} classes, device {settings.device}, backend "
            f"{settings.backend}{self._providers(predictor)}{cameras}), threshold "
            f"{'none: open_set and obstacles off' if choice.value is None else f'{choice.value} ({choice.source})'}; "
            f"obstacles: {self._obstacle_policy(settings)}")
        self.state = "inactive"
        return super().on_configure(state)

    def _obstacle_policy(self, settings: Settings) -> str:
        """The obstacle filter and confirmation in force, in words (log and /diagnostics)."""
        rules = settings.obstacle_rules(self.processor.class_names)
        surface = ("not checked" if rules.drivable_ids is None else
                   ", ".join(self.processor.class_names[i] for i in rules.drivable_ids)
                   + f" or the bottom {settings.ground_band:g} of the image")
        return (f"contact on {surface}; {settings.obstacle_min_width:g}-{settings.obstacle_max_width:g} m wide, "
                f"{settings.obstacle_min_height:g}-{settings.obstacle_max_height:g} m tall; published after "
                f"{settings.confirm_hits} of {settings.confirm_window} frames (+{settings.confirm_hits - 1} frames "
                f"latency), kept through {settings.miss_budget} missed frames")

    def _warn_unknown_drivable(self, settings: Settings) -> None:
        unknown = [n for n in settings.drivable_classes if n not in self.processor.class_names]
        if unknown:
            known = settings.drivable_ids(self.processor.class_names)
            self.get_logger().warning(
                f"drivable_classes {unknown} are not classes of the weights ({', '.join(self.processor.class_names)})"
                + ("" if known else ": no drivable class known, obstacles are not checked for a drivable surface"))

    @staticmethod
    def _load_predictor(settings: Settings):
        config = PredictorConfig(device=settings.device, fp16=settings.fp16, backend=settings.backend)
        if settings.backend == "onnxruntime" and settings.onnx_model:
            path = resolve_onnx_model(settings.onnx_model)
            return Predictor.from_onnx(path, config), path
        weights = resolve_weights(settings.weights)
        return Predictor.from_weights(weights, config), weights

    @staticmethod
    def _providers(predictor: Predictor) -> str:
        providers = getattr(predictor.model, "providers", None)
        return f" [{', '.join(providers)}]" if providers else ""

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # enables the lifecycle publishers
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        s = self.settings
        inputs = qos(s.qos_reliability, s.qos_depth)
        self.mailbox = BatchMailbox(list(self.channels))
        self.batch_stats = diagnostics.BatchStats()
        self.warned.clear()
        for name, ch in self.channels.items():
            ch.stats, ch.stage_times = diagnostics.FrameStats(), StageTimes()
            ch.image_topic = self.resolve_topic_name(f"{ch.prefix}image")
            if s.use_compressed:
                ch.image_topic += "/compressed"
                self.subs.append(self.create_subscription(
                    CompressedImage, ch.image_topic, lambda m, c=name: self._on_image(c, m, True), inputs))
            else:
                self.subs.append(self.create_subscription(
                    Image, f"{ch.prefix}image", lambda m, c=name: self._on_image(c, m, False), inputs))
            self.subs.append(self.create_subscription(
                CameraInfo, f"{ch.prefix}camera_info", lambda m, c=name: self._on_camera_info(c, m), inputs))
            if s.depth_topic:
                depth = s.depth_topic if s.depth_topic.startswith(("/", "~")) else f"{ch.prefix}{s.depth_topic}"
                self.subs.append(self.create_subscription(Image, depth, lambda m, c=name: self._on_depth(c, m), inputs))
        self.worker = threading.Thread(target=self._work, args=(self.mailbox,), name="densehybrid_worker", daemon=True)
        self.worker.start()
        self.state = "active"
        outputs = self.resolve_topic_name("~/semantic").rsplit("/", 1)[0]
        if len(self.channels) == 1 and "" in self.channels:
            self.get_logger().info(f"active: {self.channels[''].image_topic} -> {outputs}/*")
        else:
            self.get_logger().info("active: " + "; ".join(f"{ch.image_topic} -> {outputs}/{ch.name}/*"
                                                          for ch in self.channels.values()))
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_serving()
        self.state = "inactive"
        self.get_logger().info("inactive: unsubscribed, worker stopped")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.state = "unconfigured"
        self.get_logger().info("unconfigured: model and publishers released")
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_serving()
        self._release()
        self.state = "finalized"
        self.get_logger().info("finalized")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error during a transition from {state.label}; releasing everything")
        self._stop_serving()
        self._release()
        self.state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def _stop_serving(self) -> None:
        for sub in self.subs:
            self.destroy_subscription(sub)
        self.subs = []
        if self.mailbox is not None:
            self.mailbox.close()
        if self.worker is not None:
            self.worker.join(timeout=30.0)
        self.worker = None
        for ch in self.channels.values():
            if ch.live_markers and "obstacles" in ch.pubs:
                ch.pubs["obstacles"].publish(self._marker_deletes(ch.live_markers))
            ch.live_markers = set()
            ch.tracker.reset()  # no track outlives the stream it was confirmed in (ids are never reused)
            ch.camera = None
            with ch.depth_lock:
                ch.depth_msgs.clear()
        self._free_memory()

    def _release(self) -> None:
        for ch in self.channels.values():
            for pub in ch.pubs.values():
                self.destroy_lifecycle_publisher(pub)
            ch.pubs = {}
        self.channels = {}
        if self.diag_timer is not None:
            self.destroy_timer(self.diag_timer)
        if self.diag_pub is not None:
            self.destroy_publisher(self.diag_pub)
        self.diag_timer = self.diag_pub = None
        self.processor = None
        self.settings = None
        self._free_memory()

    def _free_memory(self) -> None:
        gc.collect()
        device = self.settings.device if self.settings is not None else self.get_parameter("device").value
        if str(device).startswith("cuda"):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # cached blocks back to the driver (the model stays until cleanup)

    # ---------------------------------------------------------------- inputs (executor thread)
    def _on_image(self, camera: str, msg: Any, compressed: bool) -> None:
        mailbox, ch = self.mailbox, self.channels.get(camera)
        if mailbox is None or ch is None or ch.stats is None:
            return
        ch.stats.frame_received(replaced_pending=mailbox.put(camera, Frame(msg, compressed)))

    def _on_camera_info(self, camera: str, msg: CameraInfo) -> None:
        ch = self.channels.get(camera)
        if ch is None:
            return
        try:
            ch.camera = CameraModel.from_k(msg.k, msg.width, msg.height)
        except ValueError as error:
            self.get_logger().warning(f"{ch.label}ignoring camera_info: {error}", throttle_duration_sec=THROTTLE_S)

    def _on_depth(self, camera: str, msg: Image) -> None:
        ch = self.channels.get(camera)
        if ch is not None:
            with ch.depth_lock:
                ch.depth_msgs.append(msg)

    # ---------------------------------------------------------------- worker thread
    def _work(self, mailbox: BatchMailbox[Frame]) -> None:
        self._warmup()
        while not mailbox.closed:
            settings = self.settings
            wait_s = settings.batch_wait_ms / 1e3 if settings is not None else 0.0
            batch = mailbox.take_batch(timeout=0.25, wait=wait_s, live=LIVE_S)
            if batch:
                self._process_batch(batch)

    def _warmup(self) -> None:
        """One forward at activation, with a batch of all cameras (CUDA context and kernels, allocator, ORT)."""
        processor = self.processor
        if processor is None:
            return
        start = time.perf_counter()
        try:
            processor.predictor.warmup(batch=len(self.channels))
        except Exception as error:  # noqa: BLE001  a failed warm-up is not fatal: frames report their own errors
            self.get_logger().warning(f"warm-up forward failed: {type(error).__name__}: {error}")
            return
        self.get_logger().info(f"warm-up forward: {(time.perf_counter() - start) * 1e3:.0f} ms")

    def _has_subscribers(self, ch: Channel, name: str) -> bool:
        return ch.settings.publishes(name) and ch.pubs[name].get_subscription_count() > 0

    def _process_batch(self, batch: dict[str, Frame]) -> None:
        start = time.perf_counter()
        settings, processor = self.settings, self.processor
        if settings is None or processor is None:
            return
        jobs = []
        for name, frame in batch.items():
            ch = self.channels[name]
            try:
                job = self._prepare(ch, frame, settings, processor)
            except Exception as error:  # noqa: BLE001  the node never dies on a frame
                self._frame_failed(ch, error)
                continue
            if job is not None:
                jobs.append(job)
        if not jobs:
            return
        forward_start = time.perf_counter()
        try:
            predictions = processor.predict([job.rgb for job in jobs], settings)
        except Exception as error:  # noqa: BLE001
            for job in jobs:
                self._frame_failed(job.channel, error)
            return
        forward_ms = (time.perf_counter() - forward_start) * 1e3
        self.batch_stats.add(len(jobs), forward_ms)
        for job, prediction in zip(jobs, predictions):
            try:
                self._finish(job, prediction, processor, forward_ms, start)
            except Exception as error:  # noqa: BLE001
                self._frame_failed(job.channel, error)

    def _frame_failed(self, ch: Channel, error: Exception) -> None:
        ch.stats.frame_failed(f"{type(error).__name__}: {error}")
        self.get_logger().error(f"{ch.label}frame failed: {type(error).__name__}: {error}",
                                throttle_duration_sec=THROTTLE_S)

    def _prepare(self, ch: Channel, frame: Frame, settings: Settings, processor: FrameProcessor) -> Job | None:
        """Decode one camera's frame and decide what it needs; None when it is rejected or nobody listens."""
        start = time.perf_counter()
        msg = frame.msg
        try:
            rgb = decode_compressed_msg(msg) if frame.compressed else decode_image_msg(msg)
        except ImageRejected as error:
            ch.stats.frame_rejected(str(error))
            self.get_logger().error(
                f"{ch.label}rejected frame (stamp {msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d}, frame_id "
                f"{msg.header.frame_id!r}): {error}", throttle_duration_sec=THROTTLE_S)
            return None
        decode_ms = (time.perf_counter() - start) * 1e3
        subscribed = {name: self._has_subscribers(ch, name) for name in (*IMAGE_OUTPUTS, *OBSTACLE_OUTPUTS)}
        if not any(subscribed.values()):
            ch.stats.frame_idle()  # nobody listens: no inference (lazy, like image_pipeline nodes)
            return None
        # obstacles are placed when markers, points or the grid are wanted
        wanted = Wanted(**{name: subscribed[name] for name in IMAGE_OUTPUTS},
                        obstacles=any(subscribed[name] for name in OBSTACLE_OUTPUTS))
        camera = ch.camera
        if wanted.obstacles and camera is None:
            self._warn_once(f"camera_info {ch.name}", f"{ch.label}no camera_info received yet: obstacle markers, "
                                                      "points and grid are off until one arrives")
        if (wanted.open_set or wanted.obstacles) and processor.threshold(settings) is None:
            self._warn_once("threshold", "no threshold (parameter unset and the weights are uncalibrated): "
                                         "~/open_set and ~/obstacles are off")
        depth = None
        if settings.depth_topic and (wanted.obstacles or wanted.overlay) and camera is not None:
            depth = self._matching_depth(ch, msg.header.stamp, settings)
        return Job(ch, msg, rgb, wanted, camera, depth, decode_ms, subscribed)

    def _finish(self, job: Job, prediction: Any, processor: FrameProcessor, forward_ms: float, start: float) -> None:
        """Presentation (colours, obstacles, overlay) with the camera's settings, then its outputs."""
        ch, msg = job.channel, job.msg
        settings = ch.settings
        presenting = time.perf_counter()
        result = processor.present(job.rgb, prediction, settings, job.wanted, job.camera, job.depth, ch.tracker)
        processed = time.perf_counter()
        self._publish(ch, msg.header, result, job.subscribed, settings)
        self._publish_planner_outputs(job, result, processor.num_classes)
        published = time.perf_counter()
        ch.stage_times.add(decode=job.decode_ms, process=forward_ms + (processed - presenting) * 1e3,
                           publish=(published - processed) * 1e3)
        latency_ms = math.nan
        if stamp_ns(msg.header.stamp) > 0:
            latency_ms = (self.get_clock().now().nanoseconds - stamp_ns(msg.header.stamp)) / 1e6
        ch.stats.frame_processed((time.perf_counter() - start) * 1e3, latency_ms)

    def _publish(self, ch: Channel, header: Any, result: FrameResult, subscribed: dict[str, bool],
                 settings: Settings) -> None:
        prediction = result.prediction
        arrays = {
            "semantic": prediction.class_ids, "semantic_color": result.semantic_color,
            "anomaly_score": prediction.hybrid, "open_set": prediction.open_set, "overlay": result.overlay,
        }
        for name, encoding in IMAGE_OUTPUTS.items():
            if subscribed[name] and arrays[name] is not None:
                ch.pubs[name].publish(image_msg(Image, header, arrays[name], encoding))
        if subscribed["obstacles"]:
            located = result.obstacles if result.located else []  # no camera_info: no 3D, no markers
            ch.pubs["obstacles"].publish(self._markers(ch, header, located, settings))
        elif ch.live_markers and not settings.publish_obstacles:
            ch.pubs["obstacles"].publish(self._marker_deletes(ch.live_markers))
            ch.live_markers = set()

    def _publish_planner_outputs(self, job: Job, result: FrameResult, num_classes: int) -> None:
        """~/obstacle_points and ~/obstacle_grid of one frame, each only when subscribed, and only when the obstacles
        could be placed (intrinsics and a threshold known): a planner gets nothing rather than a false "no obstacle"."""
        want_points, want_grid = job.subscribed["obstacle_points"], job.subscribed["obstacle_grid"]
        prediction = result.prediction
        if not (want_points or want_grid) or not result.located or prediction.open_set is None:
            return
        ch, header, s = job.channel, job.msg.header, job.channel.settings
        anomalous = prediction.open_set == num_classes
        seen = [ob for ob in result.obstacles if ob.missed == 0]  # a missed obstacle has no pixels in this frame
        points = obstacle_points(seen, anomalous, prediction.hybrid, job.camera, s.camera_height,
                                 s.camera_pitch, s.camera_roll, job.depth)
        if want_points:
            ch.pubs["obstacle_points"].publish(pointcloud_msg(header, points))
        if want_grid:
            spec = s.grid_spec()
            grid = occupancy_grid(spec, job.camera, s.camera_height, s.camera_pitch, s.camera_roll, anomalous,
                                  points.xyz)
            ch.pubs["obstacle_grid"].publish(grid_msg(header, s.grid_frame_for(header.frame_id), spec.resolution,
                                                      spec.origin, grid))

    def _matching_depth(self, ch: Channel, stamp: Any, settings: Settings):
        target = stamp_ns(stamp)
        with ch.depth_lock:
            candidates = list(ch.depth_msgs)
        if not candidates:
            self.get_logger().warning(f"{ch.label}no depth image on {settings.depth_topic} yet: using the ground plane",
                                      throttle_duration_sec=THROTTLE_S)
            return None
        best = min(candidates, key=lambda m: abs(stamp_ns(m.header.stamp) - target))
        if abs(stamp_ns(best.header.stamp) - target) > settings.depth_sync_tolerance * 1e9:
            self.get_logger().warning(
                f"{ch.label}no depth image within {settings.depth_sync_tolerance} s of the image stamp: using the "
                "ground plane", throttle_duration_sec=THROTTLE_S)
            return None
        try:
            return decode_depth_msg(best)
        except ImageRejected as error:
            self.get_logger().error(f"{ch.label}rejected depth image: {error}", throttle_duration_sec=THROTTLE_S)
            return None

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            self.get_logger().warning(text)

    # ---------------------------------------------------------------- markers
    def _markers(self, ch: Channel, header: Any, obstacles: list[Obstacle], settings: Settings) -> MarkerArray:
        out = MarkerArray()
        lifetime_sec = int(settings.marker_lifetime)
        lifetime_nsec = int(round((settings.marker_lifetime - lifetime_sec) * 1e9))
        for ob in obstacles:
            for kind in ("cube", "text"):
                m = Marker()
                m.header.stamp, m.header.frame_id = header.stamp, header.frame_id
                m.ns, m.id, m.action = ("obstacles" if kind == "cube" else "obstacle_labels"), ob.id, Marker.ADD
                m.lifetime.sec, m.lifetime.nanosec = lifetime_sec, lifetime_nsec
                if kind == "cube":
                    m.type = Marker.CUBE
                    m.pose.position.x, m.pose.position.y, m.pose.position.z = (float(v) for v in ob.center)
                    (m.pose.orientation.x, m.pose.orientation.y, m.pose.orientation.z,
                     m.pose.orientation.w) = (float(v) for v in ob.orientation)
                    m.scale.x, m.scale.y, m.scale.z = (float(v) for v in ob.size)
                    m.color.r, m.color.g, m.color.b, m.color.a = 0.0, 1.0, 1.0, 0.5
                else:
                    m.type = Marker.TEXT_VIEW_FACING
                    top = ob.center + ob.up * (ob.size[1] / 2 + 0.3)
                    m.pose.position.x, m.pose.position.y, m.pose.position.z = (float(v) for v in top)
                    m.pose.orientation.w = 1.0
                    m.scale.z = 0.4
                    m.color.r = m.color.g = m.color.b = m.color.a = 1.0
                    m.text = f"#{ob.id} score {ob.component.mean_score:.2f} | {ob.distance:.1f} m"
                out.markers.append(m)
        current = {ob.id for ob in obstacles}
        out.markers.extend(self._marker_deletes(ch.live_markers - current).markers)
        ch.live_markers = current
        return out

    @staticmethod
    def _marker_deletes(ids: set[int]) -> MarkerArray:
        out = MarkerArray()
        for marker_id in sorted(ids):
            for ns in ("obstacles", "obstacle_labels"):
                m = Marker()
                m.ns, m.id, m.action = ns, marker_id, Marker.DELETE
                out.markers.append(m)
        return out

    # ---------------------------------------------------------------- diagnostics (executor thread)
    def _publish_diagnostics(self) -> None:
        settings, processor = self.settings, self.processor
        if settings is None or processor is None:
            return
        choice = processor.threshold_choice(settings)
        threshold = choice.value
        info = [("state", self.state), ("device", settings.device), ("weights", settings.weights),
                ("backend", settings.backend + self._providers(processor.predictor)),
                *((("model file", self.model_path),) if settings.backend == "onnxruntime" else ()),
                ("threshold", "none" if threshold is None else f"{threshold:.6g}"),
                ("threshold source", choice.source), ("obstacles", self._obstacle_policy(settings))]
        multi = not (len(self.channels) == 1 and "" in self.channels)
        batches = self.batch_stats.report() if multi and self.batch_stats is not None else []
        array = DiagnosticArray()
        for ch in self.channels.values():
            values = [*info, ("image topic", ch.image_topic), ("camera_info", "received" if ch.camera else "missing")]
            if multi:
                values += [("camera", ch.name), *((f"mount {k}", f"{v:.4g}") for k, v in ch.mount.items()), *batches]
            stats = ch.stats
            if self.state != "active" or stats is None:
                report = diagnostics.Report(diagnostics.OK, self.state, values)
            else:
                warnings = []
                if ch.camera is None and any(settings.publishes(n) and ch.pubs[n].get_subscription_count()
                                             for n in OBSTACLE_OUTPUTS):
                    warnings.append("no camera_info: obstacle markers, points and grid off")
                if threshold is None and (settings.publish_open_set or any(map(settings.publishes, OBSTACLE_OUTPUTS))):
                    warnings.append("no threshold: open_set and obstacles off")
                stages = ch.stage_times.report() if ch.stage_times is not None else []
                report = stats.report(warnings, latency_warn_ms=settings.latency_warn * 1e3,
                                      stale_after_s=max(3 * settings.diagnostics_period, 3.0), info=[*values, *stages])
            name = f"{self.get_fully_qualified_name()}: open-set segmentation" + (f" ({ch.name})" if multi else "")
            array.status.append(DiagnosticStatus(level=bytes([report.level]), name=name, message=report.message,
                                                 hardware_id=settings.device,
                                                 values=[KeyValue(key=k, value=v) for k, v in report.values]))
        array.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(array)


def pointcloud_msg(header: Any, points: ObstaclePoints) -> PointCloud2:
    """sensor_msgs/PointCloud2 of the obstacle points (`planner_outputs.encode_points` layout), with `header`."""
    fields, step, data = encode_points(points)
    msg = PointCloud2(height=1, width=len(points), is_bigendian=False, point_step=step, row_step=step * len(points),
                      is_dense=True)
    msg.header.stamp, msg.header.frame_id = header.stamp, header.frame_id
    msg.fields = [PointField(name=name, offset=offset, datatype=datatype, count=1) for name, offset, datatype in fields]
    payload = array.array("B")
    payload.frombytes(data)
    msg.data = payload
    return msg


def grid_msg(header: Any, frame_id: str, resolution: float, origin: tuple[float, float], grid: Any) -> OccupancyGrid:
    """nav_msgs/OccupancyGrid of an (ny, nx) int8 grid (row-major from cell (0, 0)), stamped like the image."""
    msg = OccupancyGrid()
    msg.header.stamp, msg.header.frame_id = header.stamp, frame_id
    msg.info.map_load_time = header.stamp
    msg.info.resolution = float(resolution)
    msg.info.height, msg.info.width = (int(n) for n in grid.shape)
    msg.info.origin.position.x, msg.info.origin.position.y = (float(v) for v in origin)
    msg.info.origin.orientation.w = 1.0
    cells = array.array("b")
    cells.frombytes(grid.astype("int8", copy=False).tobytes())
    msg.data = cells
    return msg


def main(argv: list[str] | None = None) -> int:
    stop = init_ros_process(argv if argv is not None else sys.argv)
    try:
        node = PerceptionNode()
    except Exception as error:  # noqa: BLE001  bad parameter overrides (type, range): fail fast, clearly
        hint = " (doubles need a decimal point: 2.0, not 2)" if "expecting type 'DOUBLE'" in str(error) else ""
        if "expecting type 'STRING_ARRAY'" in str(error):
            hint = " (cameras is a string array: -p 'cameras:=[front, left]')"
        print(f"[{NODE_NAME}] cannot start: {type(error).__name__}: {error}{hint}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    if node.get_parameter("autostart").value:
        if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()
        else:
            node.get_logger().error("autostart: configure failed; the node stays unconfigured (set parameters, "
                                    "then call the change_state service with 'configure')")
    try:
        while not stop.is_set() and node.state != "finalized" and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    if node.state != "finalized":
        try:
            node.trigger_shutdown()
        except Exception as error:  # noqa: BLE001
            node.get_logger().warning(f"shutdown transition: {error}")
    executor.remove_node(node)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
