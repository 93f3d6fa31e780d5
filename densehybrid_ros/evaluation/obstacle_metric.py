"""Obstacle localisation against true boxes, as a metric of `evaluate` (metrics.json "obstacles").

Per frame, in sequence order: the anomaly mask (the hybrid score flagged at the metric's threshold, `is_anomalous`)
goes through the node's ROS-free obstacle code with the frame's CameraInfo, exactly as the node runs it
(densehybrid_ros/perception/obstacles.py: `frame_obstacles` with the node's rules from
`perception.settings.Settings`, then one `ObstacleTracker` with the node's confirmation), placed on the ground plane
of the camera mount or with the frame's depth. Recorded predictions may carry the node's own boxes instead
(`ObstacleMetric(recorded_markers=True)`). Predicted box centres are matched to the true boxes (`match_greedy`);
`compute` gives the distance errors, the detection rate per true-range bin and the false obstacles.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from densehybrid_ros.datasets.base import EvalSample
from densehybrid_ros.evaluation.distance_bins import DISTANCE_EDGES
from densehybrid_ros.evaluation.metrics import Metric
from densehybrid_ros.perception.camera import CameraModel, Mount
from densehybrid_ros.perception.obstacles import ObstacleTracker, frame_obstacles
from densehybrid_ros.perception.settings import DEFAULTS, Settings
from densehybrid_ros.predictor import Prediction
from densehybrid_ros.scores import is_anomalous
from densehybrid_ros.weights import Calibration

# the node's obstacle filter and confirmation parameters, taken by densehybrid-eval-bag under the same names
NODE_OBSTACLE_PARAMS = ("drivable_classes", "ground_band", "obstacle_min_width", "obstacle_max_width",
                        "obstacle_min_height", "obstacle_max_height", "obstacle_min_visible_area", "object_classes",
                        "max_enclosed_share", "confirm_hits", "confirm_window", "miss_budget",
                        "hold_missed_obstacles", "instant_confirm_point",
                        "track_match_distance", "track_match_relative")


@dataclass(frozen=True)
class ObstacleOptions:
    min_area: int = DEFAULTS["min_obstacle_area"]  # the node's min_obstacle_area
    max_obstacles: int = DEFAULTS["max_obstacles"]
    max_distance: float = DEFAULTS["obstacle_max_distance"]  # the node's; also bounds the eligible true boxes
    locate: str = "ground"  # "ground" (the node's default) or "depth" (the frame's depth image, as depth_topic does)
    gate_m: float = 2.0
    gate_rel: float = 0.2
    min_visible: int = 50  # true boxes with fewer visible pixels are not eligible for the detection rate
    distance_edges: tuple[float, ...] = DISTANCE_EDGES
    camera_height: float | None = None  # overrides the frame's mount (/tf); None = from the frame, else Mount()'s
    camera_pitch: float | None = None
    camera_roll: float | None = None
    node: tuple[tuple[str, Any], ...] = ()  # the node's NODE_OBSTACLE_PARAMS given (name, value); others: its defaults

    def node_settings(self) -> Settings:
        """The node's settings with these options: its obstacle rules and confirmation, validated by its checks."""
        return Settings.from_values({"min_obstacle_area": self.min_area, "max_obstacles": self.max_obstacles,
                                     "obstacle_max_distance": self.max_distance, **dict(self.node)})

    def validate(self) -> None:
        unknown = sorted(set(dict(self.node)) - set(NODE_OBSTACLE_PARAMS))
        if unknown:
            raise ValueError(f"not obstacle parameters of the node: {unknown}")
        self.node_settings()
        if self.locate not in ("ground", "depth"):
            raise ValueError(f"locate must be 'ground' or 'depth', got {self.locate!r}")
        if self.min_area < 1 or self.max_obstacles < 1 or not self.max_distance > 0:
            raise ValueError("min_area and max_obstacles must be >= 1 and max_distance > 0")
        if self.gate_m < 0 or self.gate_rel < 0 or self.min_visible < 0:
            raise ValueError("gate_m, gate_rel and min_visible must be >= 0")
        if self.camera_height is not None and not self.camera_height > 0:
            raise ValueError(f"camera height must be > 0, got {self.camera_height}")
        given = [v for v in (self.camera_height, self.camera_pitch, self.camera_roll) if v is not None]
        if not all(math.isfinite(v) for v in given):
            raise ValueError("camera height, pitch and roll must be finite")

    def mount(self, sample: EvalSample) -> tuple[Mount, str]:
        """The camera mount of a frame and where it comes from: the options' values where given, else the frame's
        (`extras["mount"]`, from /tf), else the node's defaults (`Mount()`); the source is "arguments", the frame's
        `extras["mount_source"]` or "default", with "+arguments" when only some values were given."""
        framed: Mount | None = sample.extras.get("mount")
        base = framed if framed is not None else Mount()
        given = {"height": self.camera_height, "pitch": self.camera_pitch, "roll": self.camera_roll}
        mount = Mount(*(g if g is not None else getattr(base, name) for name, g in given.items()))
        if all(g is not None for g in given.values()):
            return mount, "arguments"
        source = (sample.extras.get("mount_source") or "tf") if framed is not None else "default"
        return mount, source + ("+arguments" if any(g is not None for g in given.values()) else "")


def camera_model(sample: EvalSample) -> CameraModel | None:
    """The frame's intrinsics (its CameraInfo, scaled to the image), None without one."""
    info = sample.extras.get("camera_info")
    if not info:
        return None
    h, w = sample.image.shape[:2]
    return CameraModel.from_k(info["k"], info["width"], info["height"]).for_image(w, h)


def match_greedy(predicted: Sequence[np.ndarray], truth: Sequence[np.ndarray], gate_m: float,
                 gate_rel: float) -> list[tuple[int, int, float]]:
    """(predicted index, true index, centre distance) pairs: all pairs within the gate (gate_m + gate_rel x the true
    box's range) taken in order of increasing distance, each box at most once (ties: lower indices first)."""
    pairs = []
    for i, p in enumerate(predicted):
        for j, t in enumerate(truth):
            d = float(np.linalg.norm(np.asarray(p, np.float64) - np.asarray(t, np.float64)))
            if d <= gate_m + gate_rel * float(np.linalg.norm(t)):
                pairs.append((d, i, j))
    pairs.sort()
    used_p, used_t, out = set(), set(), []
    for d, i, j in pairs:
        if i in used_p or j in used_t:
            continue
        used_p.add(i)
        used_t.add(j)
        out.append((i, j, d))
    return out


class ObstacleMetric(Metric):
    """Obstacle localisation over a sequence (frames in order: the tracker confirms across them). `threshold`: the
    anomaly mask's (the node's, `weights.resolve_threshold`; None: no mask, frames skipped); `class_names`: of the
    predicted class ids (the drivable classes are looked up in them); `recorded_markers`: score the boxes the node
    recorded (`recorded.RecordedPrediction.obstacles`) instead of placing them here; `calibration`: the weights'
    operating points, for the node's instant confirmation (`instant_confirm_point`; None: none)."""

    def __init__(self, options: ObstacleOptions, class_names: Sequence[str], threshold: float | None,
                 recorded_markers: bool = False, calibration: Calibration | None = None) -> None:
        self.options, self.threshold, self.recorded_markers = options, threshold, recorded_markers
        self.settings = options.node_settings()
        self.rules = self.settings.obstacle_rules(tuple(class_names))
        self.confirmation = self.settings.confirmation(calibration)
        self.tracker = ObstacleTracker()
        self.candidates = 0  # obstacle candidates before confirmation, over all frames
        self.frames = 0
        self.skipped: dict[str, int] = {}  # reason -> frames
        self.mount_sources: dict[str, int] = {}
        self.predicted = 0
        self.false_obstacles = 0
        self.matches: list[dict] = []
        self.eligible: list[tuple[float, bool]] = []  # (true range, detected)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def update(self, sample: EvalSample, prediction: Prediction) -> None:
        if self.recorded_markers:
            self.score(sample, prediction.obstacles or [])
            return
        if self.threshold is None:
            self.skip("no threshold: no anomaly mask")
            return
        camera = camera_model(sample)
        if camera is None:
            self.skip("no camera_info")
            return
        depth = None
        if self.options.locate == "depth":
            if sample.depth is None:
                self.skip("no depth image")
                return
            depth = sample.depth
        mount, source = self.options.mount(sample)
        candidates = frame_obstacles(is_anomalous(prediction.hybrid, self.threshold), prediction.hybrid,
                                     prediction.class_ids, camera, mount, self.rules, depth)
        published = self.tracker.update(candidates, self.confirmation).published
        self.candidates += len(candidates)
        self.score(sample, [ob.center for ob in published], source)

    def score(self, sample: EvalSample, centres: Sequence[np.ndarray], mount_source: str | None = None) -> list[dict]:
        """Score the predicted box centres of one frame against its true boxes; returns this frame's match rows."""
        truth = sample.extras.get("anomalies")
        if truth is None:
            self.skip("no true boxes (anomalies topic) for the frame")
            return []
        self.frames += 1
        if mount_source is not None:
            self.mount_sources[mount_source] = self.mount_sources.get(mount_source, 0) + 1
        self.predicted += len(centres)
        positions = [np.asarray(t["position"], np.float64) for t in truth]
        pairs = match_greedy(centres, positions, self.options.gate_m, self.options.gate_rel)
        self.false_obstacles += len(centres) - len(pairs)
        matched = {j: (i, d) for i, j, d in pairs}
        rows = []
        for j, t in enumerate(truth):
            true_range = float(np.linalg.norm(positions[j]))
            visible = t.get("visible_pixels")
            eligible = ((visible is None or visible >= self.options.min_visible)
                        and true_range <= self.options.max_distance)
            if eligible:
                self.eligible.append((true_range, j in matched))
            if j not in matched:
                continue
            i, d = matched[j]
            predicted_range = float(np.linalg.norm(centres[i]))
            rows.append({"frame": sample.name, "truth_id": t["id"], "visible_pixels": visible,
                         "eligible": bool(eligible),
                         "true_distance": true_range, "predicted_distance": predicted_range,
                         "abs_error": abs(predicted_range - true_range),
                         "rel_error": abs(predicted_range - true_range) / true_range,
                         "signed_rel_error": (predicted_range - true_range) / true_range, "position_error": d,
                         "true_position": positions[j].tolist(),
                         "predicted_position": np.asarray(centres[i], float).tolist()})
        self.matches.extend(rows)
        return rows

    def compute(self) -> dict:
        rel = np.array([m["rel_error"] for m in self.matches], np.float64)
        absolute = np.array([m["abs_error"] for m in self.matches], np.float64)
        stat = lambda f, a: float(f(a)) if a.size else None  # noqa: E731
        edges = self.options.distance_edges
        bins = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            inside = [det for r, det in self.eligible if lo <= r < hi]
            errors = [m["rel_error"] for m in self.matches if m["eligible"] and lo <= m["true_distance"] < hi]
            bins.append({"lower": lo, "upper": hi if math.isfinite(hi) else None, "eligible": len(inside),
                         "detected": int(sum(inside)), "detection_rate": sum(inside) / len(inside) if inside else None,
                         "mean_rel_error": float(np.mean(errors)) if errors else None})
        detected = sum(d for _, d in self.eligible)
        options = asdict(self.options)
        options["node"] = {name: getattr(self.settings, name) for name in NODE_OBSTACLE_PARAMS}  # in force, defaults
        options["distance_edges"] = [e if math.isfinite(e) else None for e in edges]
        options["instant_score"] = self.confirmation.instant_score  # instant_confirm_point resolved (None: off)
        return {"obstacles": {
            "options": options, "frames": self.frames, "frames_skipped": dict(self.skipped),
            "mount_sources": dict(self.mount_sources), "candidates": self.candidates, "predicted": self.predicted,
            "matched": len(self.matches),
            "eligible": len(self.eligible), "detected": int(detected),
            "detection_rate": detected / len(self.eligible) if self.eligible else None,
            "false_obstacles": self.false_obstacles,
            "false_obstacles_per_frame": self.false_obstacles / self.frames if self.frames else None,
            "distance_error": {"mean_abs_m": stat(np.mean, absolute), "median_abs_m": stat(np.median, absolute),
                               "mean_rel": stat(np.mean, rel), "median_rel": stat(np.median, rel),
                               "max_rel": stat(np.max, rel)},
            "detection_by_distance": bins,
            "matches": self.matches,
        }}


def obstacle_summary(obstacles: dict) -> str:
    """The "obstacles" entry for a console."""
    e = obstacles["distance_error"]
    fmt = lambda v, s="{:.3f}": "n/a" if v is None else s.format(v)  # noqa: E731
    lines = [f"obstacles: {obstacles['frames']} frames, {obstacles.get('candidates', 'n/a')} candidates, "
             f"{obstacles['predicted']} published, {obstacles['matched']} matched, "
             f"detection {fmt(obstacles['detection_rate'])} ({obstacles['detected']}/{obstacles['eligible']} eligible), "
             f"false/frame {fmt(obstacles['false_obstacles_per_frame'])}",
             f"  distance error: mean {fmt(e['mean_abs_m'], '{:.2f}')} m, median {fmt(e['median_abs_m'], '{:.2f}')} m; "
             f"relative mean {fmt(e['mean_rel'])}, median {fmt(e['median_rel'])}, max {fmt(e['max_rel'])}"]
    for b in obstacles["detection_by_distance"]:
        upper = "inf" if b["upper"] is None else f"{b['upper']:g}"
        lines.append(f"  {b['lower']:>4g}-{upper:<4} m: detected {b['detected']}/{b['eligible']}"
                     f"  rate {fmt(b['detection_rate'])}  mean rel error {fmt(b['mean_rel_error'])}")
    if obstacles["frames_skipped"]:
        lines.append(f"  skipped: {obstacles['frames_skipped']}")
    return "\n".join(lines)
