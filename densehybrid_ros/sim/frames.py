"""Frame streams of the sim world: independent dataset frames and continuous driving sequences.

Everything is a function of (seed, split, index): dataset frame i belongs to scene i // frames_per_scene
and is rendered from its own random generator, so the same seed gives identical bytes no matter how
many worker processes render it.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from densehybrid_ros.sim.anomalies import SPLIT_POOL
from densehybrid_ros.perception.camera import Mount
from densehybrid_ros.sim.world import SimFrame, SimWorld

SPLIT_CODE = {"train": 11, "val": 23, "test": 37}


def check_split(split: str) -> str:
    if split not in SPLIT_CODE:
        raise ValueError(f"unknown split {split!r}; splits: {sorted(SPLIT_CODE)}")
    return split


def scene_frames(world: SimWorld, seed: int, split: str, scene: int, count: int) -> Iterator[SimFrame]:
    """The first `count` frames of dataset scene `scene`: one street and camera, a new pose and new
    anomalies (of the split's pool) in every frame."""
    cfg = world.config
    code = SPLIT_CODE[check_split(split)]
    rng = np.random.default_rng([seed, code, scene])
    world.build_scene(rng)
    camera, mount = world.sample_camera(rng)
    for k in range(count):
        frng = np.random.default_rng([seed, code, scene, k + 1])
        jitter = dataclasses.replace(mount, pitch=mount.pitch + frng.normal(0, 0.01), roll=mount.roll + frng.normal(0, 0.01))
        y = world.ego_lateral(frng)
        x = world.free_camera_x(frng, y, 5.0, cfg.street_length - 60.0)
        world.clear_anomalies()
        if frng.random() < cfg.anomaly_frame_prob:
            n = int(frng.integers(1, cfg.max_anomalies + 1))
            lo, hi = cfg.anomaly_distance
            world.scatter_anomalies(frng, SPLIT_POOL[split], x + lo, x + hi, n)
        yield world.render(camera, jitter, x, y, frng)


def driving_sequence(world: SimWorld, seed: int, split: str, frames: int, rate_hz: float, speed_mps: float,
                     anomaly_spacing_m: float = 18.0) -> Iterator[SimFrame]:
    """A camera driving along the ego lane at `speed_mps`, one frame every 1/rate_hz seconds, past
    static anomalies of the split's pool spread along the route (one per ~`anomaly_spacing_m`)."""
    if rate_hz <= 0 or speed_mps < 0:
        raise ValueError(f"need rate > 0 and speed >= 0, got rate={rate_hz} speed={speed_mps}")
    code = SPLIT_CODE[check_split(split)]
    rng = np.random.default_rng([seed, code, 1_000_003])
    route = speed_mps * frames / rate_hz
    world.build_scene(rng, ego_lane_traffic=False, length=max(world.config.street_length, route + 80.0))
    camera, mount = world.sample_camera(rng)
    y = -world.street.road_width / 4
    x0 = 5.0
    lo, hi = world.config.anomaly_distance
    count = max(1, int(round((route + hi - lo) / anomaly_spacing_m)))
    world.scatter_anomalies(rng, SPLIT_POOL[split], x0 + lo, x0 + route + hi, count)
    for i in range(frames):
        t = i / rate_hz
        bounce = Mount(mount.height + 0.01 * np.sin(2 * np.pi * 1.3 * t), mount.pitch + 0.004 * np.sin(2 * np.pi * 0.7 * t),
                             mount.roll, mount.yaw)
        yield world.render(camera, bounce, x0 + speed_mps * t, y, np.random.default_rng([seed, code, 2_000_003, i]))
