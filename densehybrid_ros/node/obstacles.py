"""Anomaly components -> 3D obstacles in the camera optical frame, and stable ids. ROS-free.

Frames (REP 103/105 optical convention):
- camera optical frame C: x right, y down, z forward (the image header's frame_id).
- level frame L: same origin, x right, y down (along gravity), z forward, horizontal: the optical frame of
  the same camera with zero pitch and roll. The ground plane is y_L = camera_height.
- p_L = R(pitch, roll) @ p_C with R = Rx(-pitch) @ Rz(roll) (`level_from_camera`):
  pitch > 0 tilts the optical axis DOWN: z_C = (0, sin(pitch), cos(pitch)) in L;
  roll > 0 turns x_C towards y_C (clockwise seen from behind the camera): x_C = (cos(roll), sin(roll), 0) in L
  when pitch = 0.

Pixels: continuous image coordinates with pixel centres at integers (the CameraInfo/OpenCV convention); the
bottom edge of a component whose lowest pixel row is r is at v = r + 0.5.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np


@dataclass(frozen=True)
class CameraModel:
    """Pinhole intrinsics (from sensor_msgs/CameraInfo K, row-major 3x3)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int = 0  # the resolution K refers to (0 = unknown: same as the images)
    height: int = 0

    @classmethod
    def from_k(cls, k: "np.ndarray | list[float]", width: int = 0, height: int = 0) -> "CameraModel":
        k = np.asarray(k, np.float64).reshape(-1)
        if k.size != 9 or not np.all(np.isfinite(k)):
            raise ValueError(f"K must be 9 finite numbers, got {k.tolist()}")
        model = cls(float(k[0]), float(k[4]), float(k[2]), float(k[5]), int(width), int(height))
        if not (model.fx > 0 and model.fy > 0):
            raise ValueError(f"K must have positive focal lengths, got fx={model.fx}, fy={model.fy} (uncalibrated camera?)")
        return model

    def for_image(self, width: int, height: int) -> "CameraModel":
        """Intrinsics for images of (width, height): scaled when CameraInfo describes another resolution."""
        if self.width <= 0 or self.height <= 0 or (self.width, self.height) == (width, height):
            return self
        sx, sy = width / self.width, height / self.height
        # Pixel centres at integers: a pixel edge at -0.5 maps to -0.5.
        return CameraModel(self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5, width, height)

    def ray(self, u: float, v: float) -> np.ndarray:
        """Direction K^-1 [u, v, 1] in the optical frame (z = 1)."""
        return np.array([(u - self.cx) / self.fx, (v - self.cy) / self.fy, 1.0])

    def project(self, point: np.ndarray) -> tuple[float, float]:
        x, y, z = point
        return self.fx * x / z + self.cx, self.fy * y / z + self.cy


def level_from_camera(pitch: float, roll: float) -> np.ndarray:
    """R with p_level = R @ p_camera: Rx(-pitch) @ Rz(roll) (see the module docstring for the signs)."""
    cp, sp, cr, sr = math.cos(pitch), math.sin(pitch), math.cos(roll), math.sin(roll)
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cp, sp], [0.0, -sp, cp]])
    rz = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
    return rx @ rz


def pitch_roll_from_rotation(up_from_camera: np.ndarray) -> tuple[float, float]:
    """(pitch, roll) in this module's convention from a rotation taking camera optical-frame vectors into any frame
    whose z axis points up (a z-up world, REP 105 base_footprint, ...; its heading does not matter).

    Gravity in the camera frame is d = R^T (0, 0, -1); `level_from_camera` maps d to (0, 1, 0), i.e. d is its second
    row: (cos(pitch) sin(roll), cos(pitch) cos(roll), sin(pitch)). Valid for |pitch| < pi/2."""
    down = np.asarray(up_from_camera, np.float64).reshape(3, 3).T @ np.array([0.0, 0.0, -1.0])
    return float(math.asin(float(np.clip(down[2], -1.0, 1.0)))), float(math.atan2(down[0], down[1]))


def quaternion_to_rotation(x: float, y: float, z: float, w: float) -> np.ndarray:
    """Rotation matrix of a (normalised here) quaternion (x, y, z, w), e.g. a geometry_msgs/Transform rotation."""
    q = np.array([x, y, z, w], np.float64)
    norm = float(np.linalg.norm(q))
    if not norm > 0 or not math.isfinite(norm):
        raise ValueError(f"quaternion must be finite and non-zero, got {q.tolist()}")
    x, y, z, w = q / norm
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def ground_point(u: float, v: float, camera: CameraModel, height: float, pitch: float, roll: float) -> np.ndarray | None:
    """Where the ray through pixel (u, v) meets the ground plane, in the camera optical frame; None when the
    ray does not point below the horizon."""
    ray_c = camera.ray(u, v)
    ray_l = level_from_camera(pitch, roll) @ ray_c
    if ray_l[1] <= 1e-9:
        return None
    return ray_c * (height / ray_l[1])


def rotation_to_quaternion(r: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, z, w) of a rotation matrix (Shepperd's method)."""
    trace = r[0, 0] + r[1, 1] + r[2, 2]
    if trace > 0:
        s = math.sqrt(trace + 1.0) * 2
        w, x, y, z = 0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = math.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2]) * 2
        w, x, y, z = (r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s
    elif r[1, 1] > r[2, 2]:
        s = math.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2]) * 2
        w, x, y, z = (r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s
    else:
        s = math.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1]) * 2
        w, x, y, z = (r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s
    return x, y, z, w


@dataclass(frozen=True)
class Component:
    """One 8-connected component of the anomaly mask."""

    label: int  # in the label image returned with it
    x0: int  # bounding box, inclusive start / exclusive end (pixels)
    y0: int
    x1: int
    y1: int
    area: int  # pixels
    mean_score: float
    max_score: float
    bottom_u: float  # mean column of the component's lowest pixel row
    bottom_v: float  # bottom edge of that row (= row + 0.5)
    centroid: tuple[float, float]  # (u, v)


def extract_components(mask: np.ndarray, score: np.ndarray | None = None, min_area: int = 1,
                       max_components: int | None = None) -> tuple[list[Component], np.ndarray]:
    """Connected components (8-connectivity) of a boolean mask with at least `min_area` pixels, largest first,
    and the int32 label image (0 = background)."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= min_area]
    keep.sort(key=lambda i: (-stats[i, cv2.CC_STAT_AREA], i))
    if max_components is not None:
        keep = keep[:max_components]
    sums = maxima = None
    if score is not None and keep:
        flat_labels, flat_score = labels.reshape(-1), score.reshape(-1).astype(np.float64)
        sums = np.bincount(flat_labels, weights=flat_score, minlength=count)
        maxima = np.full(count, -np.inf)
        np.maximum.at(maxima, flat_labels, flat_score)
    components = []
    for i in keep:
        x, y, w, h, area = (int(v) for v in stats[i, :5])
        bottom = np.flatnonzero(labels[y + h - 1, x:x + w] == i)
        components.append(Component(
            label=i, x0=x, y0=y, x1=x + w, y1=y + h, area=area,
            mean_score=float(sums[i] / area) if sums is not None else math.nan,
            max_score=float(maxima[i]) if maxima is not None else math.nan,
            bottom_u=float(x + bottom.mean()), bottom_v=float(y + h - 1) + 0.5,
            centroid=(float(centroids[i, 0]), float(centroids[i, 1])),
        ))
    return components, labels


@dataclass
class Obstacle:
    """An anomaly component placed in the camera optical frame."""

    component: Component
    center: np.ndarray  # box centre (camera frame, m)
    size: tuple[float, float, float]  # box extent along its own x (width), y (height), z (depth) [m]
    orientation: tuple[float, float, float, float]  # box axes in the camera frame, quaternion (x, y, z, w)
    anchor: np.ndarray  # ground contact point (ground plane) or centroid point (depth) in the camera frame
    distance: float  # |anchor|: range from the camera's optical centre [m]
    source: str  # "ground", "depth" (or "image": no intrinsics, 2D only)
    up: np.ndarray = field(default_factory=lambda: np.array([0.0, -1.0, 0.0]))  # box's up axis, camera frame
    id: int = -1  # stable id, set by ObstacleTracker


def locate_on_ground(component: Component, camera: CameraModel, height: float, pitch: float, roll: float,
                     max_distance: float = math.inf) -> Obstacle | None:
    """Place a component by intersecting its bottom-centre ray with the ground plane (flat ground assumed).

    The box stands on the ground (axes of the level frame): width and height are the component's pixel extents
    measured in the vertical plane through the contact point facing the camera; depth is assumed equal to the
    width. None when the bottom ray misses the ground (at/above the horizon) or lands beyond `max_distance`."""
    contact_c = ground_point(component.bottom_u, component.bottom_v, camera, height, pitch, roll)
    if contact_c is None:
        return None
    distance = float(np.linalg.norm(contact_c))
    if distance > max_distance:
        return None
    r = level_from_camera(pitch, roll)
    contact_l = r @ contact_c
    forward = contact_l[2]
    if forward <= 1e-6:
        return None

    def at_forward(u: float, v: float) -> np.ndarray | None:
        ray_l = r @ camera.ray(u, v)
        return ray_l * (forward / ray_l[2]) if ray_l[2] > 1e-9 else None

    top = at_forward(component.bottom_u, component.y0 - 0.5)
    left = at_forward(component.x0 - 0.5, component.bottom_v)
    right = at_forward(component.x1 - 0.5, component.bottom_v)
    box_h = max(contact_l[1] - top[1], 0.05) if top is not None else 0.05
    box_w = max(abs(right[0] - left[0]), 0.05) if left is not None and right is not None else 0.05
    box_d = box_w
    center_l = contact_l + np.array([0.0, -box_h / 2, box_d / 2])
    return Obstacle(
        component=component, center=r.T @ center_l, size=(box_w, box_h, box_d),
        orientation=rotation_to_quaternion(r.T), anchor=contact_c, distance=distance, source="ground",
        up=r.T @ np.array([0.0, -1.0, 0.0]),
    )


def locate_with_depth(component: Component, labels: np.ndarray, depth: np.ndarray, camera: CameraModel,
                      max_distance: float = math.inf) -> Obstacle | None:
    """Place a component with a registered depth image (metres, NaN = invalid, same size as `labels`): the
    median depth of its pixels along the centroid ray; box axes = camera axes, size from the pixel extents.
    None when no pixel of the component has a valid depth."""
    values = depth[labels == component.label]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    z = float(np.median(values))
    anchor = camera.ray(*component.centroid) * z
    distance = float(np.linalg.norm(anchor))
    if distance > max_distance:
        return None
    box_w = max((component.x1 - component.x0) * z / camera.fx, 0.05)
    box_h = max((component.y1 - component.y0) * z / camera.fy, 0.05)
    center = anchor + np.array([0.0, 0.0, box_w / 2])
    return Obstacle(component=component, center=center, size=(box_w, box_h, box_w), orientation=(0.0, 0.0, 0.0, 1.0),
                    anchor=anchor, distance=distance, source="depth")


def place_obstacles(components: list[Component], labels: np.ndarray, camera: CameraModel, height: float, pitch: float,
                    roll: float, max_distance: float = math.inf, depth: np.ndarray | None = None) -> list[Obstacle]:
    """Each component placed with the registered depth image when given, else on the ground plane of the mount
    (height, pitch, roll); components that cannot be placed or lie beyond `max_distance` are dropped. The node's
    FrameProcessor and densehybrid-eval-bag both place obstacles through this."""
    obstacles = []
    for component in components:
        if depth is not None:
            located = locate_with_depth(component, labels, depth, camera, max_distance)
        else:
            located = locate_on_ground(component, camera, height, pitch, roll, max_distance)
        if located is not None:
            obstacles.append(located)
    return obstacles


@dataclass
class ObstacleTracker:
    """Stable ids across frames: greedy nearest matching of box centres to the last frame's obstacles.

    All (new, previous) pairs within `max_distance` are taken in order of increasing distance, each obstacle
    and each previous id at most once; unmatched obstacles get fresh ids (never reused)."""

    tracks: dict[int, np.ndarray] = field(default_factory=dict)
    next_id: int = 0

    def update(self, obstacles: list[Obstacle], max_distance: float) -> set[int]:
        """Assign `obstacle.id` in place; returns the ids of the last frame that disappeared."""
        previous = list(self.tracks.items())
        pairs = sorted(
            (float(np.linalg.norm(ob.center - center)), n, track_id)
            for n, ob in enumerate(obstacles)
            for track_id, center in previous
        )
        taken_new, taken_old = set(), set()
        for dist, n, track_id in pairs:
            if dist > max_distance:
                break
            if n in taken_new or track_id in taken_old:
                continue
            obstacles[n].id = track_id
            taken_new.add(n)
            taken_old.add(track_id)
        for n, ob in enumerate(obstacles):
            if n not in taken_new:
                ob.id = self.next_id
                self.next_id = (self.next_id + 1) % 2**31
        self.tracks = {ob.id: ob.center.copy() for ob in obstacles}
        return {track_id for track_id, _ in previous} - taken_old

    def reset(self) -> set[int]:
        gone = set(self.tracks)
        self.tracks = {}
        return gone
