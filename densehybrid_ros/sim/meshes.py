"""Triangle meshes with tiled UVs and normals for pybullet GEOM_MESH visual shapes.

TinyRenderer draws one-sided, counter-clockwise triangles seen from outside, needs explicit normals for
shading, and stretches a texture once over GEOM_BOX faces; explicit UVs in metres / tile size give real
tiling (../shared/docs/sim-notes.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Mesh:
    vertices: list = field(default_factory=list)
    normals: list = field(default_factory=list)
    uvs: list = field(default_factory=list)
    indices: list = field(default_factory=list)

    def add_quad(self, corners: np.ndarray, tile: tuple[float, float] | None, uv_origin=(0.0, 0.0),
                 inside: np.ndarray | None = None) -> None:
        """Quad from 4 corners (CCW seen from outside, or flipped to face away from the point `inside`);
        UVs repeat every `tile` metres (None: stretched 0..1)."""
        c = _facing(np.asarray(corners, dtype=np.float64), inside)
        n = np.cross(c[1] - c[0], c[2] - c[0])
        n = n / np.linalg.norm(n)
        du, dv = np.linalg.norm(c[1] - c[0]), np.linalg.norm(c[3] - c[0])
        if tile is None:
            uv = [(0, 0), (1, 0), (1, 1), (0, 1)]
        else:
            u0, v0 = uv_origin
            uv = [(u0, v0), (u0 + du / tile[0], v0), (u0 + du / tile[0], v0 + dv / tile[1]), (u0, v0 + dv / tile[1])]
        base = len(self.vertices)
        self.vertices.extend(c.tolist())
        self.normals.extend([n.tolist()] * 4)
        self.uvs.extend([list(map(float, t)) for t in uv])
        self.indices.extend([base, base + 1, base + 2, base, base + 2, base + 3])

    def add_triangle(self, corners: np.ndarray, inside: np.ndarray | None = None) -> None:
        c = _facing(np.asarray(corners, dtype=np.float64), inside)
        n = np.cross(c[1] - c[0], c[2] - c[0])
        n = n / np.linalg.norm(n)
        base = len(self.vertices)
        self.vertices.extend(c.tolist())
        self.normals.extend([n.tolist()] * 3)
        self.uvs.extend([[0.0, 0.0], [1.0, 0.0], [0.5, 1.0]])
        self.indices.extend([base, base + 1, base + 2])

    def visual_kwargs(self) -> dict:
        return {"vertices": self.vertices, "indices": self.indices, "uvs": self.uvs, "normals": self.normals}


def _facing(corners: np.ndarray, inside: np.ndarray | None) -> np.ndarray:
    """Reverse the winding when the face's normal points towards `inside` (a point inside a convex solid)."""
    if inside is None:
        return corners
    n = np.cross(corners[1] - corners[0], corners[2] - corners[0])
    if np.dot(n, corners.mean(axis=0) - np.asarray(inside, dtype=np.float64)) < 0:
        return corners[::-1].copy()
    return corners


def ground_quad(x0: float, x1: float, y0: float, y1: float, z: float, tile: float) -> Mesh:
    """Horizontal rectangle facing up."""
    m = Mesh()
    m.add_quad([(x0, y0, z), (x1, y0, z), (x1, y1, z), (x0, y1, z)], (tile, tile), uv_origin=(x0 / tile, y0 / tile))
    return m


def box(size: tuple[float, float, float], tile: tuple[float, float] | None = None, bottom: bool = False) -> Mesh:
    """Axis-aligned box centred at the origin; side faces tiled by `tile` (u along the face, v up)."""
    hx, hy, hz = (s / 2.0 for s in size)
    m = Mesh()
    p = lambda x, y, z: (x * hx, y * hy, z * hz)  # noqa: E731
    o = np.zeros(3)
    m.add_quad([p(1, -1, -1), p(1, 1, -1), p(1, 1, 1), p(1, -1, 1)], tile, inside=o)  # +x
    m.add_quad([p(-1, 1, -1), p(-1, -1, -1), p(-1, -1, 1), p(-1, 1, 1)], tile, inside=o)  # -x
    m.add_quad([p(1, 1, -1), p(-1, 1, -1), p(-1, 1, 1), p(1, 1, 1)], tile, inside=o)  # +y
    m.add_quad([p(-1, -1, -1), p(1, -1, -1), p(1, -1, 1), p(-1, -1, 1)], tile, inside=o)  # -y
    m.add_quad([p(-1, -1, 1), p(1, -1, 1), p(1, 1, 1), p(-1, 1, 1)], tile, inside=o)  # top
    if bottom:
        m.add_quad([p(-1, 1, -1), p(1, 1, -1), p(1, -1, -1), p(-1, -1, -1)], tile, inside=o)
    return m


def extruded_profile(profile_xz: np.ndarray, width: float) -> Mesh:
    """Extrude a convex side profile (points in the x-z plane, any winding) along y, centred on y = 0."""
    prof = np.asarray(profile_xz, dtype=np.float64)
    hw = width / 2.0
    m = Mesh()
    n = len(prof)
    centre = prof.mean(axis=0)
    inside = np.array([centre[0], 0.0, centre[1]])
    for i in range(n):  # side fans, then the band between the two sides
        a, b = prof[i], prof[(i + 1) % n]
        m.add_triangle([(centre[0], hw, centre[1]), (b[0], hw, b[1]), (a[0], hw, a[1])], inside)
        m.add_triangle([(centre[0], -hw, centre[1]), (a[0], -hw, a[1]), (b[0], -hw, b[1])], inside)
        m.add_quad([(a[0], -hw, a[1]), (b[0], -hw, b[1]), (b[0], hw, b[1]), (a[0], hw, a[1])], None, inside=inside)
    return m


def convex_hull(points: np.ndarray) -> Mesh:
    """Convex hull of 3D points with outward-facing, flat-shaded triangles (a rock / crown / cone)."""
    from scipy.spatial import ConvexHull

    pts = np.asarray(points, dtype=np.float64)
    hull = ConvexHull(pts)
    tris = pts[hull.simplices]  # (F, 3, 3)
    normals = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    inward = np.einsum("ij,ij->i", normals, tris.mean(axis=1) - pts[hull.vertices].mean(axis=0)) < 0
    tris[inward] = tris[inward][:, ::-1]
    normals[inward] *= -1
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    m = Mesh()
    m.vertices = tris.reshape(-1, 3).tolist()
    m.normals = np.repeat(normals, 3, axis=0).tolist()
    m.uvs = np.tile([[0.0, 0.0], [1.0, 0.0], [0.5, 1.0]], (len(tris), 1)).tolist()
    m.indices = list(range(3 * len(tris)))
    return m
