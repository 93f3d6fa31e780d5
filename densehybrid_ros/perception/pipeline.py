"""One camera frame through the shared `Predictor`, and what the node publishes from it. ROS-free.

The node decodes a message to RGB, asks `FrameProcessor.process` for the outputs that have subscribers, and
turns the arrays into messages. All inference is the `Predictor` (one pipeline); this module adds only
the presentation (colours, overlay) and the obstacle geometry on top of its outputs.
With several cameras the node splits `process` in two: `predict` (the newest frame of every camera in one
`Predictor.predict_many` call: one forward per network grid size) and `present` per camera (its own settings,
i.e. mounting, and its own obstacle tracker).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from densehybrid_ros.perception.obstacles import Obstacle, ObstacleTracker, frame_obstacles
from densehybrid_ros.perception.camera import CameraModel
from densehybrid_ros.perception.settings import Settings
from densehybrid_ros.predictor import Prediction, Predictor
from densehybrid_ros.perception.presentation import colorize, overlay, palette
from densehybrid_ros.weights import ThresholdChoice, resolve_threshold

BOX_COLOR = (255, 64, 0)  # RGB, obstacle boxes in ~/overlay


@dataclass(frozen=True)
class Wanted:
    """Which outputs to compute for this frame (publish toggle on and, for visual ones, a subscriber)."""

    semantic: bool = False
    semantic_color: bool = False
    anomaly_score: bool = False
    open_set: bool = False
    overlay: bool = False
    obstacles: bool = False  # markers


@dataclass
class FrameResult:
    prediction: Prediction
    threshold: float | None
    semantic_color: np.ndarray | None = None
    overlay: np.ndarray | None = None
    obstacles: list[Obstacle] = field(default_factory=list)  # confirmed (with a camera model), else 2-D candidates
    removed_ids: set[int] = field(default_factory=set)  # obstacle ids of earlier frames that are gone
    located: bool = False  # obstacles carry 3D positions/ids (camera model known)


class FrameProcessor:
    """Holds the Predictor, the class palette and the obstacle tracker of one node."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.num_classes = predictor.num_classes
        self.calibration = predictor.metadata.calibration
        self.class_names = tuple(c.name for c in predictor.metadata.classes)
        self.palette = palette([c.color for c in predictor.metadata.classes])
        self.tracker = ObstacleTracker()

    def threshold_choice(self, settings: Settings) -> ThresholdChoice:
        """The threshold in force and its source (`weights.resolve_threshold`: the threshold parameter, else the named
        operating_point, else the weights' default point, else their calibrated threshold); ValueError for an
        operating point the weights do not hold."""
        return resolve_threshold(self.calibration, settings.threshold, settings.operating_point or None)

    def threshold(self, settings: Settings) -> float | None:
        """The threshold in force (None: none known)."""
        return self.threshold_choice(settings).value

    def process(self, rgb: np.ndarray, settings: Settings, wanted: Wanted, camera: CameraModel | None = None,
                depth: np.ndarray | None = None) -> FrameResult:
        """One frame: `predict` + `present` with this processor's own tracker."""
        (prediction,) = self.predict([rgb], settings)
        return self.present(rgb, prediction, settings, wanted, camera, depth)

    def predict(self, images: list[np.ndarray], settings: Settings) -> list[Prediction]:
        """The predictions of several frames (cameras), batched by network grid size, with the threshold in force."""
        self.predictor.threshold = self.threshold(settings)  # Predictor fuses the open-set map with it (one thread)
        return self.predictor.predict_many(images)

    def present(self, rgb: np.ndarray, prediction: Prediction, settings: Settings, wanted: Wanted,
                camera: CameraModel | None = None, depth: np.ndarray | None = None,
                tracker: ObstacleTracker | None = None) -> FrameResult:
        """Colours, obstacles (tracked by `tracker`, default this processor's) and overlay of one prediction."""
        result = FrameResult(prediction=prediction, threshold=self.threshold(settings))
        if wanted.semantic_color:
            result.semantic_color = colorize(prediction.class_ids, self.palette)
        need_obstacles = (wanted.obstacles or wanted.overlay) and prediction.open_set is not None
        if need_obstacles:
            self._obstacles(result, settings, camera, depth, rgb.shape[:2], tracker or self.tracker)
        if wanted.overlay:
            result.overlay = self.render_overlay(rgb, result, settings.overlay_alpha)
        return result

    def _obstacles(self, result: FrameResult, settings: Settings, camera: CameraModel | None,
                   depth: np.ndarray | None, shape: tuple[int, int], tracker: ObstacleTracker) -> None:
        """Candidates of this frame (`obstacles.frame_obstacles`), confirmed by `tracker`. No intrinsics: the candidates
        as 2-D boxes for the overlay only (no 3D, no ids, no confirmation)."""
        prediction = result.prediction
        if camera is not None:
            camera = camera.for_image(shape[1], shape[0])
        if depth is not None and depth.shape != shape:
            depth = cv2.resize(depth, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
        candidates = frame_obstacles(
            prediction.open_set == self.num_classes, prediction.hybrid, prediction.class_ids, camera,
            (settings.camera_height, settings.camera_pitch, settings.camera_roll),
            settings.obstacle_rules(self.class_names), depth)
        if camera is None:
            result.obstacles = candidates
            return
        step = tracker.update(candidates, settings.confirmation())
        result.obstacles, result.removed_ids, result.located = step.published, step.removed_ids, True

    def render_overlay(self, rgb: np.ndarray, result: FrameResult, alpha: float) -> np.ndarray:
        """Class colours blended over the image; unknown pixels (open-set class K) in the unknown colour at full
        strength with their outline; a box per obstacle labelled with id, mean score and distance."""
        prediction = result.prediction
        ids = prediction.open_set if prediction.open_set is not None else prediction.class_ids
        image = overlay(rgb, ids, self.palette, alpha)
        if prediction.open_set is not None:
            unknown = prediction.open_set == self.num_classes
            image[unknown] = self.palette[self.num_classes]
            contours, _ = cv2.findContours(unknown.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(image, contours, -1, (255, 255, 255), 1)
        for ob in result.obstacles:
            c = ob.component
            cv2.rectangle(image, (c.x0, c.y0), (c.x1 - 1, c.y1 - 1), BOX_COLOR, 2)
            label = f"{c.mean_score:.2f}" if ob.id < 0 else f"#{ob.id} {c.mean_score:.2f} {ob.distance:.1f}m"
            cv2.putText(image, label, (c.x0, max(c.y0 - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, BOX_COLOR, 1, cv2.LINE_AA)
        return image
