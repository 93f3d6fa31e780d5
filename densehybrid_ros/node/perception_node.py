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
The executor thread only posts frames into a one-slot-per-camera mailbox; a worker thread decodes the newest and runs
them through the perception pipeline (densehybrid_ros/perception/pipeline.py: one Predictor call per cycle). A frame
replaced before it was taken is counted as dropped; a malformed one as rejected.

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
                    confirm_hits - 1 frames after it is first seen, or at once when its component reaches the
                    weights' instant_confirm_point); its track and id survive miss_budget missed
                    frames (its last box published meanwhile only with hold_missed_obstacles); ids are stable across
                    frames; an id not published in a frame gets DELETE markers (no DELETEALL): dropped, or missed
                    without hold_missed_obstacles, then ADDed again under the same id if seen within the budget
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

import gc
import math
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image

from densehybrid_ros.node.channel import IMAGE_OUTPUTS, OBSTACLE_OUTPUTS, THROTTLE_S, Channel, Frame
from densehybrid_ros.node.dds import init_ros_process
from densehybrid_ros.node.diagnostics import backend_label, diagnostics_array
from densehybrid_ros.node.markers import grid_msg, marker_deletes, obstacle_markers, pointcloud_msg
from densehybrid_ros.node.messages import image_msg
from densehybrid_ros.node.parameters import apply_update, declare_mounts, declare_parameters, rejection, settings_of
from densehybrid_ros.perception.image_codec import ImageRejected, decode_compressed_msg, decode_image_msg, stamp_ns
from densehybrid_ros.perception.mailbox import BatchMailbox
from densehybrid_ros.perception.pipeline import CameraFrame, FrameResult, Perception, Wanted
from densehybrid_ros.perception.settings import Settings, resolve_onnx_model, resolve_weights
from densehybrid_ros.perception.stats import BatchStats
from densehybrid_ros.predictor import Prediction, Predictor, PredictorConfig

NODE_NAME = "densehybrid_perception"
LIVE_S = 1.0  # a camera that sent a frame within this long is waited for (batch_wait_ms) when batching


@dataclass
class Job:
    """A decoded frame of one camera waiting for the batched forward."""

    channel: Channel
    msg: Any
    frame: CameraFrame
    decode_ms: float
    subscribed: dict[str, bool]  # output -> publish toggle on and someone listens (IMAGE_OUTPUTS, OBSTACLE_OUTPUTS)


class PerceptionNode(LifecycleNode):
    def __init__(self, **kwargs: Any):
        super().__init__(NODE_NAME, **kwargs)
        declare_parameters(self)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.state = "unconfigured"  # mirrors the lifecycle state (read by the parameter callback)
        self.settings: Settings | None = None
        self.perception: Perception | None = None
        self.channels: dict[str, Channel] = {}
        self.diag_pub = self.diag_timer = None
        self.mailbox: BatchMailbox[Frame] | None = None
        self.worker: threading.Thread | None = None
        self.batch_stats: BatchStats | None = None
        self.warned: set[str] = set()
        self.model_path = ""

    # ---------------------------------------------------------------- parameters
    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        configured = self.state in ("inactive", "active")
        rejected = rejection(params, configured)
        if rejected is not None:
            p, reason = rejected
            self.get_logger().warning(f"rejected parameter {p.name}={p.value!r}: {reason}")
            return SetParametersResult(successful=False, reason=reason)
        settings, perception = self.settings, self.perception
        if not configured or settings is None or perception is None:
            return SetParametersResult(successful=True)
        try:
            update = apply_update(params, settings, {name: ch.mount for name, ch in self.channels.items()},
                                  perception.threshold_choice)  # an operating_point the weights lack: rejected, named
        except ValueError as error:
            return SetParametersResult(successful=False, reason=str(error))
        if update is None:
            return SetParametersResult(successful=True)
        point = update.settings.instant_confirm_point
        if (any(p.name == "instant_confirm_point" for p in update.changed) and point
                and update.settings.instant_score(perception.calibration) is None):
            reason = (f"operating point {point!r} is not in the weights; they hold "
                      f"{sorted(perception.calibration.points()) or 'none (uncalibrated)'}")
            self.get_logger().warning(f"rejected parameter instant_confirm_point={point!r}: {reason}")
            return SetParametersResult(successful=False, reason=reason)
        self.settings = update.settings
        for name, ch in self.channels.items():
            ch.mount = update.mounts[name]
        if any(p.name == "drivable_classes" for p in update.changed):
            self._warn_unknown_drivable(update.settings)
        self.get_logger().info("updated " + ", ".join(f"{p.name}={p.value!r}" for p in update.changed))
        return SetParametersResult(successful=True)

    # ---------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            settings = settings_of(self)
            mounts = declare_mounts(self, settings)
            channels = {name: Channel(name, mounts.get(name, settings.mount)) for name in settings.cameras or ("",)}
            predictor, model_path = self._load_predictor(settings)
            perception = Perception(predictor, tuple(channels))
            perception.threshold_choice(settings)  # an operating_point the weights lack fails here, named
        except Exception as error:  # noqa: BLE001  any configure problem is a clean FAILURE, never a crash
            self.get_logger().error(f"configure failed: {error}")
            return TransitionCallbackReturn.FAILURE
        self.settings, self.perception, self.channels = settings, perception, channels
        self._warn_unknown_drivable(settings)
        self.model_path = str(model_path)
        for ch in channels.values():
            ch.create_publishers(self, settings.output_reliability)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.diag_timer = self.create_timer(settings.diagnostics_period, self._publish_diagnostics)
        choice = perception.threshold_choice(settings)
        cameras = f", cameras {', '.join(settings.cameras)}" if settings.cameras else ""
        self.get_logger().info(
            f"configured: {model_path} ({predictor.num_classes} classes, device {settings.device}, backend "
            f"{backend_label(settings, predictor)}{cameras}), threshold "
            f"{'none: open_set and obstacles off' if choice.value is None else f'{choice.value} ({choice.source})'}; "
            f"obstacles: {perception.describe_obstacles(settings)}")
        self.state = "inactive"
        return super().on_configure(state)

    def _warn_unknown_drivable(self, settings: Settings) -> None:
        names = self.perception.class_names
        unknown = [n for n in settings.drivable_classes if n not in names]
        if unknown:
            known = settings.drivable_ids(names)
            self.get_logger().warning(
                f"drivable_classes {unknown} are not classes of the weights ({', '.join(names)})"
                + ("" if known else ": no drivable class known, obstacles are not checked for a drivable surface"))

    @staticmethod
    def _load_predictor(settings: Settings) -> tuple[Predictor, Any]:
        config = PredictorConfig(device=settings.device, fp16=settings.fp16, backend=settings.backend)
        if settings.backend == "onnxruntime" and settings.onnx_model:
            path = resolve_onnx_model(settings.onnx_model)
            return Predictor.from_onnx(path, config), path
        weights = resolve_weights(settings.weights)
        return Predictor.from_weights(weights, config), weights

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # enables the lifecycle publishers
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        self.mailbox = BatchMailbox(list(self.channels))
        self.batch_stats = BatchStats()
        self.warned.clear()
        for name, ch in self.channels.items():
            ch.subscribe(self, self.settings, lambda msg, compressed, c=name: self._on_image(c, msg, compressed))
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
        """Unsubscribe, stop the worker, delete the live markers, forget the tracks, free memory."""
        for ch in self.channels.values():
            ch.unsubscribe(self)
        if self.mailbox is not None:
            self.mailbox.close()
        if self.worker is not None:
            self.worker.join(timeout=30.0)
        self.worker = None
        for ch in self.channels.values():
            if ch.live_markers and "obstacles" in ch.pubs:
                ch.pubs["obstacles"].publish(marker_deletes(ch.live_markers))
            ch.live_markers = set()
            ch.forget_stream()
        if self.perception is not None:
            self.perception.reset()  # no track outlives the stream it was confirmed in (ids are never reused)
        self._free_memory()

    def _release(self) -> None:
        for ch in self.channels.values():
            ch.destroy_publishers(self)
        self.channels = {}
        if self.diag_timer is not None:
            self.destroy_timer(self.diag_timer)
        if self.diag_pub is not None:
            self.destroy_publisher(self.diag_pub)
        self.diag_timer = self.diag_pub = None
        self.perception = None
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
        perception = self.perception
        if perception is None:
            return
        start = time.perf_counter()
        try:
            perception.predictor.warmup(batch=len(self.channels))
        except Exception as error:  # noqa: BLE001  a failed warm-up is not fatal: frames report their own errors
            self.get_logger().warning(f"warm-up forward failed: {type(error).__name__}: {error}")
            return
        self.get_logger().info(f"warm-up forward: {(time.perf_counter() - start) * 1e3:.0f} ms")

    def _process_batch(self, batch: dict[str, Frame]) -> None:
        start = time.perf_counter()
        settings, perception = self.settings, self.perception
        if settings is None or perception is None:
            return
        jobs = []
        for name, frame in batch.items():
            ch = self.channels[name]
            try:
                job = self._prepare(ch, frame, settings, perception)
            except Exception as error:  # noqa: BLE001  the node never dies on a frame
                self._frame_failed(ch, error)
                continue
            if job is not None:
                jobs.append(job)
        if not jobs:
            return
        forward_start = time.perf_counter()
        try:
            predictions = perception.predict([job.frame.rgb for job in jobs], settings)
        except Exception as error:  # noqa: BLE001
            for job in jobs:
                self._frame_failed(job.channel, error)
            return
        forward_ms = (time.perf_counter() - forward_start) * 1e3
        self.batch_stats.add(len(jobs), forward_ms)
        for job, prediction in zip(jobs, predictions):
            try:
                self._finish(job, prediction, perception, settings, forward_ms, start)
            except Exception as error:  # noqa: BLE001
                self._frame_failed(job.channel, error)

    def _frame_failed(self, ch: Channel, error: Exception) -> None:
        ch.stats.frame_failed(f"{type(error).__name__}: {error}")
        self.get_logger().error(f"{ch.label}frame failed: {type(error).__name__}: {error}",
                                throttle_duration_sec=THROTTLE_S)

    def _prepare(self, ch: Channel, frame: Frame, settings: Settings, perception: Perception) -> Job | None:
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
        subscribed = {name: settings.publishes(name) and ch.listened(name)
                      for name in (*IMAGE_OUTPUTS, *OBSTACLE_OUTPUTS)}
        if not any(subscribed.values()):
            ch.stats.frame_idle()  # nobody listens: no inference (lazy, like image_pipeline nodes)
            return None
        wanted = Wanted(**subscribed)
        camera = ch.camera
        if wanted.any_obstacles and camera is None:
            self._warn_once(f"camera_info {ch.name}", f"{ch.label}no camera_info received yet: obstacle markers, "
                                                      "points and grid are off until one arrives")
        if (wanted.open_set or wanted.any_obstacles) and perception.threshold(settings) is None:
            self._warn_once("threshold", "no threshold (parameter unset and the weights are uncalibrated): "
                                         "~/open_set and ~/obstacles are off")
        depth = None
        if settings.depth_topic and (wanted.any_obstacles or wanted.overlay) and camera is not None:
            depth = ch.matching_depth(self, msg.header.stamp, settings)
        return Job(ch, msg, CameraFrame(rgb, wanted, ch.name, camera, ch.mount, depth), decode_ms, subscribed)

    def _finish(self, job: Job, prediction: Prediction, perception: Perception, settings: Settings, forward_ms: float,
                start: float) -> None:
        """Presentation (colours, obstacles, overlay, planner outputs) of one camera's frame, then its outputs."""
        ch, msg = job.channel, job.msg
        presenting = time.perf_counter()
        result = perception.present(job.frame, prediction, settings)
        processed = time.perf_counter()
        self._publish(ch, msg.header, result, job.subscribed, settings)
        published = time.perf_counter()
        ch.stage_times.add(decode=job.decode_ms, process=forward_ms + (processed - presenting) * 1e3,
                           publish=(published - processed) * 1e3)
        latency_ms = math.nan
        if stamp_ns(msg.header.stamp) > 0:
            latency_ms = (self.get_clock().now().nanoseconds - stamp_ns(msg.header.stamp)) / 1e6
        ch.stats.frame_processed((time.perf_counter() - start) * 1e3, latency_ms)

    def _publish(self, ch: Channel, header: Any, result: FrameResult, subscribed: dict[str, bool],
                 settings: Settings) -> None:
        """The subscribed outputs of one frame. Obstacle points and grid only when the obstacles could be placed
        (intrinsics and a threshold known): a planner gets nothing rather than a false "no obstacle"."""
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
            current = {ob.id for ob in located}
            ch.pubs["obstacles"].publish(obstacle_markers(header, located, settings.marker_lifetime,
                                                          gone=ch.live_markers - current))
            ch.live_markers = current
        elif ch.live_markers and not settings.publish_obstacles:
            ch.pubs["obstacles"].publish(marker_deletes(ch.live_markers))
            ch.live_markers = set()
        if subscribed["obstacle_points"] and result.points is not None:
            ch.pubs["obstacle_points"].publish(pointcloud_msg(header, result.points))
        if subscribed["obstacle_grid"] and result.grid is not None:
            ch.pubs["obstacle_grid"].publish(grid_msg(header, settings.grid_frame_for(header.frame_id), result.grid))

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            self.get_logger().warning(text)

    # ---------------------------------------------------------------- diagnostics (executor thread)
    def _publish_diagnostics(self) -> None:
        settings, perception = self.settings, self.perception
        if settings is None or perception is None:
            return
        self.diag_pub.publish(diagnostics_array(self, self.state, settings, perception, self.model_path, self.channels,
                                                self.batch_stats))


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
