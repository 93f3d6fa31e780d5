"""Repeat-factor sampling (class_balance.repeat_factors, LVIS: Gupta et al. 2019) and the weighted StepBatchSampler:
hand-counted factors, and draws in proportion to the weights (chi-square against the expected counts)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from densehybrid_training.class_balance import image_class_presence, repeat_factors
from densehybrid_training.config import DataConfig
from densehybrid_training.mixed import StepBatchSampler


def test_repeat_factors_counted_by_hand():
    # 10 images, 3 classes: road in all, rider in one, car in five; image 9 shows nothing labelled
    presence = np.zeros((10, 3), bool)
    presence[:9, 0] = True
    presence[3, 1] = True
    presence[:5, 2] = True
    r = repeat_factors(presence, threshold=0.4)
    # f = (0.9, 0.1, 0.5): r_class = (max(1, sqrt(0.4 / 0.9)), sqrt(0.4 / 0.1), max(1, sqrt(0.4 / 0.5))) = (1, 2, 1)
    expected = np.ones(10)
    expected[3] = 2.0
    np.testing.assert_allclose(r, expected)
    # a lower threshold: the rare class's factor is sqrt(t / f) = sqrt(0.2 / 0.1)
    assert repeat_factors(presence, 0.2)[3] == pytest.approx(math.sqrt(2.0))
    with pytest.raises(ValueError, match="threshold"):
        repeat_factors(presence, 0.0)
    with pytest.raises(ValueError, match="presence"):
        repeat_factors(np.zeros((0, 3), bool), 0.4)


def test_image_class_presence_reads_labels_and_skips_void():
    labels = [np.array([[0, 0], [255, 2]], np.uint8), np.array([[1, 255], [255, 255]], np.uint8)]
    inliers = [(np.zeros((2, 2, 3), np.uint8), lab) for lab in labels]
    np.testing.assert_array_equal(image_class_presence(inliers, 3), [[True, False, True], [False, True, False]])


def test_weighted_sampler_draws_in_proportion_to_the_weights():
    weights = np.array([1.0, 1.0, 2.0, 4.0, 0.0, 1.0, 1.0, 2.0])
    sampler = StepBatchSampler(8, 4, 0, 2 * 2000, seed=3, weights=weights)  # 2 steps per epoch, 2,000 epochs
    counts = np.bincount([i for batch in sampler for i, _ in batch], minlength=8)
    assert counts[4] == 0 and counts.sum() == 8 * 2000
    expected = counts.sum() * weights / weights.sum()
    keep = weights > 0
    chi2 = float((((counts[keep] - expected[keep]) ** 2) / expected[keep]).sum())
    assert chi2 < scipy.stats.chi2.ppf(0.999, df=int(keep.sum()) - 1)
    # the same batches however the run is split (resume), and per epoch as many images as without weights
    later = StepBatchSampler(8, 4, 7, 9, seed=3, weights=weights)
    assert list(later) == [sampler.batch(7), sampler.batch(8)]
    assert all(len(sampler.batch(s)) == 4 for s in range(10))
    for bad in (np.ones(7), np.array([1.0] * 7 + [-1.0]), np.zeros(8), np.array([1.0] * 7 + [math.nan])):
        with pytest.raises(ValueError, match="weights"):
            StepBatchSampler(8, 4, 0, 2, weights=bad)


def test_unweighted_sampler_visits_every_image_once_per_epoch():
    sampler = StepBatchSampler(8, 4, 0, 2, seed=3)
    assert sorted(i for batch in sampler for i, _ in batch) == list(range(8))


def test_repeat_threshold_is_validated():
    DataConfig(repeat_threshold=0.1).validate()
    with pytest.raises(ValueError, match="repeat_threshold"):
        DataConfig(repeat_threshold=1.5).validate()
