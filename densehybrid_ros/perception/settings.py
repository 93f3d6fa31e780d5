"""Parameters of the `densehybrid_perception` node: one specification, ROS-free.

The node turns every `ParamSpec` into a typed `declare_parameter` with a `ParameterDescriptor`
(description, range, constraints); `config/perception.yaml` holds the same defaults (a test checks
that they agree). Validation lives here so that it is unit-testable and identical at configure time
and in the on-set-parameters callback:

- `runtime=True` parameters may change while the node runs (threshold, obstacle and publish settings,
  camera pose); the new value applies from the next frame.
- the others are read at configure/activate (weights, device, QoS, topics): they can only be set while
  the node is unconfigured (`cleanup`, set, `configure`), otherwise the set is rejected with that reason.

Cameras: `cameras` (string array) names the cameras of a multi-camera node; empty = one camera on the plain
topics. Each named camera also gets the mounting parameters `<camera>.camera_height`, `<camera>.camera_pitch`
and `<camera>.camera_roll` (declared by the node at configure, defaulting to the global ones; `MOUNT_PARAMS`), which
make its `camera.Mount`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from densehybrid_ros.perception.camera import Mount
from densehybrid_ros.perception.obstacles import MAX_HISTORY, Confirmation, ObstacleRules
from densehybrid_ros.perception.planner_outputs import MAX_GRID_CELLS, GridSpec
from densehybrid_ros.predictor import DEVICE_RE
from densehybrid_ros.weights import OPERATING_POINT_RE, Calibration

Value = Union[bool, int, float, str, list]

OUTPUTS = ("semantic", "semantic_color", "anomaly_score", "open_set", "overlay", "obstacles", "obstacle_points",
           "obstacle_grid")
RELIABILITIES = ("best_effort", "reliable")
BACKENDS = ("torch", "onnxruntime")
CAMERA_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")  # one ROS name token: used in topic and parameter names
MAX_CAMERAS = 16
MOUNT_FIELDS = {"camera_height": "height", "camera_pitch": "pitch", "camera_roll": "roll"}  # parameter -> Mount field
MOUNT_PARAMS = tuple(MOUNT_FIELDS)  # per camera: <camera>.<name>
# Cityscapes' object classes (those with instances); the sim's weights name five of them
OBJECT_CLASSES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
DRIVABLE_CLASSES = ("road", "sidewalk")  # the surface an obstacle stands on (also where training pastes may stand)
GROUND_FRAME_SUFFIX = "_ground"  # grid_frame "" = <image frame_id>_ground


class SettingsError(ValueError):
    """One or more parameters are invalid; the message names each parameter and why."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Value
    description: str
    runtime: bool = False  # may change while configured/active
    low: float | None = None  # inclusive range (IntegerRange / FloatingPointRange)
    high: float | None = None
    choices: tuple[str, ...] = ()
    allow_nan: bool = False  # doubles: NaN is a legal value (means "unset")

    @property
    def type(self) -> type:
        return type(self.default)

    @property
    def constraints(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"range [{self.low}, {self.high}]")
        if self.choices:
            parts.append("one of " + ", ".join(self.choices))
        if self.allow_nan:
            parts.append("NaN = unset")
        parts.append("changeable at runtime" if self.runtime else "set while unconfigured; read at configure")
        return "; ".join(parts)


_TOGGLE = "publish ~/{0} (visual outputs are computed only while someone subscribes)"

PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("autostart", True, "configure and activate at startup (a plain `ros2 run` serves at once); "
              "false = wait for lifecycle transitions"),
    ParamSpec("weights", "models/densehybrid_sim.safetensors",
              "DenseHybrid weights file (.safetensors, densehybrid_ros format): absolute, relative to the working "
              "directory, or relative to share/densehybrid_ros (default: the bundled sim-world model)"),
    ParamSpec("device", "cpu", "inference device: cpu, cuda or cuda:N"),
    ParamSpec("fp16", False, "float16 autocast (CUDA only); scores are always computed in float32"),
    ParamSpec("backend", "torch", "inference runtime: torch, or onnxruntime (providers TensorRT/CUDA when device is "
              "cuda and the onnxruntime build has them, else CPU)", choices=BACKENDS),
    ParamSpec("onnx_model", "", "backend onnxruntime: exported model (.onnx from densehybrid_ros.onnx_export, "
              "metadata embedded; absolute, relative to the working directory or to share/densehybrid_ros); "
              "empty = export `weights` at their input_size at configure (cached)"),
    ParamSpec("cameras", [], "camera names (string array) of a multi-camera node: per camera <camera>/image (or "
              "<camera>/image/compressed) and <camera>/camera_info in, ~/<camera>/<output> out, mounting parameters "
              "<camera>.camera_height/pitch/roll; frames of all cameras are batched. Empty = one camera on image, "
              "camera_info -> ~/<output>"),
    ParamSpec("batch_wait_ms", 10.0, "multi-camera: after the first frame of a cycle, wait at most this long [ms] "
              "for the other live cameras' frames before the batched forward (0 = take what is there)",
              runtime=True, low=0.0, high=1000.0),
    ParamSpec("threshold", math.nan, "open-set threshold on the hybrid score s_H (higher = more anomalous; anomalous "
              "where s_H >= threshold); NaN = an operating point stored in the weights (operating_point). Without "
              "either, ~/open_set and ~/obstacles are off", runtime=True, allow_nan=True),
    ParamSpec("operating_point", "", "calibrated operating point of the weights to use when threshold is NaN, e.g. "
              "fpr1 / fpr05 (at most 1% / 0.5% of held-out inlier pixels flagged: few false alarms) or tpr95 (95% of "
              "held-out anomaly pixels flagged: the thesis protocol); empty = the weights' default point (the one "
              "densehybrid-train calibrate was given, fpr1 unless --default-point), else their one calibrated "
              "threshold", runtime=True),
    ParamSpec("min_obstacle_area", 50, "smallest anomaly component (pixels at camera resolution) that may become an "
              "obstacle", runtime=True, low=1, high=100_000_000),
    ParamSpec("max_obstacles", 32, "at most this many obstacle candidates (largest first) per frame", runtime=True,
              low=1, high=1000),
    ParamSpec("drivable_classes", list(DRIVABLE_CLASSES), "class names (of the weights) of the drivable surface: a "
              "component becomes an obstacle only where the predicted classes just below its bottom edge are mostly "
              "these (or its bottom edge is in the ground_band); names the weights lack are ignored (with a "
              "warning), none known = no surface check", runtime=True),
    ParamSpec("ground_band", 0.05, "share of the image height at its bottom in which any ground contact counts as "
              "drivable (1.0 = no surface check)", runtime=True, low=0.0, high=1.0),
    ParamSpec("obstacle_min_width", 0.1, "narrowest obstacle [m] (box width at its ground contact)", runtime=True,
              low=0.0, high=1000.0),
    ParamSpec("obstacle_max_width", 3.0, "widest obstacle [m]", runtime=True, low=0.0, high=1000.0),
    ParamSpec("obstacle_min_height", 0.1, "lowest obstacle [m] (box height at its ground contact)", runtime=True,
              low=0.0, high=1000.0),
    ParamSpec("obstacle_max_height", 3.0, "tallest obstacle [m]", runtime=True, low=0.0, high=1000.0),
    ParamSpec("obstacle_min_visible_area", 0.02, "smallest visible area of an obstacle [m^2]: its component's pixels "
              "at its distance (box width x height x the share of the box the component fills); 0 = any",
              runtime=True, low=0.0, high=1000.0),
    ParamSpec("object_classes", list(OBJECT_CLASSES), "class names (of the weights) of known objects: a component "
              "mostly surrounded by them (max_enclosed_share) is taken as a part of such an object, e.g. a near car's "
              "wheel; names the weights lack are ignored, none known = no enclosure check", runtime=True),
    ParamSpec("max_enclosed_share", 0.6, "a component becomes an obstacle only if at most this share of the pixels "
              "around it (a ring 1/64 of the image height wide, outside every anomaly component) are of "
              "object_classes in the predicted semantic map (1.0 = no enclosure check)", runtime=True,
              low=0.0, high=1.0),
    ParamSpec("confirm_hits", 2, "an obstacle is published once seen in confirm_hits of the last confirm_window frames "
              "(added latency for a new obstacle: confirm_hits - 1 frames; none for one reaching "
              "instant_confirm_point)", runtime=True, low=1, high=MAX_HISTORY),
    ParamSpec("confirm_window", 3, "frames over which confirm_hits are counted", runtime=True, low=1,
              high=MAX_HISTORY),
    ParamSpec("miss_budget", 2, "a confirmed obstacle missing from this many frames in a row keeps its track and id "
              "(seen again, it is published at once under the same id); one frame more and it is dropped",
              runtime=True, low=0, high=1000),
    ParamSpec("hold_missed_obstacles", False, "publish a confirmed obstacle's last view (its box where it was last "
              "seen) through its missed frames; off: only obstacles seen in the current frame are published. The node "
              "has no ego-motion: a last view is off by the vehicle's motion since (8 m/s at 4 Hz: 2 m per frame)",
              runtime=True),
    ParamSpec("instant_confirm_point", "f1", "calibrated operating point of the weights (e.g. f1: the best-F1 pixel "
              "threshold) that a new obstacle's component must reach (its highest hybrid score) to be published at "
              "once, without waiting for confirm_hits; weaker ones wait. Empty = off; weights without that point: "
              "off. With a threshold at or above it every obstacle is published at once", runtime=True),
    *(ParamSpec(f"publish_{name}", True, _TOGGLE.format(name), runtime=True) for name in OUTPUTS),
    ParamSpec("overlay_alpha", 0.5, "opacity of the class colours in ~/overlay", runtime=True, low=0.0, high=1.0),
    ParamSpec("camera_height", 1.5, "height of the camera's optical centre above the ground plane [m]",
              runtime=True, low=0.01, high=100.0),
    ParamSpec("camera_pitch", 0.0, "camera pitch [rad] relative to the ground plane; POSITIVE = optical axis tilted "
              "DOWN towards the ground", runtime=True, low=-math.pi / 2, high=math.pi / 2),
    ParamSpec("camera_roll", 0.0, "camera roll [rad] about the optical axis; positive turns the image x axis towards "
              "its y (down) axis, i.e. clockwise seen from behind the camera", runtime=True,
              low=-math.pi / 2, high=math.pi / 2),
    ParamSpec("obstacle_max_distance", 60.0, "obstacles farther than this range from the camera [m] are dropped",
              runtime=True, low=0.1, high=10000.0),
    ParamSpec("grid_frame", "", "frame_id of ~/obstacle_grid: the camera's ground frame (origin on the ground straight "
              "below the optical centre, x forward along the optical axis's heading, y left, z up; e.g. base_footprint "
              "when that is where it lies). Empty = <image frame_id>" + GROUND_FRAME_SUFFIX + " (one per camera; "
              "publish its transform yourself). A fixed name needs a single camera", runtime=True),
    ParamSpec("grid_resolution", 0.2, "cell size of ~/obstacle_grid [m]", runtime=True, low=0.01, high=100.0),
    ParamSpec("grid_length", 40.0, "extent of ~/obstacle_grid ahead of the camera, from the point below it [m]",
              runtime=True, low=0.1, high=10000.0),
    ParamSpec("grid_width", 20.0, "extent of ~/obstacle_grid across, centred on the camera's heading [m]",
              runtime=True, low=0.1, high=10000.0),
    ParamSpec("track_match_distance", 3.0, "an obstacle candidate continues the track whose last anchor (ground "
              "contact, or depth point) it is nearest to within the track's gate, an ellipse: this distance [m] "
              "across the line of sight; along it, this distance per frame since the track was last seen plus "
              "track_match_relative x range. It must exceed the vehicle's motion between frames (8 m/s at 4 Hz: 2 m) "
              "plus the placement jitter", runtime=True, low=0.0, high=1000.0),
    ParamSpec("track_match_relative", 0.2, "along the line of sight the track matching gate grows by this share of "
              "the track's range (a ground-contact anchor moves by about range^2 / (fy * camera height) per image "
              "row; 0 = no growth)", runtime=True, low=0.0, high=10.0),
    ParamSpec("marker_lifetime", 0.5, "lifetime of obstacle markers [s] (0 = until deleted)", runtime=True,
              low=0.0, high=3600.0),
    ParamSpec("use_compressed", False, "subscribe to <image>/compressed (sensor_msgs/CompressedImage, jpeg/png) "
              "instead of <image>"),
    ParamSpec("qos_reliability", "best_effort", "reliability of the input subscriptions (sensor data default)",
              choices=RELIABILITIES),
    ParamSpec("qos_depth", 1, "history depth of the input subscriptions (the DDS queue; the worker still takes only "
              "the newest frame per camera: frames that arrive while it is busy are dropped and counted)",
              low=1, high=1000),
    ParamSpec("output_reliability", "reliable", "reliability of the output publishers (reliable serves both "
              "kinds of subscribers)", choices=RELIABILITIES),
    ParamSpec("depth_topic", "", "optional depth image (32FC1 metres or 16UC1 millimetres, registered to the camera) "
              "to place obstacles; empty = ground-plane intersection"),
    ParamSpec("depth_sync_tolerance", 0.02, "largest |stamp difference| [s] between an image and the depth image used "
              "for it", runtime=True, low=0.0, high=10.0),
    ParamSpec("diagnostics_period", 1.0, "period of the /diagnostics report [s]", low=0.05, high=60.0),
    ParamSpec("latency_warn", 0.5, "diagnostics WARN when the mean stamp-to-publish latency exceeds this [s]",
              runtime=True, low=0.0, high=3600.0),
)
SPECS: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMS}
DEFAULTS: dict[str, Value] = {spec.name: spec.default for spec in PARAMS}


def check_value(name: str, value: Any) -> str | None:
    """Why `value` is not acceptable for parameter `name`, or None if it is."""
    spec = SPECS.get(name)
    if spec is None:
        return f"unknown parameter {name!r}"
    expected = spec.type
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is list and isinstance(value, tuple):
        value = list(value)
    if type(value) is not expected:
        return f"{name} must be a {expected.__name__}, got {type(value).__name__} {value!r}"
    if expected is float and math.isnan(value):
        return None if spec.allow_nan else f"{name} must not be NaN"
    if expected is float and not math.isfinite(value):
        return f"{name} must be finite, got {value}"
    if spec.low is not None and not spec.low <= value <= spec.high:
        return f"{name} must be in [{spec.low}, {spec.high}], got {value}"
    if spec.choices and value not in spec.choices:
        return f"{name} must be one of {list(spec.choices)}, got {value!r}"
    if name == "device" and not DEVICE_RE.match(value):
        return f"device must be 'cpu', 'cuda' or 'cuda:N', got {value!r}"
    if name == "cameras":
        return check_cameras(value)
    if name in ("drivable_classes", "object_classes") and not all(isinstance(n, str) and n for n in value):
        return f"{name} must be non-empty class names, got {value!r}"
    if name in ("operating_point", "instant_confirm_point") and value and not OPERATING_POINT_RE.match(value):
        return f"{name} must be empty or an operating point name (e.g. fpr1, tpr95), got {value!r}"
    return None


def class_ids(class_names: Sequence[str], wanted: Sequence[str]) -> tuple[int, ...] | None:
    """Ids of the `wanted` names among the weights' `class_names`; None if there are none (names the weights lack are
    ignored; the rule that reads them is then off)."""
    return tuple(i for i, name in enumerate(class_names) if name in wanted) or None


def obstacle_errors(values: Mapping[str, Any]) -> list[str]:
    """Why the obstacle filter and confirmation parameters do not go together, if they don't."""
    errors = []
    for low, high in (("obstacle_min_width", "obstacle_max_width"), ("obstacle_min_height", "obstacle_max_height"),
                      ("confirm_hits", "confirm_window")):
        a, b = values.get(low), values.get(high)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)) and a > b:
            errors.append(f"{low} ({a}) must not exceed {high} ({b})")
    return errors


def check_cameras(names: list) -> str | None:
    """Why a `cameras` value is not acceptable (every problem), or None."""
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        return f"cameras must be strings, got {bad!r}"
    problems = []
    invalid = [n for n in names if not CAMERA_RE.match(n) or "__" in n]
    if invalid:
        problems.append(f"invalid camera name(s) {invalid!r}: each must start with a letter and contain only letters, "
                        "digits and single underscores (it becomes a topic and parameter name component)")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"duplicate camera name(s) {duplicates!r}")
    if len(names) > MAX_CAMERAS:
        problems.append(f"at most {MAX_CAMERAS} cameras, got {len(names)}")
    return "cameras: " + "; ".join(problems) if problems else None


def grid_errors(values: Mapping[str, Any]) -> list[str]:
    """Why the ~/obstacle_grid parameters do not go together (cell count, frame name, cameras), if they don't."""
    errors = []
    resolution, length, width = (values.get(n) for n in ("grid_resolution", "grid_length", "grid_width"))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (resolution, length, width)):
        nx, ny = GridSpec(float(resolution), float(length), float(width)).cells
        cells = nx * ny
        if cells > MAX_GRID_CELLS:
            errors.append(f"grid_length x grid_width at grid_resolution make {cells} cells, more than "
                          f"{MAX_GRID_CELLS}: coarser cells or a smaller extent")
    frame, cameras = values.get("grid_frame"), values.get("cameras")
    if isinstance(frame, str) and frame.startswith("/"):
        errors.append(f"grid_frame {frame!r}: tf2 frame ids have no leading slash")
    if isinstance(frame, str) and frame and isinstance(cameras, (list, tuple)) and len(cameras) > 1:
        errors.append(f"grid_frame {frame!r} is one frame, but there are {len(cameras)} cameras, each with its grid "
                      "under it: leave grid_frame empty (per camera <image frame_id>" + GROUND_FRAME_SUFFIX + ")")
    return errors


def mount_param(camera: str, name: str) -> str:
    """The name of a camera's mounting parameter, e.g. front.camera_pitch."""
    return f"{camera}.{name}"


def split_mount_param(name: str) -> tuple[str, str] | None:
    """(camera, mounting parameter) of a per-camera parameter name, or None."""
    camera, _, base = name.rpartition(".")
    return (camera, base) if camera and base in MOUNT_PARAMS else None


def mount_value(mount: Mount, name: str) -> float:
    """The value of mounting parameter `name` (MOUNT_PARAMS) in `mount`."""
    return getattr(mount, MOUNT_FIELDS[name])


def with_mount_values(mount: Mount, values: Mapping[str, float]) -> Mount:
    """`mount` with the given mounting parameters (MOUNT_PARAMS names) changed; SettingsError naming each bad one."""
    errors = []
    for name, value in values.items():
        reason = check_value(name, value) if name in MOUNT_FIELDS else f"{name} is not a mounting parameter"
        if reason is not None:
            errors.append(reason)
    if errors:
        raise SettingsError("invalid parameters:\n  " + "\n  ".join(errors))
    return replace(mount, **{MOUNT_FIELDS[name]: float(value) for name, value in values.items()})


def check_update(name: str, value: Any, configured: bool) -> str | None:
    """Why a runtime set of `name` to `value` must be rejected, or None. `configured`: the node is
    inactive or active (configure-time parameters are then frozen)."""
    reason = check_value(name, value)
    if reason is None and configured and not SPECS[name].runtime:
        reason = (f"{name} is read at configure; deactivate and clean up the node (lifecycle 'cleanup'), set it, "
                  "then configure again")
    return reason


@dataclass(frozen=True)
class Settings:
    """Validated parameter values. `threshold` is None when unset (NaN): use the weights' calibration."""

    autostart: bool
    weights: str
    device: str
    fp16: bool
    backend: str
    onnx_model: str
    cameras: tuple[str, ...]
    batch_wait_ms: float
    threshold: float | None
    operating_point: str
    min_obstacle_area: int
    max_obstacles: int
    drivable_classes: tuple[str, ...]
    ground_band: float
    obstacle_min_width: float
    obstacle_max_width: float
    obstacle_min_height: float
    obstacle_max_height: float
    obstacle_min_visible_area: float
    object_classes: tuple[str, ...]
    max_enclosed_share: float
    confirm_hits: int
    confirm_window: int
    miss_budget: int
    hold_missed_obstacles: bool
    instant_confirm_point: str
    publish_semantic: bool
    publish_semantic_color: bool
    publish_anomaly_score: bool
    publish_open_set: bool
    publish_overlay: bool
    publish_obstacles: bool
    publish_obstacle_points: bool
    publish_obstacle_grid: bool
    overlay_alpha: float
    camera_height: float
    camera_pitch: float
    camera_roll: float
    obstacle_max_distance: float
    grid_frame: str
    grid_resolution: float
    grid_length: float
    grid_width: float
    track_match_distance: float
    track_match_relative: float
    marker_lifetime: float
    use_compressed: bool
    qos_reliability: str
    qos_depth: int
    output_reliability: str
    depth_topic: str
    depth_sync_tolerance: float
    diagnostics_period: float
    latency_warn: float

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "Settings":
        """All parameters at once; every problem is reported (one per line), not only the first."""
        merged = {**DEFAULTS, **values}
        errors = [reason for name in merged if (reason := check_value(name, merged[name])) is not None]
        if merged.get("fp16") and not str(merged.get("device", "")).startswith("cuda"):
            errors.append("fp16 needs device cuda or cuda:N")
        if merged.get("fp16") and merged.get("backend") == "onnxruntime":
            errors.append("fp16 needs backend torch (ONNX Runtime runs the exported float32 graph)")
        cameras = merged.get("cameras")
        if (isinstance(cameras, (list, tuple)) and len(cameras) > 1 and isinstance(merged.get("depth_topic"), str)
                and merged["depth_topic"].startswith(("/", "~"))):
            errors.append(f"depth_topic {merged['depth_topic']!r} is absolute, but there are {len(cameras)} cameras: "
                          "give a relative name, subscribed per camera as <camera>/<depth_topic>")
        errors += grid_errors(merged)
        errors += obstacle_errors(merged)
        if errors:
            raise SettingsError("invalid parameters:\n  " + "\n  ".join(errors))
        kwargs = {}
        for f in fields(cls):
            value = merged[f.name]
            if SPECS[f.name].type is float:
                value = float(value)
            elif SPECS[f.name].type is list:
                value = tuple(value)
            kwargs[f.name] = value
        if math.isnan(kwargs["threshold"]):
            kwargs["threshold"] = None
        return cls(**kwargs)

    def replace(self, **changes: Any) -> "Settings":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["threshold"] = math.nan if values["threshold"] is None else values["threshold"]
        values.update(changes)
        return Settings.from_values(values)

    def publishes(self, output: str) -> bool:
        return bool(getattr(self, f"publish_{output}"))

    def drivable_ids(self, class_names: Sequence[str]) -> tuple[int, ...] | None:
        """Ids of the `drivable_classes` among the weights' `class_names`; None (no surface check) if there are none."""
        return class_ids(class_names, self.drivable_classes)

    def obstacle_rules(self, class_names: Sequence[str]) -> ObstacleRules:
        """What makes a component an obstacle candidate, for weights with these class names."""
        return ObstacleRules(
            min_area=self.min_obstacle_area, max_obstacles=self.max_obstacles, max_distance=self.obstacle_max_distance,
            drivable_ids=self.drivable_ids(class_names) if self.ground_band < 1.0 else None,
            ground_band=self.ground_band, width=(self.obstacle_min_width, self.obstacle_max_width),
            height=(self.obstacle_min_height, self.obstacle_max_height),
            min_visible_area=self.obstacle_min_visible_area, object_ids=class_ids(class_names, self.object_classes),
            max_enclosed_share=self.max_enclosed_share)

    def confirmation(self, calibration: Calibration | None = None) -> Confirmation:
        """When a candidate is published, and for how long it is kept (ObstacleTracker); the instant-confirmation
        score is `instant_confirm_point` of the weights' `calibration` (None without the calibration or the point)."""
        return Confirmation(hits=self.confirm_hits, window=self.confirm_window, miss_budget=self.miss_budget,
                            match_distance=self.track_match_distance, match_relative=self.track_match_relative,
                            hold_missed=self.hold_missed_obstacles, instant_score=self.instant_score(calibration))

    def instant_score(self, calibration: Calibration | None) -> float | None:
        """The score at which a new obstacle is published at once: the weights' `instant_confirm_point` (None: off,
        or the weights lack that point)."""
        if calibration is None or not self.instant_confirm_point:
            return None
        point = calibration.points().get(self.instant_confirm_point)
        return None if point is None else point.threshold

    def grid_spec(self) -> GridSpec:
        """The cells of ~/obstacle_grid."""
        return GridSpec(self.grid_resolution, self.grid_length, self.grid_width)

    def grid_frame_for(self, image_frame: str) -> str:
        """The frame_id of ~/obstacle_grid for images in `image_frame`: `grid_frame`, else <image_frame>_ground."""
        return self.grid_frame or f"{image_frame}{GROUND_FRAME_SUFFIX}"

    @property
    def mount(self) -> Mount:
        """The global camera mount (camera_height, camera_pitch, camera_roll): the single camera's, and each named
        camera's default at configure."""
        return Mount(self.camera_height, self.camera_pitch, self.camera_roll)


def resolve_weights(path: str) -> Path:
    """The weights file named by the `weights` parameter: absolute, relative to the working directory, or
    relative to the package's share directory. FileNotFoundError says where it looked."""
    if not path:
        raise FileNotFoundError("parameter 'weights' is empty: pass a weights file, e.g. "
                                "--ros-args -p weights:=/path/to/model.safetensors")
    return _resolve_file(path, "weights file")


def resolve_onnx_model(path: str) -> Path:
    """The .onnx file named by the `onnx_model` parameter (same search as `resolve_weights`)."""
    return _resolve_file(path, "onnx_model file")


def _resolve_file(path: str, what: str) -> Path:
    given = Path(path).expanduser()
    candidates = [given] if given.is_absolute() else [Path.cwd() / given]
    if not given.is_absolute():
        try:
            from densehybrid_ros.paths import share_dir

            candidates.append(share_dir() / given)
        except FileNotFoundError:
            pass
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{what} not found: {path!r} (looked at {', '.join(str(c) for c in candidates)})")
