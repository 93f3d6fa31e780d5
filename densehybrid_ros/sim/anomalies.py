"""Anomalous objects and the fixed rule that splits them into disjoint pools.

Pools (fixed, documented in the README):
- `random_urdfs/NNN` meshes of pybullet_data: NNN % 5 in {0, 1, 2} -> `train-negatives`, 3 -> `val`, 4 -> `test`,
  keeping only usable meshes: finite vertices and the centre of the mesh's bounding box inside one of its
  convex parts (933 of 1000), so that an object's recorded centre always lies on the object.
- procedural families: crate, ball, rock -> `train-negatives`; barrel, capsule -> `val`; sofa, cone -> `test`.
`train-negatives` may be used as real negatives in training; `val` and `test` anomalies never are.

An anomaly's recorded position is the centre of its own (oriented) bounding box, a point inside the
object; its size is the axis-aligned extent in the camera optical frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pybullet as pb

from densehybrid_ros.sim.bodies import Part
from densehybrid_ros.sim.meshes import convex_hull

POOLS = ("train-negatives", "val", "test")
SPLIT_POOL = {"train": "train-negatives", "val": "val", "test": "test"}
NUM_URDFS = 1000
PROCEDURAL_FAMILIES = {
    "train-negatives": ("crate", "ball", "rock"),
    "val": ("barrel", "capsule"),
    "test": ("sofa", "cone"),
}


def urdf_pool(index: int) -> str:
    """Pool of pybullet_data's random_urdfs/NNN (the fixed split rule)."""
    return ("train-negatives", "train-negatives", "train-negatives", "val", "test")[index % 5]


def family_pool(family: str) -> str:
    for pool, families in PROCEDURAL_FAMILIES.items():
        if family in families:
            return pool
    raise ValueError(f"unknown procedural anomaly family {family!r}")


def urdf_indices(pool: str) -> list[int]:
    """random_urdfs indices of `pool` before the usability check (see `usable_urdf`)."""
    if pool not in POOLS:
        raise ValueError(f"unknown anomaly pool {pool!r}; pools: {POOLS}")
    return [i for i in range(NUM_URDFS) if urdf_pool(i) == pool]


@lru_cache(maxsize=None)
def usable_urdf(index: int) -> bool:
    """The mesh is finite and the centre of its bounding box lies inside one of its convex parts."""
    from scipy.spatial import ConvexHull, QhullError

    parts = _obj_parts(_urdf_mesh_path(index))
    verts = np.vstack(parts)
    if not np.isfinite(verts).all():
        return False
    centre = (verts.min(axis=0) + verts.max(axis=0)) / 2
    for part in parts:
        try:
            eq = ConvexHull(part).equations
        except (QhullError, ValueError):
            continue
        if np.all(eq[:, :3] @ centre + eq[:, 3] <= 1e-9):
            return True
    return False


def sample_urdf_index(pool: str, rng: np.random.Generator) -> int:
    """A uniformly drawn usable index of `pool` (rejection sampling: checks only the meshes drawn)."""
    indices = urdf_indices(pool)
    while True:
        index = indices[rng.integers(len(indices))]
        if usable_urdf(index):
            return index


@dataclass
class AnomalySpec:
    """An anomaly in its own frame: origin on the ground under its centre, x forward, z up."""

    source: str  # "random_urdfs/123" or "procedural/<family>"
    pool: str
    parts: list[Part]
    points: np.ndarray  # (N, 3) points whose bounding box is the object's (object frame)
    centre: np.ndarray  # (3,) centre of the object's own bounding box, inside the object (object frame)


@lru_cache(maxsize=None)
def _obj_parts(path: str) -> tuple[np.ndarray, ...]:
    """Vertices of each `o` group of a Wavefront OBJ file (one group if there is none)."""
    parts: list[list] = []
    for line in Path(path).read_text().splitlines():
        if line.startswith("o ") or (line.startswith("v ") and not parts):
            parts.append([])
        if line.startswith("v "):
            parts[-1].append(line.split()[1:4])
    return tuple(np.asarray(p, dtype=np.float64) for p in parts if len(p) >= 4)


def _obj_vertices(path: str) -> np.ndarray:
    return np.vstack(_obj_parts(path))


def _urdf_mesh_path(index: int) -> str:
    import pybullet_data

    return str(Path(pybullet_data.getDataPath()) / "random_urdfs" / f"{index:03d}" / f"{index:03d}.obj")


def _random_color(rng: np.random.Generator) -> tuple[float, float, float, float]:
    rgb = rng.uniform(0.05, 1.0, 3)
    if rng.random() < 0.5:  # saturated colours are common on debris, tarps, toys, cargo
        rgb[rng.integers(3)] = rng.uniform(0.0, 0.15)
    return (float(rgb[0]), float(rgb[1]), float(rgb[2]), 1.0)


def part_points(part: Part) -> np.ndarray:
    """Points in the object frame whose bounding box bounds `part` (exact for boxes and meshes)."""
    if part.geom == pb.GEOM_BOX:
        local = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]) * np.asarray(part.half_extents)
    elif part.geom == pb.GEOM_SPHERE:
        local = np.vstack([np.eye(3), -np.eye(3)]) * part.radius
    elif part.geom in (pb.GEOM_CYLINDER, pb.GEOM_CAPSULE):
        a = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        ring = np.stack([np.cos(a), np.sin(a), np.zeros_like(a)], axis=1) * part.radius
        half = part.length / 2 + (part.radius if part.geom == pb.GEOM_CAPSULE else 0.0)
        local = np.vstack([ring + (0, 0, half), ring - (0, 0, half)])
    elif part.mesh is not None:
        local = np.asarray(part.mesh.vertices)
    elif part.mesh_file is not None:
        local = _obj_vertices(part.mesh_file) * part.mesh_scale
    else:
        raise ValueError(f"no geometry on part {part}")
    rot = np.asarray(pb.getMatrixFromQuaternion(part.orn)).reshape(3, 3)
    return local @ rot.T + np.asarray(part.pos)


def _ground(parts: list[Part]) -> tuple[list[Part], np.ndarray, np.ndarray]:
    """Shift parts so that their bounding box sits on z = 0 centred on the origin; returns the parts,
    their bounding points and the shift."""
    pts = np.vstack([part_points(p) for p in parts])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    shift = np.array([-(lo[0] + hi[0]) / 2, -(lo[1] + hi[1]) / 2, -lo[2]])
    for p in parts:
        p.pos = tuple(np.asarray(p.pos) + shift)
    return parts, pts + shift, shift


def urdf_anomaly(index: int, rng: np.random.Generator) -> AnomalySpec:
    path = _urdf_mesh_path(index)
    verts = _obj_vertices(path)
    native = float(np.max(verts.max(axis=0) - verts.min(axis=0)))
    size = rng.uniform(0.35, 1.6)  # largest extent in metres (lost cargo, debris, animals, toys)
    euler = (rng.uniform(0, 2 * math.pi), rng.uniform(0, 2 * math.pi), rng.uniform(0, 2 * math.pi))
    orn = pb.getQuaternionFromEuler(euler)
    part = Part(pb.GEOM_MESH, _random_color(rng), orn=orn, mesh_file=path, mesh_scale=size / native)
    parts, pts, shift = _ground([part])
    rot = np.asarray(pb.getMatrixFromQuaternion(orn)).reshape(3, 3)
    centre = rot @ ((verts.min(axis=0) + verts.max(axis=0)) / 2 * (size / native)) + shift
    return AnomalySpec(f"random_urdfs/{index:03d}", urdf_pool(index), parts, pts, centre)


def procedural_anomaly(family: str, rng: np.random.Generator, textures: dict[str, int]) -> AnomalySpec:
    color = _random_color(rng)
    tex = textures.get(("blobs", "stripes")[rng.integers(2)]) if rng.random() < 0.5 else None
    yaw_tilt = pb.getQuaternionFromEuler((0, 0, rng.uniform(0, math.pi)))
    if family == "crate":
        he = tuple(rng.uniform(0.15, 0.6, 3))
        parts = [Part(pb.GEOM_BOX, color, orn=yaw_tilt, half_extents=he, texture=tex)]
    elif family == "ball":
        parts = [Part(pb.GEOM_SPHERE, color, radius=rng.uniform(0.15, 0.5), texture=tex)]
    elif family == "rock":
        pts = rng.normal(0, 1, (24, 3)) * rng.uniform(0.15, 0.5, 3)
        parts = [Part(pb.GEOM_MESH, color, mesh=convex_hull(pts))]
    elif family == "barrel":
        r, h = rng.uniform(0.25, 0.45), rng.uniform(0.6, 1.1)
        lying = rng.random() < 0.4
        orn = pb.getQuaternionFromEuler((math.pi / 2 if lying else 0, 0, rng.uniform(0, math.pi)))
        parts = [Part(pb.GEOM_CYLINDER, color, orn=orn, radius=r, length=h, texture=tex)]
    elif family == "capsule":
        orn = pb.getQuaternionFromEuler((math.pi / 2, 0, rng.uniform(0, math.pi)))
        parts = [Part(pb.GEOM_CAPSULE, color, orn=orn, radius=rng.uniform(0.15, 0.35), length=rng.uniform(0.4, 1.2))]
    elif family == "sofa":
        w, d = rng.uniform(0.8, 2.0), rng.uniform(0.7, 1.0)
        seat, back = rng.uniform(0.4, 0.5), rng.uniform(0.3, 0.45)
        parts = [Part(pb.GEOM_BOX, color, pos=(0, 0, seat / 2), half_extents=(d / 2, w / 2, seat / 2), texture=tex),
                 Part(pb.GEOM_BOX, color, pos=(-d / 2 + 0.1, 0, seat + back / 2), half_extents=(0.1, w / 2, back / 2))]
        for side in (-1, 1):
            parts.append(Part(pb.GEOM_BOX, color, pos=(0, side * (w / 2 - 0.08), seat + 0.1),
                              half_extents=(d / 2, 0.08, 0.1)))
        parts = [Part(p.geom, p.rgba, pos=tuple(rot_z(p.pos, yaw_tilt)), orn=yaw_tilt, half_extents=p.half_extents,
                      texture=p.texture) for p in parts]
    elif family == "cone":
        a = np.linspace(0, 2 * math.pi, 16, endpoint=False)
        r, h = rng.uniform(0.2, 0.5), rng.uniform(0.4, 1.2)
        pts = np.vstack([np.stack([r * np.cos(a), r * np.sin(a), np.zeros_like(a)], axis=1), [[0, 0, h]]])
        parts = [Part(pb.GEOM_MESH, color, mesh=convex_hull(pts))]
    else:
        raise ValueError(f"unknown procedural anomaly family {family!r}")
    parts, points, _ = _ground(parts)
    centre = (points.min(axis=0) + points.max(axis=0)) / 2  # every family's box centre lies inside it
    return AnomalySpec(f"procedural/{family}", family_pool(family), parts, points, centre)


def rot_z(v, quat) -> np.ndarray:
    return np.asarray(pb.getMatrixFromQuaternion(quat)).reshape(3, 3) @ np.asarray(v, dtype=np.float64)


def sample_anomaly(pool: str, rng: np.random.Generator, textures: dict[str, int]) -> AnomalySpec:
    """One anomaly of `pool`: 60% pybullet_data meshes, 40% procedural shapes."""
    if rng.random() < 0.6:
        return urdf_anomaly(sample_urdf_index(pool, rng), rng)
    families = PROCEDURAL_FAMILIES[pool]
    return procedural_anomaly(families[rng.integers(len(families))], rng, textures)
