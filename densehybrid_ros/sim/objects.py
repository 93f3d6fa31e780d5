"""Parts lists for the inlier objects of the street: vehicles, people, cyclists, trees, poles, signs.

Each builder returns the parts of one object in its own frame: x forward, z up, origin on the ground.
Shapes are simple on purpose; sizes follow real ones (car 3.8-4.9 m, person 1.55-1.95 m, ...).
"""
from __future__ import annotations

import math

import numpy as np
import pybullet as pb

from densehybrid_ros.sim.bodies import Part
from densehybrid_ros.sim.meshes import convex_hull, extruded_profile

AXIS_Y = pb.getQuaternionFromEuler((math.pi / 2, 0.0, 0.0))  # cylinder axis z -> y (wheels)


def _rgba(rgb, a: float = 1.0) -> tuple[float, float, float, float]:
    return (float(rgb[0]), float(rgb[1]), float(rgb[2]), a)


def vehicle_color(rng: np.random.Generator) -> tuple[float, float, float, float]:
    palette = [(0.9, 0.9, 0.9), (0.1, 0.1, 0.12), (0.55, 0.57, 0.6), (0.6, 0.08, 0.08), (0.1, 0.2, 0.5),
               (0.85, 0.75, 0.2), (0.2, 0.35, 0.25), (0.75, 0.75, 0.78)]
    base = np.array(palette[rng.integers(len(palette))]) * rng.uniform(0.85, 1.1)
    return _rgba(np.clip(base, 0, 1))


def _wheels(length: float, width: float, radius: float, axle_front: float, axle_rear: float) -> list[Part]:
    tyre = (0.06, 0.06, 0.06, 1.0)
    return [Part(pb.GEOM_CYLINDER, tyre, pos=(x, y * (width / 2 - 0.12), radius), orn=AXIS_Y, radius=radius, length=0.22)
            for x in (axle_front, axle_rear) for y in (-1, 1)]


def car(rng: np.random.Generator) -> list[Part]:
    length, width = rng.uniform(3.8, 4.9), rng.uniform(1.7, 1.9)
    height = rng.uniform(1.4, 1.65)
    r = 0.32
    hl = length / 2
    belt = height * 0.58
    lower = [(-hl, r * 0.6), (hl, r * 0.6), (hl + 0.05, belt - 0.1), (hl - 0.4, belt), (-hl + 0.15, belt), (-hl, belt - 0.15)]
    hood = hl - rng.uniform(0.9, 1.3)
    trunk = -hl + rng.uniform(0.3, 0.9)
    cabin = [(trunk, belt - 0.02), (hood, belt - 0.02), (hood - 0.7, height), (trunk + 0.5, height)]
    glass = (0.12, 0.14, 0.17, 1.0)
    color = vehicle_color(rng)
    return [Part(pb.GEOM_MESH, color, mesh=extruded_profile(np.array(lower), width)),
            Part(pb.GEOM_MESH, glass, mesh=extruded_profile(np.array(cabin), width * 0.9))] + _wheels(
        length, width, r, hl - 0.8, -hl + 0.8)


def truck(rng: np.random.Generator) -> list[Part]:
    length, width = rng.uniform(6.5, 10.0), rng.uniform(2.3, 2.55)
    height = rng.uniform(3.0, 3.8)
    cab_len = 2.0
    hl = length / 2
    color = vehicle_color(rng)
    cargo_color = _rgba(np.clip(np.array([0.85, 0.85, 0.85]) * rng.uniform(0.7, 1.1), 0, 1))
    cab = Part(pb.GEOM_BOX, color, pos=(hl - cab_len / 2, 0, 0.5 + 1.3), half_extents=(cab_len / 2, width / 2, 1.3))
    box = Part(pb.GEOM_BOX, cargo_color, pos=(-cab_len / 2 - 0.1, 0, 0.6 + (height - 0.6) / 2),
               half_extents=((length - cab_len) / 2 - 0.1, width / 2, (height - 0.6) / 2))
    screen = Part(pb.GEOM_BOX, (0.12, 0.14, 0.17, 1.0), pos=(hl + 0.01, 0, 2.2), half_extents=(0.02, width / 2 - 0.15, 0.45))
    return [cab, box, screen] + _wheels(length, width, 0.5, hl - 1.0, -hl + 1.5)


def _clothes(rng: np.random.Generator) -> tuple:
    return _rgba(rng.uniform(0.05, 0.9, 3))


def person(rng: np.random.Generator, seated: bool = False) -> list[Part]:
    """Articulated-looking pedestrian (legs, torso, arms, head); `seated` for a cyclist's rider."""
    h = rng.uniform(1.55, 1.95)
    skin = _rgba(np.array([0.95, 0.75, 0.6]) * rng.uniform(0.45, 1.0))
    top, bottom = _clothes(rng), _clothes(rng)
    leg_len, torso = 0.47 * h, 0.3 * h
    hip = leg_len if not seated else 0.95
    stride = rng.uniform(-0.35, 0.35)
    parts: list[Part] = []
    parts.append(Part(pb.GEOM_BOX, top, pos=(0, 0, hip + torso / 2), half_extents=(0.11, 0.2, torso / 2)))
    for side in (-1, 1):
        if seated:
            thigh = pb.getQuaternionFromEuler((0, math.pi / 2.4, 0))
            parts.append(Part(pb.GEOM_CYLINDER, bottom, pos=(0.2, side * 0.1, hip - 0.1), orn=thigh, radius=0.07, length=0.45))
            parts.append(Part(pb.GEOM_CYLINDER, bottom, pos=(0.35, side * 0.1, hip - 0.4), radius=0.06, length=0.5))
        else:
            swing = pb.getQuaternionFromEuler((0, side * stride, 0))
            parts.append(Part(pb.GEOM_CYLINDER, bottom, pos=(side * stride * leg_len / 2, side * 0.1, leg_len / 2),
                              orn=swing, radius=0.075, length=leg_len))
        arm = pb.getQuaternionFromEuler((0, (-0.9 if seated else -side * stride), 0))
        parts.append(Part(pb.GEOM_CYLINDER, top, pos=(0.12 if seated else 0, side * 0.27, hip + torso * 0.55),
                          orn=arm, radius=0.05, length=0.6 * torso / 0.3 * 0.3 + 0.25))
    parts.append(Part(pb.GEOM_SPHERE, skin, pos=(0, 0, hip + torso + 0.13), radius=0.11))
    return parts


def bicycle(rng: np.random.Generator) -> list[Part]:
    frame = _rgba(rng.uniform(0.1, 0.9, 3))
    tyre = (0.05, 0.05, 0.05, 1.0)
    r = 0.34
    wheels = [Part(pb.GEOM_CYLINDER, tyre, pos=(x, 0, r), orn=AXIS_Y, radius=r, length=0.05) for x in (-0.55, 0.55)]
    tube = pb.getQuaternionFromEuler((0, math.pi / 2, 0))
    return [Part(pb.GEOM_BOX, frame, pos=(0, 0, r + 0.2), half_extents=(0.5, 0.03, 0.03))] + wheels + [
        Part(pb.GEOM_CYLINDER, frame, pos=(0.0, 0, r + 0.35), orn=tube, radius=0.025, length=0.9),
        Part(pb.GEOM_BOX, (0.1, 0.1, 0.1, 1.0), pos=(-0.15, 0, 0.95), half_extents=(0.12, 0.06, 0.03)),
        Part(pb.GEOM_BOX, frame, pos=(0.5, 0, 1.0), half_extents=(0.03, 0.3, 0.02))]


def tree(rng: np.random.Generator, foliage_texture: int | None) -> list[Part]:
    trunk_h = rng.uniform(1.8, 3.5)
    trunk = Part(pb.GEOM_CYLINDER, _rgba(np.array([0.4, 0.3, 0.2]) * rng.uniform(0.7, 1.2)), pos=(0, 0, trunk_h / 2),
                 radius=rng.uniform(0.1, 0.22), length=trunk_h)
    green = _rgba(np.array([0.55, 0.8, 0.4]) * rng.uniform(0.6, 1.05))
    size = rng.uniform(1.2, 2.6)
    # One irregular crown (convex hull of a point cloud): overlapping spheres would cost overdraw.
    blob = rng.normal(0.0, 1.0, (40, 3))
    blob = blob / np.linalg.norm(blob, axis=1, keepdims=True) * rng.uniform(0.75, 1.0, (40, 1)) * size
    blob[:, 2] *= rng.uniform(0.8, 1.3)
    crowns = [Part(pb.GEOM_MESH, green, pos=(0, 0, trunk_h + size * 0.8), mesh=convex_hull(blob),
                   texture=foliage_texture)]
    return [trunk] + crowns


def street_light(rng: np.random.Generator, towards_road: float) -> list[Part]:
    """Pole with an arm reaching over the road (`towards_road` = +1 or -1 in y)."""
    h = rng.uniform(5.0, 8.0)
    grey = _rgba(np.full(3, rng.uniform(0.35, 0.6)))
    arm_len = rng.uniform(0.8, 1.8)
    return [Part(pb.GEOM_CYLINDER, grey, pos=(0, 0, h / 2), radius=rng.uniform(0.07, 0.12), length=h),
            Part(pb.GEOM_BOX, grey, pos=(0, towards_road * arm_len / 2, h - 0.05), half_extents=(0.05, arm_len / 2, 0.04)),
            Part(pb.GEOM_BOX, (0.9, 0.9, 0.85, 1.0), pos=(0, towards_road * arm_len, h - 0.1), half_extents=(0.25, 0.12, 0.06))]


def sign_post(rng: np.random.Generator) -> tuple[list[Part], list[Part], float]:
    """(pole parts, sign-plate parts, plate height). Plates face -x (oncoming traffic)."""
    h = rng.uniform(2.2, 3.0)
    post = [Part(pb.GEOM_CYLINDER, (0.6, 0.6, 0.62, 1.0), pos=(0, 0, h / 2), radius=0.04, length=h)]
    colors = [(0.8, 0.1, 0.1, 1.0), (0.1, 0.25, 0.7, 1.0), (0.95, 0.95, 0.95, 1.0), (0.95, 0.8, 0.1, 1.0)]
    color = colors[rng.integers(len(colors))]
    size = rng.uniform(0.3, 0.45)
    face = pb.getQuaternionFromEuler((0, math.pi / 2, 0))
    if rng.random() < 0.5:
        plate = Part(pb.GEOM_CYLINDER, color, pos=(-0.06, 0, h + size * 0.9), orn=face, radius=size, length=0.03)
    else:
        plate = Part(pb.GEOM_BOX, color, pos=(-0.06, 0, h + size * 0.9), half_extents=(0.015, size, size))
    return post, [plate], h + size * 0.9
