"""Classes of the sim world: a Cityscapes-like subset (names and colours as Cityscapes) plus anomaly and void."""
from __future__ import annotations

from densehybrid_ros.classes import CITYSCAPES_CLASSES

_NAMES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic sign", "vegetation", "terrain", "sky",
          "person", "rider", "car", "truck", "bicycle")
SIM_CLASSES: tuple[tuple[str, tuple[int, int, int]], ...] = tuple((n, dict(CITYSCAPES_CLASSES)[n]) for n in _NAMES)
CLASS_NAMES: tuple[str, ...] = tuple(name for name, _ in SIM_CLASSES)
NUM_CLASSES = len(SIM_CLASSES)  # K
ANOMALY_ID = NUM_CLASSES  # label value of anomaly pixels
ANOMALY_COLOR = (255, 140, 0)


def class_id(name: str) -> int:
    return CLASS_NAMES.index(name)


def label_palette():
    """256x3 uint8 palette for label images: classes, anomaly orange, everything else black."""
    import numpy as np

    pal = np.zeros((256, 3), np.uint8)
    for i, (_, color) in enumerate(SIM_CLASSES):
        pal[i] = color
    pal[ANOMALY_ID] = ANOMALY_COLOR
    return pal
