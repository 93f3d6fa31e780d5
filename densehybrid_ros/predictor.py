"""The ROS-free inference core shared by the node, bag evaluation, benchmarks, demo and tests.

uint8 RGB (H, W, 3) in; resize to the network grid (the weights' `input_size`, if any), pad to a
multiple of the output stride, normalise, one forward pass, then at input resolution by default:
closed-set class ids (uint8), the hybrid score (float32), the open-set map (uint8, unknown = K) and
any extra scores of `densehybrid_ros.scores.SCORES` from the same pass.

A `Predictor` is immutable: nothing about it changes after construction, so one instance can serve any number of
callers and threads with different thresholds. The threshold is an argument of each call (`predict`, `predict_batch`,
`predict_many`, `postprocess`): omitted (`OWN_THRESHOLD`) = the predictor's own (`Predictor.threshold`, resolved once
by `weights.resolve_threshold` from its config and the weights' calibration), a float = that one, None = no open-set
map.

Stages (public, so that benchmarks time exactly what `predict_batch` runs): `preprocess(images) -> Batch` (the
normalised, padded network input and each image's network and input size), `forward(batch) -> DenseOutputs` (one
forward pass), `postprocess(batch, outputs, threshold) -> list[Prediction]` (crop, resize to the input, fuse the
open-set map, numpy). `predict_batch` is the three in a row.

Batching: `predict_batch` runs one forward for all images (padding mixed grid sizes to the largest);
`predict_many` groups the images by network grid size and runs one forward per group, so that each result
equals the one-by-one result (the multi-camera node and `densehybrid-bench cameras` use it).
Backends: PyTorch (`backend="torch"`, CPU or CUDA, optional float16 autocast) or ONNX Runtime
(`backend="onnxruntime"`, `densehybrid_ros.onnx_backend`: the exported graph at a fixed grid; pre/postprocessing
stay here, on the CPU).
"""
from __future__ import annotations

import contextlib
import enum
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from densehybrid_ros.cpu_memory import retain_freed_memory
from densehybrid_ros.models import DenseHybrid
from densehybrid_ros.models.densehybrid import DenseOutputs
from densehybrid_ros.models.resnet import ResNet
from densehybrid_ros.onnx_backend import OnnxBackend
from densehybrid_ros.scores import SCORES, open_set_fusion
from densehybrid_ros.weights import WeightsMetadata, load_weights, resolve_threshold

DEVICE_RE = re.compile(r"^(cpu|cuda|cuda:\d+)$")  # the devices a Predictor runs on

BACKENDS = ("torch", "onnxruntime")
DEFAULT_WARMUP_SIZE = (256, 512)  # (h, w) of the warm-up forward when the weights fix no grid


class _OwnThreshold(enum.Enum):
    OWN = "own"

    def __repr__(self) -> str:
        return "OWN_THRESHOLD"


OWN_THRESHOLD = _OwnThreshold.OWN
"""The default of every `threshold=` argument of the Predictor: "not given", i.e. the predictor's own threshold
(`Predictor.threshold`). Distinct from None, which means "no open-set map"."""

ThresholdArg = Union[float, None, Literal[_OwnThreshold.OWN]]
"""A per-call threshold: a float (score >= it is unknown), None (no open-set map) or OWN_THRESHOLD."""


@dataclass(frozen=True)
class PredictorConfig:
    device: str = "cpu"  # "cpu", "cuda", "cuda:N"
    fp16: bool = False  # autocast to float16 on CUDA; scores are always computed in float32
    channels_last: bool = True  # NHWC memory layout: faster convolutions on CPU
    output_resolution: str = "input"  # "input" (camera resolution) or "network" (the grid it ran at)
    extra_scores: tuple[str, ...] = ()  # any of SCORES besides "hybrid"
    threshold: float | None = None  # overrides the weights' operating points (weights.resolve_threshold)
    operating_point: str | None = None  # a named operating point of the weights; None = their default
    retain_host_memory: bool = True  # on CPU: reuse freed activation buffers (see cpu_memory.py)
    backend: str = "torch"  # "torch" or "onnxruntime" (device then picks the ONNX Runtime providers)

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        if self.fp16 and self.backend != "torch":
            raise ValueError("fp16 needs backend 'torch' (ONNX Runtime runs the exported float32 graph)")
        if self.output_resolution not in ("input", "network"):
            raise ValueError(f"output_resolution must be 'input' or 'network', got {self.output_resolution!r}")
        unknown = [s for s in self.extra_scores if s not in SCORES]
        if unknown:
            raise ValueError(f"unknown extra score(s) {unknown}; available: {sorted(SCORES)}")
        if self.fp16 and not self.device.startswith("cuda"):
            raise ValueError("fp16 needs a CUDA device")
        if not DEVICE_RE.match(self.device):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N' (N >= 0), got {self.device!r}")


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


@dataclass(frozen=True)
class Batch:
    """Preprocessed images (`Predictor.preprocess`), ready for `Predictor.forward` and `Predictor.postprocess`.

    Image i occupies the top-left `network_sizes[i]` of `tensor[i]`; the rest is padding (0 after normalisation, the
    dataset's mean colour) up to a multiple of the output stride. Sizes are (h, w)."""

    tensor: torch.Tensor  # (B, 3, H_pad, W_pad) float32, normalised, on the predictor's device and memory format
    network_sizes: tuple[tuple[int, int], ...]  # (h, w) each image was resized to (its grid)
    input_sizes: tuple[tuple[int, int], ...]  # (h, w) of each image as given

    def __len__(self) -> int:
        return len(self.input_sizes)


class Predictor:
    """Runs a `DenseHybrid` model on uint8 RGB images. Immutable after construction (see the module doc): the
    threshold is chosen per call, the default one is the read-only `threshold`."""

    config: PredictorConfig
    metadata: WeightsMetadata
    num_classes: int
    device: torch.device
    memory_format: torch.memory_format
    model: DenseHybrid | OnnxBackend  # DenseHybrid for backend torch, OnnxBackend for backend onnxruntime

    def __init__(self, model: DenseHybrid | OnnxBackend, metadata: WeightsMetadata,
                 config: PredictorConfig = PredictorConfig()):
        """`model`: a DenseHybrid (backend torch) or an `onnx_backend.OnnxBackend` (backend onnxruntime). The default
        threshold is resolved here, once (`weights.resolve_threshold`: config.threshold > config.operating_point >
        the weights' default point > their legacy threshold > none)."""
        config.validate()
        onnx = config.backend == "onnxruntime"
        if onnx != isinstance(model, OnnxBackend):
            raise ValueError(f"backend {config.backend!r} does not match the model given ({type(model).__name__}); "
                             "use Predictor.from_weights / Predictor.from_onnx")
        if config.device.startswith("cuda") and not onnx:
            if not torch.cuda.is_available():
                raise ValueError(f"device {config.device!r} requested but CUDA is not available")
            index = int(config.device.split(":", 1)[1]) if ":" in config.device else 0
            if index >= torch.cuda.device_count():
                raise ValueError(f"device {config.device!r} requested but only {torch.cuda.device_count()} CUDA "
                                 "device(s) are visible")
        def init(name: str, value: Any) -> None:  # the only writes: __setattr__ refuses all others
            object.__setattr__(self, name, value)

        init("config", config)
        # ONNX Runtime takes host arrays: pre/postprocessing then run on the CPU (device picks its providers)
        device = torch.device("cpu" if onnx else config.device)
        init("device", device)
        if config.retain_host_memory and device.type == "cpu":
            retain_freed_memory()
        init("metadata", metadata)
        init("num_classes", metadata.num_classes)
        init("_threshold", resolve_threshold(metadata.calibration, config.threshold, config.operating_point).value)
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        init("memory_format", memory_format)
        if onnx:
            init("model", model)
            self._check_onnx_grid(model)
        else:
            init("model", model.to(device).eval().to(memory_format=memory_format))
        bias = metadata.class_bias
        init("_class_bias", None if bias is None else torch.tensor(bias.values, dtype=torch.float32, device=device))
        init("_score_names", ("hybrid",) + tuple(n for n in config.extra_scores if n != "hybrid"))
        norm = metadata.normalization
        init("_mean", torch.tensor(norm.mean, device=device).view(1, 3, 1, 1) * 255.0)
        init("_std", torch.tensor(norm.std, device=device).view(1, 3, 1, 1) * 255.0)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Predictor is immutable: cannot set {name!r}"
                             + (" (pass threshold= to predict / predict_batch / predict_many instead)"
                                if name == "threshold" else ""))

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Predictor is immutable: cannot delete {name!r}")

    @property
    def threshold(self) -> float | None:
        """The predictor's own threshold (what an omitted `threshold=` means); None: no open-set map by default."""
        return self._threshold

    def threshold_for(self, threshold: ThresholdArg = OWN_THRESHOLD) -> float | None:
        """The threshold a call applies: OWN_THRESHOLD -> `self.threshold`, None -> None (no open-set map), a number
        -> it as a float. TypeError for anything else, ValueError for NaN."""
        if threshold is OWN_THRESHOLD:
            return self._threshold
        if threshold is None:
            return None
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)):
            raise TypeError(f"threshold must be a number, None or OWN_THRESHOLD, got {threshold!r}")
        if math.isnan(threshold):
            raise ValueError("threshold must not be NaN")
        return float(threshold)

    @classmethod
    def from_weights(cls, path: str | Path, config: PredictorConfig = PredictorConfig()) -> "Predictor":
        """Backend torch: the weights' model. Backend onnxruntime: their ONNX export at the weights' grid
        (`input_size`), exported once into the cache (`onnx_backend.cached_export`)."""
        if config.backend == "onnxruntime":
            from densehybrid_ros.onnx_backend import cached_export
            from densehybrid_ros.weights import read_metadata

            metadata = read_metadata(path)
            if metadata.input_size is None:
                raise ValueError(f"backend onnxruntime needs a fixed network grid, and {Path(path).name} has no "
                                 "input_size: export the model at your cameras' size (densehybrid_ros.onnx_export."
                                 "export_onnx) and load that .onnx file")
            width, height = metadata.input_size
            return cls.from_onnx(cached_export(path, height, width), config)
        model, metadata = load_weights(path)
        return cls(model, metadata, config)

    @classmethod
    def from_onnx(cls, path: str | Path, config: PredictorConfig = PredictorConfig(backend="onnxruntime")) -> "Predictor":
        """An exported graph (`onnx_export.export_onnx`, metadata embedded) run by ONNX Runtime."""
        from dataclasses import replace

        from densehybrid_ros.onnx_backend import read_onnx_metadata

        config = replace(config, backend="onnxruntime")
        config.validate()
        return cls(OnnxBackend(path, config.device), read_onnx_metadata(path), config)

    def _check_onnx_grid(self, backend: OnnxBackend) -> None:
        unknown = [s for s in self.config.extra_scores if s not in backend.output_names]
        if unknown:
            raise ValueError(f"extra score(s) {unknown} are not outputs of the ONNX graph {backend.output_names}; "
                             "use backend torch")
        if self.metadata.input_size is not None:
            stride = ResNet.output_stride
            h, w = self.network_size(1, 1)
            padded = (-(-h // stride) * stride, -(-w // stride) * stride)
            if padded != backend.input_hw:
                raise ValueError(f"the ONNX graph runs at {backend.input_hw}, but the weights' grid is {h}x{w}")

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) the image is resized to before padding: the weights' grid, else the ONNX graph's, else its own
        size."""
        if self.metadata.input_size is None:
            if self.config.backend == "onnxruntime":
                return self.model.input_hw
            return height, width
        grid_w, grid_h = self.metadata.input_size
        return grid_h, grid_w

    def predict(self, image: np.ndarray, threshold: ThresholdArg = OWN_THRESHOLD) -> Prediction:
        """One image (`predict_batch` of one)."""
        return self.predict_batch([image], threshold)[0]

    def predict_many(self, images: Sequence[np.ndarray], threshold: ThresholdArg = OWN_THRESHOLD) -> list[Prediction]:
        """Predictions in input order, one forward per network grid size: images that share a grid (all of them
        for weights with an `input_size` or on ONNX Runtime; else same-size images) are batched together."""
        images = [validate_image(im) for im in images]
        value = self.threshold_for(threshold)
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, image in enumerate(images):
            groups[self.network_size(*image.shape[:2])].append(index)
        results: list[Prediction | None] = [None] * len(images)
        for indices in groups.values():
            for index, prediction in zip(indices, self.predict_batch([images[i] for i in indices], value)):
                results[index] = prediction
        return results

    def warmup(self, batch: int = 1, size: tuple[int, int] | None = None) -> None:
        """One forward of `batch` blank images (CUDA context and kernels, allocator, ONNX Runtime session), at
        `size` (h, w), else the weights' (or the ONNX graph's) grid, else DEFAULT_WARMUP_SIZE."""
        if size is None:
            grid = self.network_size(0, 0)
            size = grid if grid != (0, 0) else DEFAULT_WARMUP_SIZE
        self.predict_batch([np.zeros((*size, 3), np.uint8)] * max(batch, 1))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def predict_batch(self, images: Sequence[np.ndarray], threshold: ThresholdArg = OWN_THRESHOLD) -> list[Prediction]:
        """One forward pass for all images: `postprocess(batch, forward(batch), threshold)` of
        `batch = preprocess(images)`. Images of different grid sizes are padded to the largest; the padding then
        enters the pyramid pooling, so batched equals one-by-one exactly only for images of one grid size (always
        the case for weights with an `input_size`)."""
        value = self.threshold_for(threshold)  # a bad threshold fails before any work
        if len(images) == 0:
            return []
        with torch.inference_mode():
            batch = self.preprocess(images)
            return self.postprocess(batch, self.forward(batch), value)

    @torch.inference_mode()
    def preprocess(self, images: Sequence[np.ndarray]) -> Batch:
        """Validate the images (`validate_image`), resize each to its network grid (bilinear, antialiased),
        normalise, and pad all to one multiple of the output stride. ValueError for no images or a bad one."""
        images = [validate_image(im) for im in images]
        if not images:
            raise ValueError("preprocess needs at least one image")
        sizes = [self.network_size(*im.shape[:2]) for im in images]
        stride = ResNet.output_stride
        pad_h = -(-max(h for h, _ in sizes) // stride) * stride
        pad_w = -(-max(w for _, w in sizes) // stride) * stride
        tensor = torch.zeros((len(images), 3, pad_h, pad_w), device=self.device)
        cuda = self.device.type == "cuda"
        for index, (image, (h, w)) in enumerate(zip(images, sizes)):
            host = torch.from_numpy(image)
            if cuda:
                # page-locked staging copy: an asynchronous DMA to the GPU, uint8 (a quarter of float32's bytes)
                host = host.pin_memory()
            x = host.to(self.device, non_blocking=cuda).permute(2, 0, 1)[None].float()
            if (h, w) != image.shape[:2]:
                x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
            # Padding stays 0 after normalisation, i.e. the dataset's mean colour.
            tensor[index, :, :h, :w] = ((x - self._mean) / self._std)[0]
        return Batch(tensor.contiguous(memory_format=self.memory_format), tuple(sizes),
                     tuple((int(im.shape[0]), int(im.shape[1])) for im in images))

    @torch.inference_mode()
    def forward(self, batch: Batch) -> DenseOutputs:
        """One forward pass of the model (`DenseHybrid.dense_outputs` or the ONNX graph; float16 autocast when
        config.fp16): logits, class ids (`scores.closed_set_decision` with the weights' class bias, if any) and the
        hybrid score plus config.extra_scores, at the padded batch size."""
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.config.fp16 else contextlib.nullcontext()
        with autocast:
            return self.model.dense_outputs(batch.tensor, self._score_names, class_bias=self._class_bias)

    @torch.inference_mode()
    def postprocess(self, batch: Batch, outputs: DenseOutputs, threshold: ThresholdArg = OWN_THRESHOLD
                    ) -> list[Prediction]:
        """Per image: crop its grid out of `outputs`, resize to its input size (config.output_resolution "input":
        class ids nearest, scores bilinear), fuse the open-set map at `threshold` (`scores.open_set_fusion`;
        OWN_THRESHOLD = `self.threshold`, None = none) and convert to numpy."""
        value = self.threshold_for(threshold)
        return [self._one(outputs, index, hw, input_hw, value)
                for index, (hw, input_hw) in enumerate(zip(batch.network_sizes, batch.input_sizes))]

    def _one(self, outputs: DenseOutputs, index: int, network_hw: tuple[int, int], input_hw: tuple[int, int],
             threshold: float | None) -> Prediction:
        h, w = network_hw
        class_ids = outputs.class_ids[index : index + 1, :h, :w]
        scores = {k: v[index : index + 1, :h, :w].float() for k, v in outputs.scores.items()}
        if self.config.output_resolution == "input" and tuple(class_ids.shape[-2:]) != tuple(input_hw):
            # Class ids: nearest neighbour; scores: bilinear (ros-notes: masks at camera resolution).
            class_ids = F.interpolate(class_ids[None].float(), size=input_hw, mode="nearest")[0].long()
            names = list(scores)
            stacked = F.interpolate(torch.stack([scores[n] for n in names], 1), size=input_hw, mode="bilinear",
                                    align_corners=False)
            scores = dict(zip(names, stacked.unbind(1)))
        open_set = None
        if threshold is not None:
            open_set = open_set_fusion(class_ids, scores["hybrid"], threshold, self.num_classes)
            open_set = open_set[0].to(torch.uint8).cpu().numpy()
        numpy_scores = {k: v[0].cpu().numpy() for k, v in scores.items()}
        return Prediction(
            class_ids=class_ids[0].to(torch.uint8).cpu().numpy(),
            hybrid=numpy_scores.pop("hybrid"),
            open_set=open_set,
            scores=numpy_scores,
        )
