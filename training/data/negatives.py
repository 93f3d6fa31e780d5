"""Sources of negative (outlier) training data: ``ds[j] -> (image HxWx3 uint8, mask HxW bool)``, the pixels to
paste into an inlier crop (thesis 4.17). Modes and randomness:
:class:`densehybrid_training.data.common.NegativeDataset`.

=================  ==========================================================================================
kind               layout under ROOT, what one negative is
=================  ==========================================================================================
``ade20k``         ``ADEChallengeData2016``: ``images/<split>/*.jpg`` + ``annotations/<split>/*.png`` (uint8,
                   0 = other, 1..150 SceneParsing classes). Mask: union of ``classes_per_negative`` (2, as the
                   public DenseHybrid code) distinct classes present in the image, never one of
                   :data:`~densehybrid_training.data.labelmaps.ADE20K_EXCLUDED`.
``ade20k-full``    ``ADE20K_2021_17_01``: ``images/ADE/<split>/<scene...>/<name>.jpg`` with ``<name>_seg.png``
                   (class = R // 10 * 256 + G, instances = distinct B values within a class) and ``<name>.json``
                   (objects with ``name``, ``name_ndx``; class value = ``name_ndx + 1``). Mask: union of
                   ``instances_per_negative`` (1) whole-object instances whose name is not excluded
                   (:func:`~densehybrid_training.data.labelmaps.ade20k_full_is_excluded`).
``coco``           ``<split>/<file_name>`` + ``annotations/instances_<split>.json`` (split ``train2017``).
                   Mask: union of ``instances_per_negative`` (1) instance masks (polygons or RLE) of one
                   image, never of :data:`~densehybrid_training.data.labelmaps.COCO_EXCLUDED_NAMES` categories, crowd
                   annotations skipped unless ``include_crowd``.
``sim``            a rendered sim train split (pool ``train-negatives``): one negative per visible anomaly
                   object (``meta/<id>.json`` ``anomalies[].instance_id``); mask = pixels with that instance
                   id and the anomaly label. Rectangle mode: the object's bounding box, mask all true.
=================  ==========================================================================================

Public DenseHybrid recipe (matejgrcic/DenseHybrid, ``experiments/semseg_negatives_joint_th.py``): ADE20K
images are resized (shorter side 384) and cropped (192 for Cityscapes' 512 crops, 384 for StreetHazards' 768
crops); per negative, with probability 0.5 a random rectangle (sides 16..min(h, w) in steps of 8) of that crop,
otherwise the union of two randomly drawn ADE classes of it; pasted at a uniform position. Here a negative is
cropped to its mask's bounding box; resizing to the paste size is
:class:`densehybrid_training.data.augment.NegativeResize`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np

from densehybrid_ros.datasets._common import (
    check_same_size, find_images, read_label, read_rgb, require_dir, require_file,
)
from densehybrid_ros.datasets.base import DatasetError
from densehybrid_training.data import labelmaps
from densehybrid_training.data.coco_mask import segmentation_to_mask
from densehybrid_training.data.common import NegativeDataset, crop_to_mask, mask_bbox, resolve_split
from densehybrid_training.data.inliers import open_sim_manifest

__all__ = ["ADE20kNegatives", "ADE20kFullNegatives", "CocoNegatives", "SimNegatives", "decode_ade20k_seg"]


def _union_crop(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    return crop_to_mask(image, mask) if mask.any() else None


# --- ADE20K SceneParsing (ADEChallengeData2016) --------------------------------------------------------------

class ADE20kNegatives(NegativeDataset):
    """Negatives from ADEChallengeData2016 class masks (see module table). ``excluded``: class ids never used
    (default :data:`labelmaps.ADE20K_EXCLUDED`); ``min_pixels``: a class needs this many pixels in the image to be
    drawn."""

    kind = "ade20k"
    SPLITS = {"training": "training", "train": "training", "validation": "validation", "val": "validation"}

    def __init__(self, root: Path, split: str | None = "training", mode: str = "mask", classes_per_negative: int = 2,
                 min_pixels: int = 64, excluded: Iterable[int] | None = None, exclude_in_rectangle: bool = False,
                 rect_prob: float = 0.5, min_rect_side: int = 16, seed: int = 0, max_tries: int = 20):
        root = Path(root)
        split = resolve_split(self.kind, split, self.SPLITS, "training")
        if classes_per_negative < 1:
            raise DatasetError(f"{self.kind}: classes_per_negative must be >= 1, got {classes_per_negative}")
        self.classes_per_negative = int(classes_per_negative)
        self.min_pixels = int(min_pixels)
        self.excluded = np.array(sorted(labelmaps.ADE20K_EXCLUDED if excluded is None else excluded), dtype=np.int64)
        self.exclude_in_rectangle = bool(exclude_in_rectangle)
        image_dir = require_dir(self.kind, root / "images" / split, "image")
        label_dir = require_dir(self.kind, root / "annotations" / split, "annotation")
        self._images = find_images(image_dir, extensions=(".jpg", ".jpeg", ".png"))
        self._labels = [label_dir / f"{p.stem}.png" for p in self._images]
        for path in self._labels:
            require_file(self.kind, path, "annotation")
        # eligible[v]: class value v may be drawn (1..150, not excluded)
        self._eligible = np.zeros(256, dtype=bool)
        self._eligible[1:labelmaps.ADE20K_NUM_CLASSES + 1] = True
        self._eligible[self.excluded[self.excluded < 256]] = False
        super().__init__(root, split, len(self._images), mode, rect_prob, min_rect_side, seed, max_tries)

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = read_rgb(self.kind, self._images[index])
        labels = read_label(self.kind, self._labels[index], "annotation")
        check_same_size(self.kind, image, labels, self._labels[index], "annotation")
        top = int(labels.max())
        if top > labelmaps.ADE20K_NUM_CLASSES:
            raise DatasetError(f"{self.kind}: annotation {self._labels[index]} contains value {top}, expected "
                               f"0..{labelmaps.ADE20K_NUM_CLASSES}")
        return image, labels

    def eligible_classes(self, labels: np.ndarray) -> np.ndarray:
        """Class values of ``labels`` that may form a negative (sorted)."""
        counts = np.bincount(labels.ravel(), minlength=256)
        return np.flatnonzero(self._eligible & (counts >= max(1, self.min_pixels)))

    def masked(self, index: int, rng: np.random.Generator):
        image, labels = self._read(index)
        eligible = self.eligible_classes(labels)
        if eligible.size == 0:
            return None
        k = min(self.classes_per_negative, eligible.size)
        chosen = rng.choice(eligible, size=k, replace=False)
        return _union_crop(image, np.isin(labels, chosen))

    def full_image(self, index: int):
        if not self.exclude_in_rectangle:
            return read_rgb(self.kind, self._images[index]), None
        image, labels = self._read(index)
        return image, ~np.isin(labels, self.excluded)

    def describe(self, index: int) -> str:
        return str(self._images[index])


# --- full ADE20K (ADE20K_2021_17_01) -----------------------------------------------------------------------

def decode_ade20k_seg(seg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class map, instance map) of a full-ADE20K ``*_seg.png`` given as HxWx3 uint8 RGB.

    class = R // 10 * 256 + G (CSAILVision/ADE20K ``utils/utils_ade20k.py``; 0 = unlabelled); pixels sharing
    a class and a B value form one instance. Instances are numbered 1..n in order of (class, B); 0 where the
    class is 0. Both maps are int32.
    """
    if seg.ndim != 3 or seg.shape[2] != 3 or seg.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB _seg image, got {seg.dtype} {seg.shape}")
    r = seg[..., 0].astype(np.int32)
    g = seg[..., 1].astype(np.int32)
    b = seg[..., 2].astype(np.int32)
    classes = (r // 10) * 256 + g
    key = np.where(classes > 0, classes * 256 + b, -1)
    uniq, inverse = np.unique(key, return_inverse=True)
    inverse = inverse.reshape(key.shape).astype(np.int32)
    instances = inverse + (1 if uniq[0] >= 0 else 0)  # ids 1..n; key -1 (unlabelled) sorts first -> 0
    instances[classes == 0] = 0
    return classes, instances


class ADE20kFullNegatives(NegativeDataset):
    """Negatives from full-ADE20K whole-object instance masks (see module table).

    ROOT is ``ADE20K_2021_17_01`` (or its ``images/ADE`` folder); splits ``training`` (default), ``validation``.
    Class names come from each image's ``<name>.json`` (``annotation.object[]`` with ``parts.part_level == 0``;
    class value = ``name_ndx + 1``, CSAILVision/ADE20K issue #15); a class value without a name there is never
    drawn. ``min_pixels``: an instance needs this many pixels.
    """

    kind = "ade20k-full"
    SPLITS = {"training": "training", "train": "training", "validation": "validation", "val": "validation"}

    def __init__(self, root: Path, split: str | None = "training", mode: str = "mask", instances_per_negative: int = 1,
                 min_pixels: int = 64, exclude_in_rectangle: bool = False, rect_prob: float = 0.5,
                 min_rect_side: int = 16, seed: int = 0, max_tries: int = 20):
        root = Path(root)
        split = resolve_split(self.kind, split, self.SPLITS, "training")
        if instances_per_negative < 1:
            raise DatasetError(f"{self.kind}: instances_per_negative must be >= 1, got {instances_per_negative}")
        self.instances_per_negative = int(instances_per_negative)
        self.min_pixels = int(min_pixels)
        self.exclude_in_rectangle = bool(exclude_in_rectangle)
        base = root / "images" / "ADE"
        if not base.is_dir() and (root / split).is_dir():
            base = root
        split_dir = require_dir(self.kind, base / split, "split")
        self._images = sorted(p for p in split_dir.rglob("*.jpg") if p.is_file())
        for image in self._images:
            require_file(self.kind, image.with_name(f"{image.stem}_seg.png"), "_seg")
            require_file(self.kind, image.with_suffix(".json"), "object annotation (.json)")
        super().__init__(root, split, len(self._images), mode, rect_prob, min_rect_side, seed, max_tries)

    def _names(self, image: Path) -> dict[int, str]:
        """class value -> object name of one image, from its ``.json`` (whole objects only)."""
        path = image.with_suffix(".json")
        try:
            data = json.loads(path.read_bytes().decode("utf-8", errors="replace"))
            objects = data["annotation"]["object"]
            names = {}
            for obj in objects:
                if int(obj.get("parts", {}).get("part_level", 0)) != 0:
                    continue
                names[int(obj["name_ndx"]) + 1] = str(obj["name"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{self.kind}: {path} is not an ADE20K object annotation "
                               f"(annotation.object[].name/name_ndx): {exc}") from None
        return names

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, str]]:
        path = self._images[index]
        image = read_rgb(self.kind, path)
        seg_path = path.with_name(f"{path.stem}_seg.png")
        seg = read_rgb(self.kind, seg_path)
        check_same_size(self.kind, image, seg, seg_path, "_seg")
        classes, instances = decode_ade20k_seg(seg)
        return image, classes, instances, self._names(path)

    def _allowed_classes(self, classes: np.ndarray, names: dict[int, str]) -> np.ndarray:
        present = np.unique(classes)
        return np.array([c for c in present.tolist()
                         if c in names and not labelmaps.ade20k_full_is_excluded(names[c])], dtype=np.int64)

    def masked(self, index: int, rng: np.random.Generator):
        image, classes, instances, names = self._read(index)
        allowed = self._allowed_classes(classes, names)
        candidates = np.unique(instances[np.isin(classes, allowed)])
        candidates = candidates[candidates > 0]
        if candidates.size:
            counts = np.bincount(instances.ravel(), minlength=int(instances.max()) + 1)
            candidates = candidates[counts[candidates] >= max(1, self.min_pixels)]
        if candidates.size == 0:
            return None
        k = min(self.instances_per_negative, candidates.size)
        chosen = rng.choice(candidates, size=k, replace=False)
        return _union_crop(image, np.isin(instances, chosen))

    def full_image(self, index: int):
        if not self.exclude_in_rectangle:
            return read_rgb(self.kind, self._images[index]), None
        image, classes, _, names = self._read(index)
        excluded = [c for c, n in names.items() if labelmaps.ade20k_full_is_excluded(n)]
        return image, ~np.isin(classes, excluded)

    def describe(self, index: int) -> str:
        return str(self._images[index])


# --- COCO instances --------------------------------------------------------------------------------------------

class CocoNegatives(NegativeDataset):
    """Negatives from COCO instance masks (see module table); one item per image with at least one usable
    instance (``area >= min_area``, category not excluded, not crowd unless ``include_crowd``).

    ``excluded_names``: category names never used (default :data:`labelmaps.COCO_EXCLUDED_NAMES`); a given name
    that the annotation file does not define is an error (a typo would silently exclude nothing).
    """

    kind = "coco"
    SPLITS = {"train2017": "train2017", "train": "train2017", "val2017": "val2017", "val": "val2017"}

    def __init__(self, root: Path, split: str | None = "train2017", mode: str = "mask", instances_per_negative: int = 1,
                 min_area: float = 64.0, include_crowd: bool = False, excluded_names: Iterable[str] | None = None,
                 exclude_in_rectangle: bool = False, rect_prob: float = 0.5, min_rect_side: int = 16, seed: int = 0,
                 max_tries: int = 20):
        root = Path(root)
        split = resolve_split(self.kind, split, self.SPLITS, "train2017")
        if instances_per_negative < 1:
            raise DatasetError(f"{self.kind}: instances_per_negative must be >= 1, got {instances_per_negative}")
        self.instances_per_negative = int(instances_per_negative)
        self.exclude_in_rectangle = bool(exclude_in_rectangle)
        image_dir = require_dir(self.kind, root / split, "image")
        ann_path = require_file(self.kind, root / "annotations" / f"instances_{split}.json", "annotation")
        try:
            data = json.loads(ann_path.read_text())
            categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
            images = data["images"]
            annotations = data["annotations"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{self.kind}: {ann_path} is not a COCO instances file "
                               f"(categories/images/annotations): {exc}") from None
        names = set(labelmaps.COCO_EXCLUDED_NAMES if excluded_names is None else excluded_names)
        unknown = sorted(names - set(categories.values()))
        if unknown and excluded_names is not None:
            raise DatasetError(f"{self.kind}: excluded category {unknown[0]!r} is not a category of {ann_path}")
        self.excluded_ids = frozenset(i for i, n in categories.items() if n in names)
        self.categories = categories
        usable: dict[int, list] = {}
        blocked: dict[int, list] = {}
        try:
            for ann in annotations:
                image_id = int(ann["image_id"])
                if int(ann["category_id"]) in self.excluded_ids:
                    blocked.setdefault(image_id, []).append(ann["segmentation"])
                elif (include_crowd or not ann.get("iscrowd", 0)) and float(ann.get("area", 0.0)) >= min_area:
                    usable.setdefault(image_id, []).append((int(ann["id"]), ann["segmentation"]))
            self._items = []
            for img in images:
                image_id = int(img["id"])
                if image_id in usable:
                    self._items.append((image_dir / str(img["file_name"]), int(img["height"]), int(img["width"]),
                                        usable[image_id], blocked.get(image_id, [])))
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{self.kind}: malformed annotation or image entry in {ann_path}: {exc!r}") from None
        self._items.sort(key=lambda item: item[0].name)
        del data, annotations, images
        super().__init__(root, split, len(self._items), mode, rect_prob, min_rect_side, seed, max_tries)

    def _image(self, index: int) -> np.ndarray:
        path, h, w, _, _ = self._items[index]
        image = read_rgb(self.kind, path)
        if image.shape[:2] != (h, w):
            raise DatasetError(f"{self.kind}: image {path} is {image.shape[1]}x{image.shape[0]} (WxH) but the "
                               f"annotation file says {w}x{h}")
        return image

    def _mask(self, index: int, segmentation, ann_id=None) -> np.ndarray:
        path, h, w, _, _ = self._items[index]
        try:
            return segmentation_to_mask(segmentation, h, w)
        except ValueError as exc:
            raise DatasetError(f"{self.kind}: annotation {ann_id} of {path.name}: {exc}") from None

    def masked(self, index: int, rng: np.random.Generator):
        _, _, _, anns, _ = self._items[index]
        k = min(self.instances_per_negative, len(anns))
        picks = rng.choice(len(anns), size=k, replace=False)
        image = self._image(index)
        mask = np.zeros(image.shape[:2], dtype=bool)
        for p in picks:
            ann_id, segmentation = anns[int(p)]
            mask |= self._mask(index, segmentation, ann_id)
        return _union_crop(image, mask)

    def full_image(self, index: int):
        image = self._image(index)
        if not self.exclude_in_rectangle:
            return image, None
        keep = np.ones(image.shape[:2], dtype=bool)
        for segmentation in self._items[index][4]:
            keep &= ~self._mask(index, segmentation)
        return image, keep

    def describe(self, index: int) -> str:
        return str(self._items[index][0])


# --- sim world anomalies (train-negatives pool) ---------------------------------------------------------------

class SimNegatives(NegativeDataset):
    """Negatives from the anomaly objects of a rendered sim split (default ``train``, pool train-negatives).

    One item per ``(frame, instance_id)`` listed in ``meta/<id>.json`` ``anomalies`` with ``visible_pixels >=
    min_pixels``. Mask mode: the crop to the object's bounding box, mask = pixels whose instance id is the
    object's and whose label is the anomaly label. Rectangle mode: the same bounding-box crop, mask all true.
    A listed object without such pixels is a DatasetError (meta and label files disagree).
    """

    kind = "sim"

    def __init__(self, root: Path, split: str | None = "train", mode: str = "mask", min_pixels: int = 16,
                 rect_prob: float = 0.5, min_rect_side: int = 16, seed: int = 0, max_tries: int = 20):
        root = Path(root)
        sim = open_sim_manifest(root, split or "train")
        self.anomaly_id = sim.anomaly_id
        self.min_pixels = int(min_pixels)
        self._items: list[tuple[str, int]] = []
        for frame in sim.ids:
            meta_path = require_file(self.kind, root / "meta" / f"{frame}.json", "meta")
            try:
                anomalies = json.loads(meta_path.read_text())["anomalies"]
                objects = [(int(a["instance_id"]), int(a["visible_pixels"])) for a in anomalies]
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise DatasetError(f"{self.kind}: {meta_path} has no anomalies[].instance_id/visible_pixels "
                                   f"({exc!r})") from None
            for instance_id, visible in objects:
                if visible >= max(1, self.min_pixels):
                    self._items.append((frame, instance_id))
        super().__init__(root, sim.split, len(self._items), mode, rect_prob, min_rect_side, seed, max_tries)

    def object_mask(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(frame image, full-frame bool mask of the object) of item ``index``."""
        frame, instance_id = self._items[index]
        image = read_rgb(self.kind, self.root / "rgb" / f"{frame}.png")
        labels = read_label(self.kind, self.root / "labels" / f"{frame}.png", "labels")
        instances = read_label(self.kind, self.root / "instances" / f"{frame}.png", "instances", dtypes=(np.uint16,))
        check_same_size(self.kind, image, labels, self.root / "labels" / f"{frame}.png", "labels")
        check_same_size(self.kind, image, instances, self.root / "instances" / f"{frame}.png", "instances")
        mask = (instances == instance_id) & (labels == self.anomaly_id)
        if not mask.any():
            raise DatasetError(f"{self.kind}: frame {frame}: anomaly instance {instance_id} listed in meta has no "
                               f"pixels with label {self.anomaly_id} in {self.root}")
        return image, mask

    def masked(self, index: int, rng: np.random.Generator):
        image, mask = self.object_mask(index)
        return crop_to_mask(image, mask)

    def rectangle(self, index: int, rng: np.random.Generator):
        image, mask = self.object_mask(index)
        top, left, bottom, right = mask_bbox(mask)
        return np.ascontiguousarray(image[top:bottom, left:right]), np.ones((bottom - top, right - left), bool)

    @property
    def objects(self) -> list[tuple[str, int]]:
        """(frame id, instance id) of every item, in item order."""
        return list(self._items)

    def describe(self, index: int) -> str:
        frame, instance_id = self._items[index]
        return f"frame {frame} instance {instance_id}"
