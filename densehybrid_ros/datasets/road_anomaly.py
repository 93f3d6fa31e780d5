"""Road Anomaly (Lis et al., "Detecting the Unexpected via Image Resynthesis", ICCV 2019;
www.epfl.ch/labs/cvlab/data/road-anomaly/, ``RoadAnomaly_jpg.zip``).

Layout (ROOT = the unpacked ``RoadAnomaly_jpg`` / ``RoadAnomaly`` folder)
-----------------------------------------------------------------------
::

    ROOT/frame_list.json                              optional: JSON list of image file names in frames/
    ROOT/frames/<name>.jpg | .webp | .png
    ROOT/frames/<name>.labels/labels_semantic.png     uint8

Without ``frame_list.json`` every image file directly in ``frames/`` is a frame.

Label encoding (verified against the dataset authors' loader, cvlab-epfl/detecting-the-unexpected
``src/datasets/road_anomaly.py``: ``class_names = ['background', 'road', 'anomaly']``, anomaly ground truth
``labels_semantic >= 2``, frames from ``frame_list.json``, labels at ``frames/<fid>.labels/labels_semantic.png``):
0 background and 1 road -> ``ood`` 0 (inlier), every value >= 2 -> 1 (anomaly), exactly as the authors' code
(the dataset has no void class). ``semantic`` is None.

Split: only ``test`` (the default; the dataset has 60 frames). Names: ``<name>`` (file stem), sorted.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from densehybrid_ros.datasets._common import (
    IMAGE_EXTENSIONS, Item, ListDataset, check_same_size, find_images, read_label, read_rgb, require_dir,
    resolve_split,
)
from densehybrid_ros.datasets.base import OOD_ANOMALY, OOD_INLIER, DatasetError, EvalSample, register

LABEL_DIR_SUFFIX = ".labels"
LABEL_FILE = "labels_semantic.png"

OOD_LUT = np.full(256, OOD_ANOMALY, dtype=np.uint8)
OOD_LUT[0] = OOD_INLIER
OOD_LUT[1] = OOD_INLIER


class RoadAnomalyDataset(ListDataset):
    kind = "road-anomaly"
    classes = None

    def __init__(self, root: Path, split: str | None):
        root = Path(root)
        split = resolve_split(self.kind, split, ("test",), "test")
        frames = require_dir(self.kind, root / "frames", "frames")
        list_file = root / "frame_list.json"
        if list_file.is_file():
            try:
                names = json.loads(list_file.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise DatasetError(f"{self.kind}: {list_file} is not valid JSON ({exc})") from exc
            if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
                raise DatasetError(f"{self.kind}: {list_file} must be a JSON list of image file names")
            bad = [n for n in names if Path(n).name != n or Path(n).suffix.lower() not in IMAGE_EXTENSIONS]
            if bad:
                raise DatasetError(f"{self.kind}: {list_file} entry {bad[0]!r} is not an image file name in frames/")
            images = [frames / n for n in sorted(set(names))]
        else:
            images = find_images(frames)
        if not images:
            raise DatasetError(f"{self.kind}: no frames in {frames}")
        items = [Item(name=img.stem, image=img, label=frames / f"{img.stem}{LABEL_DIR_SUFFIX}" / LABEL_FILE)
                 for img in images]
        super().__init__(root, split, items)

    def load(self, item: Item) -> EvalSample:
        image = read_rgb(self.kind, item.image)
        label = read_label(self.kind, item.label, "labels_semantic")
        check_same_size(self.kind, image, label, item.label, "labels_semantic")
        return EvalSample(name=item.name, image=image, ood=OOD_LUT[label])


@register("road-anomaly")
def open_road_anomaly(root: Path, split: str | None) -> RoadAnomalyDataset:
    return RoadAnomalyDataset(root, split)
