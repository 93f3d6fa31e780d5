"""When does the hybrid ensemble beat both components? Thesis 4.2 (4.1-4.4), proof in appendix 8.3.

Inputs are the raw component scores, both oriented HIGHER = MORE ANOMALOUS: the generative
``s'_G = -ln p^(x)`` and the discriminative ``s'_D = ln P(d_out|x)`` (``densehybrid_ros.scores``).
Over the non-void pixels (pooled over the dataset):

- standardize: ``s = (s' - mu) / sigma`` with the population mean and standard deviation (8.15);
- correct labelling ``f(x) = +1`` for anomalies, ``-1`` for inliers; error ``eps = s - f`` (4.1, 8.7);
- expected squared error ``E(s) = mean(eps^2)`` (4.2, 8.8);
- hybrid ``s_H = (s_D + s_G) / 2`` (8.10), whose error satisfies (8.11)
  ``E(s_H) = E(s_D)/4 + E(s_G)/4 + C1 * rho + C2`` with
  ``rho`` = Pearson correlation of eps_D and eps_G, ``C1 = std(eps_D) std(eps_G) / 2`` (population std),
  ``C2 = mean(eps_D) mean(eps_G) / 2``;
- ``e = min(E(s_G), E(s_D))``, ``alpha = max / min`` (>= 1);
- the hybrid helps, ``E(s_H) < min(E(s_D), E(s_G))`` (4.3), iff ``(alpha - 3)/4 * e + C1 rho + C2 < 0`` (4.4, 8.13).

With population moments (8.11) is an identity, so the criterion agrees with comparing E(s_H) directly.
Since standardized scores have mean 0, ``mean(eps) = -mean(f)`` for both components and
``C2 = mean(f)^2 / 2`` depends only on the class balance.

Everything is a function of the sums of 1, d, g, d^2, g^2, dg, f, df, gf, so `EnsembleAccumulator` is
streaming (float64 sums of values shifted by the first batch's means, for numerical stability).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from densehybrid_ros.datasets.base import OOD_ANOMALY, VOID
from densehybrid_ros.evaluation._checks import as_ood_labels, as_scores, check_finite, check_same_shape


def standardize(scores: np.ndarray) -> np.ndarray:
    """(s' - mean) / std with the population std (8.15)."""
    values = as_scores(scores)
    std = values.std()
    if not std > 0:
        raise ValueError("cannot standardize a constant score (zero variance)")
    return (values - values.mean()) / std


def correct_labelling(is_anomaly: np.ndarray) -> np.ndarray:
    """f(x) of (4.1): +1 for anomalies, -1 for inliers."""
    return np.where(np.asarray(is_anomaly, dtype=bool), 1.0, -1.0)


def score_errors(standardized: np.ndarray, is_anomaly: np.ndarray) -> np.ndarray:
    """eps(x) = s(x) - f(x) (4.1, 8.7)."""
    return np.asarray(standardized, dtype=np.float64) - correct_labelling(is_anomaly)


def expected_squared_error(errors: np.ndarray) -> float:
    """E(s) = E_x[eps(x)^2] (4.2, 8.8)."""
    return float(np.mean(np.square(errors)))


def hybrid_helps(alpha: float, e: float, c1: float, rho: float, c2: float) -> tuple[float, bool]:
    """Left side of (4.4)/(8.13), ``(alpha - 3)/4 * e + C1 * rho + C2``, and whether it is < 0."""
    value = (alpha - 3.0) / 4.0 * e + c1 * rho + c2
    return float(value), bool(value < 0)


@dataclass(frozen=True)
class EnsembleAnalysis:
    error_generative: float  # E(s_G)
    error_discriminative: float  # E(s_D)
    error_hybrid: float  # E(s_H), s_H = (s_D + s_G)/2 of the standardized scores, via (8.11)
    rho: float  # Pearson correlation of the errors
    alpha: float  # max(E) / min(E)
    e: float  # min(E)
    c1: float  # std(eps_D) std(eps_G) / 2
    c2: float  # mean(eps_D) mean(eps_G) / 2
    criterion: float  # (alpha - 3)/4 e + C1 rho + C2
    hybrid_helps: bool  # criterion < 0  <=>  E(s_H) < min(E(s_D), E(s_G))
    num_pixels: int


class EnsembleAccumulator:
    """Streaming (4.4) analysis: ``update(generative, discriminative, ood_labels)`` per image, then ``compute()``."""

    _KEYS = ("n", "g", "d", "gg", "dd", "gd", "f", "gf", "df")

    def __init__(self) -> None:
        self._sums = dict.fromkeys(self._KEYS, 0.0)
        self._shift: tuple[float, float] | None = None

    def update(self, generative: np.ndarray, discriminative: np.ndarray, ood_labels: np.ndarray) -> None:
        labels = as_ood_labels(ood_labels)
        g, d = as_scores(generative, "generative scores"), as_scores(discriminative, "discriminative scores")
        check_same_shape("generative scores", g, "ood_labels", labels)
        check_same_shape("discriminative scores", d, "ood_labels", labels)
        keep = labels != VOID
        g, d = g[keep], d[keep]
        check_finite(g, "generative scores")
        check_finite(d, "discriminative scores")
        if g.size == 0:
            return
        if self._shift is None:
            self._shift = (float(g.mean()), float(d.mean()))
        g, d = g - self._shift[0], d - self._shift[1]
        f = correct_labelling(labels[keep] == OOD_ANOMALY)
        for key, value in zip(self._KEYS, (g.size, g.sum(), d.sum(), g @ g, d @ d, g @ d, f.sum(), g @ f, d @ f)):
            self._sums[key] += float(value)

    def compute(self) -> EnsembleAnalysis:
        s = self._sums
        n = s["n"]
        if n == 0:
            raise ValueError("no non-void pixels were given")
        mean_g, mean_d, mean_f = s["g"] / n, s["d"] / n, s["f"] / n
        var_g, var_d = s["gg"] / n - mean_g**2, s["dd"] / n - mean_d**2
        if not (var_g > 0 and var_d > 0):
            raise ValueError("a component score is constant over the evaluated pixels (zero variance)")
        std_g, std_d = np.sqrt(var_g), np.sqrt(var_d)
        zf_g = (s["gf"] / n - mean_g * mean_f) / std_g  # E[z_G f]
        zf_d = (s["df"] / n - mean_d * mean_f) / std_d
        z_gd = (s["gd"] / n - mean_g * mean_d) / (std_g * std_d)  # E[z_G z_D]
        err_g, err_d = 2.0 - 2.0 * zf_g, 2.0 - 2.0 * zf_d  # E[(z - f)^2] = 1 - 2 E[z f] + 1
        mean_eps = -mean_f  # E[z - f] with E[z] = 0, for both components
        var_eps_g, var_eps_d = err_g - mean_eps**2, err_d - mean_eps**2
        cov_eps = (z_gd - zf_g - zf_d + 1.0) - mean_eps**2
        if not (var_eps_g > 0 and var_eps_d > 0):
            raise ValueError("a component's error is constant (the score is a perfect affine copy of f): rho undefined")
        c1 = 0.5 * np.sqrt(var_eps_d) * np.sqrt(var_eps_g)
        rho = cov_eps / (np.sqrt(var_eps_d) * np.sqrt(var_eps_g))
        c2 = 0.5 * mean_eps * mean_eps
        e = min(err_g, err_d)
        alpha = max(err_g, err_d) / e
        criterion, helps = hybrid_helps(alpha, e, c1, rho, c2)
        return EnsembleAnalysis(
            error_generative=float(err_g), error_discriminative=float(err_d),
            error_hybrid=float(0.25 * err_d + 0.25 * err_g + c1 * rho + c2), rho=float(rho), alpha=float(alpha),
            e=float(e), c1=float(c1), c2=float(c2), criterion=criterion, hybrid_helps=helps, num_pixels=int(n))


def ensemble_analysis(generative: np.ndarray, discriminative: np.ndarray, ood_labels: np.ndarray) -> EnsembleAnalysis:
    """(4.4) analysis of arrays held in memory (one image or a stack)."""
    acc = EnsembleAccumulator()
    acc.update(generative, discriminative, ood_labels)
    return acc.compute()


__all__ = ["standardize", "correct_labelling", "score_errors", "expected_squared_error", "hybrid_helps",
           "EnsembleAnalysis", "EnsembleAccumulator", "ensemble_analysis"]
