"""densehybrid-eval-bag: deterministic scoring of a ground-truth bag, and obstacle localisation against true boxes.

    densehybrid-eval-bag --bag BAG --weights W --out DIR [--max-frames N] [--threshold T] [--scores hybrid,msp]
    densehybrid-eval-bag --bag BAG --outputs RECORDED_BAG --out DIR [--weights W] [--threshold T]
    densehybrid-eval-bag --bag BAG --oracle --out DIR                   (geometry check on the true anomaly mask)
    common: [--camera-height H] [--camera-pitch P] [--camera-roll R] [--locate ground|depth] [--min-area PX]
            [--image-topic ...] [--labels-topic ...] [--depth-topic ...] [--camera-info-topic ...]
            [--anomalies-topic ...]

No DDS, no clock: the bag is read with rosbags (`bag` dataset, densehybrid_ros/datasets/rosbag.py) frame by frame
in stamp order, so the numbers do not depend on the machine's speed (ros-notes: "deterministic scoring reads the
bag directly").

Damaged bags (a recording cut short, flipped bytes) are read as far as they go (densehybrid_ros/bagio.py); a message
that fails to decode or to pass its check is skipped and counted per topic, its frame left out, and the evaluation
goes on. metrics.json "bag_reading" and the console say per bag how it was read, what was lost, and per topic how
many messages were read, expected, unreadable, undecodable or rejected (and why), and which frames were dropped.

Modes
- `--weights`: the shared `Predictor` runs through `densehybrid_ros.evaluation.evaluate` on the bag dataset
  (pixel AP / AUROC / FPR95, distance bins, mIoU / open-mIoU when the classes agree): DIR/metrics.json and
  DIR/report.md as densehybrid-eval writes them.
- `--outputs RECORDED_BAG`: no model runs. The node's outputs recorded from a live run (densehybrid-record of
  ~/anomaly_score 32FC1, ~/semantic mono8 and ~/obstacles; topic names configurable) are matched to the
  ground-truth frames by header stamp and scored by the same `evaluate` (the recorded maps stand in for the
  Predictor's). Ground-truth frames the node never answered are left out and counted (`missing_outputs`), so are
  those whose recorded maps are damaged or do not fit the ground truth (`skipped_outputs`: reason -> frames).
  `--weights` (optional) supplies the class names (for mIoU) and the calibrated threshold.
- `--oracle`: the ground-truth anomaly mask and classes go through the obstacle code; only "obstacles" is written.

Obstacle localisation (metrics.json "obstacles"): frame by frame in stamp order, the anomaly mask (open-set map ==
unknown at the node's threshold: `--threshold`, else `--operating-point`, else the weights' default point; the true
mask with --oracle) goes through the node's ROS-free obstacle code with the bag's CameraInfo, exactly as the node's
FrameProcessor runs it (densehybrid_ros/perception/obstacles.py: `frame_obstacles`: connected components whose ground
contact is on the drivable surface of the predicted classes, placed on the ground plane of the camera mount, or with
the bag's depth with --locate depth, of a real object's size; then `ObstacleTracker`: published after N of the last M
frames, kept through the miss budget). The node's parameters of the filter and confirmation are options of the same
names (--confirm-hits ...), with the node's defaults. In --outputs mode the recorded ~/obstacles markers are used
when the recorded bag has them. Predicted boxes are matched to the true
boxes of the anomalies topic (MarkerArray, ns "anomaly") greedily by increasing 3-D distance between box
centres, each at most once, within a gate of `gate_m + gate_rel x true range`.
- distance = range of the box centre from the optical centre; per match: absolute and relative distance error
  and the 3-D centre error;
- detection rate per true-range bin over the true boxes that count ("eligible": at least `--min-visible` visible
  pixels by the sim's `visible_px=N` marker text, when present, and within `--max-distance`);
- false obstacles: predicted boxes matched to no true box (a match to a box too small to be eligible is neither
  a detection nor a false obstacle), per frame.

Camera mount (height above the ground, pitch > 0 = looking down, roll; the node's convention): from
--camera-height/--camera-pitch/--camera-roll when given, else from the bag's /tf at the image stamp or
/tf_static (transform base_footprint -> the image frame, z up; see `sim_mount_transform` for the sim), else the
node's defaults (1.5 m, 0, 0). metrics.json records which source each frame used.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import numpy as np

from densehybrid_ros.datasets.base import OOD_ANOMALY, DatasetError, EvalSample
from densehybrid_ros.perception import image_codec
from densehybrid_ros.perception.image_codec import ImageRejected
from densehybrid_ros.perception.obstacles import Obstacle, ObstacleTracker, frame_obstacles
from densehybrid_ros.perception.camera import CameraModel
from densehybrid_ros.perception.settings import DEFAULTS, SPECS, Settings
from densehybrid_ros.scores import is_anomalous

DISTANCE_EDGES = (0.0, 10.0, 20.0, 30.0, 50.0, math.inf)
DEFAULT_MOUNT = (1.5, 0.0, 0.0)  # the node's camera_height / camera_pitch / camera_roll defaults
# the node's obstacle filter and confirmation parameters, taken by densehybrid-eval-bag under the same names
NODE_OBSTACLE_PARAMS = ("drivable_classes", "ground_band", "obstacle_min_width", "obstacle_max_width",
                        "obstacle_min_height", "obstacle_max_height", "confirm_hits", "confirm_window", "miss_budget",
                        "track_match_distance")
OUTPUT_TOPICS = {"score": "/densehybrid_perception/anomaly_score", "semantic": "/densehybrid_perception/semantic",
                 "obstacles": "/densehybrid_perception/obstacles"}


@dataclass(frozen=True)
class Mount:
    height: float
    pitch: float
    roll: float
    source: str = "default"


@dataclass(frozen=True)
class ObstacleOptions:
    min_area: int = DEFAULTS["min_obstacle_area"]  # the node's min_obstacle_area
    max_obstacles: int = DEFAULTS["max_obstacles"]
    max_distance: float = DEFAULTS["obstacle_max_distance"]  # the node's; also bounds the eligible true boxes
    locate: str = "ground"  # "ground" (the node's default) or "depth" (the bag's depth image, as depth_topic does)
    gate_m: float = 2.0
    gate_rel: float = 0.2
    min_visible: int = 50  # true boxes with fewer visible pixels are not eligible for the detection rate
    distance_edges: tuple[float, ...] = DISTANCE_EDGES
    camera_height: float | None = None  # overrides /tf; None = from the bag, else DEFAULT_MOUNT
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

    def mount(self, sample: EvalSample) -> Mount:
        bag = sample.extras.get("mount")
        base = (bag["height"], bag["pitch"], bag["roll"]) if bag else DEFAULT_MOUNT
        given = (self.camera_height, self.camera_pitch, self.camera_roll)
        values = [g if g is not None else b for g, b in zip(given, base)]
        if all(g is not None for g in given):
            source = "arguments"
        elif bag:
            source = bag.get("source", "tf") + ("+arguments" if any(g is not None for g in given) else "")
        else:
            source = "default" + ("+arguments" if any(g is not None for g in given) else "")
        return Mount(*values, source=source)


def camera_model(sample: EvalSample) -> CameraModel | None:
    info = sample.extras.get("camera_info")
    if not info:
        return None
    h, w = sample.image.shape[:2]
    return CameraModel.from_k(info["k"], info["width"], info["height"]).for_image(w, h)


def locate_obstacles(mask: np.ndarray, score: np.ndarray | None, class_ids: np.ndarray, camera: CameraModel,
                     mount: Mount, options: ObstacleOptions, class_names: Sequence[str], tracker: ObstacleTracker,
                     depth: np.ndarray | None = None) -> tuple[list[Obstacle], int]:
    """One frame of a sequence as the node's FrameProcessor (densehybrid_ros/perception/pipeline.py) does it: the frame's
    candidates (`obstacles.frame_obstacles` with the node's rules: drivable-surface contact by the predicted classes
    `class_ids`, real-object size), confirmed across the frames by `tracker` (`ObstacleTracker`: published after N of
    the last M frames, kept through the miss budget). Returns (the published obstacles, the number of candidates)."""
    settings = options.node_settings()
    candidates = frame_obstacles(mask, score, class_ids, camera, (mount.height, mount.pitch, mount.roll),
                                 settings.obstacle_rules(class_names), depth)
    return tracker.update(candidates, settings.confirmation()).published, len(candidates)


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


@dataclass
class ObstacleScorer:
    """Accumulates obstacle localisation over frames; `compute()` gives the "obstacles" entry of metrics.json."""

    options: ObstacleOptions = field(default_factory=ObstacleOptions)
    class_names: tuple[str, ...] = ()  # of the semantic maps (the drivable classes are looked up in them)
    tracker: ObstacleTracker = field(default_factory=ObstacleTracker)  # confirms obstacles across the frames
    candidates: int = 0  # obstacle candidates before confirmation, over all frames
    frames: int = 0
    skipped: dict = field(default_factory=dict)  # reason -> frames
    mount_sources: dict = field(default_factory=dict)
    predicted: int = 0
    false_obstacles: int = 0
    matches: list = field(default_factory=list)
    eligible: list = field(default_factory=list)  # (true range, detected)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def update(self, sample: EvalSample, centres: Sequence[np.ndarray], mount: Mount | None = None) -> list[dict]:
        """Score the predicted box centres of one frame against its true boxes; returns this frame's match rows."""
        truth = sample.extras.get("anomalies")
        if truth is None:
            self.skip("no true boxes (anomalies topic) for the frame")
            return []
        self.frames += 1
        if mount is not None:
            self.mount_sources[mount.source] = self.mount_sources.get(mount.source, 0) + 1
        self.predicted += len(centres)
        positions = [np.asarray(t["position"], np.float64) for t in truth]
        pairs = match_greedy(centres, positions, self.options.gate_m, self.options.gate_rel)
        self.false_obstacles += len(centres) - len(pairs)
        matched = {j: (i, d) for i, j, d in pairs}
        rows = []
        for j, t in enumerate(truth):
            true_range = float(np.linalg.norm(positions[j]))
            visible = t.get("visible_pixels")
            eligible = (visible is None or visible >= self.options.min_visible) and true_range <= self.options.max_distance
            if eligible:
                self.eligible.append((true_range, j in matched))
            if j not in matched:
                continue
            i, d = matched[j]
            predicted_range = float(np.linalg.norm(centres[i]))
            row = {"frame": sample.name, "truth_id": t["id"], "visible_pixels": visible, "eligible": bool(eligible),
                   "true_distance": true_range, "predicted_distance": predicted_range,
                   "abs_error": abs(predicted_range - true_range), "rel_error": abs(predicted_range - true_range) / true_range,
                   "signed_rel_error": (predicted_range - true_range) / true_range, "position_error": d,
                   "true_position": positions[j].tolist(), "predicted_position": np.asarray(centres[i], float).tolist()}
            rows.append(row)
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
        settings = self.options.node_settings()
        options["node"] = {name: getattr(settings, name) for name in NODE_OBSTACLE_PARAMS}  # in force, defaults too
        options["distance_edges"] = [e if math.isfinite(e) else None for e in edges]
        return {
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
        }


def score_frame_obstacles(scorer: ObstacleScorer, sample: EvalSample, mask: np.ndarray | None,
                          score: np.ndarray | None, class_ids: np.ndarray | None) -> None:
    """Locate the obstacles of `mask` (None: nothing to place, e.g. no threshold) in the next frame of the sequence
    (`locate_obstacles`, with the predicted classes `class_ids` for the drivable surface) and score them."""
    options = scorer.options
    if mask is None:
        scorer.skip("no threshold: no anomaly mask")
        return
    camera = camera_model(sample)
    if camera is None:
        scorer.skip("no camera_info")
        return
    depth = None
    if options.locate == "depth":
        if sample.depth is None:
            scorer.skip("no depth image")
            return
        depth = sample.depth
    mount = options.mount(sample)
    class_ids = np.zeros(mask.shape, np.uint8) if class_ids is None else class_ids
    obstacles, candidates = locate_obstacles(mask, score, class_ids, camera, mount, options, scorer.class_names,
                                             scorer.tracker, depth)
    scorer.candidates += candidates
    scorer.update(sample, [ob.center for ob in obstacles], mount)


# ------------------------------------------------------------------ evaluate() with a tap for the obstacle pass
class _Tap:
    """Between evaluate() and the dataset / predictor: remembers the sample just handed out and the prediction made
    for it, so that the obstacle pass (evaluate's on_image callback) needs no second forward pass."""

    def __init__(self, dataset: Any, predict: Callable[[EvalSample], Any], predictor: Any):
        self.sample: EvalSample | None = None
        self.prediction = None
        self.dataset = _TapDataset(dataset, self)
        self.predictor = _TapPredictor(predictor, predict, self)


class _TapDataset:
    def __init__(self, dataset: Any, tap: _Tap):
        self._dataset, self._tap = dataset, tap
        self.kind, self.root, self.split = dataset.kind, dataset.root, dataset.split
        self.classes = dataset.classes

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, index: int) -> EvalSample:
        sample = self._dataset[index]
        self._tap.sample, self._tap.prediction = sample, None
        return sample


class _TapPredictor:
    def __init__(self, predictor: Any, predict: Callable[[EvalSample], Any], tap: _Tap):
        self._predictor, self._predict, self._tap = predictor, predict, tap

    def __getattr__(self, name: str) -> Any:
        return getattr(self._predictor, name)

    def predict(self, image: np.ndarray):
        sample = self._tap.sample
        if sample is None or image is not sample.image:
            raise RuntimeError("evaluate() asked for a prediction of an image it did not just read from the dataset")
        self._tap.prediction = self._predict(sample)
        return self._tap.prediction


class _Subset:
    """The frames of a dataset at `indices` (ground-truth frames that have recorded outputs)."""

    def __init__(self, dataset: Any, indices: list[int]):
        self._dataset, self.indices = dataset, indices
        self.kind, self.root, self.split, self.classes = dataset.kind, dataset.root, dataset.split, dataset.classes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> EvalSample:
        return self._dataset[self.indices[index]]


def decode_float_image(msg: Any) -> np.ndarray:
    """A 32FC1 image (the node's ~/anomaly_score) as (H, W) float32, values as published (negative ones too)."""
    if msg.encoding != "32FC1":
        raise ImageRejected(f"score images must be 32FC1, got {msg.encoding!r}")
    rows = image_codec._rows(msg.encoding, int(msg.width), int(msg.height), int(msg.step), msg.data, 4)
    dtype = np.dtype(np.float32).newbyteorder(">" if msg.is_bigendian else "<")
    return np.ascontiguousarray(rows).view(dtype).reshape(int(msg.height), int(msg.width)).astype(np.float32)


def score_info(msg: Any, _msgtype: str = "") -> tuple[int, int]:
    """Check of a recorded score topic: (height, width) of a 32FC1 image of finite scores."""
    score = decode_float_image(msg)
    if not np.isfinite(score).all():
        raise ImageRejected(f"score image with {int((~np.isfinite(score)).sum())} non-finite value(s)")
    return score.shape


class RecordedOutputs:
    """The node's outputs in a recorded bag, by header stamp: a stand-in for the Predictor in evaluate(). Damaged
    recordings are read as far as they go; score and semantic maps that do not decode are skipped and counted
    (`skip_reason`, the bag's report)."""

    def __init__(self, path: Path, topics: dict[str, str], threshold: float | None, metadata: Any | None):
        from densehybrid_ros.datasets.rosbag import StampIndexedBag, check_markers, labels_info
        from densehybrid_ros.predictor import PredictorConfig

        self.topics = topics
        checks = {topics["score"]: score_info, topics.get("semantic"): labels_info, topics.get("obstacles"): check_markers}
        checks = {topic: check for topic, check in checks.items() if topic}
        self.bag = StampIndexedBag(Path(path), [t for t in topics.values() if t], checks=checks)
        if topics["score"] not in self.bag.topics:
            self.bag.close()
            raise DatasetError(f"outputs bag {self.bag.path} has no anomaly score topic {topics['score']!r}; its topics: "
                               f"{', '.join(self.bag.available)} (see --score-topic)")
        self.has_semantic = bool(topics.get("semantic")) and topics["semantic"] in self.bag.topics
        self.has_obstacles = bool(topics.get("obstacles")) and topics["obstacles"] in self.bag.topics
        self.stamps = set(self.bag.topics[topics["score"]].index)
        self.config = PredictorConfig()
        self.threshold = threshold
        classes = list(metadata.classes) if metadata is not None and self.has_semantic else []
        self.metadata = metadata if classes else SimpleNamespace(classes=[])
        self.num_classes = metadata.num_classes if metadata is not None else 1

    def predict(self, sample: EvalSample):
        from densehybrid_ros.predictor import Prediction

        stamp = sample.extras["stamp_ns"]
        try:
            score = decode_float_image(self.bag.read(self.topics["score"], stamp))
            if self.has_semantic and stamp in self.bag.topics[self.topics["semantic"]].index:
                from densehybrid_ros.datasets.rosbag import decode_labels

                class_ids = decode_labels(self.bag.read(self.topics["semantic"], stamp))
            else:
                class_ids = np.zeros(score.shape, np.uint8)
        except ImageRejected as exc:
            raise DatasetError(f"outputs bag {self.bag.path}: at {sample.name}: {exc}") from None
        if score.shape != sample.image.shape[:2] or class_ids.shape != score.shape:
            raise DatasetError(f"outputs bag {self.bag.path}: at {sample.name} the recorded maps are "
                               f"{score.shape[1]}x{score.shape[0]}, the ground truth {sample.image.shape[1]}x"
                               f"{sample.image.shape[0]} (the node publishes at camera resolution)")
        open_set = None
        if self.threshold is not None:
            open_set = np.where(is_anomalous(score, self.threshold), self.num_classes, class_ids).astype(np.uint8)
        return Prediction(class_ids=class_ids, hybrid=score, open_set=open_set)

    def skip_reason(self, stamp: int, shape: tuple[int, int]) -> str | None:
        """Why the recorded maps of the ground-truth frame at `stamp` (images of `shape`) cannot be scored, or None."""
        score = self.bag.topics[self.topics["score"]]
        if stamp not in score.index:
            return f"score map rejected ({self.topics['score']})" if stamp in score.rejected else "no output"
        size = score.index[stamp].info
        if size != shape:
            return f"recorded maps {size[1]}x{size[0]}, ground truth {shape[1]}x{shape[0]}"
        if not self.has_semantic:
            return None
        topic = self.topics["semantic"]
        semantic = self.bag.topics[topic]
        if stamp in semantic.rejected:
            return f"semantic map rejected ({topic})"
        if stamp not in semantic.index:
            return f"no semantic map ({topic} damaged)" if self.bag.lost_messages(topic) else None
        (h, w), values = semantic.index[stamp].info
        if (h, w) != shape:
            return f"recorded maps {w}x{h}, ground truth {shape[1]}x{shape[0]}"
        if self.metadata.classes and values.max() >= self.num_classes:
            self.bag.reader.reject(topic, f"class ids of {self.num_classes} classes or more")
            return f"semantic class ids out of range ({topic})"
        return None

    def recorded_centres(self, sample: EvalSample) -> list[np.ndarray]:
        from densehybrid_ros.datasets.rosbag import parse_markers

        msg = self.bag.lookup(self.topics["obstacles"], sample.extras["stamp_ns"], receive_ns=-1)
        if msg is None:
            return []
        return [np.asarray(m["position"]) for m in parse_markers(msg, "obstacles")]

    def close(self) -> None:
        self.bag.close()


# ------------------------------------------------------------------ runs
def _open_dataset(args: argparse.Namespace):
    from densehybrid_ros.datasets.rosbag import open_bag

    overrides = {}
    for key in ("image", "labels", "depth", "camera_info", "anomalies"):
        value = getattr(args, f"{key}_topic")
        if value is not None:
            overrides[key] = value or None
    if args.anomaly_id is not None:
        overrides["anomaly_id"] = args.anomaly_id
    return open_bag(args.bag, **overrides)


def obstacle_options(args: argparse.Namespace) -> ObstacleOptions:
    options = ObstacleOptions(min_area=args.min_area, max_obstacles=args.max_obstacles, max_distance=args.max_distance,
                              locate=args.locate, gate_m=args.gate, gate_rel=args.gate_rel,
                              min_visible=args.min_visible if args.min_visible is not None else args.min_area,
                              camera_height=args.camera_height, camera_pitch=args.camera_pitch,
                              camera_roll=args.camera_roll,
                              node=tuple((name, getattr(args, name)) for name in NODE_OBSTACLE_PARAMS
                                         if getattr(args, name) is not None))
    options.validate()
    return options


def class_names(metadata: Any) -> tuple[str, ...]:
    """The class names of weights' metadata (or a stand-in's; none without classes)."""
    return tuple(c.name for c in getattr(metadata, "classes", ()))


def run_oracle(dataset: Any, options: ObstacleOptions, max_frames: int | None = None) -> dict:
    """Obstacle localisation on the ground-truth anomaly masks and classes (no model) through the node's filter and
    confirmation: the ceiling of the geometry and the obstacle rules."""
    scorer = ObstacleScorer(options, class_names=tuple(dataset.classes or ()))
    n = len(dataset) if max_frames is None else min(max_frames, len(dataset))
    for i in range(n):
        sample = dataset[i]
        score_frame_obstacles(scorer, sample, sample.ood == OOD_ANOMALY, None, sample.semantic)
    return {"mode": "oracle", "dataset": {"kind": dataset.kind, "root": str(dataset.root), "images": n},
            "obstacles": scorer.compute()}


def run_predictor(dataset: Any, predictor: Any, options: ObstacleOptions, eval_options: Any, progress: bool = False):
    """evaluate() with the shared Predictor; the obstacle pass rides on its predictions, at the predictor's threshold
    (the node's: `weights.resolve_threshold`) or `eval_options.threshold` when given; evaluate() takes its own
    (the thesis protocol's, unless given). Returns the EvalResult with metrics["obstacles"] added."""
    from densehybrid_ros.evaluation.evaluate import evaluate

    if eval_options.threshold is not None:
        predictor.threshold = eval_options.threshold  # the open-set map (and so the obstacle mask) at this threshold
    scorer = ObstacleScorer(options, class_names=class_names(predictor.metadata))
    tap = _Tap(dataset, lambda sample: predictor.predict(sample.image), predictor)
    K = predictor.num_classes

    def on_image(_: int) -> None:
        pred = tap.prediction
        mask = pred.open_set == K if pred.open_set is not None else None
        score_frame_obstacles(scorer, tap.sample, mask, pred.hybrid, pred.class_ids)

    result = evaluate(tap.predictor, tap.dataset, eval_options, progress=progress, on_image=on_image)
    result.metrics["mode"] = "predictor"
    result.metrics["obstacles"] = {**scorer.compute(), "threshold": predictor.threshold}
    return result


def run_outputs(dataset: Any, recorded: RecordedOutputs, options: ObstacleOptions, eval_options: Any,
                recompute_obstacles: bool = False, progress: bool = False, obstacle_threshold: float | None = None):
    """evaluate() on the recorded node outputs (no model), over the ground-truth frames that have them. Recomputed
    obstacles (no recorded markers, or `recompute_obstacles`) are taken at `obstacle_threshold` (the node's; default:
    the recording's threshold)."""
    from densehybrid_ros.evaluation.evaluate import evaluate

    stamps = dataset.stamps
    indices, skipped = [], {}
    for i, stamp in enumerate(stamps):
        reason = recorded.skip_reason(stamp, dataset.image_size(i))
        if reason is None:
            indices.append(i)
        else:
            skipped[reason] = skipped.get(reason, 0) + 1
    missing = skipped.pop("no output", 0)
    if not indices and not skipped:
        raise DatasetError(f"no recorded output on {recorded.topics['score']} has the header stamp of a ground-truth "
                           f"frame of {dataset.root} (were the outputs recorded while this bag was replayed?)")
    if not indices:
        raise DatasetError(f"none of the recorded outputs in {recorded.bag.path} can be scored: {skipped} (the node "
                           "publishes at camera resolution)")
    subset = _Subset(dataset, indices)
    scorer = ObstacleScorer(options, class_names=class_names(recorded.metadata))
    tap = _Tap(subset, recorded.predict, recorded)
    use_markers = recorded.has_obstacles and not recompute_obstacles
    threshold = obstacle_threshold if obstacle_threshold is not None else recorded.threshold

    def on_image(_: int) -> None:
        sample, pred = tap.sample, tap.prediction
        if use_markers:
            scorer.update(sample, recorded.recorded_centres(sample))
        else:
            mask = is_anomalous(pred.hybrid, threshold) if threshold is not None else None
            score_frame_obstacles(scorer, sample, mask, pred.hybrid, pred.class_ids)

    result = evaluate(tap.predictor, tap.dataset, replace(eval_options, threshold=recorded.threshold), progress=progress,
                      on_image=on_image)
    result.metrics["mode"] = "outputs"
    result.metrics["outputs"] = {"bag": str(recorded.bag.path), "topics": recorded.topics,
                                 "ground_truth_frames": len(stamps), "scored_frames": len(indices),
                                 "missing_outputs": missing, "skipped_outputs": skipped,
                                 "obstacles_from": "recorded markers" if use_markers else "recorded anomaly score"}
    result.metrics["obstacles"] = scorer.compute()
    return result


def bag_reading(dataset: Any, recorded: RecordedOutputs | None) -> tuple[dict, list[str]]:
    """metrics.json's "bag_reading" (per bag: how it was read, what was lost, per-topic skipped messages; the frames
    used) and the same for the console."""
    reading, lines = {"ground_truth": dataset.reading()}, dataset.reading_lines()
    if recorded is not None:
        reading["outputs"] = recorded.bag.report.as_dict()
        lines += recorded.bag.report.lines()
    return reading, lines


def obstacle_summary(obstacles: dict) -> str:
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


def build_parser() -> argparse.ArgumentParser:
    from densehybrid_ros.evaluation.cli import _scores

    ap = argparse.ArgumentParser(prog="densehybrid-eval-bag", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--bag", type=Path, required=True, help="ground-truth bag (or a YAML spec, see datasets/rosbag.py)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--outputs", type=Path, help="bag recorded from the node's outputs: score it, run no model")
    mode.add_argument("--oracle", action="store_true", help="obstacles from the true anomaly mask (geometry check)")
    ap.add_argument("--weights", type=Path, help="node weights (required unless --outputs or --oracle)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--threshold", type=float, default=None, help="open-set threshold (default: the calibrated one)")
    ap.add_argument("--scores", type=_scores, default=("hybrid",))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    g = ap.add_argument_group("ground-truth topics (defaults: the sim bag's)")
    for key in ("image", "labels", "depth", "camera_info", "anomalies"):
        g.add_argument(f"--{key.replace('_', '-')}-topic", default=None, help="'' = none" if key != "image" else None)
    g.add_argument("--anomaly-id", type=int, default=None, help="label value of anomaly pixels (default 15)")
    o = ap.add_argument_group("recorded outputs (--outputs)")
    o.add_argument("--score-topic", default=OUTPUT_TOPICS["score"])
    o.add_argument("--semantic-topic", default=OUTPUT_TOPICS["semantic"])
    o.add_argument("--obstacles-topic", default=OUTPUT_TOPICS["obstacles"])
    o.add_argument("--recompute-obstacles", action="store_true",
                   help="place obstacles from the recorded score map even when the recorded markers exist")
    b = ap.add_argument_group("obstacles")
    b.add_argument("--camera-height", type=float, default=None, help="[m] (default: /tf of the bag, else 1.5)")
    b.add_argument("--camera-pitch", type=float, default=None, help="[rad], > 0 = looking down (default: /tf, else 0)")
    b.add_argument("--camera-roll", type=float, default=None, help="[rad] (default: /tf, else 0)")
    b.add_argument("--locate", choices=("ground", "depth"), default="ground")
    b.add_argument("--min-area", type=int, default=DEFAULTS["min_obstacle_area"],
                   help="smallest component [px] (the node's min_obstacle_area)")
    b.add_argument("--max-obstacles", type=int, default=DEFAULTS["max_obstacles"])
    b.add_argument("--max-distance", type=float, default=DEFAULTS["obstacle_max_distance"])
    b.add_argument("--min-visible", type=int, default=None, help="eligible true boxes: visible pixels (default --min-area)")
    b.add_argument("--gate", type=float, default=2.0, help="matching gate [m] ...")
    b.add_argument("--gate-rel", type=float, default=0.2, help="... plus this fraction of the true range")
    b.add_argument("--operating-point", default=None,
                   help="the weights' operating point the obstacles are taken at, as the node's parameter (default: "
                        "the weights' default point; --threshold overrides it). Pixel metrics and open-mIoU: "
                        "--threshold, else the weights' TPR-95%% point, and every operating point reported")
    for name in NODE_OBSTACLE_PARAMS:  # the node's parameters, same names, meanings and defaults
        spec = SPECS[name]
        kind = (lambda text: tuple(n.strip() for n in text.split(",") if n.strip())) if spec.type is list else spec.type
        b.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None,
                       help=f"{spec.description} (the node's {name}; default {spec.default!r})".replace("%", "%%"))
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from densehybrid_ros.evaluation.evaluate import EvalOptions
    from densehybrid_ros.evaluation.report import summary_table, write_report
    from densehybrid_ros.weights import WeightsError, resolve_threshold

    dataset = recorded = None
    try:
        if args.max_frames is not None and args.max_frames < 1:
            raise ValueError("--max-frames must be >= 1")
        if not (args.outputs or args.oracle or args.weights):
            raise ValueError("give --weights (run the model), --outputs RECORDED_BAG or --oracle")
        options = obstacle_options(args)
        dataset = _open_dataset(args)
        if args.oracle:
            metrics = run_oracle(dataset, options, args.max_frames)
            metrics["bag_reading"], reading_lines = bag_reading(dataset, None)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
            print(obstacle_summary(metrics["obstacles"]))
            print("\n".join(reading_lines))
            return 0
        from densehybrid_ros.predictor import Predictor, PredictorConfig

        scores = tuple(dict.fromkeys(("hybrid",) + tuple(args.scores)))
        eval_options = EvalOptions(scores=scores, max_images=args.max_frames, threshold=args.threshold)
        if args.outputs:
            metadata = None
            if args.weights:
                from densehybrid_ros.weights import load_weights

                _, metadata = load_weights(args.weights)
            if scores != ("hybrid",):
                raise ValueError("--outputs scores the recorded hybrid score only (--scores hybrid)")
            threshold = args.threshold if args.threshold is not None else (metadata.threshold if metadata else None)
            topics = {"score": args.score_topic, "semantic": args.semantic_topic, "obstacles": args.obstacles_topic}
            recorded = RecordedOutputs(args.outputs, topics, threshold, metadata)
            node_threshold = (resolve_threshold(metadata.calibration, args.threshold, args.operating_point).value
                              if metadata else args.threshold)
            result = run_outputs(dataset, recorded, options, eval_options, args.recompute_obstacles, not args.quiet,
                                 node_threshold)
            colors = [c.color for c in metadata.classes] if metadata else [(128, 128, 128)]
        else:
            extra = tuple(s for s in scores if s != "hybrid")
            predictor = Predictor.from_weights(args.weights, PredictorConfig(
                device=args.device, extra_scores=extra, threshold=args.threshold, operating_point=args.operating_point))
            result = run_predictor(dataset, predictor, options, eval_options, not args.quiet)
            colors = [c.color for c in predictor.metadata.classes]
        result.metrics["bag_reading"], reading_lines = bag_reading(dataset, recorded)
        report = write_report(result, args.out, colors, title="densehybrid_ros bag evaluation")
    except (DatasetError, WeightsError, ValueError, OSError) as exc:
        print(f"densehybrid-eval-bag: error: {exc}", file=sys.stderr)
        return 2
    finally:
        for closable in (dataset, recorded):
            if closable is not None:
                closable.close()
    print(summary_table(result.metrics))
    print(obstacle_summary(result.metrics["obstacles"]))
    print("\n".join(reading_lines))
    print(f"report: {report}")
    return 0


# ------------------------------------------------------------------ the sim's mount as a transform (proposal)
def sim_mount_transform(pose: Any) -> tuple[tuple[float, float, float], tuple[float, float, float, float]]:
    """(translation, quaternion x y z w) of the sim camera's optical frame in `base_footprint` (what sim bags
    carry on /tf); see densehybrid_ros.sim.camera.CameraPose.footprint_transform."""
    return pose.footprint_transform()


if __name__ == "__main__":
    sys.exit(main())
