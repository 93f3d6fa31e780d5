"""Closed-set (inlier) training datasets: ``ds[i] -> (image HxWx3 uint8 RGB, labels HxW uint8)``, labels
``0..K-1`` for the K classes of ``ds.classes`` and 255 for pixels to ignore, before any augmentation.

Every constructor lists the samples and checks that each label file exists, raising
:class:`~densehybrid_ros.datasets.base.DatasetError` naming the missing directory or file; pixels are read
(and their values checked) when a sample is indexed.

==================  =====================================================================  ===================
kind                layout under ROOT                                                      taxonomy
==================  =====================================================================  ===================
``cityscapes``      ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` +                     19 trainIds
                    ``gtFine/<split>/<city>/*_gtFine_labelIds.png`` (labelIds 0..33)
``vistas``          ``<split>/images/*.jpg`` + ``<split>/labels/*.png`` (or                 19 trainIds
                    ``<split>/v1.2/labels``), ids 0..65 in the order of ``config_v1.2.json``
                    / ``config.json`` (built-in v1.2 order when neither exists)
``wilddash``        ``images/<name>.jpg`` + ``labels/<name>_labelIds.png`` (or             19 trainIds
                    ``labels/<name>.png``), ids 0..38 (Cityscapes 0..33 + 5 WildDash 2)
``streethazards``   ``train/images/<split>/<town>/*.png`` +                                 12 classes
                    ``train/annotations/<split>/<town>/*.png`` (1-based values 1..14)
``sim``             ``manifest.json``, ``rgb/*.png``, ``labels/*.png`` (0..14, 15 anomaly)  15 sim classes
==================  =====================================================================  ===================

Label mappings: Cityscapes labelIds -> trainIds by the official table
(:mod:`densehybrid_ros.datasets.cityscapes_labels`); Vistas and WildDash by
:mod:`densehybrid_training.data.labelmaps`; StreetHazards by the evaluation loader's table
(:data:`densehybrid_ros.datasets.streethazards.SEMANTIC_LUT`: ``other`` is void) with the anomaly value made
void as well (closed-set training); sim anomalies (label 15) are void (their instance masks are the
``sim`` negatives, :class:`densehybrid_training.data.negatives.SimNegatives`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from densehybrid_ros.datasets import cityscapes_labels as csl
from densehybrid_ros.datasets import streethazards as sh
from densehybrid_ros.datasets._common import (
    check_same_size, find_images, read_label, read_rgb, require_dir, require_file,
)
from densehybrid_ros.datasets.base import VOID, DatasetError
from densehybrid_ros.datasets.cityscapes import list_cityscapes
from densehybrid_training.data import labelmaps
from densehybrid_training.data.common import ClassInfo, InlierDataset, check_allowed, class_list, resolve_split

CITYSCAPES_CLASSES: tuple[ClassInfo, ...] = class_list(csl.TRAIN_CLASS_NAMES, csl.TRAIN_CLASS_COLORS)


def allowed_lut(values) -> np.ndarray:
    """256-entry bool table: True for the label values a dataset may contain."""
    lut = np.zeros(256, dtype=bool)
    lut[list(values)] = True
    return lut


_CITYSCAPES_IDS = allowed_lut(csl.LABEL_IDS)
_WILDDASH_IDS = allowed_lut(range(labelmaps.WILDDASH_MAX_ID + 1))


def _check_labels_exist(kind: str, labels: Sequence[Path]) -> None:
    for path in labels:
        require_file(kind, path, "label")


class CityscapesTrain(InlierDataset):
    """Cityscapes fine annotations, labelIds -> trainIds (0..18, 255 void); splits ``train`` (default), ``val``."""

    kind = "cityscapes"
    SPLITS = {"train": "train", "val": "val"}

    def __init__(self, root: Path, split: str | None = "train"):
        split = resolve_split(self.kind, split, self.SPLITS, "train")
        items = list_cityscapes(self.kind, Path(root), split)
        self._items = items
        _check_labels_exist(self.kind, [item.label for item in items])
        super().__init__(root, split, [item.name for item in items], CITYSCAPES_CLASSES)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        item = self._items[index]
        image = read_rgb(self.kind, item.image)
        label_ids = read_label(self.kind, item.label, "labelIds")
        check_same_size(self.kind, image, label_ids, item.label, "labelIds")
        check_allowed(self.kind, label_ids, _CITYSCAPES_IDS, item.label, "labelIds")
        return image, csl.label_ids_to_train_ids(label_ids)


class VistasTrain(InlierDataset):
    """Mapillary Vistas v1.2 remapped to the 19 Cityscapes trainIds (table: :data:`labelmaps.VISTAS_TO_CITYSCAPES`).

    ROOT holds ``training/`` and ``validation/`` (splits ``training``/``train``, ``validation``/``val``), each with
    ``images/<key>.jpg`` and ``labels/<key>.png`` (v1.2 zip) or ``v1.2/labels/<key>.png`` (v2.0 zip, which ships
    both label versions). The label ids are positions in the ``labels`` list of ``ROOT/config_v1.2.json`` or
    ``ROOT/config.json`` (first found); a config listing a class the table does not know (e.g. v2.0's) is an
    error. Without a config file the v1.2 order of :data:`labelmaps.VISTAS_V12_NAMES` is used.
    """

    kind = "vistas"
    SPLITS = {"training": "training", "train": "training", "validation": "validation", "val": "validation"}
    CONFIG_FILES = ("config_v1.2.json", "config.json")

    def __init__(self, root: Path, split: str | None = "training"):
        root = Path(root)
        split = resolve_split(self.kind, split, self.SPLITS, "training")
        self.label_names = self._read_config(root)
        self.lut = labelmaps.vistas_lut(self.label_names)
        self.valid = allowed_lut(range(len(self.label_names)))
        base = require_dir(self.kind, root / split, "split")
        image_dir = require_dir(self.kind, base / "images", "image")
        label_dir = base / "v1.2" / "labels"
        if not label_dir.is_dir():
            label_dir = require_dir(self.kind, base / "labels", "label")
        self._images = find_images(image_dir, extensions=(".jpg", ".jpeg", ".png"))
        self._labels = [label_dir / f"{p.stem}.png" for p in self._images]
        _check_labels_exist(self.kind, self._labels)
        super().__init__(root, split, [p.stem for p in self._images], CITYSCAPES_CLASSES)

    def _read_config(self, root: Path) -> tuple[str, ...]:
        for name in self.CONFIG_FILES:
            path = root / name
            if not path.is_file():
                continue
            try:
                labels = json.loads(path.read_text())["labels"]
                names = tuple(str(label["name"]) for label in labels)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DatasetError(f"{self.kind}: {path} is not a Vistas config with a 'labels' list of "
                                   f"{{'name': ...}} entries ({exc})") from None
            unknown = [n for n in names if n not in labelmaps.VISTAS_TO_CITYSCAPES]
            if unknown:
                raise DatasetError(f"{self.kind}: {path} lists class {unknown[0]!r}, which is not a Vistas v1.2 "
                                   f"class ({len(names)} labels; only the 66-class v1.2 taxonomy is mapped)")
            return names
        return labelmaps.VISTAS_V12_NAMES

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = read_rgb(self.kind, self._images[index])
        ids = read_label(self.kind, self._labels[index], "label")
        check_same_size(self.kind, image, ids, self._labels[index], "label")
        check_allowed(self.kind, ids, self.valid, self._labels[index], "label")
        return image, self.lut[ids]


class WildDashTrain(InlierDataset):
    """WildDash 2 public GT (``wd_public_02``) in Cityscapes-style labelIds -> trainIds.

    ROOT holds ``images/<name>.jpg`` and ``labels/<name>_labelIds.png`` (as written by the WildDash
    ``pano2sem.py`` converter) or ``labels/<name>.png``. Values: Cityscapes labelIds 0..33 plus the WildDash 2
    ids 34..38 (:data:`labelmaps.WILDDASH_EXTRA_IDS`); anything above 38 is an error. WildDash has no official
    train/val split of its public GT: split ``all`` (default) takes every image, or ``list_file`` names a text
    file with one image name (without extension) per line.
    """

    kind = "wilddash"
    LABEL_SUFFIXES = ("_labelIds.png", ".png")

    def __init__(self, root: Path, split: str | None = "all", list_file: str | Path | None = None):
        root = Path(root)
        split = resolve_split(self.kind, split, {"all": "all"}, "all")
        image_dir = require_dir(self.kind, root / "images", "image")
        label_dir = require_dir(self.kind, root / "labels", "label")
        images = find_images(image_dir, extensions=(".jpg", ".jpeg", ".png"))
        if list_file is not None:
            path = require_file(self.kind, Path(list_file), "image list")
            wanted = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            by_stem = {p.stem: p for p in images}
            missing = [w for w in wanted if w not in by_stem]
            if missing:
                raise DatasetError(f"{self.kind}: image {missing[0]!r} of {path} not found in {image_dir}")
            images = [by_stem[w] for w in wanted]
        self._images = images
        self._labels = []
        for image in images:
            candidates = [label_dir / f"{image.stem}{suffix}" for suffix in self.LABEL_SUFFIXES]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                raise DatasetError(f"{self.kind}: label file {candidates[0]} (or {candidates[1].name}) does not exist")
            self._labels.append(found)
        super().__init__(root, split, [p.stem for p in images], CITYSCAPES_CLASSES)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = read_rgb(self.kind, self._images[index])
        ids = read_label(self.kind, self._labels[index], "labelIds")
        check_same_size(self.kind, image, ids, self._labels[index], "labelIds")
        check_allowed(self.kind, ids, _WILDDASH_IDS, self._labels[index], "labelIds")
        return image, labelmaps.WILDDASH_TO_TRAIN_ID[ids]


# StreetHazards training LUT: the evaluation table, with the anomaly value void (closed-set training).
STREETHAZARDS_TRAIN_LUT = sh.SEMANTIC_LUT.copy()
STREETHAZARDS_TRAIN_LUT[sh.RAW_ANOMALY] = VOID
STREETHAZARDS_CLASSES: tuple[ClassInfo, ...] = class_list(sh.CLASSES, labelmaps.STREETHAZARDS_COLORS)


def _numeric_stem(path: Path) -> tuple:
    """Sort key: numeric file stems in numeric order, then the others by name."""
    return (0, int(path.stem), path.stem) if path.stem.isdigit() else (1, 0, path.stem)


class StreetHazardsTrain(InlierDataset):
    """StreetHazards training towns (``training``: t1..t3, default; ``validation``: t4).

    ``ROOT/train/images/<split>/<town>/<n>.png`` with the annotation of the same name under
    ``ROOT/train/annotations/<split>/<town>/``. File values 1..14 decode as in
    :mod:`densehybrid_ros.datasets.streethazards` (12 known classes, ``other`` void); the anomaly value 14 and
    0 are void too. Names ``<town>_<stem>``.
    """

    kind = "streethazards"
    SPLITS = {"training": "training", "train": "training", "validation": "validation", "val": "validation"}

    def __init__(self, root: Path, split: str | None = "training"):
        root = Path(root)
        split = resolve_split(self.kind, split, self.SPLITS, "training")
        base = root / "train"
        if not (base / "images").is_dir() and (root / "images" / split).is_dir():
            base = root  # ROOT is the unpacked "train" folder itself
        image_root = require_dir(self.kind, base / "images" / split, "image")
        label_root = require_dir(self.kind, base / "annotations" / split, "annotation")
        self._images: list[Path] = []
        self._labels: list[Path] = []
        names = []
        for town_dir in sorted(p for p in image_root.iterdir() if p.is_dir()):
            for image in sorted(town_dir.glob("*.png"), key=_numeric_stem):
                self._images.append(image)
                self._labels.append(label_root / town_dir.name / image.name)
                names.append(f"{town_dir.name}_{image.stem}")
        if not names:
            raise DatasetError(f"{self.kind}: no .png frames under {image_root}/<town>/")
        _check_labels_exist(self.kind, self._labels)
        super().__init__(root, split, names, STREETHAZARDS_CLASSES)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = read_rgb(self.kind, self._images[index])
        raw = read_label(self.kind, self._labels[index], "annotation")
        check_same_size(self.kind, image, raw, self._labels[index], "annotation")
        top = int(raw.max())
        if top > sh.RAW_ANOMALY:
            raise DatasetError(f"{self.kind}: annotation {self._labels[index]} contains value {top}, "
                               f"expected 1..{sh.RAW_ANOMALY}")
        return image, STREETHAZARDS_TRAIN_LUT[raw]


def open_sim_manifest(root: Path, split: str | None):
    """The manifest-validated sim dataset of :mod:`densehybrid_ros.datasets.sim` (format, split, ids)."""
    from densehybrid_ros.datasets.sim import SimDataset

    return SimDataset(Path(root), split)


class SimTrain(InlierDataset):
    """A rendered sim split (``densehybrid-sim render``): ``rgb/<id>.png`` + ``labels/<id>.png``.

    Labels 0..K-1 are the sim classes (names and colours from the manifest), the anomaly label K (15) and 255
    become void. The split recorded in ``manifest.json`` must match ``split`` (default ``train``).
    """

    kind = "sim"

    def __init__(self, root: Path, split: str | None = "train"):
        sim = open_sim_manifest(root, split or "train")
        self.anomaly_id = sim.anomaly_id
        classes = sim.manifest["classes"]
        names = [c["name"] for c in classes]
        colors = [tuple(c["color"]) for c in classes]
        if len(names) != self.anomaly_id:
            raise DatasetError(f"{self.kind}: manifest in {root} lists {len(names)} classes but anomaly_id "
                               f"{self.anomaly_id}")
        self.lut = np.full(256, VOID, dtype=np.uint8)
        self.lut[: len(names)] = np.arange(len(names), dtype=np.uint8)
        self.valid = allowed_lut([*range(self.anomaly_id + 1), VOID])
        root = Path(root)
        require_dir(self.kind, root / "rgb", "rgb")
        require_dir(self.kind, root / "labels", "labels")
        self._images = [root / "rgb" / f"{i}.png" for i in sim.ids]
        self._labels = [root / "labels" / f"{i}.png" for i in sim.ids]
        for path in self._images:
            require_file(self.kind, path, "rgb")
        _check_labels_exist(self.kind, self._labels)
        super().__init__(root, sim.split, list(sim.ids), class_list(names, colors))

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = read_rgb(self.kind, self._images[index])
        labels = read_label(self.kind, self._labels[index], "label")
        check_same_size(self.kind, image, labels, self._labels[index], "label")
        check_allowed(self.kind, labels, self.valid, self._labels[index], "label")
        return image, self.lut[labels]


def concat_inliers(datasets: Sequence[InlierDataset]):
    """One dataset over several inlier datasets with the same taxonomy (e.g. Cityscapes + Vistas + WildDash,
    the thesis's SMIYC training mix); a DatasetError names the first dataset whose classes differ."""
    import torch.utils.data

    if not datasets:
        raise DatasetError("concat_inliers: no datasets given")
    first = datasets[0]
    for ds in datasets[1:]:
        if ds.classes != first.classes:
            raise DatasetError(f"concat_inliers: {ds!r} has classes {ds.class_names} but {first!r} has "
                               f"{first.class_names}")
    joined = torch.utils.data.ConcatDataset(list(datasets))
    joined.classes = first.classes
    return joined


__all__ = [
    "CITYSCAPES_CLASSES", "STREETHAZARDS_CLASSES", "STREETHAZARDS_TRAIN_LUT", "CityscapesTrain", "VistasTrain",
    "WildDashTrain", "StreetHazardsTrain", "SimTrain", "concat_inliers", "allowed_lut",
]
