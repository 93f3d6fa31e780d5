"""SegmentMeIfYouCan (Chan et al., NeurIPS 2021 datasets track): AnomalyTrack, ObstacleTrack and
LostAndFound-noKnown, in the layouts read by the official benchmark code
(SegmentMeIfYouCan/road-anomaly-benchmark, ``road_anomaly_benchmark/datasets/tracks.py`` and ``tracks_extra.py``).

``smiyc-anomaly`` (ROOT = ``dataset_AnomalyTrack``) and ``smiyc-obstacle`` (ROOT = ``dataset_ObstacleTrack``)
-------------------------------------------------------------------------------------------------------------
::

    ROOT/images/<fid>.jpg | .webp | .png                  (AnomalyTrack ships jpg, ObstacleTrack webp)
    ROOT/labels_masks/<fid>_labels_semantic.png           uint8, only for the validation frames

Label encoding (benchmark ``classes = dict(usual=0, anomaly=1, ignore=255)``; it maps ``== usual`` -> 0,
``== anomaly`` -> 1 and everything else -> 255): ``ood`` 0 inlier, 1 anomaly, any other value void.
The public download has labels only for the validation frames; a frame without a label file yields
``ood = None`` in the ``all``/``test`` splits, and is a DatasetError in the ``validation`` split.

Splits (benchmark configs):

* anomaly: ``all`` (default, 110 frames), ``validation`` (``validation0000``..``validation0009``, i.e. fids starting
  with ``validation``), ``test`` (the other 100).
* obstacle: scene = fid up to the first ``_``. ``all`` (default), ``test`` (scenes curvy-street, one-way-street,
  gravel, greyasphalt, motorway, paving, darkasphalt, darkasphalt2: 327 frames), ``validation`` (scene
  ``validation`` minus the fids starting with ``validation_19`` and ``validation_21``..``validation_29``: 30 frames),
  ``night`` (driveway), ``snowstorm`` (snowstorm1, snowstorm2).

``smiyc-laf-noknown`` (ROOT = ``dataset_LostAndFound``, the original LostAndFound layout)
----------------------------------------------------------------------------------------
LostAndFound ``test`` (see :mod:`densehybrid_ros.datasets.lostandfound` for layout, label encoding and depth),
minus (benchmark config ``LostAndFound-testNoKnown``, 1043 frames):

* the 17 frames with all-zero labels, given by their indices in the fid-sorted list of the 1203 test frames
  (:data:`LAF_TEST_INVALID_INDICES`). The indices are only meaningful for the complete test split: when the split
  does not hold exactly 1203 frames they are *not* applied and a warning says so;
* the fids starting with the prefixes of known objects (children, bicycles; :data:`LAF_NOKNOWN_EXCLUDED_PREFIXES`).

The benchmark's "expected_length" counts (110, 327, 30, 1043) are documented here but not enforced, so that partial
copies can be opened; ``len(dataset)`` tells.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from densehybrid_ros.datasets._common import (
    IMAGE_EXTENSIONS, Item, ListDataset, binary_ood, check_same_size, read_label, read_rgb, require_dir,
    resolve_split,
)
from densehybrid_ros.datasets.base import DatasetError, EvalSample, register
from densehybrid_ros.datasets.lostandfound import list_laf, load_laf_item

LABEL_SUFFIX = "_labels_semantic.png"
_EXT_PREFERENCE = {".jpg": 0, ".jpeg": 1, ".webp": 2, ".png": 3}

OBSTACLE_TEST_SCENES = frozenset({"curvy-street", "one-way-street", "gravel", "greyasphalt", "motorway", "paving",
                                  "darkasphalt", "darkasphalt2"})
OBSTACLE_SPLIT_SCENES = {
    "test": OBSTACLE_TEST_SCENES,
    "validation": frozenset({"validation"}),
    "night": frozenset({"driveway"}),
    "snowstorm": frozenset({"snowstorm1", "snowstorm2"}),
}
OBSTACLE_VALIDATION_EXCLUDED_PREFIXES = ("validation_19",) + tuple(f"validation_{i}" for i in range(21, 30))

LAF_TEST_FRAMES = 1203
LAF_TEST_INVALID_INDICES = (17, 37, 55, 72, 91, 110, 129, 153, 174, 197, 218, 353, 490, 618, 686, 792, 793)
LAF_NOKNOWN_EXCLUDED_PREFIXES = (
    "15_Rechbergstr_Deckenpfronn",    # children
    "01_Hanns_Klemm_Str_45_000006",   # bicycle
    "01_Hanns_Klemm_Str_45_000007",   # bicycle
    "10_Schlossberg_9_000004",        # bicycle
)


def _list_track(kind: str, root: Path) -> list[Item]:
    image_dir = require_dir(kind, root / "images", "image")
    by_fid: dict[str, Path] = {}
    for path in sorted(image_dir.iterdir()):
        ext = path.suffix.lower()
        if not path.is_file() or ext not in IMAGE_EXTENSIONS:
            continue
        fid = path.stem
        if fid not in by_fid or _EXT_PREFERENCE[ext] < _EXT_PREFERENCE[by_fid[fid].suffix.lower()]:
            by_fid[fid] = path
    if not by_fid:
        raise DatasetError(f"{kind}: no {'|'.join(IMAGE_EXTENSIONS)} images in {image_dir}")
    return [Item(name=fid, image=by_fid[fid], label=root / "labels_masks" / f"{fid}{LABEL_SUFFIX}")
            for fid in sorted(by_fid)]


class _TrackDataset(ListDataset):
    classes = None
    splits: tuple[str, ...] = ()

    def __init__(self, root: Path, split: str | None):
        split = resolve_split(self.kind, split, self.splits, "all")
        items = [item for item in _list_track(self.kind, Path(root)) if self.keep(item.name, split)]
        if not items:
            raise DatasetError(f"{self.kind}: split {split!r} selects no image under {Path(root) / 'images'}")
        super().__init__(root, split, items)

    @staticmethod
    def keep(fid: str, split: str) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, item: Item) -> EvalSample:
        image = read_rgb(self.kind, item.image)
        if not item.label.is_file() and self.split != "validation":
            return EvalSample(name=item.name, image=image, ood=None)
        label = read_label(self.kind, item.label, "label mask")
        check_same_size(self.kind, image, label, item.label, "label mask")
        return EvalSample(name=item.name, image=image, ood=binary_ood(label, (0,), (1,)))


class AnomalyTrackDataset(_TrackDataset):
    kind = "smiyc-anomaly"
    splits = ("all", "validation", "test")

    @staticmethod
    def keep(fid: str, split: str) -> bool:
        if split == "all":
            return True
        return fid.startswith("validation") == (split == "validation")


class ObstacleTrackDataset(_TrackDataset):
    kind = "smiyc-obstacle"
    splits = ("all", "test", "validation", "night", "snowstorm")

    @staticmethod
    def keep(fid: str, split: str) -> bool:
        if split == "all":
            return True
        if fid.split("_")[0] not in OBSTACLE_SPLIT_SCENES[split]:
            return False
        return not (split == "validation" and fid.startswith(OBSTACLE_VALIDATION_EXCLUDED_PREFIXES))


class LafNoKnownDataset(ListDataset):
    kind = "smiyc-laf-noknown"
    classes = None

    def __init__(self, root: Path, split: str | None):
        split = resolve_split(self.kind, split, ("test",), "test")
        items = list_laf(self.kind, Path(root), "test")
        self.invalid_frames_removed = len(items) == LAF_TEST_FRAMES
        if self.invalid_frames_removed:
            drop = set(LAF_TEST_INVALID_INDICES)
            items = [item for i, item in enumerate(items) if i not in drop]
        else:
            warnings.warn(f"{self.kind}: {Path(root) / 'leftImg8bit' / 'test'} holds {len(items)} frames, not the "
                          f"{LAF_TEST_FRAMES} of the full LostAndFound test split; the benchmark's 17 invalid-label "
                          "frames (given by index) are not removed", stacklevel=3)
        items = [item for item in items if not item.name.startswith(LAF_NOKNOWN_EXCLUDED_PREFIXES)]
        if not items:
            raise DatasetError(f"{self.kind}: no frame left under {root} after the noKnown exclusions")
        super().__init__(root, split, items)

    def load(self, item: Item) -> EvalSample:
        return load_laf_item(self.kind, item)


@register("smiyc-anomaly")
def open_anomaly_track(root: Path, split: str | None) -> AnomalyTrackDataset:
    return AnomalyTrackDataset(root, split)


@register("smiyc-obstacle")
def open_obstacle_track(root: Path, split: str | None) -> ObstacleTrackDataset:
    return ObstacleTrackDataset(root, split)


@register("smiyc-laf-noknown")
def open_laf_noknown(root: Path, split: str | None) -> LafNoKnownDataset:
    return LafNoKnownDataset(root, split)
