"""Datasets by name, for YAML configs: ``build_inlier_dataset("cityscapes", root, "train")``,
``build_negative_dataset("ade20k", root, mode="mixed")``.

Options are passed as keyword arguments to the dataset's constructor; an unknown kind, a missing root or an
option the dataset does not take is a DatasetError naming it.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from densehybrid_ros.datasets.base import DatasetError
from densehybrid_training.data.common import InlierDataset, NegativeDataset
from densehybrid_training.data.inliers import CityscapesTrain, SimTrain, StreetHazardsTrain, VistasTrain, WildDashTrain
from densehybrid_training.data.negatives import ADE20kFullNegatives, ADE20kNegatives, CocoNegatives, SimNegatives

INLIER_KINDS: dict[str, type[InlierDataset]] = {
    "cityscapes": CityscapesTrain,
    "vistas": VistasTrain,
    "wilddash": WildDashTrain,
    "streethazards": StreetHazardsTrain,
    "sim": SimTrain,
}

NEGATIVE_KINDS: dict[str, type[NegativeDataset]] = {
    "ade20k": ADE20kNegatives,
    "ade20k-full": ADE20kFullNegatives,
    "coco": CocoNegatives,
    "sim": SimNegatives,
}


def _build(table: dict[str, type], what: str, kind: str, root: str | Path, split: str | None, options: dict[str, Any]):
    if kind not in table:
        raise DatasetError(f"unknown {what} dataset kind {kind!r} (kinds: {', '.join(table)})")
    cls = table[kind]
    root = Path(root).expanduser()
    if not str(root) or not root.exists():
        raise DatasetError(f"{kind}: dataset root {str(root)!r} does not exist")
    params = inspect.signature(cls.__init__).parameters
    for name in options:
        if name in ("self", "root", "split") or name not in params:
            allowed = [p for p in params if p not in ("self", "root", "split")]
            raise DatasetError(f"{kind}: unknown option {name!r} (options: {', '.join(allowed) or 'none'})")
    if split is None:
        return cls(root, **options)
    return cls(root, split, **options)


def build_inlier_dataset(kind: str, root: str | Path, split: str | None = None, **options: Any) -> InlierDataset:
    """The inlier dataset ``kind`` (cityscapes, vistas, wilddash, streethazards, sim) at ``root``; ``split=None``
    takes the dataset's training split."""
    return _build(INLIER_KINDS, "inlier", kind, root, split, options)


def build_negative_dataset(kind: str, root: str | Path, split: str | None = None, mode: str = "mask",
                           **options: Any) -> NegativeDataset:
    """The negative source ``kind`` (ade20k, ade20k-full, coco, sim) at ``root`` in ``mode`` (mask, rectangle,
    mixed); ``split=None`` takes the source's training split."""
    return _build(NEGATIVE_KINDS, "negative", kind, root, split, {"mode": mode, **options})
