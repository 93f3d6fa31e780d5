"""Colour maps for people: semantic colours, anomaly heat maps, open-set overlays (uint8 RGB). ROS-free."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from densehybrid_ros.classes import UNKNOWN_COLOR
from densehybrid_ros.perception.obstacles import Obstacle


def palette(colors: list[tuple[int, int, int]] | tuple, unknown: tuple[int, int, int] = UNKNOWN_COLOR) -> np.ndarray:
    """(256, 3) uint8 lookup table: class colours, then `unknown` at index K, black elsewhere."""
    table = np.zeros((256, 3), np.uint8)
    table[: len(colors)] = np.asarray(colors, np.uint8)
    table[len(colors)] = unknown
    return table


def colorize(ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    """uint8 id map -> RGB image through a 256-entry palette."""
    return table[ids]


def heatmap(score: np.ndarray, low: float, high: float) -> np.ndarray:
    """Float score map -> RGB heat map (inferno), scores clipped to [low, high]."""
    if not high > low:
        raise ValueError(f"heat map range must satisfy low < high, got [{low}, {high}]")
    scaled = np.clip((score - low) / (high - low), 0.0, 1.0)
    bgr = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def overlay(image: np.ndarray, ids: np.ndarray, table: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend an id map's colours over an RGB image."""
    return cv2.addWeighted(image, 1.0 - alpha, colorize(ids, table), alpha, 0.0)


BOX_COLOR = (255, 64, 0)  # RGB, obstacle boxes of `render_overlay`


def render_overlay(rgb: np.ndarray, class_ids: np.ndarray, open_set: np.ndarray | None,
                   obstacles: Sequence[Obstacle], table: np.ndarray, unknown_id: int, alpha: float) -> np.ndarray:
    """The node's ~/overlay: the open-set ids' colours (else the class ids') blended over the image; unknown pixels
    (`open_set == unknown_id`) in the unknown colour at full strength with a white outline; a box per obstacle,
    labelled "score" (a 2-D candidate, id < 0) or "#id score distance"."""
    image = overlay(rgb, open_set if open_set is not None else class_ids, table, alpha)
    if open_set is not None:
        unknown = open_set == unknown_id
        image[unknown] = table[unknown_id]
        contours, _ = cv2.findContours(unknown.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(image, contours, -1, (255, 255, 255), 1)
    for ob in obstacles:
        c = ob.component
        cv2.rectangle(image, (c.x0, c.y0), (c.x1 - 1, c.y1 - 1), BOX_COLOR, 2)
        label = f"{c.mean_score:.2f}" if ob.id < 0 else f"#{ob.id} {c.mean_score:.2f} {ob.distance:.1f}m"
        cv2.putText(image, label, (c.x0, max(c.y0 - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, BOX_COLOR, 1, cv2.LINE_AA)
    return image
