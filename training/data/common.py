"""Shared plumbing of the training datasets: class lists, per-sample random generators, the inlier and
negative dataset base classes and the mask helpers used by every negative source.

File reading goes through :mod:`densehybrid_ros.datasets._common` (checked dtypes/shapes, a
:class:`~densehybrid_ros.datasets.base.DatasetError` naming the file instead of ``None``), so the training and
evaluation loaders read pixels the same way.
"""
from __future__ import annotations

import operator
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch.utils.data

from densehybrid_ros.datasets.base import VOID, DatasetError

__all__ = [
    "VOID", "DatasetError", "ClassInfo", "sample_rng", "InlierDataset", "NegativeDataset", "NEGATIVE_MODES",
    "mask_bbox", "crop_to_mask", "random_rectangle_crop", "resolve_split", "check_allowed", "class_list",
]

Color = tuple[int, int, int]


class ClassInfo(NamedTuple):
    """One known class of a training taxonomy: its name and display colour (RGB)."""

    name: str
    color: Color


def class_list(names: Sequence[str], colors: Sequence[Color]) -> tuple[ClassInfo, ...]:
    if len(names) != len(colors):
        raise ValueError(f"{len(names)} class names but {len(colors)} colours")
    return tuple(ClassInfo(str(n), tuple(int(v) for v in c)) for n, c in zip(names, colors))


def sample_rng(seed: int, *keys: int) -> np.random.Generator:
    """The generator of one sample: a pure function of ``(seed, *keys)`` (e.g. ``(seed, epoch, index)``), so a
    sample does not depend on which loader worker draws it or on what was drawn before."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *(int(k) for k in keys)])


def _index(index: int, n: int, kind: str) -> int:
    index = operator.index(index)
    if index < 0:
        index += n
    if not 0 <= index < n:
        raise IndexError(f"{kind}: index {index} out of range for {n} samples")
    return index


class InlierDataset(torch.utils.data.Dataset):
    """A closed-set training dataset: ``ds[i] -> (image, labels)``.

    ``image`` is HxWx3 uint8 RGB, ``labels`` HxW uint8 with ``0..K-1`` for the K classes of :attr:`classes`
    and 255 (void) for pixels to ignore, both before any augmentation. Subclasses list their samples in
    ``__init__`` (checking that every label file exists) and read pixels in :meth:`load`.
    """

    kind: str = ""

    def __init__(self, root: Path, split: str, names: Sequence[str], classes: Sequence[ClassInfo]):
        self.root = Path(root)
        self.split = split
        self.names = list(names)
        self.classes: tuple[ClassInfo, ...] = tuple(classes)
        if not self.names:
            raise DatasetError(f"{self.kind}: no samples found under {self.root} (split {split!r})")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def class_colors(self) -> tuple[Color, ...]:
        return tuple(c.color for c in self.classes)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        index = _index(index, len(self.names), self.kind)
        image, labels = self.load(index)
        if image.shape[:2] != labels.shape or labels.dtype != np.uint8:
            raise DatasetError(f"{self.kind}: sample {self.names[index]!r} gave image {image.shape} and labels "
                               f"{labels.dtype} {labels.shape}")  # pragma: no cover - guarded by the loaders
        return image, labels

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
                f"classes={self.num_classes})")


NEGATIVE_MODES = ("mask", "rectangle", "mixed")


class NegativeDataset(torch.utils.data.Dataset):
    """A source of negatives: ``ds[j] -> (image, mask)``, the pixels of ``image`` (HxWx3 uint8) to paste are
    those where ``mask`` (HxW bool) is true.

    Modes (public DenseHybrid recipe: per negative, a rectangle with probability 0.5, otherwise object masks):

    - ``"mask"``: a crop to the bounding box of the union of object (instance or class) masks; ``mask`` is that
      union. Classes of the inlier taxonomy are never part of it (each source documents its excluded list).
    - ``"rectangle"``: a random rectangular crop of a whole image, ``mask`` all true. The crop may contain any
      content (as in the public recipe); pass ``exclude_in_rectangle=True`` where supported to clear the pixels
      of excluded classes from the mask instead.
    - ``"mixed"``: ``"rectangle"`` with probability ``rect_prob``, otherwise ``"mask"``.

    Random choices come from a generator: ``ds.sample(j, rng)`` uses the caller's, ``ds[j]`` the generator
    ``sample_rng(seed, j)`` (the same negative for the same ``j``; callers that have a per-sample generator
    should prefer :meth:`sample` for more variety).
    """

    kind: str = ""

    def __init__(self, root: Path, split: str, count: int, mode: str = "mask", rect_prob: float = 0.5,
                 min_rect_side: int = 16, seed: int = 0, max_tries: int = 20):
        if mode not in NEGATIVE_MODES:
            raise DatasetError(f"{self.kind}: unknown negative mode {mode!r} (expected one of: "
                               f"{', '.join(NEGATIVE_MODES)})")
        if not 0.0 <= rect_prob <= 1.0:
            raise DatasetError(f"{self.kind}: rect_prob must be in [0, 1], got {rect_prob}")
        if min_rect_side < 1:
            raise DatasetError(f"{self.kind}: min_rect_side must be >= 1, got {min_rect_side}")
        if max_tries < 1:
            raise DatasetError(f"{self.kind}: max_tries must be >= 1, got {max_tries}")
        self.root = Path(root)
        self.split = split
        self.mode = mode
        self.rect_prob = float(rect_prob)
        self.min_rect_side = int(min_rect_side)
        self.seed = int(seed)
        self.max_tries = int(max_tries)
        self.count = int(count)
        if self.count == 0:
            raise DatasetError(f"{self.kind}: no usable negatives under {self.root} (split {split!r})")

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.sample(index, sample_rng(self.seed, index))

    def sample(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The negative behind ``index`` drawn with ``rng``. In mask mode a sample without a usable object
        (e.g. an image showing only excluded classes) is replaced by a uniformly drawn other one, up to
        ``max_tries`` samples; then a DatasetError names the last one tried."""
        index = _index(index, self.count, self.kind)
        mode = self.mode
        if mode == "mixed":
            mode = "rectangle" if rng.random() < self.rect_prob else "mask"
        if mode == "rectangle":
            return self.rectangle(index, rng)
        for attempt in range(self.max_tries):
            if attempt:
                index = int(rng.integers(self.count))
            out = self.masked(index, rng)
            if out is not None:
                return out
        raise DatasetError(f"{self.kind}: no usable object mask in {self.max_tries} tried samples of {self.root} "
                           f"(last: {self.describe(index)})")

    def rectangle(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A random rectangle of the whole image behind ``index``; the mask is all true, or, where the source
        was opened with ``exclude_in_rectangle=True``, false on pixels of excluded classes."""
        image, keep = self.full_image(index)
        return random_rectangle_crop(image, rng, self.min_rect_side, keep)

    def full_image(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:  # pragma: no cover - abstract
        """(image, keep): the whole image and None, or a bool map of the pixels a rectangle may keep."""
        raise NotImplementedError

    def masked(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:  # pragma: no cover
        """A crop to the union of randomly chosen object masks, or None when ``index`` has no usable object."""
        raise NotImplementedError

    def describe(self, index: int) -> str:
        return f"sample {index}"

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
                f"mode={self.mode!r})")


# --- mask helpers -----------------------------------------------------------------------------------------

def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the true pixels, bottom/right exclusive; ValueError on an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("empty mask has no bounding box")
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def crop_to_mask(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image and mask cropped to the mask's bounding box (copies)."""
    top, left, bottom, right = mask_bbox(mask)
    return (np.ascontiguousarray(image[top:bottom, left:right]),
            np.ascontiguousarray(mask[top:bottom, left:right]).astype(bool))


def random_rectangle_crop(image: np.ndarray, rng: np.random.Generator, min_side: int = 16,
                          keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A rectangle with sides uniform in ``min_side..H`` and ``min_side..W`` (clipped to the image) at a uniform
    position. ``mask`` is all true, or ``keep`` cropped the same way when given."""
    H, W = image.shape[:2]
    h = int(rng.integers(min(min_side, H), H + 1))
    w = int(rng.integers(min(min_side, W), W + 1))
    top = int(rng.integers(0, H - h + 1))
    left = int(rng.integers(0, W - w + 1))
    crop = np.ascontiguousarray(image[top:top + h, left:left + w])
    if keep is None:
        mask = np.ones((h, w), dtype=bool)
    else:
        mask = np.ascontiguousarray(keep[top:top + h, left:left + w]).astype(bool)
    return crop, mask


def check_allowed(kind: str, label: np.ndarray, allowed: np.ndarray, path: Path, what: str = "label") -> None:
    """DatasetError naming the first value of a uint8 ``label`` whose entry in the 256-entry bool table
    ``allowed`` is false. One pass over the pixels (``np.unique`` sorts, too slow for 8 MP Vistas labels)."""
    bad = ~allowed[label]
    if bad.any():
        value = int(label[bad].flat[0])
        raise DatasetError(f"{kind}: {what} {path} contains value {value} outside the dataset's encoding "
                           f"(allowed: {np.flatnonzero(allowed).tolist()[:40]})")


def resolve_split(kind: str, split: str | None, aliases: dict[str, str], default: str) -> str:
    """``split`` through ``aliases`` (canonical names map to themselves), ``default`` for None/""; a
    DatasetError names any other value."""
    if split is None or split == "":
        return default
    if split not in aliases:
        raise DatasetError(f"{kind}: unknown split {split!r} (expected one of: {', '.join(sorted(aliases))})")
    return aliases[split]
