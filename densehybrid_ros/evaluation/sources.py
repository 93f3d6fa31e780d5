"""Prediction sources of `evaluate`: where a frame's `Prediction` comes from, and what its predictions mean.

- `LivePredictions`: the shared `Predictor` run on the frame's image (the open-set map at a threshold of the
  caller's, per call: the Predictor is immutable).
- `evaluation.recorded.RecordedOutputs`: the node's outputs in a recorded bag, matched to the frame by header stamp.
- `GroundTruth`: the frame's own labels as the prediction (bag evaluation's --oracle: the ceiling of what follows).
"""
from __future__ import annotations

from typing import Mapping, Protocol, Sequence

import numpy as np

from densehybrid_ros.datasets.base import OOD_ANOMALY, EvalSample
from densehybrid_ros.predictor import Prediction, Predictor
from densehybrid_ros.scores import open_set_fusion
from densehybrid_ros.weights import WeightsMetadata

PROTOCOL_POINT = "tpr95"  # the thesis protocol's operating point (open-mIoU at TPR 95%)


class PredictionSource(Protocol):
    """What `evaluate` needs of a source: one prediction per frame, and its meaning."""

    num_classes: int  # K: class ids 0..K-1; K = unknown in open-set maps
    class_names: tuple[str, ...]  # names of the class ids; () = unknown (no mIoU)
    scores: tuple[str, ...]  # score maps of every prediction: "hybrid" and the keys of Prediction.scores
    threshold: float | None  # of the open-set maps (Prediction.open_set; `scores.is_anomalous`); None: no map
    operating_points: Mapping[str, float]  # the weights' named thresholds; {} = none known

    def predict(self, sample: EvalSample) -> Prediction: ...


def weights_points(metadata: WeightsMetadata | None) -> dict[str, float]:
    """The operating points of weights' metadata, name -> threshold (none without metadata)."""
    return {} if metadata is None else {name: p.threshold for name, p in metadata.calibration.points().items()}


def protocol_threshold(source: PredictionSource) -> float | None:
    """The threshold of the thesis protocol: the weights' TPR-95% point, else the source's threshold (weights with a
    manual threshold, stand-ins)."""
    return source.operating_points.get(PROTOCOL_POINT, source.threshold)


class LivePredictions:
    """The shared Predictor on each frame's image, its open-set map at `threshold` (the caller's choice, e.g.
    `weights.resolve_threshold(...).value`; None: no open-set map)."""

    def __init__(self, predictor: Predictor, threshold: float | None) -> None:
        self.predictor = predictor
        self.threshold = threshold
        self.num_classes = predictor.num_classes
        self.class_names = tuple(c.name for c in predictor.metadata.classes)
        self.scores = ("hybrid",) + tuple(s for s in predictor.config.extra_scores if s != "hybrid")
        self.operating_points = weights_points(predictor.metadata)

    def predict(self, sample: EvalSample) -> Prediction:
        return self.predictor.predict(sample.image, self.threshold)


def as_source(source: PredictionSource | Predictor) -> PredictionSource:
    """A Predictor as `LivePredictions` at its own threshold; a source as it is."""
    return LivePredictions(source, source.threshold) if isinstance(source, Predictor) else source


class GroundTruth:
    """The frame's labels as its prediction: class ids = the label image (zeros without one), hybrid score = 1 on the
    true anomaly pixels and 0 elsewhere, flagged at `threshold` = 1 (the open-set map needs the class names)."""

    threshold = 1.0
    scores = ("hybrid",)
    operating_points: Mapping[str, float] = {}

    def __init__(self, classes: Sequence[str] | None) -> None:
        self.class_names = tuple(classes or ())
        self.num_classes = len(self.class_names)

    def predict(self, sample: EvalSample) -> Prediction:
        if sample.ood is None:
            raise ValueError(f"frame {sample.name} has no anomaly labels: nothing to take as the prediction")
        class_ids = sample.semantic if sample.semantic is not None else np.zeros(sample.ood.shape, np.uint8)
        hybrid = (sample.ood == OOD_ANOMALY).astype(np.float32)
        open_set = open_set_fusion(class_ids, hybrid, self.threshold, self.num_classes) if self.num_classes else None
        return Prediction(class_ids=class_ids, hybrid=hybrid, open_set=open_set)
