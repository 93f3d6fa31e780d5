"""The Cityscapes label table (cityscapesScripts ``helpers/labels.py``, mcordts/cityscapesScripts) and the
look-up tables derived from it. One place for the evaluation loaders and the training code.

``LABELS`` holds all 35 official entries: the 34 ids 0..33 that occur in ``*_labelIds.png`` plus
"license plate" (id -1, trainId -1), which never occurs in label images: the official ``createLabelImage``
skips it, so its pixels keep the label of the vehicle beneath it.

trainIds: the 19 evaluation classes 0..18; every class with ``ignore_in_eval`` has trainId 255
(license plate: -1, as in the official table).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from densehybrid_ros.datasets.base import OOD_ANOMALY, OOD_INLIER, VOID


class Label(NamedTuple):
    name: str
    id: int
    train_id: int
    category: str
    category_id: int
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]


# name, id, trainId, category, catId, hasInstances, ignoreInEval, color (RGB)
LABELS: tuple[Label, ...] = (
    Label("unlabeled", 0, 255, "void", 0, False, True, (0, 0, 0)),
    Label("ego vehicle", 1, 255, "void", 0, False, True, (0, 0, 0)),
    Label("rectification border", 2, 255, "void", 0, False, True, (0, 0, 0)),
    Label("out of roi", 3, 255, "void", 0, False, True, (0, 0, 0)),
    Label("static", 4, 255, "void", 0, False, True, (0, 0, 0)),
    Label("dynamic", 5, 255, "void", 0, False, True, (111, 74, 0)),
    Label("ground", 6, 255, "void", 0, False, True, (81, 0, 81)),
    Label("road", 7, 0, "flat", 1, False, False, (128, 64, 128)),
    Label("sidewalk", 8, 1, "flat", 1, False, False, (244, 35, 232)),
    Label("parking", 9, 255, "flat", 1, False, True, (250, 170, 160)),
    Label("rail track", 10, 255, "flat", 1, False, True, (230, 150, 140)),
    Label("building", 11, 2, "construction", 2, False, False, (70, 70, 70)),
    Label("wall", 12, 3, "construction", 2, False, False, (102, 102, 156)),
    Label("fence", 13, 4, "construction", 2, False, False, (190, 153, 153)),
    Label("guard rail", 14, 255, "construction", 2, False, True, (180, 165, 180)),
    Label("bridge", 15, 255, "construction", 2, False, True, (150, 100, 100)),
    Label("tunnel", 16, 255, "construction", 2, False, True, (150, 120, 90)),
    Label("pole", 17, 5, "object", 3, False, False, (153, 153, 153)),
    Label("polegroup", 18, 255, "object", 3, False, True, (153, 153, 153)),
    Label("traffic light", 19, 6, "object", 3, False, False, (250, 170, 30)),
    Label("traffic sign", 20, 7, "object", 3, False, False, (220, 220, 0)),
    Label("vegetation", 21, 8, "nature", 4, False, False, (107, 142, 35)),
    Label("terrain", 22, 9, "nature", 4, False, False, (152, 251, 152)),
    Label("sky", 23, 10, "sky", 5, False, False, (70, 130, 180)),
    Label("person", 24, 11, "human", 6, True, False, (220, 20, 60)),
    Label("rider", 25, 12, "human", 6, True, False, (255, 0, 0)),
    Label("car", 26, 13, "vehicle", 7, True, False, (0, 0, 142)),
    Label("truck", 27, 14, "vehicle", 7, True, False, (0, 0, 70)),
    Label("bus", 28, 15, "vehicle", 7, True, False, (0, 60, 100)),
    Label("caravan", 29, 255, "vehicle", 7, True, True, (0, 0, 90)),
    Label("trailer", 30, 255, "vehicle", 7, True, True, (0, 0, 110)),
    Label("train", 31, 16, "vehicle", 7, True, False, (0, 80, 100)),
    Label("motorcycle", 32, 17, "vehicle", 7, True, False, (0, 0, 230)),
    Label("bicycle", 33, 18, "vehicle", 7, True, False, (119, 11, 32)),
    Label("license plate", -1, -1, "vehicle", 7, False, True, (0, 0, 142)),
)

NUM_TRAIN_CLASSES = 19
LABEL_IDS = tuple(label.id for label in LABELS if label.id >= 0)  # 0..33, the values of *_labelIds.png
BY_NAME = {label.name: label for label in LABELS}
BY_ID = {label.id: label for label in LABELS}

# trainId order: TRAIN_CLASS_NAMES[t] is the class with trainId t.
TRAIN_CLASS_NAMES: tuple[str, ...] = tuple(
    label.name for label in sorted((lb for lb in LABELS if 0 <= lb.train_id < 255), key=lambda lb: lb.train_id)
)
TRAIN_CLASS_COLORS: tuple[tuple[int, int, int], ...] = tuple(
    label.color for label in sorted((lb for lb in LABELS if 0 <= lb.train_id < 255), key=lambda lb: lb.train_id)
)


def _lut(pairs: dict[int, int], default: int = VOID) -> np.ndarray:
    lut = np.full(256, default, dtype=np.uint8)
    for key, value in pairs.items():
        lut[key] = value
    return lut


# labelId -> trainId (255 for every ignored id and for values that are not label ids).
ID_TO_TRAIN_ID = _lut({label.id: (label.train_id if label.train_id >= 0 else VOID)
                       for label in LABELS if label.id >= 0})

# --- void-as-unknown protocol (thesis 5.1.3, after OpenGAN, Kong & Ramanan TPAMI 2022) -------------------
# "We consider all void Cityscapes classes except 'unlabeled', 'ego vehicle', 'rectification border',
# 'out of roi' and 'license plate' as unknowns during validation." The "void classes" are the 16 classes
# with ignoreInEval (the list OpenGAN's open-set segmentation demo enumerates as its open set); license
# plate belongs to category "vehicle", so the thesis's exclusion list refers to ignoreInEval, not to the
# category "void". Unknowns: static, dynamic, ground, parking, rail track, guard rail, bridge, tunnel,
# polegroup, caravan, trailer. The excluded ids stay void (ignored by every metric).
VOID_AS_UNKNOWN_EXCLUDED = ("unlabeled", "ego vehicle", "rectification border", "out of roi", "license plate")
VOID_AS_UNKNOWN_NAMES: tuple[str, ...] = tuple(
    label.name for label in LABELS if label.ignore_in_eval and label.name not in VOID_AS_UNKNOWN_EXCLUDED
)
VOID_AS_UNKNOWN_IDS: tuple[int, ...] = tuple(BY_NAME[name].id for name in VOID_AS_UNKNOWN_NAMES)

# labelId -> unified ood (0 known class, 1 unknown, 255 void).
ID_TO_OOD_VOID_AS_UNKNOWN = _lut({
    **{label.id: OOD_INLIER for label in LABELS if 0 <= label.train_id < 255},
    **{i: OOD_ANOMALY for i in VOID_AS_UNKNOWN_IDS},
})
# labelId -> open-set semantic (trainIds 0..18, 19 = unknown, 255 void).
ID_TO_OPEN_SET_TRAIN_ID = _lut({
    **{label.id: label.train_id for label in LABELS if 0 <= label.train_id < 255},
    **{i: NUM_TRAIN_CLASSES for i in VOID_AS_UNKNOWN_IDS},
})


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a uint8 ``*_labelIds.png`` array to trainIds (0..18, 255 = void)."""
    if label_ids.dtype != np.uint8:
        raise ValueError(f"labelIds must be uint8, got {label_ids.dtype}")
    return ID_TO_TRAIN_ID[label_ids]
