"""`densehybrid-sim gallery`: a PNG grid of sim frames (RGB | labels | depth | anomalies)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from densehybrid_ros.sim.frames import scene_frames
from densehybrid_ros.sim.taxonomy import ANOMALY_ID, label_palette
from densehybrid_ros.sim.world import SimConfig, SimFrame, SimWorld

COLUMNS = ("RGB", "labels", "depth (log, 2-150 m)", "anomalies + projected centres")


def depth_image(depth: np.ndarray, lo: float = 2.0, hi: float = 150.0) -> np.ndarray:
    z = np.clip(np.where(np.isfinite(depth), depth, hi), lo, hi)
    t = (np.log(z) - np.log(lo)) / (np.log(hi) - np.log(lo))
    return cv2.applyColorMap((255 * (1 - t)).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1]


def anomaly_image(frame: SimFrame) -> np.ndarray:
    img = (frame.rgb.astype(np.float32) * 0.45).astype(np.uint8)
    mask = frame.labels == ANOMALY_ID
    img[mask] = (255, 140, 0)
    for a in frame.anomalies:
        if a.visible_pixels == 0:
            continue
        u, v = frame.camera.project(np.array([a.position]))[0]
        cv2.drawMarker(img, (int(round(u)), int(round(v))), (0, 255, 255), cv2.MARKER_CROSS, 9, 1)
        cv2.putText(img, f"{a.position[2]:.0f}m", (int(u) + 4, int(v) - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1)
    return img


def frame_row(frame: SimFrame) -> np.ndarray:
    return np.hstack([frame.rgb, label_palette()[frame.labels], depth_image(frame.depth), anomaly_image(frame)])


def write_gallery(out: Path, rows: int = 4, seed: int = 0, split: str = "test", config: SimConfig = SimConfig()) -> Path:
    """Render `rows` test frames that contain visible anomalies (from different scenes) and write the grid."""
    images = []
    with SimWorld(config) as world:
        scene = 0
        while len(images) < rows and scene < rows * 10:
            for frame in scene_frames(world, seed, split, scene, 4):
                if any(a.visible_pixels > 30 for a in frame.anomalies):
                    images.append(frame_row(frame))
                    break
            scene += 1
    if not images:
        raise RuntimeError("no frame with a visible anomaly was rendered")
    header = np.full((22, images[0].shape[1], 3), 255, np.uint8)
    for i, title in enumerate(COLUMNS):
        cv2.putText(header, title, (i * config.width + 6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    grid = np.vstack([header] + images)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    return out
