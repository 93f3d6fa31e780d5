"""Camera geometry shared by the perception pipeline, bag evaluation and the sim: pinhole intrinsics, the camera
mount (height above flat ground, pitch, roll) and the rays and ground points they give. ROS-free.

Frames (REP 103/105 optical convention):
- camera optical frame C: x right, y down, z forward (the image header's frame_id).
- level frame L: same origin, x right, y down (along gravity), z forward, horizontal: the optical frame of
  the same camera with zero pitch and roll. The ground plane is y_L = mount.height (`Mount`).
- p_L = R(pitch, roll) @ p_C with R = Rx(-pitch) @ Rz(roll) (`level_from_camera`):
  pitch > 0 tilts the optical axis DOWN: z_C = (0, sin(pitch), cos(pitch)) in L;
  roll > 0 turns x_C towards y_C (clockwise seen from behind the camera): x_C = (cos(roll), sin(roll), 0) in L
  when pitch = 0.

Pixels: continuous image coordinates with pixel centres at integers (the CameraInfo/OpenCV convention); the
bottom edge of a component whose lowest pixel row is r is at v = r + 0.5.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

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

    def k_matrix(self) -> np.ndarray:
        """The 3x3 intrinsic matrix K (CameraInfo.k, row-major): the inverse of `from_k`."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

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


def ground_point(u: float, v: float, camera: CameraModel, mount: Mount) -> np.ndarray | None:
    """Where the ray through pixel (u, v) meets the ground plane of `mount`, in the camera optical frame; None when
    the ray does not point below the horizon."""
    ray_c = camera.ray(u, v)
    ray_l = level_from_camera(mount.pitch, mount.roll) @ ray_c
    if ray_l[1] <= 1e-9:
        return None
    return ray_c * (mount.height / ray_l[1])


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


DEFAULT_CAMERA_HEIGHT = 1.5  # [m] the node's camera_height default, used when nothing else says where the camera is


@dataclass(frozen=True)
class Mount:
    """Where a camera sits on the vehicle, in this module's convention: `height` [m] of the optical centre above flat
    ground, `pitch` [rad] (> 0 looks down), `roll` [rad] (> 0 clockwise seen from behind), `yaw` [rad] (> 0 looks
    left). The ground plane (`ground_point`) does not depend on yaw. The one mount of the node's parameters, the bag
    reader (/tf), bag evaluation and the sim."""

    height: float = DEFAULT_CAMERA_HEIGHT
    pitch: float = 0.0
    roll: float = 0.0
    yaw: float = 0.0

    def __post_init__(self) -> None:
        values = (self.height, self.pitch, self.roll, self.yaw)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"camera mount must be finite, got height={self.height} pitch={self.pitch} "
                             f"roll={self.roll} yaw={self.yaw}")
        if not self.height > 0:
            raise ValueError(f"camera height must be > 0 m, got {self.height}")

    @classmethod
    def from_pose(cls, translation: "tuple[float, float, float] | np.ndarray",
                  up_from_camera: np.ndarray) -> "Mount":
        """The mount of a camera whose optical frame sits at `translation` in a z-up ground frame (its z = height),
        rotated by `up_from_camera` (camera optical-frame vectors into that frame): pitch and roll from gravity
        (`pitch_roll_from_rotation`), yaw 0 (the ground plane does not need it)."""
        pitch, roll = pitch_roll_from_rotation(up_from_camera)
        return cls(float(translation[2]), pitch, roll)
