"""Shared plumbing for the evaluation loaders: file reading with checked dtypes/shapes, the
Cityscapes-style disparity -> depth conversion, split checking and a lazy list-backed dataset.

Every reader raises :class:`DatasetError` naming the file (and the bad value) instead of returning
``None`` the way ``cv2.imread`` does. Nothing here reads a file at construction time: loaders list
directories in their constructor and read pixels only in ``__getitem__``.
"""
from __future__ import annotations

import json
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from densehybrid_ros.datasets.base import OOD_ANOMALY, OOD_INLIER, VOID, DatasetError, EvalSample

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPE_PALETTE = 3


def resolve_split(kind: str, split: str | None, allowed: Sequence[str], default: str) -> str:
    """``split`` or ``default`` when it is None; a DatasetError names a value outside ``allowed``."""
    if split is None or split == "":
        return default
    if split not in allowed:
        raise DatasetError(f"{kind}: unknown split {split!r} (expected one of: {', '.join(allowed)})")
    return split


def require_dir(kind: str, path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{kind}: {what} directory {path} does not exist")
    return path


def require_file(kind: str, path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"{kind}: {what} file {path} does not exist")
    return path


def _imread(kind: str, path: Path, flags: int, what: str) -> np.ndarray:
    require_file(kind, path, what)
    array = cv2.imread(str(path), flags)
    if array is None:
        raise DatasetError(f"{kind}: cannot decode {what} file {path}")
    return array


def read_rgb(kind: str, path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB. Alpha is dropped, 16-bit files are scaled to 8 bits by OpenCV, and the EXIF
    orientation is ignored so that the pixels stay aligned with the label files."""
    bgr = _imread(kind, path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION, "image")
    if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        raise DatasetError(f"{kind}: image {path} decoded to {bgr.dtype} {bgr.shape}, expected HxWx3 uint8")
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def _is_palette_png(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(26)
    return len(head) == 26 and head[:8] == _PNG_SIGNATURE and head[25] == _PNG_COLOR_TYPE_PALETTE


def read_label(kind: str, path: Path, what: str = "label", dtypes: tuple = (np.uint8,)) -> np.ndarray:
    """A single-channel integer label map, read unchanged (no scaling, no colour conversion).

    Palette PNGs store indices that OpenCV would expand to colours, so they are read as indices through
    Pillow. A 3-channel file is accepted only when its channels are identical (a grey image saved as RGB).
    """
    require_file(kind, path, what)
    if path.suffix.lower() == ".png" and _is_palette_png(path):
        try:
            from PIL import Image
        except ImportError as exc:  # pragma: no cover - Pillow ships with matplotlib/scikit-image
            raise DatasetError(f"{kind}: {what} {path} is a palette PNG and Pillow is not installed") from exc
        with Image.open(path) as img:
            array = np.array(img)
    else:
        array = _imread(kind, path, cv2.IMREAD_UNCHANGED, what)
    if array.ndim == 3:
        channels = array[..., :3]
        if not (np.array_equal(channels[..., 0], channels[..., 1])
                and np.array_equal(channels[..., 0], channels[..., 2])):
            raise DatasetError(f"{kind}: {what} {path} has {array.shape[2]} differing channels, "
                               "expected a single-channel label map")
        array = np.ascontiguousarray(channels[..., 0])
    if array.ndim != 2:
        raise DatasetError(f"{kind}: {what} {path} has shape {array.shape}, expected HxW")
    if array.dtype not in dtypes:
        expected = ", ".join(np.dtype(d).name for d in dtypes)
        raise DatasetError(f"{kind}: {what} {path} has dtype {array.dtype}, expected {expected}")
    return array


def check_same_size(kind: str, image: np.ndarray, other: np.ndarray, path: Path, what: str) -> None:
    if other.shape[:2] != image.shape[:2]:
        raise DatasetError(f"{kind}: {what} {path} is {other.shape[1]}x{other.shape[0]} (WxH) but its image "
                           f"is {image.shape[1]}x{image.shape[0]}")


def check_values(kind: str, label: np.ndarray, allowed: Iterable[int], path: Path, what: str = "label") -> None:
    """DatasetError naming the first value of ``label`` outside ``allowed``."""
    present = np.unique(label)
    bad = np.setdiff1d(present, np.fromiter(allowed, dtype=np.int64), assume_unique=False)
    if bad.size:
        raise DatasetError(f"{kind}: {what} {path} contains value {int(bad[0])} outside the dataset's encoding "
                           f"(present values: {present.tolist()[:20]})")


def lut_map(label: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Map a uint8 label map through a 256-entry uint8 look-up table."""
    assert label.dtype == np.uint8 and lut.shape == (256,) and lut.dtype == np.uint8
    return lut[label]


def binary_ood(label: np.ndarray, inlier: Iterable[int], anomaly: Iterable[int]) -> np.ndarray:
    """Unified ``ood`` map: values in ``inlier`` -> 0, in ``anomaly`` -> 1, everything else -> 255 (void)."""
    out = np.full(label.shape, VOID, dtype=np.uint8)
    out[np.isin(label, np.fromiter(inlier, dtype=np.int64))] = OOD_INLIER
    out[np.isin(label, np.fromiter(anomaly, dtype=np.int64))] = OOD_ANOMALY
    return out


# --- disparity -> depth (Cityscapes / LostAndFound encoding) ---------------------------------------------

def read_camera(kind: str, path: Path) -> tuple[float, float]:
    """(baseline [m], fx [px]) from a Cityscapes-style ``*_camera.json``
    (``{"extrinsic": {"baseline": ...}, "intrinsic": {"fx": ...}}``)."""
    require_file(kind, path, "camera")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{kind}: camera file {path} is not valid JSON ({exc})") from exc
    values = []
    for section, key in (("extrinsic", "baseline"), ("intrinsic", "fx")):
        try:
            value = data[section][key]
        except (KeyError, TypeError):
            raise DatasetError(f"{kind}: camera file {path} has no {section}.{key}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
            raise DatasetError(f"{kind}: camera file {path} has {section}.{key} = {value!r}, "
                               "expected a positive number")
        values.append(float(value))
    return values[0], values[1]


def disparity_to_depth(raw: np.ndarray, baseline: float, fx: float) -> np.ndarray:
    """Cityscapes disparity PNG value ``p`` (uint16) -> depth in metres along the optical axis.

    ``p == 0`` is an invalid measurement; otherwise ``d = (p - 1) / 256`` px and ``depth = baseline * fx / d``.
    Pixels with ``d <= 0`` (``p <= 1``: zero disparity, infinitely far) are NaN, as are invalid ones.
    """
    p = raw.astype(np.float64)
    d = (p - 1.0) / 256.0
    depth = np.full(raw.shape, np.nan, dtype=np.float64)
    valid = (raw > 0) & (d > 0)
    depth[valid] = baseline * fx / d[valid]
    return depth.astype(np.float32)


def read_depth(kind: str, disparity_path: Path, camera_path: Path) -> np.ndarray:
    raw = read_label(kind, disparity_path, "disparity", dtypes=(np.uint16,))
    baseline, fx = read_camera(kind, camera_path)
    return disparity_to_depth(raw, baseline, fx)


# --- lazy list-backed dataset ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    """One sample as found on disk; nothing is read until the dataset is indexed."""
    name: str
    image: Path
    label: Path | None = None
    extras: dict = field(default_factory=dict)


class ListDataset:
    """A sorted list of :class:`Item`; subclasses implement ``load(item) -> EvalSample``."""

    kind: str = ""
    classes: Sequence[str] | None = None

    def __init__(self, root: Path, split: str, items: Sequence[Item]):
        self.root = Path(root)
        self.split = split
        self.items = list(items)
        names = [item.name for item in self.items]
        if len(set(names)) != len(names):
            dup = sorted(n for n in set(names) if names.count(n) > 1)[0]
            raise DatasetError(f"{self.kind}: sample name {dup!r} occurs twice under {self.root}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> EvalSample:
        index = operator.index(index)
        if index < 0:
            index += len(self.items)
        if not 0 <= index < len(self.items):
            raise IndexError(f"{self.kind}: index {index} out of range for {len(self.items)} samples")
        return self.load(self.items[index])

    @property
    def names(self) -> list[str]:
        return [item.name for item in self.items]

    def load(self, item: Item) -> EvalSample:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(kind={self.kind!r}, root={str(self.root)!r}, split={self.split!r}, "
                f"n={len(self)})")


def find_images(directory: Path, suffix: str = "", extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Files directly in ``directory`` named ``*{suffix}{ext}`` for one of ``extensions`` (case-insensitive
    extension), sorted by name."""
    out = []
    for path in directory.iterdir():
        if not path.is_file():
            continue
        name = path.name
        low = name.lower()
        for ext in extensions:
            if low.endswith(ext) and name[: len(name) - len(ext)].endswith(suffix):
                out.append(path)
                break
    return sorted(out, key=lambda p: p.name)


def strip_suffix(name: str, suffix: str) -> str:
    return name[: len(name) - len(suffix)] if suffix and name.endswith(suffix) else name
