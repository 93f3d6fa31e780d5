"""StreetHazards (Hendrycks et al., "A Benchmark for Anomaly Segmentation", 2019), as distributed in
``streethazards_train.tar`` / ``streethazards_test.tar`` (github.com/hendrycks/anomaly-seg).

Layout (ROOT = the folder the tars were unpacked into; ROOT may also be the ``test`` folder itself)
---------------------------------------------------------------------------------------------------
::

    ROOT/test/images/test/{t5,t6}/<n>.png               RGB(A) frames, 1280x720
    ROOT/test/annotations/test/{t5,t6}/<n>.png          uint8 class indices, same file name
    ROOT/train/images/training/<town>/<n>.png           (t1..t3)
    ROOT/train/annotations/training/<town>/<n>.png
    ROOT/train/images/validation/<town>/<n>.png         (t4)
    ROOT/train/annotations/validation/<town>/<n>.png

Label encoding (verified against hendrycks/anomaly-seg ``create_dataset.py`` colour list, ``dataset.py`` which
subtracts 1 from the file values, and ``defaults.py`` ``OOD.out_labels = 13`` after that shift; and against
matejgrcic/DenseHybrid ``streethazards_test.py``): file values are 1-based,

    1 unlabeled, 2 building, 3 fence, 4 other, 5 pedestrian, 6 pole, 7 road line, 8 road, 9 sidewalk,
    10 vegetation, 11 car, 12 wall, 13 traffic sign, 14 anomaly   (0 does not occur; treated as void)

Unified outputs follow the DenseHybrid authors' StreetHazards code (the numbers this project compares with):
``other`` is ignored (void in both maps), ``unlabeled`` is a trained class (as in Hendrycks' training, which only
ignores file value 0), giving K = 12 known classes (:data:`CLASSES`, order below) and ``semantic`` K = 12 for the
anomaly. ``ood``: 14 -> 1, ``other``/0 -> 255, every other class -> 0. Any value above 14 is a DatasetError.
The 13 non-anomaly classes of the file are listed in :data:`RAW_CLASSES` for other protocols
(Hendrycks' own evaluation counts ``other`` as inlier).

Splits: ``all`` (default: t5 + t6), ``t5``, ``t6`` (the two test towns, the folds of the open-mIoU protocol),
``training``, ``validation``. Names: ``<town>_<file stem>`` (e.g. ``t5_300``), sorted by town then stem
(numeric stems in numeric order).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from densehybrid_ros.datasets._common import (
    Item, ListDataset, check_same_size, read_label, read_rgb, require_dir, resolve_split,
)
from densehybrid_ros.datasets.base import OOD_ANOMALY, OOD_INLIER, VOID, DatasetError, EvalSample, register

# File values 1..13 (index i holds file value i + 1), then 14 = anomaly.
RAW_CLASSES: tuple[str, ...] = (
    "unlabeled", "building", "fence", "other", "pedestrian", "pole", "road line", "road", "sidewalk",
    "vegetation", "car", "wall", "traffic sign",
)
RAW_ANOMALY = 14
RAW_OTHER = 4

CLASSES: tuple[str, ...] = tuple(name for name in RAW_CLASSES if name != "other")  # K = 12
NUM_CLASSES = len(CLASSES)

SEMANTIC_LUT = np.full(256, VOID, dtype=np.uint8)
OOD_LUT = np.full(256, VOID, dtype=np.uint8)
for _raw, _name in enumerate(RAW_CLASSES, start=1):
    if _raw != RAW_OTHER:
        SEMANTIC_LUT[_raw] = CLASSES.index(_name)
        OOD_LUT[_raw] = OOD_INLIER
SEMANTIC_LUT[RAW_ANOMALY] = NUM_CLASSES
OOD_LUT[RAW_ANOMALY] = OOD_ANOMALY
del _raw, _name

TEST_TOWNS = ("t5", "t6")
SPLITS = ("all", "t5", "t6", "training", "validation")


def _stem_key(path: Path) -> tuple:
    stem = path.stem
    return (0, int(stem), stem) if stem.isdigit() else (1, 0, stem)


class StreetHazardsDataset(ListDataset):
    kind = "streethazards"
    classes = CLASSES

    def __init__(self, root: Path, split: str | None):
        root = Path(root)
        split = resolve_split(self.kind, split, SPLITS, "all")
        if split in ("training", "validation"):
            base, sub, towns = root / "train", split, None
        else:
            base = root / "test"
            if not (base / "images" / "test").is_dir() and (root / "images" / "test").is_dir():
                base = root  # ROOT is the unpacked "test" folder itself
            sub, towns = "test", (TEST_TOWNS if split == "all" else (split,))
        image_root = require_dir(self.kind, base / "images" / sub, "image")
        label_root = require_dir(self.kind, base / "annotations" / sub, "annotation")
        if towns is None:
            towns = tuple(sorted(p.name for p in image_root.iterdir() if p.is_dir()))
        items = []
        for town in towns:
            town_dir = require_dir(self.kind, image_root / town, f"town {town!r} image")
            for image in sorted(town_dir.glob("*.png"), key=_stem_key):
                items.append(Item(name=f"{town}_{image.stem}", image=image, label=label_root / town / image.name,
                                  extras={"town": town}))
        if not items:
            raise DatasetError(f"{self.kind}: no .png frames under {image_root}/<town>/ for split {split!r}")
        super().__init__(root, split, items)

    def load(self, item: Item) -> EvalSample:
        image = read_rgb(self.kind, item.image)
        raw = read_label(self.kind, item.label, "annotation")
        check_same_size(self.kind, image, raw, item.label, "annotation")
        top = int(raw.max())
        if top > RAW_ANOMALY:
            raise DatasetError(f"{self.kind}: annotation {item.label} contains value {top}, "
                               f"expected 1..{RAW_ANOMALY}")
        return EvalSample(name=item.name, image=image, ood=OOD_LUT[raw], semantic=SEMANTIC_LUT[raw],
                          extras={"town": item.extras["town"]})


@register("streethazards")
def open_streethazards(root: Path, split: str | None) -> StreetHazardsDataset:
    return StreetHazardsDataset(root, split)
