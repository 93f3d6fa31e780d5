"""Obstacles in the forms planners consume: a point cloud of their anomalous pixels and a ground occupancy grid.
ROS-free (numpy); the node turns the arrays into sensor_msgs/PointCloud2 and nav_msgs/OccupancyGrid.

Frames (see densehybrid_ros/perception/obstacles.py for the camera optical frame C and the level frame L):
- ground frame G of a camera: origin on the ground plane straight below the optical centre, x forward along the
  horizontal heading of the optical axis, y left, z up (REP 103). With the `Mount` (height h, pitch, roll) and
  p_L = R p_C (`level_from_camera`): p_G = (z_L, -x_L, h - y_L). It is the sim's `base_footprint`.

Points (`obstacle_points`), one per anomalous pixel of every placed obstacle, in the camera optical frame:
- placed on the ground plane (no depth): a flat image cannot tell how far each pixel of an object is, only where
  the object meets the ground (its lowest row, `locate_on_ground`). Every pixel of the component is put at the
  forward distance (along the level frame's z) of that ground contact, on its own pixel ray: the points form the
  object's front face, a vertical plane through the contact facing the camera (the front of the obstacle marker's
  box). An upright object then stands on its contact with its true height and width (to the accuracy of the
  contact), its lowest points just above the ground; what lies behind the visible face is not invented.
- with a registered depth image (the obstacle was placed with depth): each pixel at its own depth along its ray;
  pixels without a valid depth (NaN, inf, <= 0) are left out.

Grid (`occupancy_grid`), on the ground plane of G, cells of `GridSpec.resolution`, x in [0, length) ahead, y in
[-width / 2, width / 2) (row-major, row = y index, column = x index, as nav_msgs/OccupancyGrid):
- 100 (occupied): a cell holding the ground position (x_G, y_G) of an obstacle point, whatever its height;
- 0 (free): a cell whose centre, on the flat ground of the mount, projects into the image onto a pixel that is not
  anomalous: the view reaches the ground there as far as the anomaly map can tell;
- -1 (unknown): every other cell: out of the image, behind the camera, or seen through an anomalous pixel (under or
  behind an obstacle, which hides the ground). Known classes (cars, walls) are not judged: the grid is the anomaly
  layer of a costmap, meant to be combined with others by maximum.

PointCloud2 layout (`encode_points`): x, y, z, score as little-endian float32 and obstacle_id as uint32, 20 bytes per
point, one row (height 1), dense (no NaN points). Nav2's obstacle layer reads x, y, z as float32 and filters heights
after transforming into its global frame: the lowest points lie just above the ground (z_G > 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from densehybrid_ros.perception.obstacles import Obstacle, extract_components
from densehybrid_ros.perception.camera import CameraModel, Mount, level_from_camera

POINT_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("score", "<f4"), ("obstacle_id", "<u4")])
POINTFIELD_DATATYPES = {np.dtype("<f4"): 7, np.dtype("<u4"): 6}  # sensor_msgs/PointField FLOAT32, UINT32
FREE, OCCUPIED, UNKNOWN = 0, 100, -1
MAX_GRID_CELLS = 4_000_000


@dataclass(frozen=True)
class ObstaclePoints:
    """Anomalous pixels of the placed obstacles in 3D: camera optical frame [m], hybrid score and obstacle id."""

    xyz: np.ndarray  # (N, 3) float64
    score: np.ndarray  # (N,) float32
    obstacle_id: np.ndarray  # (N,) uint32

    @classmethod
    def empty(cls) -> "ObstaclePoints":
        return cls(np.zeros((0, 3)), np.zeros(0, np.float32), np.zeros(0, np.uint32))

    def __len__(self) -> int:
        return len(self.xyz)


def pixel_rays(camera: CameraModel, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(N, 3) directions K^-1 [u, v, 1] of pixels (u, v) in the optical frame (z = 1): `CameraModel.ray` for arrays."""
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    return np.stack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, np.ones_like(u)], axis=-1)


def component_labels(anomalous: np.ndarray) -> np.ndarray:
    """The int32 label image of `extract_components` on the anomaly mask: the same (deterministic) labelling the
    obstacles' `component.label` refers to when they were extracted from this mask."""
    return extract_components(anomalous, None, min_area=anomalous.size + 1)[1]


def ground_from_camera(points: np.ndarray, mount: Mount) -> np.ndarray:
    """(N, 3) camera optical frame points -> the ground frame G of `mount` (x forward, y left, z up, origin under the
    camera)."""
    level = np.asarray(points, np.float64).reshape(-1, 3) @ level_from_camera(mount.pitch, mount.roll).T
    return np.stack([level[:, 2], -level[:, 0], mount.height - level[:, 1]], axis=-1)


def camera_from_ground(points: np.ndarray, mount: Mount) -> np.ndarray:
    """(N, 3) ground frame G points of `mount` -> the camera optical frame (inverse of `ground_from_camera`)."""
    g = np.asarray(points, np.float64).reshape(-1, 3)
    level = np.stack([-g[:, 1], mount.height - g[:, 2], g[:, 0]], axis=-1)
    return level @ level_from_camera(mount.pitch, mount.roll)


def _front_face(obstacle: Obstacle, rays: np.ndarray, rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points of the rays at the forward distance (level z) of the obstacle's ground contact, and which rays were
    usable (pointing ahead)."""
    forward = float(rotation[2] @ obstacle.anchor)
    ahead = rays @ rotation[2]
    keep = ahead > 1e-9
    return rays[keep] * (forward / ahead[keep])[:, None], keep


def _at_depth(rays: np.ndarray, depth_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points of the rays (z = 1) at their planar depth; only the pixels with a valid depth."""
    keep = np.isfinite(depth_values) & (depth_values > 0)
    return rays[keep] * depth_values[keep, None], keep


def obstacle_points(obstacles: list[Obstacle], anomalous: np.ndarray, score: np.ndarray, camera: CameraModel,
                    mount: Mount, depth: np.ndarray | None = None) -> ObstaclePoints:
    """The anomalous pixels of each placed obstacle (ground contact or depth, see the module docstring) in the
    camera optical frame, with their hybrid score and the obstacle's id.

    `anomalous` (H, W) bool is the mask the obstacles were extracted from, `score` (H, W) the hybrid score; `camera`
    is scaled to the mask's size; `mount` is the one the obstacles were placed with; `depth` (metres, any size:
    resized by nearest neighbour) is used for obstacles placed with depth (`source == "depth"`)."""
    h, w = anomalous.shape
    camera = camera.for_image(w, h)
    if depth is not None and depth.shape != (h, w):
        depth = cv2.resize(depth, (w, h), interpolation=cv2.INTER_NEAREST)
    labels = component_labels(anomalous)
    rotation = level_from_camera(mount.pitch, mount.roll)
    parts = []
    for ob in obstacles:
        c = ob.component
        rows, cols = np.nonzero(labels[c.y0:c.y1, c.x0:c.x1] == c.label)
        rows, cols = rows + c.y0, cols + c.x0
        if rows.size != c.area:
            raise ValueError(f"obstacle {ob.id}: its component (label {c.label}, {c.area} px) is not in this mask")
        rays = pixel_rays(camera, cols, rows)
        if ob.source == "depth" and depth is not None:
            xyz, keep = _at_depth(rays, depth[rows, cols].astype(np.float64))
        elif ob.source == "ground":
            xyz, keep = _front_face(ob, rays, rotation)
        else:
            continue  # no 3D position ("image": no intrinsics)
        ids = np.full(len(xyz), ob.id % 2**32, np.uint32)
        parts.append((xyz, score[rows[keep], cols[keep]].astype(np.float32), ids))
    if not parts:
        return ObstaclePoints.empty()
    return ObstaclePoints(*(np.concatenate(column) for column in zip(*parts)))


def encode_points(points: ObstaclePoints) -> tuple[list[tuple[str, int, int]], int, bytes]:
    """PointCloud2 payload of the points: fields [(name, byte offset, PointField datatype)] (count 1 each), point
    step [bytes] and the little-endian data (`POINT_DTYPE` records, one after the other)."""
    records = np.empty(len(points), POINT_DTYPE)
    for axis, name in enumerate("xyz"):
        records[name] = points.xyz[:, axis]
    records["score"], records["obstacle_id"] = points.score, points.obstacle_id
    fields = [(name, POINT_DTYPE.fields[name][1], POINTFIELD_DATATYPES[POINT_DTYPE.fields[name][0]])
              for name in POINT_DTYPE.names]
    return fields, POINT_DTYPE.itemsize, records.tobytes()


@dataclass(frozen=True)
class GridSpec:
    """The occupancy grid's cells in the ground frame G: `length` [m] ahead of the camera, `width` [m] across,
    centred on the heading; cells of `resolution` [m] (the extents are rounded up to whole cells)."""

    resolution: float
    length: float
    width: float

    @property
    def cells(self) -> tuple[int, int]:
        """(nx, ny): cells along x (forward, the grid's columns) and y (left, its rows)."""
        return (max(1, math.ceil(self.length / self.resolution - 1e-9)),
                max(1, math.ceil(self.width / self.resolution - 1e-9)))

    @property
    def origin(self) -> tuple[float, float]:
        """(x, y) of the corner of cell (0, 0) in G: the grid starts under the camera, centred across."""
        return 0.0, -self.cells[1] * self.resolution / 2

    def cell_centres(self) -> np.ndarray:
        """(ny, nx, 3) centres of the cells on the ground (z = 0) in G."""
        nx, ny = self.cells
        x0, y0 = self.origin
        xs = x0 + (np.arange(nx) + 0.5) * self.resolution
        ys = y0 + (np.arange(ny) + 0.5) * self.resolution
        gx, gy = np.meshgrid(xs, ys)
        return np.stack([gx, gy, np.zeros_like(gx)], axis=-1)

    def cell_of(self, ground: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(column, row, inside) of ground-frame points (N, 3): the cell each lies over, and whether in the grid."""
        x0, y0 = self.origin
        col = np.floor((ground[:, 0] - x0) / self.resolution).astype(np.int64)
        row = np.floor((ground[:, 1] - y0) / self.resolution).astype(np.int64)
        nx, ny = self.cells
        return col, row, (col >= 0) & (col < nx) & (row >= 0) & (row < ny)


def visible_ground(spec: GridSpec, camera: CameraModel, mount: Mount,
                   anomalous: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(in_view, seen_ground) per cell of the ground frame of `mount`, (ny, nx) bool: the cell centre projects into
    the image (in front of the camera), and the pixel it projects onto is not anomalous."""
    h, w = anomalous.shape
    camera = camera.for_image(w, h)
    centres = camera_from_ground(spec.cell_centres().reshape(-1, 3), mount)
    z = centres[:, 2]
    ahead = z > 1e-6
    safe_z = np.where(ahead, z, 1.0)
    u = camera.fx * centres[:, 0] / safe_z + camera.cx
    v = camera.fy * centres[:, 1] / safe_z + camera.cy
    in_view = ahead & (u >= -0.5) & (u < w - 0.5) & (v >= -0.5) & (v < h - 0.5)
    iu = np.clip(np.floor(u + 0.5), 0, w - 1).astype(np.int64)
    iv = np.clip(np.floor(v + 0.5), 0, h - 1).astype(np.int64)
    seen = in_view & ~anomalous[iv, iu]
    shape = spec.cells[::-1]
    return in_view.reshape(shape), seen.reshape(shape)


def occupancy_grid(spec: GridSpec, camera: CameraModel, mount: Mount, anomalous: np.ndarray,
                   points: np.ndarray) -> np.ndarray:
    """(ny, nx) int8 grid on the ground frame of `mount`: 100 under obstacle points (camera optical frame, (N, 3)),
    0 where the view reaches the ground, -1 elsewhere (see the module docstring)."""
    _, seen = visible_ground(spec, camera, mount, anomalous)
    grid = np.where(seen, FREE, UNKNOWN).astype(np.int8)
    col, row, inside = spec.cell_of(ground_from_camera(points, mount))
    grid[row[inside], col[inside]] = OCCUPIED
    return grid
