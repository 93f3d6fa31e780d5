"""LostAndFound (Pinggera et al., IROS 2016), as distributed (www.6d-vision.com/lostandfounddataset), with
depth from its stereo disparity.

Layout (ROOT = the folder holding the unpacked archives; Cityscapes-style)
-------------------------------------------------------------------------
::

    ROOT/leftImg8bit/<split>/<scene>/<fid>_leftImg8bit.png        (.webp/.jpg re-encodings accepted too)
    ROOT/gtCoarse/<split>/<scene>/<fid>_gtCoarse_labelIds.png     uint8
    ROOT/disparity/<split>/<scene>/<fid>_disparity.png            optional, uint16
    ROOT/camera/<split>/<scene>/<fid>_camera.json                 optional

``fid`` = ``<scene>_<seq:06d>_<frame:06d>`` with ``<scene>`` = ``<NN>_<street name>`` (e.g.
``01_Hanns_Klemm_Str_45_000000_000080`` lives in ``01_Hanns_Klemm_Str_45/``). Splits: ``test`` (default), ``train``.

Label encoding (verified against SegmentMeIfYouCan/road-anomaly-benchmark ``datasets/tracks.py``,
``LAF_CLASSES = dict(ignore=0, usual=1, anomaly=[2, 200])``, and the class list of its LAF loader: 0 background,
1 free space, 2.. the obstacle types): the standard obstacle protocol (Fishyscapes/SMIYC) evaluates only the
drivable area, so ``ood``: 1 (free space / road) -> 0, 2..200 (obstacles) -> 1, everything else -> 255 (void).
``semantic`` is None (LAF has no Cityscapes labels).

Depth (encoding verified against the LAF/Cityscapes note quoted in the road-anomaly-benchmark LAF loader: "for
each pixel p with p > 0: d = (float(p) - 1.) / 256., while a value p = 0 is an invalid measurement"; camera JSON
keys ``extrinsic.baseline`` and ``intrinsic.fx`` as read by matejgrcic/DenseHybrid
``lost_and_found_with_distance.py``): ``depth = baseline * fx / d`` in metres, NaN where p = 0 or d <= 0.
(DenseHybrid's own code averages fx and fy; this loader uses fx, the Cityscapes convention.) Filled only when
``disparity/<split>`` and ``camera/<split>`` exist, otherwise None.

The full benchmark splits hold 1036 (train) and 1203 (test) frames; frames whose label maps are all zero are
*not* removed here (see ``smiyc-laf-noknown`` for the SMIYC exclusion lists). Names: ``fid``, sorted.
"""
from __future__ import annotations

import re
from pathlib import Path

from densehybrid_ros.datasets._common import (
    Item, ListDataset, binary_ood, check_same_size, find_images, read_depth, read_label, read_rgb, require_dir,
    resolve_split, strip_suffix,
)
from densehybrid_ros.datasets.base import DatasetError, EvalSample, register

SPLITS = ("test", "train")
IMAGE_SUFFIX = "_leftImg8bit"
LABEL_SUFFIX = "_gtCoarse_labelIds.png"
FID_PATTERN = re.compile(r"^(\d{2})_(.+)_(\d{6})_(\d{6})$")

OOD_INLIER_IDS = (1,)                  # free space
OOD_ANOMALY_IDS = tuple(range(2, 201))  # obstacle ids (benchmark range 2..200)


def scene_of(fid: str) -> str:
    """``01_Hanns_Klemm_Str_45_000000_000080`` -> ``01_Hanns_Klemm_Str_45`` (the scene folder)."""
    match = FID_PATTERN.match(fid)
    if match is None:
        raise DatasetError(f"LostAndFound frame id {fid!r} is not <NN>_<scene>_<seq:06d>_<frame:06d>")
    return f"{match.group(1)}_{match.group(2)}"


def laf_ood(label_ids):
    return binary_ood(label_ids, OOD_INLIER_IDS, OOD_ANOMALY_IDS)


def depth_paths(root: Path, split: str, fid: str) -> dict:
    """Disparity/camera paths of ``fid`` when the dataset ships them (both folders present), else {}."""
    if not ((root / "disparity" / split).is_dir() and (root / "camera" / split).is_dir()):
        return {}
    scene = scene_of(fid)
    return {"disparity": root / "disparity" / split / scene / f"{fid}_disparity.png",
            "camera": root / "camera" / split / scene / f"{fid}_camera.json"}


def list_laf(kind: str, root: Path, split: str) -> list[Item]:
    """All frames of ``leftImg8bit/<split>/*/``, sorted by fid (the order the SMIYC benchmark indexes)."""
    image_root = require_dir(kind, root / "leftImg8bit" / split, "image")
    require_dir(kind, root / "gtCoarse" / split, "label")
    has_depth = (root / "disparity" / split).is_dir() and (root / "camera" / split).is_dir()
    items = []
    for scene_dir in sorted(p for p in image_root.iterdir() if p.is_dir()):
        for image in find_images(scene_dir, IMAGE_SUFFIX):
            fid = strip_suffix(image.name[: -len(image.suffix)], IMAGE_SUFFIX)
            extras = {"scene": scene_dir.name}
            if has_depth:
                extras["disparity"] = root / "disparity" / split / scene_dir.name / f"{fid}_disparity.png"
                extras["camera"] = root / "camera" / split / scene_dir.name / f"{fid}_camera.json"
            label = root / "gtCoarse" / split / scene_dir.name / f"{fid}{LABEL_SUFFIX}"
            items.append(Item(name=fid, image=image, label=label, extras=extras))
    if not items:
        raise DatasetError(f"{kind}: no *{IMAGE_SUFFIX}.png|webp|jpg files under {image_root}/<scene>/")
    items.sort(key=lambda item: item.name)
    return items


def load_laf_item(kind: str, item: Item) -> EvalSample:
    image = read_rgb(kind, item.image)
    label_ids = read_label(kind, item.label, "labelIds")
    check_same_size(kind, image, label_ids, item.label, "labelIds")
    depth = None
    if "disparity" in item.extras:
        depth = read_depth(kind, item.extras["disparity"], item.extras["camera"])
        check_same_size(kind, image, depth, item.extras["disparity"], "disparity")
    return EvalSample(name=item.name, image=image, ood=laf_ood(label_ids), depth=depth,
                      extras={"scene": item.extras["scene"]})


class LostAndFoundDataset(ListDataset):
    kind = "lostandfound"
    classes = None

    def __init__(self, root: Path, split: str | None):
        split = resolve_split(self.kind, split, SPLITS, "test")
        super().__init__(root, split, list_laf(self.kind, Path(root), split))

    def load(self, item: Item) -> EvalSample:
        return load_laf_item(self.kind, item)


@register("lostandfound")
def open_lostandfound(root: Path, split: str | None) -> LostAndFoundDataset:
    return LostAndFoundDataset(root, split)
