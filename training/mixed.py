"""Training samples: augmented inlier crops, optionally turned into mixed-content images (thesis 4.17).

Every random choice of sample (epoch, index) comes from its own generator seeded by (seed, epoch, index),
so a batch depends only on the step that draws it: runs resume exactly, with any number of loader workers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from densehybrid_training.paste import check_pasting, ground_position, paste_negative, random_position, random_side

AugmentFn = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class PasteOptions:
    """How real negatives are pasted (eq. 4.17). The defaults are the public recipe: one negative per image, longer
    side uniform in `side` (px), at a uniform position."""

    side: tuple[int, int] = (16, 128)  # longer side of a pasted negative (px), at most the crop's shorter side
    side_scale: str = "uniform"  # "uniform" or "log" (paste.random_side)
    per_image: int = 1  # negatives pasted into each image that gets any
    ground_prob: float = 0.0  # chance that a negative stands on a `ground_ids` pixel (paste.ground_position)
    ground_ids: tuple[int, ...] = ()  # class ids of the ground (e.g. road, sidewalk)

    def __post_init__(self) -> None:
        check_pasting(self.side, self.side_scale, self.per_image, self.ground_prob)
        if self.ground_prob > 0 and not self.ground_ids:
            raise ValueError("negatives can stand on the ground only with ground class ids")


class MixedContentDataset(Dataset):
    """Yields (x float32 (3, H, W) normalised, labels int64 (H, W) with 255 = void, d_out bool (H, W)).

    `inliers[i]` -> (uint8 RGB image, uint8 labels); `negatives[j]` -> (uint8 RGB image, bool mask) or None.
    Items are addressed as (index, epoch) pairs by `StepBatchSampler`.
    """

    def __init__(self, inliers, augment: AugmentFn, mean: Sequence[float], std: Sequence[float], seed: int = 0,
                 negatives=None, paste_prob: float = 1.0, paste: PasteOptions = PasteOptions()) -> None:
        from densehybrid_training.data.augment import NegativeResize

        if len(inliers) == 0:
            raise ValueError("the inlier training dataset is empty")
        if negatives is not None and len(negatives) == 0:
            raise ValueError("the negative dataset is empty")
        self.inliers, self.negatives, self.augment = inliers, negatives, augment
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.seed, self.paste_prob = seed, paste_prob
        self.paste = paste
        self.resize_negative = NegativeResize.resize

    def __len__(self) -> int:
        return len(self.inliers)

    def _paste_one(self, x: torch.Tensor, y: torch.Tensor, d_out: torch.Tensor, ground: np.ndarray | None,
                   rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One negative pasted into (x, y, d_out); `ground`: where it may stand (with paste.ground_prob)."""
        neg_img, neg_mask = self.negatives.sample(int(rng.integers(len(self.negatives))), rng)
        H, W = y.shape
        side = random_side(rng, self.paste.side[0], min(self.paste.side[1], H, W), self.paste.side_scale)
        neg_img, neg_mask = self.resize_negative(neg_img, neg_mask, side)
        if rng.random() < 0.5:
            neg_img, neg_mask = neg_img[:, ::-1].copy(), neg_mask[:, ::-1].copy()  # 1-px-wide: see augment.py
        position = None
        if ground is not None and rng.random() < self.paste.ground_prob:
            position = ground_position(rng, ground & ~d_out.numpy(), neg_mask)  # not on an earlier negative
        top, left = position if position is not None else random_position(rng, H, W, *neg_mask.shape)
        patch = torch.from_numpy(np.ascontiguousarray(neg_img)).permute(2, 0, 1).float() / 255.0
        return paste_negative(x, y, d_out, patch, torch.from_numpy(np.ascontiguousarray(neg_mask)), top, left)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index, epoch = key
        rng = np.random.default_rng([self.seed, epoch, index])
        image, labels = self.inliers[index]
        image, labels = self.augment(image, labels, rng)
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
        y = torch.from_numpy(np.ascontiguousarray(labels)).long()
        d_out = torch.zeros(y.shape, dtype=torch.bool)
        if self.negatives is not None and rng.random() < self.paste_prob:
            ground = None
            if self.paste.ground_prob > 0:
                ground = np.isin(np.asarray(labels), self.paste.ground_ids)
            for _ in range(self.paste.per_image):
                x, y, d_out = self._paste_one(x, y, d_out, ground, rng)
        return (x - self.mean) / self.std, y, d_out


class StepBatchSampler(Sampler):
    """Batches for steps [start, stop) of one rank: epoch e visits a permutation seeded by (seed, e) (with `weights`:
    as many draws with replacement, in proportion to them); rank r of `world` takes every world-th index of it.
    Batch b of an epoch is the same however the run is split."""

    def __init__(self, num_items: int, batch_size: int, start: int, stop: int, seed: int = 0, rank: int = 0,
                 world: int = 1, weights: Sequence[float] | None = None) -> None:
        self.per_rank = num_items // world
        if self.per_rank < batch_size:
            raise ValueError(f"{num_items} training images are too few for batch size {batch_size} x {world} process(es)")
        self.num_items, self.batch_size, self.start, self.stop = num_items, batch_size, start, stop
        self.seed, self.rank, self.world = seed, rank, world
        self.steps_per_epoch = self.per_rank // batch_size
        self.p = None
        if weights is not None:  # an epoch draws num_items images with replacement, in proportion to `weights`
            w = np.asarray(weights, np.float64)
            if w.shape != (num_items,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
                raise ValueError(f"weights must be {num_items} finite values >= 0 with a positive sum")
            self.p = w / w.sum()

    def batch(self, step: int) -> list[tuple[int, int]]:
        epoch, b = divmod(step, self.steps_per_epoch)
        rng = np.random.default_rng([self.seed, 7919, epoch])
        if self.p is None:
            perm = rng.permutation(self.num_items)
        else:
            perm = rng.choice(self.num_items, self.num_items, p=self.p)
        mine = perm[self.rank :: self.world][: self.per_rank]
        return [(int(i), epoch) for i in mine[b * self.batch_size : (b + 1) * self.batch_size]]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            yield self.batch(step)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)
