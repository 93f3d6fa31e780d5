"""The one sample type every evaluation loader yields, and the registry that opens ``KIND:PATH``.

Label conventions are unified here so metrics never see a dataset's own encoding:

- ``ood``: HxW uint8, 0 = inlier, 1 = anomaly (positive class), 255 = void (ignored by every metric).
- ``semantic``: HxW uint8 in the model's taxonomy: 0..K-1 known classes, K = anomaly, 255 = void.
- ``depth``: HxW float32 metres along the optical axis; NaN where unknown.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np

from densehybrid_ros.classes import VOID  # re-exported with the other label conventions

OOD_INLIER = 0
OOD_ANOMALY = 1


class DatasetError(ValueError):
    """A dataset is missing, incomplete or not in the layout its loader expects (the message says which)."""


@dataclass
class EvalSample:
    name: str
    image: np.ndarray
    ood: np.ndarray | None = None
    semantic: np.ndarray | None = None
    depth: np.ndarray | None = None
    extras: dict = field(default_factory=dict)


class EvalDataset(Protocol):
    kind: str
    root: Path
    split: str
    classes: Sequence[str] | None  # names of the K known classes when `semantic` is provided

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> EvalSample: ...


OpenFn = Callable[[Path, str | None], EvalDataset]
_REGISTRY: dict[str, OpenFn] = {}


def register(kind: str) -> Callable[[OpenFn], OpenFn]:
    """Register ``open_fn(root, split)`` under ``kind`` (as in ``--dataset KIND:PATH``)."""

    def wrap(fn: OpenFn) -> OpenFn:
        if kind in _REGISTRY:
            raise ValueError(f"dataset kind {kind!r} registered twice")
        _REGISTRY[kind] = fn
        return fn

    return wrap


def kinds() -> list[str]:
    return sorted(_REGISTRY)


def open_dataset(spec: str, split: str | None = None) -> EvalDataset:
    """Open ``KIND:PATH``; errors name the unknown kind or the missing path."""
    kind, sep, path = spec.partition(":")
    if not sep or not path:
        raise DatasetError(f"dataset spec {spec!r} is not KIND:PATH (kinds: {', '.join(kinds())})")
    if kind not in _REGISTRY:
        raise DatasetError(f"unknown dataset kind {kind!r} (kinds: {', '.join(kinds())})")
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetError(f"{kind}: dataset root {root} does not exist")
    return _REGISTRY[kind](root, split)


def iterate(dataset: EvalDataset) -> Iterator[EvalSample]:
    for i in range(len(dataset)):
        yield dataset[i]
