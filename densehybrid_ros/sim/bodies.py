"""Static pybullet bodies: one segmentation id per object, parts coloured separately (fixed links).

Every object is a multibody with zero mass whose base and links are visual-only parts; the renderer's
segmentation mask reports the object id for all of its links, so one id = one object = one label.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pybullet as pb

from densehybrid_ros.sim.meshes import Mesh

IDENTITY_QUAT = (0.0, 0.0, 0.0, 1.0)


@dataclass
class Part:
    """One visual part: a pybullet geometry in the object's frame."""

    geom: int  # pb.GEOM_BOX / GEOM_CYLINDER / GEOM_SPHERE / GEOM_CAPSULE / GEOM_MESH
    rgba: tuple[float, float, float, float]
    pos: tuple[float, float, float] = (0.0, 0.0, 0.0)
    orn: tuple[float, float, float, float] = IDENTITY_QUAT
    half_extents: tuple[float, float, float] | None = None
    radius: float | None = None
    length: float | None = None
    mesh: Mesh | None = None
    mesh_file: str | None = None
    mesh_scale: float = 1.0
    texture: int | None = None

    def visual_shape(self, client: int) -> int:
        kw: dict = {"shapeType": self.geom, "rgbaColor": list(self.rgba), "physicsClientId": client,
                    "visualFramePosition": list(map(float, self.pos)), "visualFrameOrientation": list(self.orn)}
        if self.half_extents is not None:
            kw["halfExtents"] = list(self.half_extents)
        if self.radius is not None:
            kw["radius"] = self.radius
        if self.length is not None:
            kw["length"] = self.length
        if self.mesh is not None:
            kw.update(self.mesh.visual_kwargs())
        if self.mesh_file is not None:
            kw["fileName"] = self.mesh_file
            kw["meshScale"] = [self.mesh_scale] * 3
        shape = pb.createVisualShape(**kw)
        if shape < 0:
            raise RuntimeError(f"pybullet refused a visual shape ({self.geom})")
        return shape


@dataclass
class Body:
    id: int
    class_id: int
    kind: str
    info: dict = field(default_factory=dict)


def create_object(client: int, parts: list[Part], position, yaw: float = 0.0) -> int:
    """A static object made of `parts` (each placed by its visual frame), at `position`, heading `yaw`."""
    shapes = [part.visual_shape(client) for part in parts]
    n = len(parts) - 1
    body = pb.createMultiBody(
        baseMass=0,
        baseCollisionShapeIndex=-1,
        baseVisualShapeIndex=shapes[0],
        basePosition=list(map(float, position)),
        baseOrientation=pb.getQuaternionFromEuler((0.0, 0.0, float(yaw))),
        linkMasses=[0] * n,
        linkCollisionShapeIndices=[-1] * n,
        linkVisualShapeIndices=shapes[1:],
        linkPositions=[[0, 0, 0]] * n,
        linkOrientations=[[0, 0, 0, 1]] * n,
        linkInertialFramePositions=[[0, 0, 0]] * n,
        linkInertialFrameOrientations=[[0, 0, 0, 1]] * n,
        linkParentIndices=[0] * n,
        linkJointTypes=[pb.JOINT_FIXED] * n,
        linkJointAxis=[[0, 0, 1]] * n,
        physicsClientId=client,
    )
    for link, part in enumerate(parts):
        if part.texture is not None:
            pb.changeVisualShape(body, link - 1, textureUniqueId=part.texture, physicsClientId=client)
    return body
