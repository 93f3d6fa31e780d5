"""Ensemble criterion (thesis 4.4 / 8.13) on a hand-built case and against direct numpy formulas."""
from __future__ import annotations

import math

import numpy as np
import pytest

from densehybrid_ros.evaluation.ensemble import (
    EnsembleAccumulator,
    ensemble_analysis,
    expected_squared_error,
    score_errors,
    standardize,
)


def test_hand_built_case():
    # f = (+1, +1, -1, -1); generative (3, 1, -1, -3): mean 0, population variance 5 -> z_G = raw / sqrt5
    # discriminative (2, 0, 0, -2): variance 2 -> z_D = (sqrt2, 0, 0, -sqrt2)
    labels = np.array([1, 1, 0, 0], np.uint8)
    gen = np.array([3.0, 1.0, -1.0, -3.0])
    disc = np.array([2.0, 0.0, 0.0, -2.0])
    r5, r2 = math.sqrt(5), math.sqrt(2)
    e_g = 2 - 4 / r5  # E = 2 - 2 E[z f];  E[z_G f] = (3 + 1 + 1 + 3) / (4 sqrt5)
    e_d = 2 - r2  # E[z_D f] = 2 sqrt2 / 4
    cov = 6 * r2 / (4 * r5) - 2 / r5 - r2 / 2 + 1  # E[eps_G eps_D]; mean errors are 0 (balanced classes)
    result = ensemble_analysis(gen, disc, labels)
    assert result.error_generative == pytest.approx(e_g, abs=1e-12)
    assert result.error_discriminative == pytest.approx(e_d, abs=1e-12)
    assert result.e == pytest.approx(e_g, abs=1e-12)
    assert result.alpha == pytest.approx(e_d / e_g, abs=1e-12)
    assert result.c2 == pytest.approx(0.0, abs=1e-12)
    assert result.c1 == pytest.approx(0.5 * math.sqrt(e_g * e_d), abs=1e-12)
    assert result.rho == pytest.approx(cov / math.sqrt(e_g * e_d), abs=1e-12)
    criterion = (e_d / e_g - 3) / 4 * e_g + 0.5 * cov
    assert result.criterion == pytest.approx(criterion, abs=1e-12)
    # E(s_H) of s_H = (z_D + z_G) / 2 directly: (8.11) must agree, and so must the verdict
    z_h = (disc / r2 + gen / r5) / 2
    e_h = np.mean((z_h - np.array([1, 1, -1, -1])) ** 2)
    assert result.error_hybrid == pytest.approx(e_h, abs=1e-12)
    assert result.hybrid_helps == (e_h < min(e_g, e_d))


@pytest.mark.parametrize("seed, correlation", [(0, 0.2), (1, 0.95)])
def test_random_against_direct_formulas(seed, correlation):
    rng = np.random.default_rng(seed)
    n = 20000
    labels = (rng.random(n) < 0.2).astype(np.uint8)
    common = rng.normal(size=n)
    gen = 500.0 + 3.0 * (labels + correlation * common + rng.normal(size=n))  # large offset: stability
    disc = -7.0 + 0.5 * (labels + correlation * common + rng.normal(size=n))
    labels[rng.random(n) < 0.05] = 255
    keep = labels != 255
    f = np.where(labels[keep] == 1, 1.0, -1.0)
    eps_g = score_errors(standardize(gen[keep]), labels[keep] == 1)
    eps_d = score_errors(standardize(disc[keep]), labels[keep] == 1)
    e_g, e_d = expected_squared_error(eps_g), expected_squared_error(eps_d)
    rho = np.corrcoef(eps_g, eps_d)[0, 1]
    c1 = 0.5 * eps_g.std() * eps_d.std()
    c2 = 0.5 * eps_g.mean() * eps_d.mean()
    e, alpha = min(e_g, e_d), max(e_g, e_d) / min(e_g, e_d)
    e_h = np.mean(((standardize(gen[keep]) + standardize(disc[keep])) / 2 - f) ** 2)

    acc = EnsembleAccumulator()
    for part in np.array_split(np.arange(n), 7):
        acc.update(gen[part], disc[part], labels[part])
    result = acc.compute()
    assert result.num_pixels == int(keep.sum())
    assert (result.error_generative, result.error_discriminative) == pytest.approx((e_g, e_d), abs=1e-9)
    assert (result.rho, result.c1, result.c2) == pytest.approx((rho, c1, c2), abs=1e-9)
    assert (result.e, result.alpha) == pytest.approx((e, alpha), abs=1e-9)
    assert result.criterion == pytest.approx((alpha - 3) / 4 * e + c1 * rho + c2, abs=1e-9)
    assert result.error_hybrid == pytest.approx(e_h, abs=1e-9)
    assert result.hybrid_helps == (e_h < e)


def test_strongly_correlated_components_do_not_help():
    rng = np.random.default_rng(2)
    labels = (rng.random(5000) < 0.3).astype(np.uint8)
    base = labels + rng.normal(size=5000)
    good = ensemble_analysis(base + 0.01 * rng.normal(size=5000), base, labels)  # rho ~ 1, alpha ~ 1
    assert good.rho > 0.99 and not good.hybrid_helps
    independent = ensemble_analysis(labels + rng.normal(size=5000), labels + rng.normal(size=5000), labels)
    assert abs(independent.rho) < 0.5 and independent.hybrid_helps


def test_errors():
    labels = np.array([0, 1, 0, 1], np.uint8)
    with pytest.raises(ValueError, match="constant"):
        ensemble_analysis(np.ones(4), np.arange(4.0), labels)
    with pytest.raises(ValueError, match="shape mismatch"):
        ensemble_analysis(np.ones(3), np.arange(4.0), labels)
    with pytest.raises(ValueError, match="NaN"):
        ensemble_analysis(np.array([0.0, np.nan, 1.0, 2.0]), np.arange(4.0), labels)
    with pytest.raises(ValueError, match="no non-void"):
        ensemble_analysis(np.arange(4.0), np.arange(4.0), np.full(4, 255, np.uint8))
