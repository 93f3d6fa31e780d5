"""Input validation shared by the metric modules; every error names the problem and the argument."""
from __future__ import annotations

import numpy as np

from densehybrid_ros.datasets.base import OOD_ANOMALY, OOD_INLIER, VOID

__all__ = ["VOID", "OOD_ANOMALY", "OOD_INLIER", "as_scores", "as_ood_labels", "check_same_shape",
           "as_class_map", "valid_pixels"]


def check_same_shape(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {name_a} has shape {a.shape}, {name_b} has shape {b.shape}")


def as_scores(scores: np.ndarray, name: str = "scores") -> np.ndarray:
    """Real-valued array as float64 (exact for float16/32/64 and integers below 2**53)."""
    arr = np.asarray(scores)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be a real-valued numeric array, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def check_finite(values: np.ndarray, name: str = "scores") -> None:
    if not np.isfinite(values).all():
        n_nan = int(np.isnan(values).sum())
        n_inf = int(values.size - n_nan - np.isfinite(values).sum())
        raise ValueError(f"{name} contain {n_nan} NaN and {n_inf} infinite values at evaluated (non-void) pixels")


def _check_integer(arr: np.ndarray, name: str) -> None:
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be an integer array (e.g. uint8), got dtype {arr.dtype}")


def as_ood_labels(ood_labels: np.ndarray, name: str = "ood_labels") -> np.ndarray:
    """Integer array with values in {0 inlier, 1 anomaly, 255 void}."""
    arr = np.asarray(ood_labels)
    _check_integer(arr, name)
    bad = (arr != OOD_INLIER) & (arr != OOD_ANOMALY) & (arr != VOID)
    if bad.any():
        values = np.unique(arr[bad])[:10].tolist()
        raise ValueError(f"{name} may hold only 0 (inlier), 1 (anomaly), 255 (void); found {values}")
    return arr


def as_class_map(values: np.ndarray, low: int, high: int, name: str, allow_void: bool) -> np.ndarray:
    """Integer array with values in [low, high] (and 255 when `allow_void`)."""
    arr = np.asarray(values)
    _check_integer(arr, name)
    bad = (arr < low) | (arr > high)
    if allow_void:
        bad &= arr != VOID
    if bad.any():
        found = np.unique(arr[bad])[:10].tolist()
        extra = " or 255 (void)" if allow_void else ""
        raise ValueError(f"{name} must lie in [{low}, {high}]{extra}; found {found}")
    return arr


def valid_pixels(scores: np.ndarray, ood_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flattened float64 scores and boolean anomaly mask of the non-void pixels, validated."""
    labels = as_ood_labels(ood_labels)
    values = as_scores(scores)
    check_same_shape("scores", values, "ood_labels", labels)
    keep = labels != VOID
    values = values[keep]
    check_finite(values)
    return values, labels[keep] == OOD_ANOMALY
