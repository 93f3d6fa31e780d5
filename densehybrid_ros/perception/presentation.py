"""Colour maps for people: semantic colours, anomaly heat maps, open-set overlays (uint8 RGB)."""
from __future__ import annotations

import cv2
import numpy as np

from densehybrid_ros.classes import UNKNOWN_COLOR


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
