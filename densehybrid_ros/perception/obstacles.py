"""Anomaly components -> 3D obstacles in the camera optical frame, confirmed across frames with stable ids. ROS-free.

Per frame (`frame_obstacles`): components of the anomaly mask that stand on the drivable surface, are not mostly
surrounded by a known object (a car's wheel is part of the car), placed on the ground plane (or with depth) and of a
real object's size, are the candidates; `ObstacleTracker` publishes a
candidate once it was seen in N of the last M frames and keeps it through a miss budget. The node, densehybrid-eval-bag
and the demo all run these two.

Camera geometry (frames, CameraModel, the ground plane): densehybrid_ros/perception/camera.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from densehybrid_ros.perception.camera import (CameraModel, Mount, ground_point, level_from_camera,
                                               rotation_to_quaternion)


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
    id: int = -1  # stable public id, set by ObstacleTracker once confirmed
    missed: int = 0  # frames since it was last seen (0: seen in this frame; > 0: the last view, within the miss budget)


def locate_on_ground(component: Component, camera: CameraModel, mount: Mount,
                     max_distance: float = math.inf) -> Obstacle | None:
    """Place a component by intersecting its bottom-centre ray with the ground plane of `mount` (flat ground assumed).

    The box stands on the ground (axes of the level frame): width and height are the component's pixel extents
    measured in the vertical plane through the contact point facing the camera; depth is assumed equal to the
    width. None when the bottom ray misses the ground (at/above the horizon) or lands beyond `max_distance`."""
    contact_c = ground_point(component.bottom_u, component.bottom_v, camera, mount)
    if contact_c is None:
        return None
    distance = float(np.linalg.norm(contact_c))
    if distance > max_distance:
        return None
    r = level_from_camera(mount.pitch, mount.roll)
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


def place_obstacles(components: list[Component], labels: np.ndarray, camera: CameraModel, mount: Mount,
                    max_distance: float = math.inf, depth: np.ndarray | None = None) -> list[Obstacle]:
    """Each component placed with the registered depth image when given, else on the ground plane of `mount`;
    components that cannot be placed or lie beyond `max_distance` are dropped (`frame_obstacles` places the
    candidates of a frame through this)."""
    obstacles = []
    for component in components:
        if depth is not None:
            located = locate_with_depth(component, labels, depth, camera, max_distance)
        else:
            located = locate_on_ground(component, camera, mount, max_distance)
        if located is not None:
            obstacles.append(located)
    return obstacles


@dataclass(frozen=True)
class ObstacleRules:
    """Which anomaly components become obstacle candidates (the node's parameters of the same meaning, see
    densehybrid_ros/perception/settings.py: `Settings.obstacle_rules`; densehybrid-eval-bag uses the same)."""

    min_area: int  # pixels of a component
    max_obstacles: int  # per frame, largest first
    max_distance: float  # [m] range of the anchor
    drivable_ids: tuple[int, ...] | None  # class ids of the drivable surface; None = the surface is not checked
    ground_band: float  # share of the image height at its bottom where any contact counts as ground
    width: tuple[float, float]  # [m] inclusive limits of the box width
    height: tuple[float, float]  # [m] inclusive limits of the box height
    min_visible_area: float = 0.0  # [m^2] smallest `visible_area` (0 = any)
    object_ids: tuple[int, ...] | None = None  # class ids of known objects; None = the enclosure is not checked
    max_enclosed_share: float = 1.0  # largest `enclosed_share` of a candidate (1.0 = any)


@dataclass(frozen=True)
class Confirmation:
    """When a candidate is published (`ObstacleTracker`): after `hits` of the last `window` frames, tracked through
    `miss_budget` frames without it, matched between frames by anchor within the track's gate (`match_cost`: an
    ellipse, `match_distance` [m] across the line of sight, plus `match_relative` times the track's range along
    it). `hold_missed`: a confirmed obstacle's last view is published through its missed frames; otherwise only the
    track and its id survive them, and only obstacles seen in the current frame are published (a last view lies
    where the obstacle was relative to the camera when it was seen: without ego-motion, 2 m off per frame at 8 m/s
    and 4 Hz). `instant_score`: a track seen now whose component's highest score reaches it is confirmed at once,
    without waiting for `hits` (clear evidence needs no second look; weak evidence still does); None = never."""

    hits: int
    window: int
    miss_budget: int
    match_distance: float
    match_relative: float = 0.0
    hold_missed: bool = False
    instant_score: float | None = None

    def match_cost(self, track_anchor: np.ndarray, candidate_anchor: np.ndarray, misses: int = 0) -> float:
        """How far a candidate's anchor lies from a track's last anchor, in units of the track's gate: <= 1 inside.

        The gate is an ellipse around the track's anchor. Along the line of sight (the anchor's direction from the
        camera) its half-axis is match_distance x (1 + misses) + match_relative x range: the vehicle's own motion,
        mostly along the line of sight for obstacles ahead, adds up over the track's missed frames, and a
        ground-plane anchor moves by about range^2 / (fy * h) per image row of its contact (camera height h, focal
        length fy in pixels): at 25 m about 1 m per row of the sim's 512x256 camera (35-degree vertical field of
        view, fy = 406, h = 1.6 m), 0.1 m at 8 m. Across it the half-axis stays match_distance: one pixel sideways is
        only range / fx (6 cm at 25 m), so a far track does not take over a blip across the road. Depth anchors get
        the same gate. A track at the camera's centre (range 0): a circle of match_distance x (1 + misses)."""
        delta = np.asarray(candidate_anchor, np.float64) - np.asarray(track_anchor, np.float64)
        track_range = float(np.linalg.norm(track_anchor))
        if track_range <= 1e-9:
            along, lateral, along_axis = float(np.linalg.norm(delta)), 0.0, self.match_distance * (1 + misses)
        else:
            along = float(delta @ np.asarray(track_anchor, np.float64)) / track_range
            lateral = math.sqrt(max(float(delta @ delta) - along * along, 0.0))
            along_axis = self.match_distance * (1 + misses) + self.match_relative * track_range
        return math.hypot(_ratio(along, along_axis), _ratio(lateral, self.match_distance))


def _ratio(offset: float, half_axis: float) -> float:
    """|offset| / half_axis, for a half-axis that may be 0 (then any offset is outside)."""
    if half_axis > 0:
        return abs(offset) / half_axis
    return 0.0 if offset == 0 else math.inf


CONTACT_ROWS = 3  # rows just below a component's bottom edge that tell what it stands on
DRIVABLE_SHARE = 0.5  # the contact is on the drivable surface when at least this share of those pixels is


def contact_pixels(component: Component, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the pixels just below the component's bottom edge: in each of its columns, the `CONTACT_ROWS`
    rows under its lowest pixel there, inside the image and outside every anomaly component (labels 0)."""
    crop = labels[component.y0:component.y1, component.x0:component.x1] == component.label
    columns = np.flatnonzero(crop.any(axis=0))
    lowest = crop.shape[0] - 1 - np.argmax(crop[::-1, columns], axis=0)
    rows = (component.y0 + lowest + 1)[:, None] + np.arange(CONTACT_ROWS)[None, :]
    cols = np.broadcast_to((component.x0 + columns)[:, None], rows.shape)
    inside = rows < labels.shape[0]
    rows, cols = rows[inside], cols[inside]
    free = labels[rows, cols] == 0
    return rows[free], cols[free]


def stands_on_drivable(component: Component, labels: np.ndarray, class_ids: np.ndarray, drivable_ids: tuple[int, ...],
                       ground_band: float) -> bool:
    """Whether a component's ground contact lies on the drivable surface: its bottom edge is in the bottom
    `ground_band` of the image, or at least `DRIVABLE_SHARE` of the pixels just below it (`contact_pixels`) are of a
    drivable class in the predicted semantic map `class_ids`."""
    if component.bottom_v >= labels.shape[0] * (1.0 - ground_band):
        return True
    rows, cols = contact_pixels(component, labels)
    return rows.size > 0 and float(np.isin(class_ids[rows, cols], drivable_ids).mean()) >= DRIVABLE_SHARE


RING_SHARE = 1 / 64  # width of the ring around a component that `enclosed_share` reads, as a share of the image height


def enclosed_share(component: Component, labels: np.ndarray, class_ids: np.ndarray,
                   object_ids: tuple[int, ...]) -> float:
    """Share of the pixels around a component that the semantic map `class_ids` gives to known objects (`object_ids`):
    the ring of width `RING_SHARE` x image height (at least 1 pixel) around it, outside every anomaly component
    (labels 0). A component mostly surrounded by one car (a wheel, the dark lower edge of a near car) is read as a
    part of it rather than a separate object in front of it; 0.0 when the ring is empty."""
    radius = max(1, round(labels.shape[0] * RING_SHARE))
    y0, y1 = max(component.y0 - radius, 0), min(component.y1 + radius, labels.shape[0])
    x0, x1 = max(component.x0 - radius, 0), min(component.x1 + radius, labels.shape[1])
    window = labels[y0:y1, x0:x1]
    inside = (window == component.label).astype(np.uint8)
    grown = cv2.dilate(inside, np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)).astype(bool)
    ring = grown & (window == 0)
    if not ring.any():
        return 0.0
    return float(np.isin(class_ids[y0:y1, x0:x1][ring], object_ids).mean())


def visible_area(obstacle: Obstacle) -> float:
    """The component's area at the obstacle's distance [m^2]: box width x height times the share of its pixel bounding
    box that the component fills."""
    c = obstacle.component
    fill = c.area / ((c.x1 - c.x0) * (c.y1 - c.y0))
    return obstacle.size[0] * obstacle.size[1] * fill


def fits_object_size(obstacle: Obstacle, rules: ObstacleRules) -> bool:
    """Whether the placed box's width and height [m] lie within the rules' limits (inclusive) and the component's
    `visible_area` reaches `rules.min_visible_area`."""
    width, height = obstacle.size[0], obstacle.size[1]
    return (rules.width[0] <= width <= rules.width[1] and rules.height[0] <= height <= rules.height[1]
            and visible_area(obstacle) >= rules.min_visible_area)


def frame_obstacles(mask: np.ndarray, score: np.ndarray | None, class_ids: np.ndarray, camera: CameraModel | None,
                    mount: Mount, rules: ObstacleRules, depth: np.ndarray | None = None) -> list[Obstacle]:
    """One frame's obstacle candidates, the one implementation for the node, densehybrid-eval-bag and the demo
    (through `perception.pipeline.Perception` and `evaluation.obstacle_metric.ObstacleMetric`): 8-connected components
    of `mask` with >= min_area pixels whose contact is on the drivable surface (`stands_on_drivable`, when
    `rules.drivable_ids` is set) and which are not mostly surrounded by known objects (`enclosed_share` at most
    `rules.max_enclosed_share`, when `rules.object_ids` is set and that share is below 1), placed with `depth` when
    given, else on the ground plane of `mount`, within max_distance and of a real object's size and visible area
    (`fits_object_size`); the largest max_obstacles of them. Without a camera model: the components passing the
    surface and enclosure checks as 2-D boxes (source "image", for the overlay only)."""
    components, labels = extract_components(mask, score, rules.min_area)
    if rules.drivable_ids is not None:
        components = [c for c in components if stands_on_drivable(c, labels, class_ids, rules.drivable_ids,
                                                                    rules.ground_band)]
    if rules.object_ids is not None and rules.max_enclosed_share < 1.0:
        components = [c for c in components
                      if enclosed_share(c, labels, class_ids, rules.object_ids) <= rules.max_enclosed_share]
    if camera is None:
        return [Obstacle(c, np.zeros(3), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0), np.zeros(3), math.nan, "image")
                for c in components[:rules.max_obstacles]]
    placed = place_obstacles(components, labels, camera, mount, rules.max_distance, depth)
    return [ob for ob in placed if fits_object_size(ob, rules)][:rules.max_obstacles]


@dataclass
class Track:
    """One obstacle followed across frames: its last observation, whether it was seen in each recent frame, and its
    public id (-1 until confirmed)."""

    obstacle: Obstacle
    seen: list[bool]  # one entry per frame since it appeared, newest last (at most MAX_HISTORY kept)
    misses: int = 0  # frames in a row without a match
    id: int = -1

    def confirmed_by(self, rule: Confirmation) -> bool:
        """Seen in `rule.hits` of the last `rule.window` frames, or seen now with a component reaching
        `rule.instant_score` (one without scores, max_score NaN, or without a component never does)."""
        instant, component = rule.instant_score, self.obstacle.component
        if self.misses == 0 and instant is not None and component is not None and component.max_score >= instant:
            return True
        return sum(self.seen[-rule.window:]) >= rule.hits


MAX_HISTORY = 64  # frames of `Track.seen` kept: the largest confirm_window (the node's parameter range)


@dataclass
class TrackerStep:
    published: list[Obstacle]  # confirmed obstacles seen now (missed 0), and with hold_missed those within the
    # miss budget (their last view, missed > 0)
    removed_ids: set[int]  # public ids of obstacles dropped in this frame


@dataclass
class ObstacleTracker:
    """Confirms obstacles across frames and gives them stable ids.

    Per frame, candidates are matched to the tracks by anchor (ground contact, or the depth point): all pairs within
    the track's gate (`Confirmation.match_cost` <= 1) taken in order of increasing cost, each at most once. A track is
    confirmed once it was seen in `hits` of the last `window` frames and then gets the next public id (never reused);
    a confirmed track missed for more than `miss_budget` frames in a row is dropped (its id reported removed), an
    unconfirmed one as soon as its misses leave too few frames in the window to confirm it. So a new obstacle is
    published at the earliest `hits - 1` frames after it first appears, or at once when its component reaches
    `Confirmation.instant_score`. A confirmed track missed in this frame is published (its last view,
    `missed` > 0) only with `Confirmation.hold_missed`."""

    tracks: list[Track] = field(default_factory=list)
    next_id: int = 0

    def update(self, candidates: list[Obstacle], rule: Confirmation) -> TrackerStep:
        """Advance one frame with its candidates; the published obstacles are copies with `id` and `missed` set."""
        matched = self._match(candidates, rule)
        seen_now = set()
        for n, candidate in enumerate(candidates):
            track = matched.get(n)
            if track is None:
                track = Track(candidate, [])
                self.tracks.append(track)
            track.obstacle, track.misses = candidate, 0
            track.seen.append(True)
            seen_now.add(id(track))
        removed, kept = set(), []
        for track in self.tracks:
            if id(track) not in seen_now:
                track.misses += 1
                track.seen.append(False)
            del track.seen[:-MAX_HISTORY]
            if track.id < 0 and track.confirmed_by(rule):
                track.id, self.next_id = self.next_id, (self.next_id + 1) % 2**31
            if not self._expired(track, rule):
                kept.append(track)
            elif track.id >= 0:
                removed.add(track.id)
        self.tracks = kept
        published = [replace(t.obstacle, id=t.id, missed=t.misses) for t in kept
                     if t.id >= 0 and (t.misses == 0 or rule.hold_missed)]
        return TrackerStep(published, removed)

    @staticmethod
    def _expired(track: Track, rule: Confirmation) -> bool:
        """A confirmed track beyond its miss budget; an unconfirmed one that can no longer reach `hits` seen frames
        in a window holding its past sightings (more than window - hits misses in a row)."""
        return track.misses > (rule.miss_budget if track.id >= 0 else rule.window - rule.hits)

    def _match(self, candidates: list[Obstacle], rule: Confirmation) -> dict[int, Track]:
        """Candidate index -> the track it continues (lowest gate cost first, within the gate, each at most once)."""
        pairs = sorted((rule.match_cost(track.obstacle.anchor, ob.anchor, track.misses), n, k)
                       for n, ob in enumerate(candidates) for k, track in enumerate(self.tracks))
        matched: dict[int, Track] = {}
        taken: set[int] = set()
        for cost, n, k in pairs:
            if cost > 1.0:
                break
            if n not in matched and k not in taken:
                matched[n] = self.tracks[k]
                taken.add(k)
        return matched

    def reset(self) -> set[int]:
        gone = {t.id for t in self.tracks if t.id >= 0}
        self.tracks = []
        return gone
