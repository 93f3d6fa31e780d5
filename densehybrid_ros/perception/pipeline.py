"""The perception pipeline: camera frames through the shared `Predictor`, and everything published from them. ROS-free.

`Perception` runs in two stages, one batched and one per camera:
- `predict`: the frames of all cameras in one `Predictor.predict_many` call (one forward per network grid size), with
  the threshold in force (`weights.resolve_threshold`, passed per call: the Predictor is never changed);
- `present`: one camera's prediction -> its semantic colours, obstacles (candidates of `obstacles.frame_obstacles`,
  confirmed by that camera's own `ObstacleTracker`), overlay and planner outputs (`planner_outputs`: obstacle points,
  occupancy grid), each only when wanted.
`run` is both for callers that time and isolate neither (bag evaluation, the demo, tests). The node decodes messages
into `CameraFrame`s and turns the `FrameResult` arrays into messages; all inference is the Predictor (one pipeline).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from densehybrid_ros.perception.camera import CameraModel, Mount
from densehybrid_ros.perception.obstacles import Obstacle, ObstacleTracker, frame_obstacles
from densehybrid_ros.perception.planner_outputs import GridSpec, ObstaclePoints, obstacle_points, occupancy_grid
from densehybrid_ros.perception.presentation import colorize, palette, render_overlay
from densehybrid_ros.perception.settings import Settings
from densehybrid_ros.predictor import Prediction, Predictor
from densehybrid_ros.weights import ThresholdChoice, resolve_threshold


@dataclass(frozen=True)
class Wanted:
    """Which outputs a frame needs (the node: publish toggle on and a subscriber); the names of the node's outputs."""

    semantic: bool = False
    semantic_color: bool = False
    anomaly_score: bool = False
    open_set: bool = False
    overlay: bool = False
    obstacles: bool = False  # markers
    obstacle_points: bool = False
    obstacle_grid: bool = False

    @property
    def any_obstacles(self) -> bool:
        """Obstacles in 3D are wanted: markers, points or grid."""
        return self.obstacles or self.obstacle_points or self.obstacle_grid


@dataclass(frozen=True)
class CameraFrame:
    """One decoded frame of one camera and what it needs."""

    rgb: np.ndarray  # (H, W, 3) uint8
    wanted: Wanted = Wanted()
    camera: str = ""  # which camera: its obstacle tracker ("" = the single camera)
    intrinsics: CameraModel | None = None  # None: unknown (obstacles only as 2-D boxes for the overlay)
    mount: Mount | None = None  # None: the settings' mount (camera_height, camera_pitch, camera_roll)
    depth: np.ndarray | None = None  # registered depth [m], any size (resized by nearest neighbour)


@dataclass(frozen=True)
class GroundGrid:
    """An occupancy grid on the camera's ground (planner_outputs.occupancy_grid)."""

    spec: GridSpec
    cells: np.ndarray  # (ny, nx) int8: 100 occupied, 0 free, -1 unknown


@dataclass
class FrameResult:
    prediction: Prediction
    threshold: float | None  # in force when it was presented (None: no open-set map, no obstacles)
    semantic_color: np.ndarray | None = None
    overlay: np.ndarray | None = None
    obstacles: list[Obstacle] = field(default_factory=list)  # confirmed (with intrinsics), else 2-D candidates
    located: bool = False  # obstacles are placed in 3D and confirmed (intrinsics known)
    points: ObstaclePoints | None = None  # of the obstacles seen in this frame; only when located
    grid: GroundGrid | None = None  # only when located


class Perception:
    """The predictor, the weights' classes and palette, and one obstacle tracker per camera."""

    def __init__(self, predictor: Predictor, cameras: Sequence[str] = ("",)) -> None:
        if not cameras or len(set(cameras)) != len(cameras):
            raise ValueError(f"need distinct camera names, got {list(cameras)!r}")
        self.predictor = predictor
        self.num_classes = predictor.num_classes
        self.calibration = predictor.metadata.calibration
        self.class_names = tuple(c.name for c in predictor.metadata.classes)
        self.palette = palette([c.color for c in predictor.metadata.classes])
        self._trackers = {name: ObstacleTracker() for name in cameras}

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(self._trackers)

    def threshold_choice(self, settings: Settings) -> ThresholdChoice:
        """The threshold in force and its source (`weights.resolve_threshold`: the threshold parameter, else the named
        operating_point, else the weights' default point, else their calibrated threshold); ValueError for an
        operating point the weights do not hold."""
        return resolve_threshold(self.calibration, settings.threshold, settings.operating_point or None)

    def threshold(self, settings: Settings) -> float | None:
        """The threshold in force (None: none known)."""
        return self.threshold_choice(settings).value

    def predict(self, images: Sequence[np.ndarray], settings: Settings) -> list[Prediction]:
        """The predictions of several frames (cameras) in one `Predictor.predict_many` call, fused with the threshold
        in force."""
        return self.predictor.predict_many(images, threshold=self.threshold(settings))

    def present(self, frame: CameraFrame, prediction: Prediction, settings: Settings) -> FrameResult:
        """The wanted outputs of one camera's prediction: semantic colours; obstacles (also for the overlay) when there
        is an open-set map, advancing this camera's tracker; the overlay; obstacle points and grid when located."""
        wanted, tracker = frame.wanted, self._tracker(frame.camera)
        result = FrameResult(prediction=prediction, threshold=self.threshold(settings))
        if wanted.semantic_color:
            result.semantic_color = colorize(prediction.class_ids, self.palette)
        if (wanted.any_obstacles or wanted.overlay) and prediction.open_set is not None:
            camera, depth = self._obstacles(result, frame, settings, tracker)
            if result.located and (wanted.obstacle_points or wanted.obstacle_grid):
                self._planner_outputs(result, frame, settings, camera, depth)
        if wanted.overlay:
            result.overlay = render_overlay(frame.rgb, prediction.class_ids, prediction.open_set, result.obstacles,
                                            self.palette, self.num_classes, settings.overlay_alpha)
        return result

    def run(self, frames: Sequence[CameraFrame], settings: Settings) -> list[FrameResult]:
        """`predict` for all frames (one batch), then `present` each."""
        predictions = self.predict([frame.rgb for frame in frames], settings)
        return [self.present(frame, prediction, settings) for frame, prediction in zip(frames, predictions)]

    def reset(self) -> None:
        """Forget every camera's tracks (a new stream: no track outlives the one it was confirmed in; ids go on)."""
        for tracker in self._trackers.values():
            tracker.reset()

    def describe_obstacles(self, settings: Settings) -> str:
        """The obstacle filter and confirmation in force, in words (the node's log and /diagnostics)."""
        rules = settings.obstacle_rules(self.class_names)
        surface = ("not checked" if rules.drivable_ids is None else
                   ", ".join(self.class_names[i] for i in rules.drivable_ids)
                   + f" or the bottom {settings.ground_band:g} of the image")
        enclosure = ("" if rules.object_ids is None or rules.max_enclosed_share >= 1.0 else
                     f"at most {rules.max_enclosed_share:g} of its surroundings on "
                     + ", ".join(self.class_names[i] for i in rules.object_ids) + "; ")
        return (f"contact on {surface}; {enclosure}{settings.obstacle_min_width:g}-{settings.obstacle_max_width:g} m "
                f"wide, {settings.obstacle_min_height:g}-{settings.obstacle_max_height:g} m tall, at least "
                f"{settings.obstacle_min_visible_area:g} m^2 visible; published after "
                f"{settings.confirm_hits} of {settings.confirm_window} frames (+{settings.confirm_hits - 1} frames "
                f"latency{self._instant_words(settings)}), tracked through {settings.miss_budget} missed frames"
                + (" (their last view published)" if settings.hold_missed_obstacles else ""))

    def _instant_words(self, settings: Settings) -> str:
        """When a new obstacle skips confirmation (instant_confirm_point), in words."""
        if not settings.instant_confirm_point:
            return ""
        score = settings.instant_score(self.calibration)
        if score is None:
            return (f"; instant confirmation off: the weights hold no operating point "
                    f"{settings.instant_confirm_point!r}")
        threshold = self.threshold(settings)
        if threshold is not None and threshold >= score:
            return (f"; every obstacle at once: the threshold {threshold:.3f} is at or above "
                    f"{settings.instant_confirm_point} ({score:.3f})")
        return f"; at once when its score reaches {settings.instant_confirm_point} ({score:.3f})"

    def _tracker(self, camera: str) -> ObstacleTracker:
        try:
            return self._trackers[camera]
        except KeyError:
            raise ValueError(f"unknown camera {camera!r}: this pipeline serves {list(self._trackers)}") from None

    def _obstacles(self, result: FrameResult, frame: CameraFrame, settings: Settings,
                   tracker: ObstacleTracker) -> tuple[CameraModel | None, np.ndarray | None]:
        """Candidates of this frame (`obstacles.frame_obstacles`), confirmed by the camera's `tracker`. No intrinsics:
        the candidates as 2-D boxes for the overlay only (no 3D, no ids, no confirmation). Returns the intrinsics and
        depth at the image's resolution (what the planner outputs use too)."""
        prediction, mount = result.prediction, frame.mount if frame.mount is not None else settings.mount
        shape = frame.rgb.shape[:2]
        camera = frame.intrinsics.for_image(shape[1], shape[0]) if frame.intrinsics is not None else None
        depth = frame.depth
        if depth is not None and depth.shape != shape:
            depth = cv2.resize(depth, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
        candidates = frame_obstacles(prediction.open_set == self.num_classes, prediction.hybrid, prediction.class_ids,
                                     camera, mount, settings.obstacle_rules(self.class_names), depth)
        if camera is None:
            result.obstacles = candidates
            return camera, depth
        result.obstacles = tracker.update(candidates, settings.confirmation(self.calibration)).published
        result.located = True
        return camera, depth

    def _planner_outputs(self, result: FrameResult, frame: CameraFrame, settings: Settings, camera: CameraModel,
                         depth: np.ndarray | None) -> None:
        """Points of the obstacles seen in this frame (a missed one has no pixels here) and, when wanted, the grid, with
        the intrinsics and depth the obstacles were placed with."""
        prediction = result.prediction
        mount = frame.mount if frame.mount is not None else settings.mount
        anomalous = prediction.open_set == self.num_classes
        seen = [ob for ob in result.obstacles if ob.missed == 0]
        result.points = obstacle_points(seen, anomalous, prediction.hybrid, camera, mount, depth)
        if frame.wanted.obstacle_grid:
            spec = settings.grid_spec()
            result.grid = GroundGrid(spec, occupancy_grid(spec, camera, mount, anomalous, result.points.xyz))
