"""Classes of the sim world: a Cityscapes-like subset (names and colours as Cityscapes) plus anomaly and void."""
from __future__ import annotations

SIM_CLASSES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("road", (128, 64, 128)),
    ("sidewalk", (244, 35, 232)),
    ("building", (70, 70, 70)),
    ("wall", (102, 102, 156)),
    ("fence", (190, 153, 153)),
    ("pole", (153, 153, 153)),
    ("traffic sign", (220, 220, 0)),
    ("vegetation", (107, 142, 35)),
    ("terrain", (152, 251, 152)),
    ("sky", (70, 130, 180)),
    ("person", (220, 20, 60)),
    ("rider", (255, 0, 0)),
    ("car", (0, 0, 142)),
    ("truck", (0, 0, 70)),
    ("bicycle", (119, 11, 32)),
)
CLASS_NAMES: tuple[str, ...] = tuple(name for name, _ in SIM_CLASSES)
NUM_CLASSES = len(SIM_CLASSES)  # K
ANOMALY_ID = NUM_CLASSES  # label value of anomaly pixels
VOID_ID = 255
ANOMALY_COLOR = (255, 140, 0)


def class_id(name: str) -> int:
    return CLASS_NAMES.index(name)


def label_palette() -> "numpy.ndarray":  # noqa: F821
    """256x3 uint8 palette for label images: classes, anomaly orange, everything else black."""
    import numpy as np

    pal = np.zeros((256, 3), np.uint8)
    for i, (_, color) in enumerate(SIM_CLASSES):
        pal[i] = color
    pal[ANOMALY_ID] = ANOMALY_COLOR
    return pal
