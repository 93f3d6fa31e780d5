"""Where and how large real negatives are pasted (training/paste.py, training/mixed.py): the public recipe's
uniform sides and positions, and the log-uniform sides and ground placement a vehicle camera's far anomalies need."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from densehybrid_training.config import DataConfig
from densehybrid_training.cli import paste_options
from densehybrid_ros.config import ConfigError
from densehybrid_training.mixed import MixedContentDataset, PasteOptions
from densehybrid_training.paste import ground_position, random_side


def test_log_sides_follow_the_log_uniform_law():
    low, high, n = 12, 160, 200_000
    rng = np.random.default_rng(0)
    sides = np.array([random_side(rng, low, high, "log") for _ in range(n)])
    assert sides.min() >= low and sides.max() <= high
    counts = np.bincount(sides, minlength=high + 1)[low:]
    # P(side = s) = ln((s + 1) / s) / ln((high + 1) / low), written out independently of the sampler
    expected = np.array([math.log((s + 1) / s) for s in range(low, high + 1)]) / math.log((high + 1) / low)
    assert expected.sum() == pytest.approx(1.0)
    chi2 = float((((counts - n * expected) ** 2) / (n * expected)).sum())
    assert chi2 < scipy.stats.chi2.ppf(0.999, df=len(expected) - 1)
    # the share under 40 px is ln(40 / 12) / ln(161 / 12), against (40 - 16) / 145 for uniform 16..160
    assert (sides < 40).mean() == pytest.approx(math.log(40 / 12) / math.log(161 / 12), abs=0.005)


def test_uniform_sides_are_the_generators_integers():
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert [random_side(a, 16, 160) for _ in range(50)] == [int(b.integers(16, 161)) for _ in range(50)]
    with pytest.raises(ValueError, match="side scale"):
        random_side(a, 16, 160, "square")
    with pytest.raises(ValueError, match="side range"):
        random_side(a, 20, 10)


def test_ground_position_stands_the_masks_lowest_row_on_a_ground_pixel():
    mask = np.zeros((10, 6), bool)
    mask[2:8, 1:5] = True
    mask[8, 1:4] = True  # lowest row: columns 1..3, middle 2
    ground = np.zeros((64, 48), bool)
    ground[50, 30] = True
    top, left = ground_position(np.random.default_rng(0), ground, mask)
    assert (top, left) == (50 - 8, 30 - 2)
    # near the image corner the patch moves inside the image
    ground[:] = False
    ground[2, 1] = True
    assert ground_position(np.random.default_rng(0), ground, mask) == (0, 0)
    ground[:] = False
    ground[63, 47] = True
    assert ground_position(np.random.default_rng(0), ground, mask) == (64 - 10, 48 - 6)
    # nothing to stand on, or nothing to stand
    assert ground_position(np.random.default_rng(0), np.zeros((64, 48), bool), mask) is None
    assert ground_position(np.random.default_rng(0), ground, np.zeros((10, 6), bool)) is None


class _Street:
    """Inliers: grey 64x96 images, class 1 (sky) above row 40 and class 0 (road) from row 40."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.ones((64, 96), np.uint8)
        labels[40:] = 0
        return np.full((64, 96, 3), 128, np.uint8), labels


class _Objects:
    """Negatives: a red disc-like blob in a 20x20 image."""

    def __len__(self) -> int:
        return 3

    def sample(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        yy, xx = np.mgrid[:20, :20]
        mask = (yy - 10) ** 2 + (xx - 10) ** 2 <= 64
        image = np.zeros((20, 20, 3), np.uint8)
        image[..., 0] = 255
        return image, mask


def _identity(image, labels, rng):
    return image, labels


def _components(d_out: np.ndarray) -> list[np.ndarray]:
    import cv2
    count, labels = cv2.connectedComponents(d_out.astype(np.uint8), connectivity=8)
    return [labels == i for i in range(1, count)]


def test_grounded_negatives_stand_on_the_road_and_two_are_pasted():
    paste = PasteOptions(side=(8, 16), per_image=2, ground_prob=1.0, ground_ids=(0,))
    ds = MixedContentDataset(_Street(), _identity, (0, 0, 0), (1, 1, 1), seed=0, negatives=_Objects(), paste=paste)
    two = 0
    for index in range(4):
        for epoch in range(10):
            x, y, d_out = ds[(index, epoch)]
            d = d_out.numpy()
            parts = _components(d)
            two += len(parts) == 2
            for part in parts:  # each negative's lowest row lies on road (row >= 40 of the inlier labels)
                assert np.flatnonzero(part.any(axis=1))[-1] >= 40
            assert (y.numpy()[d] == 255).all() and torch.equal(x[0][d_out], torch.ones(int(d.sum())))
    assert two >= 30  # two separate blobs unless they overlap


def test_uniform_placement_also_uses_the_sky():
    paste = PasteOptions(side=(8, 16))
    ds = MixedContentDataset(_Street(), _identity, (0, 0, 0), (1, 1, 1), seed=0, negatives=_Objects(), paste=paste)
    lowest = [np.flatnonzero(ds[(i, e)][2].numpy().any(axis=1))[-1] for i in range(4) for e in range(10)]
    assert min(lowest) < 40 and len(_components(ds[(0, 0)][2].numpy())) == 1


def test_paste_options_from_the_data_config():
    data = DataConfig(negative_side=(12, 160), negative_side_scale="log", negatives_per_image=2,
                      negative_ground_prob=0.5)
    data.validate()
    options = paste_options(data, ["sky", "sidewalk", "road"])
    assert options == PasteOptions(side=(12, 160), side_scale="log", per_image=2, ground_prob=0.5, ground_ids=(2, 1))
    assert paste_options(DataConfig(), ["sky"]) == PasteOptions(side=(16, 128))
    with pytest.raises(ConfigError, match="sidewalk"):
        paste_options(data, ["road", "sky"])
    for bad, message in ((dict(negative_side_scale="cube"), "negative_side_scale"),
                         (dict(negatives_per_image=0), "negatives_per_image"),
                         (dict(negative_ground_prob=1.5), "negative_ground_prob"),
                         (dict(negative_ground_prob=0.5, negative_ground_classes=()), "negative_ground_classes")):
        with pytest.raises(ValueError, match=message):
            DataConfig(**bad).validate()
    with pytest.raises(ValueError, match="ground class ids"):
        PasteOptions(ground_prob=0.5)
