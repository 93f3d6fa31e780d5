"""Augmentation of training samples (numpy + OpenCV, every random choice from a caller's ``np.random.Generator``)
and the collates that turn samples into normalised float tensors.

Inliers (:class:`InlierAugment`, ``aug(image, labels, rng) -> (image, labels)``): random scale (bilinear
image, nearest labels) -> random crop of a fixed size (a scaled image smaller than the crop is placed at a
random position, the rest padded: image ``pad_value``, labels 255) -> photometric jitter of the image pixels
(not of the padding) -> horizontal flip.
Crop and flip move image and labels by the same integer offsets, so they stay pixel-aligned. Nearest-neighbour
resizing uses ``cv2.INTER_NEAREST_EXACT`` (pixel-centre aligned like ``INTER_LINEAR``): plain
``INTER_NEAREST`` samples ``floor(x / scale)`` and shifts labels by up to one source pixel against the image.

Negatives (:class:`NegativeResize`, ``aug(image, mask, rng) -> (image, mask)``): resize so that the longer
side is uniform in ``side_range`` (bilinear / area image, nearest mask) and flip.

Public recipe for comparison (matejgrcic/DenseHybrid ``JitterRandomCrop``): scale 0.5..2 of the shorter side,
crop 512 (Cityscapes) / 768 (StreetHazards), pad with the dataset mean / ignore id, random horizontal flip,
no colour jitter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from densehybrid_ros.datasets.base import VOID
from densehybrid_training.data.common import sample_rng

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_MEAN_UINT8 = tuple(int(round(255 * m)) for m in IMAGENET_MEAN)  # (124, 116, 104)

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "IMAGENET_MEAN_UINT8", "PhotometricJitter", "InlierAugment", "NegativeResize",
    "scale_crop", "AugmentedDataset", "InlierCollate", "NegativeCollate", "to_tensor",
]


@dataclass(frozen=True)
class PhotometricJitter:
    """Colour jitter of a uint8 RGB image, factors drawn uniformly: brightness ``1 +- brightness`` (scales all
    channels), contrast ``1 +- contrast`` (around the mean grey level), saturation ``1 +- saturation`` (around
    the per-pixel grey), hue shift ``+- hue`` of a full turn. Applied in that order; values are clipped to 0..255."""

    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"PhotometricJitter.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"PhotometricJitter.hue must be in [0, 0.5], got {self.hue}")

    def factors(self, rng: np.random.Generator) -> tuple[float, float, float, float]:
        b = 1.0 + rng.uniform(-self.brightness, self.brightness)
        c = 1.0 + rng.uniform(-self.contrast, self.contrast)
        s = 1.0 + rng.uniform(-self.saturation, self.saturation)
        h = rng.uniform(-self.hue, self.hue)
        return b, c, s, h

    @staticmethod
    def apply(image: np.ndarray, b: float, c: float, s: float, h: float) -> np.ndarray:
        x = image.astype(np.float32) * b
        grey = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        x = (x - grey.mean()) * c + grey.mean()
        grey = (x @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
        x = grey + (x - grey) * s
        out = np.clip(np.rint(x), 0, 255).astype(np.uint8)
        if h != 0.0:
            hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV_FULL)  # hue 0..255 for a full turn
            hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + int(round(h * 256))) % 256).astype(np.uint8)
            out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
        return out

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(image, *self.factors(rng))


def _scale_crop(image: np.ndarray, labels: np.ndarray, scale: float, crop: tuple[int, int], offset: tuple[int, int],
                pad_value: Sequence[int], ignore: int):
    H, W = labels.shape
    sh, sw = max(1, int(round(H * scale))), max(1, int(round(W * scale)))
    if (sh, sw) != (H, W):
        image = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_LINEAR)
        labels = cv2.resize(labels, (sw, sh), interpolation=cv2.INTER_NEAREST_EXACT)
    ch, cw = crop
    top, left = offset
    if not (min(0, sh - ch) <= top <= max(0, sh - ch) and min(0, sw - cw) <= left <= max(0, sw - cw)):
        raise ValueError(f"crop offset {offset} outside the valid range for a {sh}x{sw} image and {ch}x{cw} crop")
    out_img = np.empty((ch, cw, 3), dtype=np.uint8)
    out_img[:] = np.asarray(pad_value, dtype=np.uint8)
    out_lab = np.full((ch, cw), ignore, dtype=np.uint8)
    r0, c0 = max(0, -top), max(0, -left)  # where the image starts in the crop
    sr, sc = max(0, top), max(0, left)    # where the crop starts in the image
    h, w = min(ch - r0, sh - sr), min(cw - c0, sw - sc)
    out_img[r0:r0 + h, c0:c0 + w] = image[sr:sr + h, sc:sc + w]
    out_lab[r0:r0 + h, c0:c0 + w] = labels[sr:sr + h, sc:sc + w]
    return out_img, out_lab, (r0, r0 + h, c0, c0 + w)


def scale_crop(image: np.ndarray, labels: np.ndarray, scale: float, crop: tuple[int, int], offset: tuple[int, int],
               pad_value: Sequence[int] = IMAGENET_MEAN_UINT8, ignore: int = VOID) -> tuple[np.ndarray, np.ndarray]:
    """Resize by ``scale`` (size ``round(H * scale) x round(W * scale)``; bilinear image, centre-aligned nearest
    labels) and take the ``crop = (h, w)`` window whose top-left corner is ``offset = (top, left)`` in the scaled
    image. Along a side where the scaled image is smaller than the crop the offset is <= 0 (the image is placed
    ``-offset`` pixels into the crop); pixels outside the image are ``pad_value`` / ``ignore``."""
    out_img, out_lab, _ = _scale_crop(image, labels, scale, crop, offset, pad_value, ignore)
    return out_img, out_lab


class InlierAugment:
    """Training augmentation of an inlier sample (see module doc); ``aug(image, labels, rng)``.

    ``crop``: output (h, w); ``scale_range``: uniform scale factor of the image side lengths; ``flip_prob``:
    probability of a horizontal flip; ``jitter``: a :class:`PhotometricJitter`, True for the defaults or
    None/False for none; ``pad_value``: RGB fill of padded image pixels (ImageNet mean: 0 after normalisation).
    """

    def __init__(self, crop: tuple[int, int], scale_range: tuple[float, float] = (0.5, 2.0), flip_prob: float = 0.5,
                 jitter: PhotometricJitter | bool | None = True, pad_value: Sequence[int] = IMAGENET_MEAN_UINT8,
                 ignore: int = VOID):
        if len(crop) != 2 or min(crop) < 1:
            raise ValueError(f"crop must be (h, w) with positive sides, got {crop}")
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {scale_range}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.crop = (int(crop[0]), int(crop[1]))
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.flip_prob = float(flip_prob)
        self.jitter = PhotometricJitter() if jitter is True else (jitter or None)
        self.pad_value = tuple(int(v) for v in pad_value)
        self.ignore = int(ignore)

    def params(self, shape: tuple[int, int], rng: np.random.Generator) -> dict:
        """The random choices for an image of ``shape`` (H, W): scale, crop offset (uniform over the crops that
        lie inside the scaled image, or over the placements of a smaller scaled image inside the crop), flip."""
        H, W = shape
        scale = float(rng.uniform(*self.scale_range))
        sh, sw = max(1, int(round(H * scale))), max(1, int(round(W * scale)))
        dh, dw = sh - self.crop[0], sw - self.crop[1]
        top = int(rng.integers(min(0, dh), max(0, dh) + 1))
        left = int(rng.integers(min(0, dw), max(0, dw) + 1))
        flip = bool(rng.random() < self.flip_prob)
        return {"scale": scale, "offset": (top, left), "flip": flip}

    def __call__(self, image: np.ndarray, labels: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if image.shape[:2] != labels.shape:
            raise ValueError(f"image {image.shape} and labels {labels.shape} differ in size")
        factors = self.jitter.factors(rng) if self.jitter is not None else None
        p = self.params(labels.shape, rng)
        image, labels, (r0, r1, c0, c1) = _scale_crop(image, labels, p["scale"], self.crop, p["offset"],
                                                      self.pad_value, self.ignore)
        if factors is not None and r1 > r0 and c1 > c0:  # jitter the image pixels only, not the padding
            image[r0:r1, c0:c1] = self.jitter.apply(np.ascontiguousarray(image[r0:r1, c0:c1]), *factors)
        if p["flip"]:
            # copy(), not ascontiguousarray: a flipped 1-px-wide array keeps its negative stride
            image, labels = image[:, ::-1].copy(), labels[:, ::-1].copy()
        return np.ascontiguousarray(image), np.ascontiguousarray(labels)


class NegativeResize:
    """Random resize of a negative: longer side uniform in ``side_range`` (integers, inclusive); aspect ratio
    kept; bilinear (area when shrinking) image, nearest mask. A mask that nearest-neighbour shrinking would empty
    is resized by area instead (any coverage counts), so a small object never vanishes. ``flip_prob``:
    horizontal flip."""

    def __init__(self, side_range: tuple[int, int] = (16, 192), flip_prob: float = 0.5):
        if not 1 <= side_range[0] <= side_range[1]:
            raise ValueError(f"side_range must satisfy 1 <= lo <= hi, got {side_range}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.side_range = (int(side_range[0]), int(side_range[1]))
        self.flip_prob = float(flip_prob)

    @staticmethod
    def resize(image: np.ndarray, mask: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
        h, w = mask.shape
        scale = side / max(h, w)
        size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))  # cv2: (width, height)
        if (size[1], size[0]) == (h, w):
            return image, mask
        shrink = scale < 1
        img = cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        m = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST_EXACT).astype(bool)
        if mask.any() and not m.any():
            m = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0
        return img, m

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if image.shape[:2] != mask.shape:
            raise ValueError(f"negative image {image.shape} and mask {mask.shape} differ in size")
        side = int(rng.integers(self.side_range[0], self.side_range[1] + 1))
        image, mask = self.resize(image, mask, side)
        if rng.random() < self.flip_prob:
            # copy(), not ascontiguousarray: a flipped 1-px-wide array keeps its negative stride
            image, mask = image[:, ::-1].copy(), mask[:, ::-1].copy()
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)


class AugmentedDataset(Dataset):
    """``base[i]`` passed through ``transform(a, b, rng)`` with ``rng = sample_rng(seed, epoch, i)``: the same
    (seed, epoch, i) always gives the same sample, whatever worker or order draws it. Call :meth:`set_epoch`
    between epochs. For a :class:`~densehybrid_training.data.common.NegativeDataset` base, its own random choices use
    the same generator (via ``base.sample``)."""

    def __init__(self, base, transform: Callable, seed: int = 0):
        self.base = base
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self.classes = getattr(base, "classes", None)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        rng = sample_rng(self.seed, self.epoch, index)
        a, b = self.base.sample(index, rng) if hasattr(self.base, "sample") else self.base[index]
        return self.transform(a, b, rng)


def to_tensor(image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """HxWx3 uint8 RGB -> 3xHxW float32, ``(x / 255 - mean) / std``."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s


class InlierCollate:
    """Batch of (image HxWx3 uint8, labels HxW uint8) of one size -> (Bx3xHxW float32 normalised, BxHxW int64)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean/std must be 3 values, std > 0; got {mean}, {std}")

    def __call__(self, batch: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
        if not batch:
            raise ValueError("empty batch")
        shapes = {(img.shape, lab.shape) for img, lab in batch}
        if len(shapes) != 1:
            raise ValueError(f"samples of one batch must share a size (crop them first), got {sorted(shapes)}")
        images = np.stack([img for img, _ in batch])
        labels = np.stack([lab for _, lab in batch])
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
        x = (x - torch.tensor(self.mean).view(1, 3, 1, 1)) / torch.tensor(self.std).view(1, 3, 1, 1)
        return x.contiguous(), torch.from_numpy(labels).long()


class NegativeCollate:
    """Batch of negatives (image hxwx3 uint8, mask hxw bool) of any sizes -> (Bx3xHmxWm float32 normalised,
    BxHmxWm bool): each negative at the top-left, zero image / false mask elsewhere (Hm, Wm = largest sizes)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)

    def __call__(self, batch: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
        if not batch:
            raise ValueError("empty batch")
        hm = max(m.shape[0] for _, m in batch)
        wm = max(m.shape[1] for _, m in batch)
        x = torch.zeros((len(batch), 3, hm, wm), dtype=torch.float32)
        masks = torch.zeros((len(batch), hm, wm), dtype=torch.bool)
        for i, (img, m) in enumerate(batch):
            h, w = m.shape
            x[i, :, :h, :w] = to_tensor(img, self.mean, self.std)
            masks[i, :h, :w] = torch.from_numpy(np.ascontiguousarray(m, dtype=bool))
        return x, masks
