"""The node's outputs recorded in a bag as a prediction source (`densehybrid-eval-bag --outputs`): no model runs.

densehybrid-record of ~/anomaly_score (32FC1), ~/semantic (mono8) and ~/obstacles (MarkerArray) holds, per answered
camera frame, the maps and markers the node published with that frame's header stamp. `RecordedOutputs.predict`
looks them up by the ground-truth frame's stamp. Damaged recordings are read as far as they go; score and semantic
maps that do not decode are skipped and counted (`skip_reason`, the bag's report).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from densehybrid_ros.datasets.base import DatasetError, EvalSample
from densehybrid_ros.datasets.rosbag import StampIndexedBag, check_markers, decode_labels, labels_info, parse_markers
from densehybrid_ros.evaluation.sources import weights_points
from densehybrid_ros.perception import image_codec
from densehybrid_ros.perception.image_codec import ImageRejected
from densehybrid_ros.predictor import Prediction
from densehybrid_ros.scores import open_set_fusion
from densehybrid_ros.weights import WeightsMetadata

OUTPUT_TOPICS = {"score": "/densehybrid_perception/anomaly_score", "semantic": "/densehybrid_perception/semantic",
                 "obstacles": "/densehybrid_perception/obstacles"}
OBSTACLE_NS = "obstacles"  # marker namespace of the node's obstacle boxes


def decode_score(msg: Any) -> np.ndarray:
    """A 32FC1 image (the node's ~/anomaly_score) as (H, W) float32, values as published (negative ones too)."""
    if msg.encoding != "32FC1":
        raise ImageRejected(f"score images must be 32FC1, got {msg.encoding!r}")
    return image_codec.decode_single_channel(msg, np.float32)


def score_info(msg: Any, _msgtype: str = "") -> tuple[int, int]:
    """Check of a recorded score topic: (height, width) of a 32FC1 image of finite scores."""
    score = decode_score(msg)
    if not np.isfinite(score).all():
        raise ImageRejected(f"score image with {int((~np.isfinite(score)).sum())} non-finite value(s)")
    return score.shape


@dataclass
class RecordedPrediction(Prediction):
    """A recorded frame: the node's maps, and the centres of its obstacle boxes (camera frame) when it recorded them."""

    obstacles: list[np.ndarray] | None = None  # None: the recording has no obstacles topic


class RecordedOutputs:
    """The node's outputs in a recorded bag, by header stamp (a `PredictionSource`). `metadata` (optional): the
    weights the node ran, for the class names and operating points of the semantic maps (used only when the
    recording has them); `threshold`: of the open-set maps built from the recorded scores."""

    scores = ("hybrid",)

    def __init__(self, path: Path, topics: Mapping[str, str | None], metadata: WeightsMetadata | None,
                 threshold: float | None) -> None:
        self.topics = dict(topics)
        checks = {self.topics["score"]: score_info, self.topics.get("semantic"): labels_info,
                  self.topics.get("obstacles"): check_markers}
        checks = {topic: check for topic, check in checks.items() if topic}
        self.bag = StampIndexedBag(Path(path), [t for t in self.topics.values() if t], checks=checks)
        if self.topics["score"] not in self.bag.topics:
            self.bag.close()
            raise DatasetError(f"outputs bag {self.bag.path} has no anomaly score topic {self.topics['score']!r}; its "
                               f"topics: {', '.join(self.bag.available)} (see --score-topic)")
        self.has_semantic = bool(self.topics.get("semantic")) and self.topics["semantic"] in self.bag.topics
        self.has_obstacles = bool(self.topics.get("obstacles")) and self.topics["obstacles"] in self.bag.topics
        self.threshold = threshold
        self.num_classes = metadata.num_classes if metadata is not None else 1
        semantic_meta = metadata if self.has_semantic else None  # class names mean something with semantic maps only
        self.class_names = tuple(c.name for c in semantic_meta.classes) if semantic_meta is not None else ()
        self.operating_points = weights_points(semantic_meta)

    def predict(self, sample: EvalSample) -> RecordedPrediction:
        """The recorded maps (and obstacle centres) of the frame; DatasetError when they do not fit it."""
        stamp = sample.extras["stamp_ns"]
        try:
            score = decode_score(self.bag.read(self.topics["score"], stamp))
            if self.has_semantic and stamp in self.bag.topics[self.topics["semantic"]].index:
                class_ids = decode_labels(self.bag.read(self.topics["semantic"], stamp))
            else:
                class_ids = np.zeros(score.shape, np.uint8)
        except ImageRejected as exc:
            raise DatasetError(f"outputs bag {self.bag.path}: at {sample.name}: {exc}") from None
        if score.shape != sample.image.shape[:2] or class_ids.shape != score.shape:
            raise DatasetError(f"outputs bag {self.bag.path}: at {sample.name} the recorded maps are "
                               f"{score.shape[1]}x{score.shape[0]}, the ground truth {sample.image.shape[1]}x"
                               f"{sample.image.shape[0]} (the node publishes at camera resolution)")
        open_set = None
        if self.threshold is not None:
            open_set = open_set_fusion(class_ids, score, self.threshold, self.num_classes)
        return RecordedPrediction(class_ids=class_ids, hybrid=score, open_set=open_set,
                                  obstacles=self.obstacle_centres(stamp) if self.has_obstacles else None)

    def obstacle_centres(self, stamp: int) -> list[np.ndarray]:
        """Centres of the recorded obstacle boxes with the frame's stamp (none when no markers were recorded for it)."""
        msg = self.bag.lookup(self.topics["obstacles"], stamp, receive_ns=-1)
        if msg is None:
            return []
        return [np.asarray(m["position"]) for m in parse_markers(msg, OBSTACLE_NS)]

    def skip_reason(self, stamp: int, shape: tuple[int, int]) -> str | None:
        """Why the recorded maps of the ground-truth frame at `stamp` (images of `shape`) cannot be scored, or None;
        "no output" when the node never answered it."""
        score = self.bag.topics[self.topics["score"]]
        if stamp not in score.index:
            return f"score map rejected ({self.topics['score']})" if stamp in score.rejected else "no output"
        size = score.index[stamp].info
        if size != shape:
            return f"recorded maps {size[1]}x{size[0]}, ground truth {shape[1]}x{shape[0]}"
        if not self.has_semantic:
            return None
        topic = self.topics["semantic"]
        semantic = self.bag.topics[topic]
        if stamp in semantic.rejected:
            return f"semantic map rejected ({topic})"
        if stamp not in semantic.index:
            return f"no semantic map ({topic} damaged)" if self.bag.lost_messages(topic) else None
        (h, w), values = semantic.index[stamp].info
        if (h, w) != shape:
            return f"recorded maps {w}x{h}, ground truth {shape[1]}x{shape[0]}"
        if self.class_names and values.max() >= self.num_classes:
            self.bag.reader.reject(topic, f"class ids of {self.num_classes} classes or more")
            return f"semantic class ids out of range ({topic})"
        return None

    def close(self) -> None:
        self.bag.close()
