"""Fishyscapes validation sets (Blum et al., IJCV 2021): FS Lost & Found val and FS Static val, as distributed
by the Fishyscapes authors (``fishyscapes_lostandfound.zip``, ``fs_val_v3.zip``; hermannsblum/bdl-benchmark
``bdlb/fishyscapes/fishyscapes_tfds.py``). Both ship only masks (and, for Static, colour overlays); the images come
from the base datasets, which must sit in the same ROOT.

Mask encoding (bdl-benchmark ``benchmark.py``: positives ``mask == 1``, valid ``mask <= 1``): 0 inlier,
1 anomaly, anything else (255) void. ``semantic`` is None.

``fishyscapes-laf`` (100 frames of the LostAndFound test split)
--------------------------------------------------------------
::

    ROOT/leftImg8bit/{test,train}/<scene>/<fid>_leftImg8bit.png      LostAndFound images (.webp/.jpg accepted)
    ROOT/disparity/..., ROOT/camera/...                              optional, LostAndFound layout -> depth
    masks, the first of these that exists:
    ROOT/fishyscapes_lostandfound/<NNNN>_<fid>_labels.png            the zip unpacked into its own folder
    ROOT/<NNNN>_<fid>_labels.png                                     the zip unpacked into ROOT
    ROOT/labels/val/<fid>_fishy-labels.png                           the SMIYC benchmark's ``dataset_FishyLAF``

``<fid>`` is the LostAndFound frame id (``04_Maurener_Weg_8_000000_000030``), ``<NNNN>`` the Fishyscapes index.
Names: the mask name without ``_labels.png`` (``0000_04_Maurener_Weg_8_000000_000030``) or, for the SMIYC layout,
the fid; sorted by mask file name. The image is looked up in ``test`` first, then ``train``. Depth as in
:mod:`densehybrid_ros.datasets.lostandfound` when the disparity/camera folders exist.

``fishyscapes-static`` (Cityscapes val images with blended Pascal VOC objects)
------------------------------------------------------------------------------
::

    ROOT/leftImg8bit/val/<city>/<city>_<seq>_<frame>_leftImg8bit.png  Cityscapes val
    masks and overlays, in ROOT/fs_static/ or directly in ROOT:
    <NNNN>_<city>_<seq>_<frame>_labels.png
    <NNNN>_<city>_<seq>_<frame>_rgb.npz        key ``rgb``: HxWx3 integer overlay; image = clip(base + rgb, 0, 255)
      or instead a pre-rendered <NNNN>_<city>_<seq>_<frame>_rgb.png|.jpg (used as is; no Cityscapes needed)

(The overlay arithmetic follows ``fishyscapes_tfds.py``; ``np.load`` runs with ``allow_pickle=False``.)
Names: ``<NNNN>_<city>_<seq>_<frame>``, sorted. Only split ``val`` (the default) exists for either kind.
Unverified: the internal folder structure of the zips (bdl-benchmark lists the files at the top level of the
extracted archive, so both "own folder" and "directly in ROOT" are accepted).
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from densehybrid_ros.datasets._common import (
    IMAGE_EXTENSIONS, Item, ListDataset, binary_ood, check_same_size, read_depth, read_label, read_rgb, require_dir,
    resolve_split, strip_suffix,
)
from densehybrid_ros.datasets.base import DatasetError, EvalSample, register
from densehybrid_ros.datasets.lostandfound import IMAGE_SUFFIX as LAF_IMAGE_SUFFIX
from densehybrid_ros.datasets.lostandfound import depth_paths, scene_of

FS_MASK = re.compile(r"^(\d+)_(.+)_labels\.png$")
SMIYC_MASK_SUFFIX = "_fishy-labels.png"
LAF_SPLITS_SEARCHED = ("test", "train")
CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit.png"


def _fs_masks(directory: Path) -> list[Path]:
    return sorted((p for p in directory.glob("*_labels.png") if p.is_file() and FS_MASK.match(p.name)),
                  key=lambda p: p.name)


def fs_ood(mask: np.ndarray) -> np.ndarray:
    return binary_ood(mask, (0,), (1,))


class FishyscapesLafDataset(ListDataset):
    kind = "fishyscapes-laf"
    classes = None

    def __init__(self, root: Path, split: str | None):
        root = Path(root)
        split = resolve_split(self.kind, split, ("val",), "val")
        items = []
        for directory in (root / "fishyscapes_lostandfound", root):
            if directory.is_dir() and (masks := _fs_masks(directory)):
                for mask in masks:
                    match = FS_MASK.match(mask.name)
                    items.append(Item(name=strip_suffix(mask.name, "_labels.png"), image=Path(), label=mask,
                                      extras={"fid": match.group(2), "fs_id": match.group(1)}))
                break
        else:
            smiyc = root / "labels" / "val"
            if smiyc.is_dir():
                for mask in sorted(smiyc.glob("*" + SMIYC_MASK_SUFFIX), key=lambda p: p.name):
                    fid = strip_suffix(mask.name, SMIYC_MASK_SUFFIX)
                    items.append(Item(name=fid, image=Path(), label=mask, extras={"fid": fid}))
        if not items:
            raise DatasetError(f"{self.kind}: no Fishyscapes masks (<NNNN>_<fid>_labels.png) in "
                               f"{root / 'fishyscapes_lostandfound'} or {root}, and no *{SMIYC_MASK_SUFFIX} in "
                               f"{root / 'labels' / 'val'}")
        require_dir(self.kind, root / "leftImg8bit", "LostAndFound image")
        super().__init__(root, split, items)

    def _find_image(self, fid: str) -> tuple[Path, str]:
        scene = scene_of(fid)
        tried = []
        for laf_split in LAF_SPLITS_SEARCHED:
            for ext in (".png", ".webp", ".jpg"):
                path = self.root / "leftImg8bit" / laf_split / scene / f"{fid}{LAF_IMAGE_SUFFIX}{ext}"
                if path.is_file():
                    return path, laf_split
                tried.append(path)
        raise DatasetError(f"{self.kind}: LostAndFound image for {fid} not found (looked for {tried[0]} and "
                           f"{len(tried) - 1} other names under {self.root / 'leftImg8bit'})")

    def load(self, item: Item) -> EvalSample:
        fid = item.extras["fid"]
        image_path, laf_split = self._find_image(fid)
        image = read_rgb(self.kind, image_path)
        mask = read_label(self.kind, item.label, "mask")
        check_same_size(self.kind, image, mask, item.label, "mask")
        depth = None
        paths = depth_paths(self.root, laf_split, fid)
        if paths:
            depth = read_depth(self.kind, paths["disparity"], paths["camera"])
            check_same_size(self.kind, image, depth, paths["disparity"], "disparity")
        return EvalSample(name=item.name, image=image, ood=fs_ood(mask), depth=depth,
                          extras={k: v for k, v in item.extras.items()})


class FishyscapesStaticDataset(ListDataset):
    kind = "fishyscapes-static"
    classes = None

    def __init__(self, root: Path, split: str | None):
        root = Path(root)
        split = resolve_split(self.kind, split, ("val",), "val")
        masks: list[Path] = []
        for directory in (root / "fs_static", root):
            if directory.is_dir() and (masks := _fs_masks(directory)):
                break
        if not masks:
            raise DatasetError(f"{self.kind}: no Fishyscapes masks (<NNNN>_<city>_<seq>_<frame>_labels.png) in "
                               f"{root / 'fs_static'} or {root}")
        items = []
        for mask in masks:
            match = FS_MASK.match(mask.name)
            stem = strip_suffix(mask.name, "_labels.png")
            csid = match.group(2)
            items.append(Item(name=stem, image=mask.with_name(f"{stem}_rgb.npz"), label=mask,
                              extras={"fs_id": match.group(1), "cityscapes_id": csid}))
        super().__init__(root, split, items)

    def _image(self, item: Item) -> np.ndarray:
        stem = item.name
        for ext in IMAGE_EXTENSIONS:  # a pre-rendered image wins over overlay + Cityscapes base
            rendered = item.label.with_name(f"{stem}_rgb{ext}")
            if rendered.is_file():
                return read_rgb(self.kind, rendered)
        overlay_path = item.image
        if not overlay_path.is_file():
            raise DatasetError(f"{self.kind}: neither overlay {overlay_path} nor a rendered {stem}_rgb.png|jpg "
                               f"exists next to {item.label.name}")
        csid = item.extras["cityscapes_id"]
        city = csid.split("_")[0]
        base_path = self.root / "leftImg8bit" / "val" / city / f"{csid}{CITYSCAPES_IMAGE_SUFFIX}"
        base = read_rgb(self.kind, base_path)
        try:
            data = np.load(overlay_path, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            with data:
                files = list(data.files)
                overlay = data["rgb"] if "rgb" in files else None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DatasetError(f"{self.kind}: cannot read overlay {overlay_path} ({exc})") from exc
        if overlay is None:
            raise DatasetError(f"{self.kind}: overlay {overlay_path} has no array 'rgb' (arrays: {', '.join(files)})")
        if overlay.shape != base.shape or not np.issubdtype(overlay.dtype, np.number):
            raise DatasetError(f"{self.kind}: overlay {overlay_path} is {overlay.dtype} {overlay.shape}, expected "
                               f"a numeric array of the Cityscapes image's shape {base.shape}")
        return np.clip(base.astype(np.int64) + overlay.astype(np.int64), 0, 255).astype(np.uint8)

    def load(self, item: Item) -> EvalSample:
        image = self._image(item)
        mask = read_label(self.kind, item.label, "mask")
        check_same_size(self.kind, image, mask, item.label, "mask")
        return EvalSample(name=item.name, image=image, ood=fs_ood(mask), extras=dict(item.extras))


@register("fishyscapes-laf")
def open_fishyscapes_laf(root: Path, split: str | None) -> FishyscapesLafDataset:
    return FishyscapesLafDataset(root, split)


@register("fishyscapes-static")
def open_fishyscapes_static(root: Path, split: str | None) -> FishyscapesStaticDataset:
    return FishyscapesStaticDataset(root, split)
