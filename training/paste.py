"""Mixed-content images (thesis 4.17): x' = (1 - m) * x+ + pad(x-, m).

A negative (an image patch and its mask) is pasted at a position; pasted pixels get the semantic label
void and the dataset label d_out. The public recipe: per image either a random rectangle (sides
16..min(H, W), step 8) or the union of object masks, at a uniform random position.
"""
from __future__ import annotations

import numpy as np
import torch


from densehybrid_ros.classes import VOID


def paste_negative(image: torch.Tensor, labels: torch.Tensor, d_out: torch.Tensor, patch: torch.Tensor,
                   mask: torch.Tensor, top: int, left: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paste `patch` (C, h, w) where `mask` (h, w) is true into `image` (C, H, W) at (top, left), eq. 4.17.

    Returns new (image, labels, d_out): pasted pixels take the patch's values, label VOID, d_out True;
    everything else is unchanged. The patch must fit inside the image.
    """
    C, H, W = image.shape
    c, h, w = patch.shape
    if c != C:
        raise ValueError(f"patch has {c} channels, image {C}")
    if mask.shape != (h, w):
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from patch size {(h, w)}")
    if not (0 <= top and 0 <= left and top + h <= H and left + w <= W):
        raise ValueError(f"patch {h}x{w} at ({top}, {left}) does not fit in a {H}x{W} image")
    m = torch.zeros((H, W), dtype=torch.bool, device=image.device)
    m[top : top + h, left : left + w] = mask.to(torch.bool)
    padded = torch.zeros_like(image)
    padded[:, top : top + h, left : left + w] = patch.to(image.dtype)
    out_image = torch.where(m, padded, image)  # (1 - m) x+ + pad(x-, m)
    out_labels = labels.masked_fill(m, VOID)
    return out_image, out_labels, d_out | m


def random_rectangle(rng: np.random.Generator, height: int, width: int, min_side: int = 16, step: int = 8,
                     max_side: int | None = None) -> tuple[int, int]:
    """A rectangle size (h, w), each side drawn from min_side..max_side in `step`s (public recipe)."""
    hi = min(height, width) if max_side is None else min(max_side, height, width)
    sides = np.arange(min_side, hi + 1, step)
    if sides.size == 0:
        raise ValueError(f"no rectangle side in [{min_side}, {hi}] with step {step}")
    return int(rng.choice(sides)), int(rng.choice(sides))


def check_pasting(side: tuple[int, int], side_scale: str, per_image: int, ground_prob: float) -> None:
    """ValueError naming the first bad pasting setting (by its `data.` config name), else None."""
    if not 8 <= side[0] <= side[1]:
        raise ValueError(f"negative_side must satisfy 8 <= lo <= hi, got {tuple(side)}")
    if side_scale not in ("uniform", "log"):
        raise ValueError(f"negative_side_scale must be 'uniform' or 'log', got {side_scale!r}")
    if per_image < 1:
        raise ValueError(f"negatives_per_image must be >= 1, got {per_image}")
    if not 0.0 <= ground_prob <= 1.0:
        raise ValueError(f"negative_ground_prob must be in [0, 1], got {ground_prob}")


def random_side(rng: np.random.Generator, low: int, high: int, scale: str = "uniform", step: int = 1) -> int:
    """A pasted negative's side in [low, high] px, in `step`s (low and high multiples of it): uniform (public recipe)
    or log-uniform ("log": as many negatives of 16-32 px as of 64-128 px, the sizes of far objects being as common as
    those of near ones)."""
    if not 1 <= low <= high:
        raise ValueError(f"side range must satisfy 1 <= low <= high, got [{low}, {high}]")
    if step < 1 or low % step or high % step:
        raise ValueError(f"side range [{low}, {high}] must hold multiples of the step {step}")
    if scale == "uniform":
        return step * int(rng.integers(low // step, high // step + 1))
    if scale == "log":
        # a continuous log-uniform on [low, high + step) floored to the step:
        # P(side = s) = ln((s + step) / s) / ln((high + step) / low)
        return min(high, step * int(np.exp(rng.uniform(np.log(low), np.log(high + step))) // step))
    raise ValueError(f"side scale must be 'uniform' or 'log', got {scale!r}")


def ground_position(rng: np.random.Generator, ground: np.ndarray, mask: np.ndarray) -> tuple[int, int] | None:
    """Top-left corner that stands a negative on the ground: the middle of its mask's lowest row on a random pixel of
    `ground` (H, W bool, e.g. road and sidewalk labels), moved inside the image where it would stick out; None when
    `ground` has no pixel or the mask is empty."""
    rows, cols = np.nonzero(ground)
    if rows.size == 0 or not mask.any():
        return None
    h, w = mask.shape
    H, W = ground.shape
    if h > H or w > W:
        raise ValueError(f"patch {h}x{w} does not fit in a {H}x{W} image")
    lowest = int(np.flatnonzero(mask.any(axis=1))[-1])
    middle = int(round(float(np.flatnonzero(mask[lowest]).mean())))
    k = int(rng.integers(rows.size))
    top = min(max(int(rows[k]) - lowest, 0), H - h)
    left = min(max(int(cols[k]) - middle, 0), W - w)
    return top, left


def random_position(rng: np.random.Generator, height: int, width: int, h: int, w: int) -> tuple[int, int]:
    """Uniform top-left corner for an h x w patch inside a height x width image."""
    return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
