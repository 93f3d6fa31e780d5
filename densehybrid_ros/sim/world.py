"""The sim world: a randomized street in pybullet, anomalies placed on it, and exact per-frame ground truth.

One `SimWorld` owns one pybullet DIRECT client. A scene (street + parked traffic + people + street
furniture) is built once and rendered from many camera positions; anomalies are replaced per frame
(datasets) or stay put while the camera drives past (bag sequences). Labels, instances and depth come
from the same TinyRenderer pass as the RGB, so they are pixel-exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
import pybullet as pb

from densehybrid_ros.perception.camera import Mount
from densehybrid_ros.sim import objects
from densehybrid_ros.sim.anomalies import AnomalySpec, sample_anomaly
from densehybrid_ros.sim.bodies import Part, create_object
from densehybrid_ros.sim.camera import CameraPose, SimCamera
from densehybrid_ros.sim.meshes import box, ground_quad
from densehybrid_ros.sim.taxonomy import ANOMALY_ID, class_id
from densehybrid_ros.sim.textures import TextureFiles

THING_CLASSES = {class_id(n) for n in ("person", "rider", "car", "truck", "bicycle")} | {ANOMALY_ID}
SKY = class_id("sky")


CAMERA_CLEARANCES = ("lane", "path")
PATH_CLEARANCE_M = 0.3  # "path": the least lateral gap between the camera's path and a vehicle's side
CLEAR_AHEAD_M = 25.0  # both: how far ahead of the camera the clearance holds


@dataclass(frozen=True)
class SimConfig:
    """Ranges every scene/frame samples from (uniform unless said otherwise)."""

    width: int = 512
    height: int = 256
    fov_v_deg: tuple[float, float] = (30.0, 40.0)
    camera_height: tuple[float, float] = (1.2, 1.7)
    pitch: tuple[float, float] = (-0.01, 0.07)  # rad, > 0 looks down
    roll: tuple[float, float] = (-0.03, 0.03)
    yaw: tuple[float, float] = (-0.06, 0.06)
    frames_per_scene: int = 24
    street_length: float = 260.0
    anomaly_frame_prob: float = 0.8  # frames with at least one anomaly
    max_anomalies: int = 3
    anomaly_distance: tuple[float, float] = (5.0, 50.0)  # metres ahead of the camera
    on_road_prob: float = 0.85  # otherwise on the sidewalk / verge
    # Which vehicles a dataset frame's camera keeps clear of for 25 m ahead. "lane": every vehicle within the ego
    # lane's corridor, those parked at the ego-side kerb included (the splits rendered so far). "path": only those
    # the camera's straight path would pass within 0.3 m of, as a driving car (and `driving_sequence`) does, so
    # frames show vehicles parked just ahead on the camera's side as driving does.
    camera_clearance: str = "lane"
    near: float = 0.1
    far: float = 200.0

    def validate(self) -> None:
        if self.width < 16 or self.height < 16:
            raise ValueError(f"image size must be at least 16x16, got {self.width}x{self.height}")
        for name in ("fov_v_deg", "camera_height", "pitch", "roll", "yaw", "anomaly_distance"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: lower bound {lo} exceeds upper bound {hi}")
        if not 0.0 <= self.anomaly_frame_prob <= 1.0 or not 0.0 <= self.on_road_prob <= 1.0:
            raise ValueError("probabilities must be in [0, 1]")
        if self.frames_per_scene < 1:
            raise ValueError(f"frames_per_scene must be >= 1, got {self.frames_per_scene}")
        if self.camera_clearance not in CAMERA_CLEARANCES:
            raise ValueError(f"camera_clearance must be one of {CAMERA_CLEARANCES}, got {self.camera_clearance!r}")
        if self.anomaly_distance[0] < 2.0 or self.anomaly_distance[1] > 120.0:
            raise ValueError(f"anomaly_distance must lie within [2, 120] m, got {self.anomaly_distance}")


@dataclass
class Look:
    """Per-scene appearance: light, sky, fog and sensor effects."""

    light_direction: tuple[float, float, float]
    light_color: tuple[float, float, float]
    ambient: float
    diffuse: float
    specular: float
    horizon: np.ndarray
    zenith: np.ndarray
    fog_color: np.ndarray
    visibility: float  # metres; fog factor 1 - exp(-z / visibility)
    gain: np.ndarray  # per-channel tint x exposure
    noise_sigma: float
    blur_sigma: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "Look":
        elev, azim = rng.uniform(0.3, 1.3), rng.uniform(0, 2 * math.pi)
        sun = (math.cos(elev) * math.cos(azim), math.cos(elev) * math.sin(azim), math.sin(elev))
        overcast = rng.random() < 0.35
        horizon = np.array([200, 210, 220]) * rng.uniform(0.85, 1.1)
        zenith = np.array([110, 150, 205]) if not overcast else np.array([165, 170, 180])
        zenith = zenith * rng.uniform(0.8, 1.1)
        return cls(
            light_direction=sun,
            light_color=tuple(np.clip(np.array([1.0, 0.97, 0.9]) * rng.uniform(0.9, 1.1), 0, 1.2).tolist()),
            ambient=rng.uniform(0.55, 0.7) if overcast else rng.uniform(0.38, 0.5),
            diffuse=rng.uniform(0.25, 0.4) if overcast else rng.uniform(0.5, 0.65),
            specular=rng.uniform(0.0, 0.1),
            horizon=np.clip(horizon, 0, 255),
            zenith=np.clip(zenith, 0, 255),
            fog_color=np.clip(horizon * rng.uniform(0.9, 1.0), 0, 255),
            visibility=rng.uniform(150.0, 700.0) if not overcast else rng.uniform(80.0, 300.0),
            gain=rng.uniform(0.92, 1.08, 3) * rng.uniform(0.85, 1.15),
            noise_sigma=rng.uniform(0.0, 4.0),
            blur_sigma=rng.uniform(0.3, 0.9) if rng.random() < 0.5 else 0.0,
        )


@dataclass
class AnomalyInfo:
    instance_id: int
    source: str
    pool: str
    position: list[float]  # centre of the object's own bounding box (inside it), camera optical frame (m)
    size: list[float]  # bounding-box extent along the optical x, y, z axes (m)
    depth_range: list[float]  # min/max optical z of the object's points (m)
    world_position: list[float]
    visible_pixels: int = 0

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class SimFrame:
    rgb: np.ndarray  # (H, W, 3) uint8
    labels: np.ndarray  # (H, W) uint8: 0..K-1, K = anomaly, 255 = void
    instances: np.ndarray  # (H, W) uint16: 0 = stuff, else object id + 1
    depth: np.ndarray  # (H, W) float32 planar depth (m); +inf = sky
    camera: SimCamera
    mount: Mount
    pose: CameraPose
    anomalies: list[AnomalyInfo] = field(default_factory=list)

    def meta(self) -> dict:
        cam = self.camera
        return {
            "width": cam.width,
            "height": cam.height,
            "K": cam.K().ravel().tolist(),
            "P": cam.P().ravel().tolist(),
            "fov_v_deg": cam.fov_v_deg,
            "mount": {"height": self.mount.height, "pitch": self.mount.pitch, "roll": self.mount.roll, "yaw": self.mount.yaw},
            "camera_position_world": list(self.pose.position),
            "anomalies": [a.to_dict() for a in self.anomalies],
        }


@dataclass
class _Street:
    road_width: float
    sidewalk_width: float
    occupied: list[tuple[float, float, float]]  # (x, y, radius) footprints on the road / sidewalks
    vehicles: list[tuple[float, float, float, float]] = field(default_factory=list)  # (x_lo, x_hi, y_lo, y_hi) boxes


class SimWorld:
    """A pybullet client with one street at a time. Not thread-safe; one per process."""

    def __init__(self, config: SimConfig = SimConfig()) -> None:
        config.validate()
        self.config = config
        self.client = pb.connect(pb.DIRECT)
        self._texture_files = TextureFiles()
        self.textures: dict[str, int] = {}
        self.body_class: dict[int, int] = {}
        self._anomaly_bodies: dict[int, tuple[AnomalySpec, np.ndarray, np.ndarray]] = {}  # spec, points, centre
        self._anomaly_footprints: list[tuple[float, float, float]] = []
        self.street: _Street | None = None
        self.look: Look | None = None
        self._ray_cache: dict = {}

    def close(self) -> None:
        if self.client >= 0:
            pb.disconnect(self.client)
            self.client = -1
        self._texture_files.close()

    def __enter__(self) -> "SimWorld":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- scene -------------------------------------------------------------------------------------
    def _add(self, parts: list[Part], position, yaw: float, cls: str | int) -> int:
        body = create_object(self.client, parts, position, yaw)
        self.body_class[body] = cls if isinstance(cls, int) else class_id(cls)
        return body

    def _tint(self, rng: np.random.Generator, base=(1.0, 1.0, 1.0), spread: float = 0.12) -> tuple:
        rgb = np.clip(np.asarray(base) * rng.uniform(1 - spread, 1 + spread, 3), 0, 1)
        return (float(rgb[0]), float(rgb[1]), float(rgb[2]), 1.0)

    def build_scene(self, rng: np.random.Generator, ego_lane_traffic: bool = True, length: float | None = None) -> None:
        """Reset the client and build a new random street along +x, `length` metres of it furnished (default
        `config.street_length`); no vehicles in the ego lane when a driving sequence will pass through it."""
        c = self.config
        pb.resetSimulation(physicsClientId=self.client)
        self.textures = {name: pb.loadTexture(str(path), physicsClientId=self.client)
                         for name, path in self._texture_files.paths.items()}
        self.body_class = {}
        self._anomaly_bodies = {}
        self._anomaly_footprints = []
        self.look = Look.sample(rng)
        road_w = rng.uniform(6.5, 10.0)
        side_w = rng.uniform(1.5, 4.0)
        L = c.street_length if length is None else length
        x0, x1 = -40.0, L + 200.0
        self.street = _Street(road_w, side_w, [])
        t = self.textures
        # ground: verge/terrain everywhere, road on top, lane markings just above the road
        # Terrain only beyond the sidewalks: TinyRenderer's cost follows pixels drawn, so no layer under the road.
        edge = road_w / 2 + side_w
        grass = self._tint(rng)
        for y0, y1 in ((-300.0, -edge), (edge, 300.0)):
            self._add([Part(pb.GEOM_MESH, grass, mesh=ground_quad(x0, x1, y0, y1, -0.03, 4.0), texture=t["grass"])],
                      (0, 0, 0), 0.0, "terrain")
        self._add([Part(pb.GEOM_MESH, self._tint(rng, spread=0.08), mesh=ground_quad(x0, x1, -road_w / 2, road_w / 2, 0.0, 6.0),
                        texture=t["asphalt"])], (0, 0, 0), 0.0, "road")
        self._lane_markings(rng, x0, x1, road_w)
        for side in (-1, 1):
            y_in = side * road_w / 2
            y_mid = side * (road_w / 2 + side_w / 2)
            kerb = box((x1 - x0, side_w, 0.15), tile=(2.0, 2.0))
            self._add([Part(pb.GEOM_MESH, self._tint(rng, spread=0.1), pos=((x0 + x1) / 2, y_mid, 0.075), mesh=kerb,
                            texture=t["paving"])], (0, 0, 0), 0.0, "sidewalk")
            self._roadside(rng, side, abs(y_in) + side_w, 0.0, L + 150.0)
            self._street_furniture(rng, side, road_w, side_w, L + 150.0)
        self._traffic(rng, road_w, L + 150.0, ego_lane_traffic)

    def _lane_markings(self, rng, x0: float, x1: float, road_w: float) -> None:
        white = self._tint(rng, (0.95, 0.95, 0.92), 0.04)
        width = rng.uniform(0.1, 0.16)
        parts = []
        dash, gap = rng.uniform(2.5, 4.0), rng.uniform(4.0, 8.0)
        x = x0
        while x < x1:  # centre line, dashed
            parts.append(ground_quad(x, x + dash, -width / 2, width / 2, 0.01, 4.0))
            x += dash + gap
        for side in (-1, 1):  # edge lines, solid
            y = side * (road_w / 2 - 0.3)
            parts.append(ground_quad(x0, x1, y - width / 2, y + width / 2, 0.01, 4.0))
        merged = parts[0]
        for m in parts[1:]:
            base = len(merged.vertices)
            merged.vertices += m.vertices
            merged.normals += m.normals
            merged.uvs += m.uvs
            merged.indices += [i + base for i in m.indices]
        self._add([Part(pb.GEOM_MESH, white, mesh=merged)], (0, 0, 0), 0.0, "road")

    def _roadside(self, rng, side: int, y_front: float, x_start: float, x_end: float) -> None:
        """Buildings, walls, fences, hedges, trees and open terrain in segments along one side."""
        t = self.textures
        x = x_start - 40.0
        while x < x_end:
            seg = rng.uniform(8.0, 25.0)
            setback = rng.uniform(0.0, 4.0) if rng.random() < 0.4 else 0.0
            y = side * (y_front + setback)
            kind = rng.choice(["building", "building", "building", "wall", "fence", "hedge", "trees", "open"])
            cx = x + seg / 2
            if kind == "building":
                depth, height = rng.uniform(8, 15), rng.uniform(6, 25)
                mesh = box((seg - rng.uniform(0, 1.5), depth, height), tile=(3.0, 3.0))
                self._add([Part(pb.GEOM_MESH, self._tint(rng, spread=0.2), pos=(cx, y + side * depth / 2, height / 2),
                                mesh=mesh, texture=t["facade"])], (0, 0, 0), 0.0, "building")
            elif kind in ("wall", "fence"):
                h = rng.uniform(1.0, 2.5) if kind == "wall" else rng.uniform(1.0, 2.0)
                thick = 0.3 if kind == "wall" else 0.06
                tex = t["brick"] if kind == "wall" and rng.random() < 0.6 else t["concrete" if kind == "wall" else "planks"]
                self._add([Part(pb.GEOM_MESH, self._tint(rng, spread=0.2), pos=(cx, y + side * (0.5 + thick / 2), h / 2),
                                mesh=box((seg, thick, h), tile=(2.0, 2.0)), texture=tex)], (0, 0, 0), 0.0, kind)
                if rng.random() < 0.6:
                    self._tree_row(rng, x, seg, y + side * rng.uniform(3, 6))
            elif kind == "hedge":
                h = rng.uniform(0.7, 1.6)
                self._add([Part(pb.GEOM_MESH, self._tint(rng, (0.7, 0.9, 0.6), 0.2), pos=(cx, y + side * 1.0, h / 2),
                                mesh=box((seg, 1.2, h), tile=(2.0, 2.0)), texture=t["foliage"])], (0, 0, 0), 0.0, "vegetation")
            elif kind == "trees":
                self._tree_row(rng, x, seg, y + side * rng.uniform(1.5, 5))
            x += seg

    def _tree_row(self, rng, x: float, seg: float, y: float) -> None:
        for tx in np.arange(x + rng.uniform(0, 4), x + seg, rng.uniform(4, 9)):
            self._add(objects.tree(rng, self.textures["foliage"]), (tx, y + rng.normal(0, 0.5), 0.0), 0.0, "vegetation")

    def _street_furniture(self, rng, side: int, road_w: float, side_w: float, x_end: float) -> None:
        st = self.street
        edge = side * (road_w / 2 + 0.45)
        x = rng.uniform(0, 20)
        while x < x_end:  # street lights
            self._add(objects.street_light(rng, -side), (x, edge, 0.15), 0.0, "pole")
            st.occupied.append((x, edge, 0.4))
            x += rng.uniform(20, 40)
        for x in rng.uniform(0, x_end, rng.integers(2, 7)):  # traffic signs
            post, plate, _ = objects.sign_post(rng)
            self._add(post, (x, edge, 0.15), 0.0, "pole")
            self._add(plate, (x, edge, 0.15), 0.0, "traffic sign")
            st.occupied.append((x, edge, 0.6))
        if rng.random() < 0.5:  # trees along the kerb
            self._tree_row(rng, rng.uniform(0, 30), x_end, side * (road_w / 2 + side_w * 0.6))
        for x in rng.uniform(0, x_end, rng.integers(3, 12)):  # pedestrians on the sidewalk
            y = side * (road_w / 2 + rng.uniform(0.4, side_w - 0.3))
            self._add(objects.person(rng), (x, y, 0.15), rng.uniform(0, 2 * math.pi), "person")
            st.occupied.append((x, y, 0.6))

    def _vehicle(self, parts: list[Part], position, yaw: float, kind: str) -> None:
        """Add a car, truck or bicycle and record its ground box (for `free_camera_x`)."""
        body = self._add(parts, position, yaw, kind)
        lo, hi = pb.getAABB(body, physicsClientId=self.client)
        self.street.vehicles.append((lo[0], hi[0], lo[1], hi[1]))

    def _traffic(self, rng, road_w: float, x_end: float, ego_lane: bool) -> None:
        st = self.street
        for side in (-1, 1):  # parked cars along both kerbs
            x = rng.uniform(0, 15)
            while x < x_end:
                if rng.random() < 0.45:
                    kind = "truck" if rng.random() < 0.1 else "car"
                    y = side * (road_w / 2 - (1.0 if kind == "car" else 1.3))
                    parts = objects.car(rng) if kind == "car" else objects.truck(rng)
                    self._vehicle(parts, (x, y, 0.0), (0.0 if side < 0 else math.pi) + rng.normal(0, 0.03), kind)
                    st.occupied.append((x, y, 3.0 if kind == "car" else 5.0))
                x += rng.uniform(5.5, 12)
        for x in rng.uniform(30, x_end, rng.integers(2, 8)):  # moving traffic in either lane
            lane = -1 if rng.random() < 0.4 else 1
            if lane < 0 and not ego_lane:
                continue
            kind = "truck" if rng.random() < 0.15 else "car"
            y = lane * road_w / 4 + rng.normal(0, 0.2)
            parts = objects.car(rng) if kind == "car" else objects.truck(rng)
            self._vehicle(parts, (x, y, 0.0), 0.0 if lane < 0 else math.pi, kind)
            st.occupied.append((x, y, 3.0 if kind == "car" else 5.0))
        for x in rng.uniform(20, x_end, rng.integers(0, 4) if ego_lane else 0):  # cyclists near the right kerb
            y = -(road_w / 2 - 0.7)
            yaw = rng.normal(0, 0.05)
            self._vehicle(objects.bicycle(rng), (x, y, 0.0), yaw, "bicycle")
            self._add(objects.person(rng, seated=True), (x - 0.15, y, 0.0), yaw, "rider")
            st.occupied.append((x, y, 1.2))

    # --- anomalies ---------------------------------------------------------------------------------
    def clear_anomalies(self) -> None:
        for body in self._anomaly_bodies:
            pb.removeBody(body, physicsClientId=self.client)
            self.body_class.pop(body, None)
        self._anomaly_bodies = {}
        self._anomaly_footprints = []

    def add_anomaly(self, spec: AnomalySpec, x: float, y: float, yaw: float) -> int:
        offset = np.array([x, y, self._ground_height(y)])
        body = self._add(spec.parts, offset, yaw, ANOMALY_ID)
        c, s = math.cos(yaw), math.sin(yaw)
        rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
        self._anomaly_bodies[body] = (spec, spec.points @ rot.T + offset, rot @ spec.centre + offset)
        return body

    def _ground_height(self, y: float) -> float:
        return 0.15 if abs(y) > self.street.road_width / 2 else 0.0

    def scatter_anomalies(self, rng: np.random.Generator, pool: str, x_lo: float, x_hi: float, count: int) -> None:
        """Place `count` anomalies of `pool` with x in [x_lo, x_hi], mostly on the road, not overlapping others."""
        st = self.street
        for _ in range(count):
            spec = sample_anomaly(pool, rng, self.textures)
            radius = 0.5 * float(np.linalg.norm(np.ptp(spec.points[:, :2], axis=0)))
            for _attempt in range(30):
                x = rng.uniform(x_lo, x_hi)
                if rng.random() < self.config.on_road_prob:
                    half = max(st.road_width / 2 - radius - 0.1, 0.1)
                    y = rng.uniform(-half, half)
                else:
                    side = rng.choice([-1, 1])
                    y = side * (st.road_width / 2 + rng.uniform(radius + 0.1, max(st.sidewalk_width - radius, radius + 0.2)))
                taken = st.occupied + self._anomaly_footprints
                if all((x - ox) ** 2 + (y - oy) ** 2 > (r + radius) ** 2 for ox, oy, r in taken):
                    break
            else:
                continue  # no free spot: fewer anomalies this frame
            self.add_anomaly(spec, x, y, rng.uniform(0, 2 * math.pi))
            self._anomaly_footprints.append((x, y, radius))

    # --- camera / render ---------------------------------------------------------------------------
    def sample_camera(self, rng: np.random.Generator) -> tuple[SimCamera, Mount]:
        c = self.config
        cam = SimCamera(c.width, c.height, rng.uniform(*c.fov_v_deg), c.near, c.far)
        mount = Mount(rng.uniform(*c.camera_height), rng.uniform(*c.pitch), rng.uniform(*c.roll), rng.uniform(*c.yaw))
        return cam, mount

    def ego_lateral(self, rng: np.random.Generator) -> float:
        return -self.street.road_width / 4 + rng.uniform(-0.4, 0.4)

    def free_camera_x(self, rng: np.random.Generator, y: float, lo: float, hi: float) -> float:
        """A camera x in [lo, hi] kept clear, for `CLEAR_AHEAD_M` ahead (and where it stands), of the vehicles
        `config.camera_clearance` names: "lane" every footprint in the ego lane's corridor, "path" the vehicles
        whose side comes within `PATH_CLEARANCE_M` of the camera's path. After 50 draws the last one is kept."""
        st = self.street

        def blocked(x: float) -> bool:
            if self.config.camera_clearance == "path":
                return any(x0 < x + CLEAR_AHEAD_M and x1 > x - 1.0 and y0 - PATH_CLEARANCE_M < y < y1 + PATH_CLEARANCE_M
                           for x0, x1, y0, y1 in st.vehicles)
            return any(abs(oy - y) < 1.5 + r / 3 and -r < ox - x < CLEAR_AHEAD_M + r for ox, oy, r in st.occupied)

        x = rng.uniform(lo, hi)
        for _ in range(50):
            if not blocked(x):
                break
            x = rng.uniform(lo, hi)
        return x

    def render(self, camera: SimCamera, mount: Mount, x: float, y: float, rng: np.random.Generator) -> SimFrame:
        """Render one frame from (x, y) with ground truth; `rng` drives the sensor noise only."""
        look = self.look
        pose = CameraPose.mounted(x, y, mount)
        _, _, rgba, zbuf, seg = pb.getCameraImage(
            camera.width, camera.height, pose.view_matrix(), camera.projection_matrix(),
            lightDirection=list(look.light_direction), lightColor=list(look.light_color), lightDistance=100.0,
            shadow=0, lightAmbientCoeff=look.ambient, lightDiffuseCoeff=look.diffuse,
            lightSpecularCoeff=look.specular, renderer=pb.ER_TINY_RENDERER,
            flags=pb.ER_SEGMENTATION_MASK_OBJECT_AND_LINKINDEX, physicsClientId=self.client)
        shape = (camera.height, camera.width)
        seg = np.asarray(seg, dtype=np.int64).reshape(shape)
        obj = np.where(seg >= 0, seg & 0xFFFFFF, -1)
        depth = camera.metric_depth(np.asarray(zbuf, dtype=np.float32).reshape(shape))
        labels, instances = self._labels(obj)
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(shape + (4,))[..., :3]
        rgb = self._postprocess(rgb, obj < 0, depth, camera, pose, rng)
        anomalies = self._frame_anomalies(pose, instances)
        return SimFrame(rgb, labels, instances, depth, camera, mount, pose, anomalies)

    def _labels(self, obj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = max(self.body_class, default=0) + 2
        cls_lut = np.full(n, 255, np.uint8)
        inst_lut = np.zeros(n, np.uint16)
        cls_lut[0] = SKY  # index 0 <- object id -1 (background)
        for body, cls in self.body_class.items():
            cls_lut[body + 1] = cls
            if cls in THING_CLASSES:
                inst_lut[body + 1] = body + 1
        return cls_lut[obj + 1], inst_lut[obj + 1]

    def _sky(self, camera: SimCamera, pose: CameraPose) -> np.ndarray:
        """(H, W, 3) float32 sky colour from each pixel ray's elevation (unit rays cached per camera)."""
        if camera not in self._ray_cache:
            v = np.arange(camera.height, dtype=np.float32)[:, None]
            u = np.arange(camera.width, dtype=np.float32)[None, :]
            k = camera.intrinsics
            rays = np.stack(np.broadcast_arrays((u - k.cx) / k.fx, (v - k.cy) / k.fy,
                                                np.ones_like(u)), -1).astype(np.float32)
            self._ray_cache = {camera: rays / np.linalg.norm(rays, axis=-1, keepdims=True)}
        elevation = self._ray_cache[camera] @ pose.rotation[2].astype(np.float32)
        t = np.clip(elevation / np.float32(0.45), 0.0, 1.0)[..., None]
        horizon, zenith = self.look.horizon.astype(np.float32), self.look.zenith.astype(np.float32)
        return horizon + t * (zenith - horizon)

    def _postprocess(self, rgb: np.ndarray, sky: np.ndarray, depth: np.ndarray, camera: SimCamera, pose: CameraPose,
                     rng: np.random.Generator) -> np.ndarray:
        """Paint the sky by ray elevation, add distance fog, tint, blur and sensor noise."""
        look = self.look
        img = rgb.astype(np.float32)
        img[sky] = self._sky(camera, pose)[sky]
        # fog: keep exp(-z / visibility) of the surface colour (0.7 of the painted sky), tint by gain
        keep = np.exp(depth * np.float32(-1.0 / look.visibility))
        keep[sky] = 0.7
        fog = look.fog_color.astype(np.float32)
        gain = look.gain.astype(np.float32)
        img = (img - fog) * (keep[..., None] * gain) + fog * gain
        if look.blur_sigma > 0:
            img = cv2.GaussianBlur(img, (0, 0), look.blur_sigma)
        if look.noise_sigma > 0:
            img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(look.noise_sigma)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)

    def _frame_anomalies(self, pose: CameraPose, instances: np.ndarray) -> list[AnomalyInfo]:
        counts = np.bincount(instances.ravel(), minlength=max(self._anomaly_bodies, default=0) + 2)
        out = []
        for body, (spec, world_pts, world_centre) in sorted(self._anomaly_bodies.items()):
            pts = pose.world_to_optical(world_pts)
            if pts[:, 2].max() <= self.config.near:
                continue  # behind the camera
            lo, hi = pts.min(axis=0), pts.max(axis=0)
            out.append(AnomalyInfo(
                instance_id=body + 1, source=spec.source, pool=spec.pool,
                position=pose.world_to_optical(world_centre)[0].round(5).tolist(), size=(hi - lo).round(5).tolist(),
                depth_range=[round(float(lo[2]), 5), round(float(hi[2]), 5)],
                world_position=np.round(world_centre, 5).tolist(), visible_pixels=int(counts[body + 1])))
        return out
