"""`densehybrid-sim render`: a sim dataset on disk.

Layout (all frames share one zero-padded id):

    OUT/manifest.json              format, split, seed, size, classes, label/depth conventions, pool rule, frame ids
    OUT/rgb/000000.png             RGB uint8
    OUT/labels/000000.png          uint8: 0..K-1 classes, K = anomaly, 255 = void
    OUT/instances/000000.png       uint16: 0 = stuff, otherwise one id per object (anomalies included)
    OUT/depth/000000.npy           float32 planar depth along the optical axis in metres, +inf = sky
    OUT/meta/000000.json           CameraInfo K and P, mounting, anomalies (optical-frame position/size, pool, source)
"""
from __future__ import annotations

import json
import multiprocessing as mp
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from densehybrid_ros.classes import VOID
from densehybrid_ros.sim.anomalies import PROCEDURAL_FAMILIES, SPLIT_POOL
from densehybrid_ros.sim.frames import check_split, scene_frames
from densehybrid_ros.sim.taxonomy import ANOMALY_ID, SIM_CLASSES
from densehybrid_ros.sim.world import SimConfig, SimFrame, SimWorld

FORMAT = "densehybrid-sim"
FORMAT_VERSION = 1
SUBDIRS = ("rgb", "labels", "instances", "depth", "meta")
POOL_RULE = ("pybullet_data random_urdfs/NNN: NNN % 5 in {0,1,2} -> train-negatives, 3 -> val, 4 -> test; procedural "
             + "; ".join(f"{', '.join(f)} -> {pool}" for pool, f in PROCEDURAL_FAMILIES.items()))


def frame_name(index: int) -> str:
    return f"{index:06d}"


def write_frame(out: Path, index: int, frame: SimFrame) -> dict:
    name = frame_name(index)
    cv2.imwrite(str(out / "rgb" / f"{name}.png"), cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(out / "labels" / f"{name}.png"), frame.labels)
    cv2.imwrite(str(out / "instances" / f"{name}.png"), frame.instances)
    np.save(out / "depth" / f"{name}.npy", frame.depth)
    meta = {"id": name, **frame.meta()}
    (out / "meta" / f"{name}.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    return {"id": name, "anomalies": len([a for a in frame.anomalies if a.visible_pixels > 0])}


_WORLD: SimWorld | None = None


def _init_worker(config: SimConfig) -> None:
    global _WORLD
    _WORLD = SimWorld(config)


def _render_scene(task: tuple) -> list[dict]:
    out, seed, split, scene, first, count = task
    return [write_frame(Path(out), first + k, frame)
            for k, frame in enumerate(scene_frames(_WORLD, seed, split, scene, count))]


def render_dataset(out: Path, split: str, frames: int, seed: int, config: SimConfig = SimConfig(),
                   workers: int | None = None, progress: bool = True) -> dict:
    """Render `frames` frames of `split` into `out` (see module doc); returns the manifest."""
    check_split(split)
    config.validate()
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    out = Path(out)
    for sub in SUBDIRS:
        (out / sub).mkdir(parents=True, exist_ok=True)
    per = config.frames_per_scene
    tasks = [(str(out), seed, split, s, s * per, min(per, frames - s * per)) for s in range((frames + per - 1) // per)]
    workers = max(1, min(workers or mp.cpu_count(), len(tasks)))
    rows: list[dict] = []
    bar = tqdm(total=frames, desc=f"sim {split}", unit="frame", disable=not progress)
    if workers == 1:
        _init_worker(config)
        results = map(_render_scene, tasks)
    else:
        pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(config,))
        results = pool.imap(_render_scene, tasks)
    try:
        for chunk in results:
            rows.extend(chunk)
            bar.update(len(chunk))
    finally:
        bar.close()
        if workers > 1:
            pool.close()
            pool.join()
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "split": split,
        "anomaly_pool": SPLIT_POOL[split],
        "seed": seed,
        "size": [config.width, config.height],
        "frames": len(rows),
        "classes": [{"id": i, "name": n, "color": list(c)} for i, (n, c) in enumerate(SIM_CLASSES)],
        "anomaly_id": ANOMALY_ID,
        "void_id": VOID,
        "depth": "float32 .npy, planar z along the optical axis in metres, +inf = sky",
        "camera_frame": "optical (x right, y down, z forward); K/P as sensor_msgs/CameraInfo",
        "pool_rule": POOL_RULE,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
        "frame_ids": [r["id"] for r in rows],
        "frames_with_anomalies": sum(1 for r in rows if r["anomalies"]),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest
