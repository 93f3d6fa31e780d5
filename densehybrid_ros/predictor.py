"""The ROS-free inference core shared by the node, bag evaluation, benchmarks, demo and tests.

uint8 RGB (H, W, 3) in; resize to the network grid (the weights' `input_size`, if any), pad to a
multiple of the output stride, normalise, one forward pass, then at input resolution by default:
closed-set class ids (uint8), the hybrid score (float32), the open-set map (uint8, unknown = K) and
any extra scores of `densehybrid_ros.scores.SCORES` from the same pass.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from densehybrid_ros.cpu_memory import retain_freed_memory
from densehybrid_ros.models import DenseHybrid
from densehybrid_ros.models.resnet import ResNet
from densehybrid_ros.scores import SCORES, open_set_fusion
from densehybrid_ros.weights import WeightsMetadata, load_weights


@dataclass(frozen=True)
class PredictorConfig:
    device: str = "cpu"  # "cpu", "cuda", "cuda:N"
    fp16: bool = False  # autocast to float16 on CUDA; scores are always computed in float32
    channels_last: bool = True  # NHWC memory layout: faster convolutions on CPU
    output_resolution: str = "input"  # "input" (camera resolution) or "network" (the grid it ran at)
    extra_scores: tuple[str, ...] = ()  # any of SCORES besides "hybrid"
    threshold: float | None = None  # overrides the weights' calibrated threshold
    retain_host_memory: bool = True  # on CPU: reuse freed activation buffers (see cpu_memory.py)

    def validate(self) -> None:
        if self.output_resolution not in ("input", "network"):
            raise ValueError(f"output_resolution must be 'input' or 'network', got {self.output_resolution!r}")
        unknown = [s for s in self.extra_scores if s not in SCORES]
        if unknown:
            raise ValueError(f"unknown extra score(s) {unknown}; available: {sorted(SCORES)}")
        if self.fp16 and not self.device.startswith("cuda"):
            raise ValueError("fp16 needs a CUDA device")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")


@dataclass
class Prediction:
    """Per-image outputs. `open_set` is None when no threshold is known (uncalibrated weights)."""

    class_ids: np.ndarray  # (H, W) uint8, 0..K-1
    hybrid: np.ndarray  # (H, W) float32, s_H = ln P(d_out|x) - LSE(s); higher = more anomalous
    open_set: np.ndarray | None  # (H, W) uint8, 0..K-1 or K = unknown
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # extra scores, (H, W) float32


def validate_image(image: object) -> np.ndarray:
    """The image as an (H, W, 3) uint8 array, or a ValueError saying what is wrong with it."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3), got {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty: shape {image.shape}")
    return image


class Predictor:
    """Runs a `DenseHybrid` model on uint8 RGB images."""

    def __init__(self, model: DenseHybrid, metadata: WeightsMetadata, config: PredictorConfig = PredictorConfig()):
        config.validate()
        if config.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {config.device!r} requested but CUDA is not available")
        self.config = config
        if config.retain_host_memory and not config.device.startswith("cuda"):
            retain_freed_memory()
        self.metadata = metadata
        self.device = torch.device(config.device)
        self.num_classes = metadata.num_classes
        self.threshold = config.threshold if config.threshold is not None else metadata.threshold
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = model.to(self.device).eval().to(memory_format=self.memory_format)
        norm = metadata.normalization
        self._mean = torch.tensor(norm.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(norm.std, device=self.device).view(1, 3, 1, 1) * 255.0

    @classmethod
    def from_weights(cls, path: str | Path, config: PredictorConfig = PredictorConfig()) -> "Predictor":
        model, metadata = load_weights(path)
        return cls(model, metadata, config)

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) the image is resized to before padding: the weights' grid, or its own size."""
        if self.metadata.input_size is None:
            return height, width
        grid_w, grid_h = self.metadata.input_size
        return grid_h, grid_w

    def predict(self, image: np.ndarray) -> Prediction:
        return self.predict_batch([image])[0]

    @torch.inference_mode()
    def predict_batch(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """One forward pass for all images. Images of different grid sizes are padded to the largest; the
        padding then enters the pyramid pooling, so batched equals one-by-one exactly only for images of
        one grid size (always the case for weights with an `input_size`)."""
        if len(images) == 0:
            return []
        images = [validate_image(im) for im in images]
        batch, sizes = self._preprocess(images)
        autocast = (
            torch.autocast("cuda", dtype=torch.float16) if self.config.fp16 else contextlib.nullcontext()
        )
        names = ("hybrid",) + tuple(n for n in self.config.extra_scores if n != "hybrid")
        with autocast:
            out = self.model.dense_outputs(batch, names)
        results = []
        for index, (image, (h, w)) in enumerate(zip(images, sizes)):
            class_ids = out.class_ids[index : index + 1, :h, :w]
            scores = {k: v[index : index + 1, :h, :w].float() for k, v in out.scores.items()}
            results.append(self._postprocess(class_ids, scores, image.shape[:2]))
        return results

    def _preprocess(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        sizes = [self.network_size(*im.shape[:2]) for im in images]
        stride = ResNet.output_stride
        pad_h = -(-max(h for h, _ in sizes) // stride) * stride
        pad_w = -(-max(w for _, w in sizes) // stride) * stride
        batch = torch.zeros((len(images), 3, pad_h, pad_w), device=self.device)
        for index, (image, (h, w)) in enumerate(zip(images, sizes)):
            x = torch.from_numpy(image).to(self.device, non_blocking=True).permute(2, 0, 1)[None].float()
            if (h, w) != image.shape[:2]:
                x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
            # Padding stays 0 after normalisation, i.e. the dataset's mean colour.
            batch[index, :, :h, :w] = ((x - self._mean) / self._std)[0]
        return batch.contiguous(memory_format=self.memory_format), sizes

    def _postprocess(self, class_ids: torch.Tensor, scores: dict[str, torch.Tensor], input_hw: tuple[int, int]) -> Prediction:
        if self.config.output_resolution == "input" and tuple(class_ids.shape[-2:]) != tuple(input_hw):
            # Class ids: nearest neighbour; scores: bilinear (ros-notes: masks at camera resolution).
            class_ids = F.interpolate(class_ids[None].float(), size=input_hw, mode="nearest")[0].long()
            names = list(scores)
            stacked = F.interpolate(torch.stack([scores[n] for n in names], 1), size=input_hw, mode="bilinear", align_corners=False)
            scores = dict(zip(names, stacked.unbind(1)))
        open_set = None
        if self.threshold is not None:
            open_set = open_set_fusion(class_ids, scores["hybrid"], self.threshold, self.num_classes)
            open_set = open_set[0].to(torch.uint8).cpu().numpy()
        numpy_scores = {k: v[0].cpu().numpy() for k, v in scores.items()}
        return Prediction(
            class_ids=class_ids[0].to(torch.uint8).cpu().numpy(),
            hybrid=numpy_scores.pop("hybrid"),
            open_set=open_set,
            scores=numpy_scores,
        )
