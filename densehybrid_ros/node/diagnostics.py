"""The node's /diagnostics: one DiagnosticStatus per camera, from its counters (perception/stats.py), the node's
state and settings, and the batch statistics of a multi-camera node."""
from __future__ import annotations

from typing import Mapping

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.lifecycle import LifecycleNode

from densehybrid_ros.node.channel import OBSTACLE_OUTPUTS, Channel
from densehybrid_ros.perception import stats
from densehybrid_ros.perception.pipeline import Perception
from densehybrid_ros.perception.settings import MOUNT_PARAMS, Settings, mount_value
from densehybrid_ros.predictor import Predictor

TITLE = "open-set segmentation"


def backend_label(settings: Settings, predictor: Predictor) -> str:
    """The backend and, for ONNX Runtime, its execution providers: "onnxruntime [CPUExecutionProvider]"."""
    providers = getattr(predictor.model, "providers", None)
    return settings.backend + (f" [{', '.join(providers)}]" if providers else "")


def class_bias_label(predictor: Predictor) -> str:
    """How the weights' class bias of the closed-set decision was chosen, or that there is none."""
    bias = predictor.metadata.class_bias
    return "none (plain argmax)" if bias is None else bias.method


def diagnostics_array(node: LifecycleNode, state: str, settings: Settings, perception: Perception, model_path: str,
                      channels: Mapping[str, Channel], batches: stats.BatchStats | None) -> DiagnosticArray:
    """One status per camera ("<node>: open-set segmentation", with several cameras "... (<camera>)"): OK with the
    state while not active, else the camera's report (its window summarised and reset) with the node's warnings."""
    choice = perception.threshold_choice(settings)
    threshold = choice.value
    info = [("state", state), ("device", settings.device), ("weights", settings.weights),
            ("backend", backend_label(settings, perception.predictor)),
            *((("model file", model_path),) if settings.backend == "onnxruntime" else ()),
            ("threshold", "none" if threshold is None else f"{threshold:.6g}"),
            ("threshold source", choice.source), ("class bias", class_bias_label(perception.predictor)),
            ("obstacles", perception.describe_obstacles(settings))]
    multi = not (len(channels) == 1 and "" in channels)
    batch_values = batches.report() if multi and batches is not None else []
    array = DiagnosticArray()
    for ch in channels.values():
        values = [*info, ("image topic", ch.image_topic), ("camera_info", "received" if ch.camera else "missing")]
        if multi:
            values += [("camera", ch.name), *((f"mount {name}", f"{mount_value(ch.mount, name):.4g}")
                                              for name in MOUNT_PARAMS), *batch_values]
        if state != "active" or ch.stats is None:
            report = stats.Report(stats.OK, state, values)
        else:
            stages = ch.stage_times.report() if ch.stage_times is not None else []
            report = ch.stats.report(warnings(ch, settings, threshold), latency_warn_ms=settings.latency_warn * 1e3,
                                     stale_after_s=max(3 * settings.diagnostics_period, 3.0), info=[*values, *stages])
        name = f"{node.get_fully_qualified_name()}: {TITLE}" + (f" ({ch.name})" if multi else "")
        array.status.append(status(name, report, settings.device))
    array.header.stamp = node.get_clock().now().to_msg()
    return array


def warnings(ch: Channel, settings: Settings, threshold: float | None) -> list[str]:
    """What keeps wanted outputs off: missing intrinsics (for a listened obstacle output), a missing threshold."""
    found = []
    if ch.camera is None and any(settings.publishes(n) and ch.listened(n) for n in OBSTACLE_OUTPUTS):
        found.append("no camera_info: obstacle markers, points and grid off")
    if threshold is None and (settings.publish_open_set or any(map(settings.publishes, OBSTACLE_OUTPUTS))):
        found.append("no threshold: open_set and obstacles off")
    return found


def status(name: str, report: stats.Report, hardware_id: str) -> DiagnosticStatus:
    """A DiagnosticStatus of a report (level, message, key-value pairs)."""
    return DiagnosticStatus(level=bytes([report.level]), name=name, message=report.message, hardware_id=hardware_id,
                            values=[KeyValue(key=k, value=v) for k, v in report.values])
