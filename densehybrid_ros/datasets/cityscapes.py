"""Cityscapes (Cordts et al. 2016) as distributed, and the void-as-unknown open-set variant.

Kinds
-----
``cityscapes``       closed-set evaluation: ``semantic`` = trainIds 0..18, 255 void; ``ood`` = None
                     (Cityscapes defines no anomalies).
``cityscapes-void``  thesis 5.1.3 / Tab. 6.4 (protocol of OpenGAN, Kong & Ramanan 2022): a subset of the
                     ignored ("void") classes is reinterpreted as unknown. See
                     :mod:`densehybrid_ros.datasets.cityscapes_labels` for the exact id lists:
                     unknown = static, dynamic, ground, parking, rail track, guard rail, bridge, tunnel,
                     polegroup, caravan, trailer; void = unlabeled, ego vehicle, rectification border, out of
                     roi (license plate has no pixels of its own). ``ood`` 0/1/255; ``semantic`` trainIds with
                     19 = unknown. Images kept: every image of the split (500 for val). The thesis does not
                     say that images without unknown pixels are dropped, and OpenGAN's demo evaluates the full
                     val set with pixels pooled; that is what this loader does (unverified against
                     DenseHybrid code: its public repository has no loader for this protocol).

Layout (ROOT = the folder holding the unpacked ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip``)
--------------------------------------------------------------------------------------------------------------
::

    ROOT/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png      uint8 labelIds 0..33
    ROOT/disparity/<split>/<city>/<city>_<seq>_<frame>_disparity.png        optional, uint16
    ROOT/camera/<split>/<city>/<city>_<seq>_<frame>_camera.json             optional

Splits: ``val`` (default) and ``train``. Names: ``<city>_<seq>_<frame>``, sorted. ``depth`` is filled when
``disparity/<split>`` and ``camera/<split>`` exist (d = (p - 1) / 256, p = 0 invalid; depth = baseline * fx / d),
otherwise None. labelIds -> trainIds follows the official cityscapesScripts table.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from densehybrid_ros.datasets import cityscapes_labels as csl
from densehybrid_ros.datasets._common import (
    Item, ListDataset, check_same_size, check_values, read_depth, read_label, read_rgb, require_dir, resolve_split,
    strip_suffix,
)
from densehybrid_ros.datasets.base import DatasetError, EvalSample, register

SPLITS = ("val", "train")
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


def list_cityscapes(kind: str, root: Path, split: str, with_labels: bool = True) -> list[Item]:
    """Items of ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` sorted by (city, name); label and optional
    disparity/camera paths are derived from the name (their existence is checked lazily)."""
    image_root = require_dir(kind, root / "leftImg8bit" / split, "image")
    if with_labels:
        require_dir(kind, root / "gtFine" / split, "label")
    has_depth = (root / "disparity" / split).is_dir() and (root / "camera" / split).is_dir()
    items = []
    for city_dir in sorted(p for p in image_root.iterdir() if p.is_dir()):
        for image in sorted(city_dir.glob("*" + IMAGE_SUFFIX)):
            name = strip_suffix(image.name, IMAGE_SUFFIX)
            extras = {"city": city_dir.name}
            if has_depth:
                extras["disparity"] = root / "disparity" / split / city_dir.name / f"{name}_disparity.png"
                extras["camera"] = root / "camera" / split / city_dir.name / f"{name}_camera.json"
            label = root / "gtFine" / split / city_dir.name / f"{name}{LABEL_SUFFIX}" if with_labels else None
            items.append(Item(name=name, image=image, label=label, extras=extras))
    if not items:
        raise DatasetError(f"{kind}: no *{IMAGE_SUFFIX} files under {image_root}/<city>/")
    return items


class CityscapesDataset(ListDataset):
    kind = "cityscapes"
    classes = csl.TRAIN_CLASS_NAMES

    def __init__(self, root: Path, split: str | None):
        split = resolve_split(self.kind, split, SPLITS, "val")
        super().__init__(root, split, list_cityscapes(self.kind, Path(root), split))

    def _read(self, item: Item) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        image = read_rgb(self.kind, item.image)
        label_ids = read_label(self.kind, item.label, "labelIds")
        check_same_size(self.kind, image, label_ids, item.label, "labelIds")
        check_values(self.kind, label_ids, csl.LABEL_IDS, item.label, "labelIds")
        depth = None
        if "disparity" in item.extras:
            depth = read_depth(self.kind, item.extras["disparity"], item.extras["camera"])
            check_same_size(self.kind, image, depth, item.extras["disparity"], "disparity")
        return image, label_ids, depth

    def load(self, item: Item) -> EvalSample:
        image, label_ids, depth = self._read(item)
        return EvalSample(name=item.name, image=image, semantic=csl.ID_TO_TRAIN_ID[label_ids], depth=depth,
                          extras={"city": item.extras["city"]})


class CityscapesVoidDataset(CityscapesDataset):
    kind = "cityscapes-void"

    def load(self, item: Item) -> EvalSample:
        image, label_ids, depth = self._read(item)
        return EvalSample(name=item.name, image=image, ood=csl.ID_TO_OOD_VOID_AS_UNKNOWN[label_ids],
                          semantic=csl.ID_TO_OPEN_SET_TRAIN_ID[label_ids], depth=depth,
                          extras={"city": item.extras["city"]})


@register("cityscapes")
def open_cityscapes(root: Path, split: str | None) -> CityscapesDataset:
    return CityscapesDataset(root, split)


@register("cityscapes-void")
def open_cityscapes_void(root: Path, split: str | None) -> CityscapesVoidDataset:
    return CityscapesVoidDataset(root, split)
