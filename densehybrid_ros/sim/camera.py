"""Pinhole camera of the sim world: mounting pose, intrinsics, pybullet matrices, depth conversion.

Frames: the world is z-up with the road running along +x. The camera optical frame is the ROS/OpenCV
one (x right, y down, z forward). Mounting: the project's one `Mount` (densehybrid_ros/perception/camera.py):
`height` above the road (m), `pitch` > 0 tilts the optical axis DOWN towards the road, `roll` > 0 turns the
camera clockwise as seen from behind it (its right side dips, so the scene turns counter-clockwise in the
image), `yaw` > 0 turns left (towards +y). Intrinsics: the one `CameraModel` of the same module.

Intrinsics were measured for pybullet's TinyRenderer (../shared/docs/sim-notes.md, re-checked in
test/test_sim_world.py): fy = H / (2 tan(fov_v/2)), fx = fy (square pixels), cx = W/2, cy = H/2 - 1,
with integer pixel indices at pixel centres (OpenCV/ROS CameraInfo convention).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from densehybrid_ros.perception.camera import CameraModel, Mount


@dataclass(frozen=True)
class SimCamera:
    """The sim's render camera: a pinhole of vertical field of view `fov_v_deg` with OpenGL clipping planes. Its
    intrinsics are the project's one `CameraModel` (what CameraInfo carries; `intrinsics`)."""

    width: int
    height: int
    fov_v_deg: float
    near: float = 0.1
    far: float = 200.0

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera size must be positive, got {self.width}x{self.height}")
        if not 10.0 <= self.fov_v_deg <= 120.0:
            raise ValueError(f"vertical field of view must be in [10, 120] degrees, got {self.fov_v_deg}")
        if not 0 < self.near < self.far:
            raise ValueError(f"need 0 < near < far, got near={self.near} far={self.far}")

    @property
    def intrinsics(self) -> CameraModel:
        """fy = H / (2 tan(fov_v / 2)), fx = fy (square pixels), cx = W / 2, cy = H / 2 - 1 (measured, module doc)."""
        fy = self.height / (2.0 * math.tan(math.radians(self.fov_v_deg) / 2.0))
        return CameraModel(fy, fy, self.width / 2.0, self.height / 2.0 - 1.0, self.width, self.height)

    def K(self) -> np.ndarray:
        """3x3 intrinsic matrix (CameraInfo.k, row-major)."""
        return self.intrinsics.k_matrix()

    def P(self) -> np.ndarray:
        """3x4 projection matrix of a monocular camera (CameraInfo.p)."""
        return np.hstack([self.K(), np.zeros((3, 1))])

    def projection_matrix(self) -> list[float]:
        import pybullet

        return list(pybullet.computeProjectionMatrixFOV(self.fov_v_deg, self.width / self.height, self.near, self.far))

    def metric_depth(self, zbuffer: np.ndarray) -> np.ndarray:
        """OpenGL depth buffer in [0, 1] -> planar depth z (m) along the optical axis; background -> inf."""
        d = zbuffer.astype(np.float64)
        z = self.far * self.near / (self.far - (self.far - self.near) * d)
        z[d >= 1.0] = np.inf
        return z.astype(np.float32)

    def project(self, points_optical: np.ndarray) -> np.ndarray:
        """(N, 3) points in the optical frame -> (N, 2) pixel coordinates (u, v)."""
        pts = np.asarray(points_optical, dtype=np.float64)
        k = self.intrinsics
        return np.stack([k.fx * pts[:, 0] / pts[:, 2] + k.cx, k.fy * pts[:, 1] / pts[:, 2] + k.cy], axis=1)

    def back_project(self, depth: np.ndarray) -> np.ndarray:
        """Planar depth (H, W) -> (H, W, 3) points in the optical frame."""
        v, u = np.mgrid[0 : depth.shape[0], 0 : depth.shape[1]].astype(np.float64)
        z = depth.astype(np.float64)
        k = self.intrinsics
        return np.stack([(u - k.cx) * z / k.fx, (v - k.cy) * z / k.fy, z], axis=-1)


def rotation_world_from_optical(mount: Mount) -> np.ndarray:
    """3x3 rotation taking optical-frame vectors (x right, y down, z forward) to the z-up world."""
    # Level camera looking along +x: optical z -> world +x, optical x -> world -y, optical y -> world -z.
    base = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    # Roll about the optical axis, then pitch down about optical x, then yaw about world z.
    cr, sr = math.cos(mount.roll), math.sin(mount.roll)
    roll = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
    cp, sp = math.cos(mount.pitch), math.sin(mount.pitch)
    # +pitch turns the optical axis (z) towards +y (image down), i.e. the camera looks down at the road
    pitch = np.array([[1.0, 0.0, 0.0], [0.0, cp, sp], [0.0, -sp, cp]])
    cyw, syw = math.cos(mount.yaw), math.sin(mount.yaw)
    yaw = np.array([[cyw, -syw, 0.0], [syw, cyw, 0.0], [0.0, 0.0, 1.0]])
    return yaw @ base @ pitch @ roll


@dataclass(frozen=True)
class CameraPose:
    """Where the camera is: optical centre in the world and its orientation."""

    position: tuple[float, float, float]
    rotation: np.ndarray  # world_from_optical

    @classmethod
    def mounted(cls, x: float, y: float, mount: Mount) -> "CameraPose":
        return cls((x, y, mount.height), rotation_world_from_optical(mount))

    def view_matrix(self) -> list[float]:
        import pybullet

        eye = np.asarray(self.position, dtype=np.float64)
        forward = self.rotation[:, 2]
        up = -self.rotation[:, 1]
        return list(pybullet.computeViewMatrix(eye.tolist(), (eye + forward).tolist(), up.tolist()))

    def footprint_transform(self) -> tuple[tuple[float, float, float], tuple[float, float, float, float]]:
        """(translation, quaternion x y z w) of the optical frame in `base_footprint`: on the road under the
        camera, x forward along the camera's heading, z up (REP 105). Sim bags publish it on /tf."""
        from scipy.spatial.transform import Rotation

        forward = self.rotation[:, 2]
        heading = math.atan2(forward[1], forward[0])
        c, s = math.cos(heading), math.sin(heading)
        footprint_from_world = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
        q = Rotation.from_matrix(footprint_from_world @ self.rotation).as_quat()
        return (0.0, 0.0, float(self.position[2])), tuple(float(v) for v in q)

    def world_to_optical(self, points_world: np.ndarray) -> np.ndarray:
        pts = np.asarray(points_world, dtype=np.float64).reshape(-1, 3)
        return (pts - np.asarray(self.position)) @ self.rotation

    def optical_to_world(self, points_optical: np.ndarray) -> np.ndarray:
        pts = np.asarray(points_optical, dtype=np.float64)
        return pts @ self.rotation.T + np.asarray(self.position)
