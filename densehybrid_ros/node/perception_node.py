"""`densehybrid_perception`: the DenseHybrid open-set segmentation lifecycle node (a thin ROS shell).

Lifecycle (managed node, yolo_ros style):
  configure   validate all parameters (fail fast, every bad one named), load the weights into a `Predictor`,
              create the (lifecycle) output publishers and the /diagnostics timer. Any problem: an error log and
              a FAILURE result (the node stays unconfigured and alive; fix the parameters and configure again).
  activate    subscribe to the inputs and start the worker thread.
  deactivate  unsubscribe, stop the worker, delete live markers, free memory (torch.cuda.empty_cache on CUDA).
  cleanup     drop the publishers and the model.    shutdown: all of the above; the process then exits.
  With `autostart` (default true) the node configures and activates itself, so `ros2 run` serves at once.

Inputs: `image` (sensor_msgs/Image: rgb8, bgr8, rgba8, bgra8, mono8, mono16, yuv422/uyvy, yuv422_yuy2/yuyv,
bayer_*8/16, rgb16...) or, with use_compressed, `<image>/compressed` (CompressedImage jpeg/png); `camera_info`;
optionally `depth_topic` (32FC1 m / 16UC1 mm). Sensor-data QoS by default (best effort, depth 1).
The executor thread only posts frames into a one-slot mailbox; a worker thread decodes and runs the Predictor
on the newest frame. A frame replaced before it was taken is counted as dropped; a malformed one as rejected.

Outputs (all with the input header, at camera resolution; each only while it has a subscriber and its
publish_* toggle is on; a frame nobody listens to is not run through the model at all):
  ~/semantic        mono8   closed-set class ids 0..K-1
  ~/semantic_color  rgb8    the class ids in the weights' class colours
  ~/anomaly_score   32FC1   hybrid score s_H = ln P(d_out|x) - logsumexp_y s_y(x) (thesis eq. 4.11): unbounded
                            log-ratio, higher = more anomalous; compare it with the threshold (diagnostics
                            report the one in force)
  ~/open_set        mono8   class ids with K = unknown where s_H > threshold (only when a threshold is known)
  ~/overlay         rgb8    open-set colours blended over the image, unknown pixels highlighted, obstacle boxes
  ~/obstacles       visualization_msgs/MarkerArray in the image's frame (optical frame): a CUBE (ns "obstacles")
                    and a TEXT_VIEW_FACING (ns "obstacle_labels", "#id score distance") per anomaly component;
                    ids are stable across frames, vanished ids get DELETE markers (no DELETEALL)
  /diagnostics      diagnostic_msgs/DiagnosticArray every diagnostics_period
"""
from __future__ import annotations

import gc
import math
import signal
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
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from visualization_msgs.msg import Marker, MarkerArray

from densehybrid_ros.node import diagnostics
from densehybrid_ros.node.image_codec import ImageRejected, decode_compressed_msg, decode_depth_msg, decode_image_msg
from densehybrid_ros.node.mailbox import Mailbox
from densehybrid_ros.node.messages import image_msg, stamp_ns
from densehybrid_ros.node.obstacles import CameraModel, Obstacle
from densehybrid_ros.node.params import PARAMS, SPECS, Settings, check_update, resolve_weights
from densehybrid_ros.node.processing import FrameProcessor, FrameResult, Wanted
from densehybrid_ros.predictor import Predictor, PredictorConfig

NODE_NAME = "densehybrid_perception"
IMAGE_OUTPUTS = {  # topic -> encoding
    "semantic": "mono8", "semantic_color": "rgb8", "anomaly_score": "32FC1", "open_set": "mono8", "overlay": "rgb8",
}
PARAM_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
               float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}
THROTTLE_S = 5.0


@dataclass
class Frame:
    msg: Any
    compressed: bool


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
    window and running totals since activation (densehybrid_ros/node/bench_node.py differences two reports).
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
            self.declare_parameter(spec.name, spec.default, descriptor(spec))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.state = "unconfigured"  # mirrors the lifecycle state (read by the parameter callback)
        self.settings: Settings | None = None
        self.processor: FrameProcessor | None = None
        self.pubs: dict[str, Any] = {}
        self.diag_pub = self.diag_timer = None
        self.subs: list[Any] = []
        self.mailbox: Mailbox[Frame] | None = None
        self.worker: threading.Thread | None = None
        self.stats: diagnostics.FrameStats | None = None
        self.stage_times: StageTimes | None = None
        self.camera: CameraModel | None = None
        self.depth_msgs: deque = deque(maxlen=30)
        self.depth_lock = threading.Lock()
        self.live_markers: set[int] = set()
        self.warned: set[str] = set()
        self.image_topic = ""

    # ---------------------------------------------------------------- parameters
    def _on_set_parameters(self, params: list) -> SetParametersResult:
        configured = self.state in ("inactive", "active")
        ours = [p for p in params if p.name in SPECS]
        for p in ours:
            reason = check_update(p.name, p.value, configured)
            if reason is not None:
                self.get_logger().warning(f"rejected parameter {p.name}={p.value!r}: {reason}")
                return SetParametersResult(successful=False, reason=reason)
        if configured and self.settings is not None and ours:
            try:
                self.settings = self.settings.replace(**{p.name: p.value for p in ours})
            except ValueError as error:
                return SetParametersResult(successful=False, reason=str(error))
            self.get_logger().info("updated " + ", ".join(f"{p.name}={p.value!r}" for p in ours))
        return SetParametersResult(successful=True)

    # ---------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            settings = Settings.from_values({spec.name: self.get_parameter(spec.name).value for spec in PARAMS})
            weights = resolve_weights(settings.weights)
            predictor = Predictor.from_weights(weights, PredictorConfig(device=settings.device, fp16=settings.fp16))
        except Exception as error:  # noqa: BLE001  any configure problem is a clean FAILURE, never a crash
            self.get_logger().error(f"configure failed: {error}")
            return TransitionCallbackReturn.FAILURE
        self.settings, self.processor = settings, FrameProcessor(predictor)
        out = qos(settings.output_reliability, 1)
        self.pubs = {name: self.create_lifecycle_publisher(Image, f"~/{name}", out) for name in IMAGE_OUTPUTS}
        self.pubs["obstacles"] = self.create_lifecycle_publisher(MarkerArray, "~/obstacles", qos(settings.output_reliability, 5))
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.diag_timer = self.create_timer(settings.diagnostics_period, self._publish_diagnostics)
        threshold = self.processor.threshold(settings)
        self.get_logger().info(
            f"configured: {weights} ({predictor.num_classes} classes, device {settings.device}), threshold "
            f"{'none: open_set and obstacles off' if threshold is None else threshold}")
        self.state = "inactive"
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # enables the lifecycle publishers
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        s = self.settings
        inputs = qos(s.qos_reliability, s.qos_depth)
        self.stats = diagnostics.FrameStats()
        self.stage_times = StageTimes()
        self.mailbox = Mailbox()
        self.warned.clear()
        self.image_topic = self.resolve_topic_name("image")
        if s.use_compressed:
            self.image_topic += "/compressed"
            self.subs.append(self.create_subscription(
                CompressedImage, self.image_topic, lambda m: self._on_image(m, True), inputs))
        else:
            self.subs.append(self.create_subscription(Image, "image", lambda m: self._on_image(m, False), inputs))
        self.subs.append(self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, inputs))
        if s.depth_topic:
            self.subs.append(self.create_subscription(Image, s.depth_topic, self._on_depth, inputs))
        self.worker = threading.Thread(target=self._work, args=(self.mailbox,), name="densehybrid_worker", daemon=True)
        self.worker.start()
        self.state = "active"
        self.get_logger().info(f"active: {self.image_topic} -> {self.resolve_topic_name('~/semantic').rsplit('/', 1)[0]}/*")
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
        if self.live_markers and "obstacles" in self.pubs:
            self.pubs["obstacles"].publish(self._marker_deletes(self.live_markers))
        self.live_markers = set()
        self.camera = None
        with self.depth_lock:
            self.depth_msgs.clear()
        self._free_memory()

    def _release(self) -> None:
        for pub in self.pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self.pubs = {}
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
                torch.cuda.empty_cache()

    # ---------------------------------------------------------------- inputs (executor thread)
    def _on_image(self, msg: Any, compressed: bool) -> None:
        mailbox, stats = self.mailbox, self.stats
        if mailbox is None or stats is None:
            return
        stats.frame_received(replaced_pending=mailbox.put(Frame(msg, compressed)))

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            self.camera = CameraModel.from_k(msg.k, msg.width, msg.height)
        except ValueError as error:
            self.get_logger().warning(f"ignoring camera_info: {error}", throttle_duration_sec=THROTTLE_S)

    def _on_depth(self, msg: Image) -> None:
        with self.depth_lock:
            self.depth_msgs.append(msg)

    # ---------------------------------------------------------------- worker thread
    def _work(self, mailbox: Mailbox[Frame]) -> None:
        while not mailbox.closed:
            frame = mailbox.take(timeout=0.25)
            if frame is None:
                continue
            try:
                self._process(frame)
            except Exception as error:  # noqa: BLE001  the node never dies on a frame
                self.stats.frame_failed(f"{type(error).__name__}: {error}")
                self.get_logger().error(f"frame failed: {type(error).__name__}: {error}", throttle_duration_sec=THROTTLE_S)

    def _has_subscribers(self, name: str) -> bool:
        return self.settings.publishes(name) and self.pubs[name].get_subscription_count() > 0

    def _process(self, frame: Frame) -> None:
        start = time.perf_counter()
        settings, processor, msg = self.settings, self.processor, frame.msg
        if settings is None or processor is None:
            return
        try:
            rgb = decode_compressed_msg(msg) if frame.compressed else decode_image_msg(msg)
        except ImageRejected as error:
            self.stats.frame_rejected(str(error))
            self.get_logger().error(
                f"rejected frame (stamp {msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d}, frame_id "
                f"{msg.header.frame_id!r}): {error}", throttle_duration_sec=THROTTLE_S)
            return
        decoded = time.perf_counter()
        wanted = Wanted(**{name: self._has_subscribers(name) for name in (*IMAGE_OUTPUTS, "obstacles")})
        if not any(vars(wanted).values()):
            self.stats.frame_idle()  # nobody listens: no inference (lazy, like image_pipeline nodes)
            return
        camera = self.camera
        if wanted.obstacles and camera is None:
            self._warn_once("camera_info", "no camera_info received yet: obstacle markers are off until one arrives")
        if (wanted.open_set or wanted.obstacles) and processor.threshold(settings) is None:
            self._warn_once("threshold", "no threshold (parameter unset and the weights are uncalibrated): "
                                         "~/open_set and ~/obstacles are off")
        depth = None
        if settings.depth_topic and (wanted.obstacles or wanted.overlay) and camera is not None:
            depth = self._matching_depth(msg.header.stamp, settings)
        result = processor.process(rgb, settings, wanted, camera, depth)
        processed = time.perf_counter()
        self._publish(msg.header, result, wanted, settings)
        published = time.perf_counter()
        self.stage_times.add(decode=(decoded - start) * 1e3, process=(processed - decoded) * 1e3,
                             publish=(published - processed) * 1e3)
        latency_ms = math.nan
        if stamp_ns(msg.header.stamp) > 0:
            latency_ms = (self.get_clock().now().nanoseconds - stamp_ns(msg.header.stamp)) / 1e6
        self.stats.frame_processed((time.perf_counter() - start) * 1e3, latency_ms)

    def _publish(self, header: Any, result: FrameResult, wanted: Wanted, settings: Settings) -> None:
        prediction = result.prediction
        arrays = {
            "semantic": prediction.class_ids, "semantic_color": result.semantic_color,
            "anomaly_score": prediction.hybrid, "open_set": prediction.open_set, "overlay": result.overlay,
        }
        for name, encoding in IMAGE_OUTPUTS.items():
            if getattr(wanted, name) and arrays[name] is not None:
                self.pubs[name].publish(image_msg(Image, header, arrays[name], encoding))
        if wanted.obstacles:
            located = result.obstacles if result.located else []  # no camera_info: no 3D, no markers
            self.pubs["obstacles"].publish(self._markers(header, located, settings))
        elif self.live_markers and not settings.publish_obstacles:
            self.pubs["obstacles"].publish(self._marker_deletes(self.live_markers))
            self.live_markers = set()

    def _matching_depth(self, stamp: Any, settings: Settings):
        target = stamp_ns(stamp)
        with self.depth_lock:
            candidates = list(self.depth_msgs)
        if not candidates:
            self.get_logger().warning(f"no depth image on {settings.depth_topic} yet: using the ground plane",
                                      throttle_duration_sec=THROTTLE_S)
            return None
        best = min(candidates, key=lambda m: abs(stamp_ns(m.header.stamp) - target))
        if abs(stamp_ns(best.header.stamp) - target) > settings.depth_sync_tolerance * 1e9:
            self.get_logger().warning(
                f"no depth image within {settings.depth_sync_tolerance} s of the image stamp: using the ground plane",
                throttle_duration_sec=THROTTLE_S)
            return None
        try:
            return decode_depth_msg(best)
        except ImageRejected as error:
            self.get_logger().error(f"rejected depth image: {error}", throttle_duration_sec=THROTTLE_S)
            return None

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            self.get_logger().warning(text)

    # ---------------------------------------------------------------- markers
    def _markers(self, header: Any, obstacles: list[Obstacle], settings: Settings) -> MarkerArray:
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
        out.markers.extend(self._marker_deletes(self.live_markers - current).markers)
        self.live_markers = current
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
        settings, processor, stats = self.settings, self.processor, self.stats
        if settings is None or processor is None:
            return
        threshold = processor.threshold(settings)
        info = [("state", self.state), ("device", settings.device), ("weights", settings.weights),
                ("threshold", "none" if threshold is None else f"{threshold:.6g}"),
                ("threshold source", "parameter" if settings.threshold is not None else
                 ("weights calibration" if threshold is not None else "none")),
                ("image topic", self.image_topic), ("camera_info", "received" if self.camera else "missing")]
        if self.state != "active" or stats is None:
            report = diagnostics.Report(diagnostics.OK, self.state, info)
        else:
            warnings = []
            if settings.publish_obstacles and self.camera is None and self.pubs["obstacles"].get_subscription_count():
                warnings.append("no camera_info: obstacle markers off")
            if threshold is None and (settings.publish_open_set or settings.publish_obstacles):
                warnings.append("no threshold: open_set and obstacles off")
            stages = self.stage_times.report() if self.stage_times is not None else []
            report = stats.report(warnings, latency_warn_ms=settings.latency_warn * 1e3,
                                  stale_after_s=max(3 * settings.diagnostics_period, 3.0), info=[*info, *stages])
        status = DiagnosticStatus(level=bytes([report.level]), name=f"{self.get_fully_qualified_name()}: open-set segmentation",
                                  message=report.message, hardware_id=settings.device,
                                  values=[KeyValue(key=k, value=v) for k, v in report.values])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(array)


def main(argv: list[str] | None = None) -> int:
    rclpy.init(args=argv if argv is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        node = PerceptionNode()
    except Exception as error:  # noqa: BLE001  bad parameter overrides (type, range): fail fast, clearly
        hint = " (doubles need a decimal point: 2.0, not 2)" if "expecting type 'DOUBLE'" in str(error) else ""
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
