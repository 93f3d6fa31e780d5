"""ONNX export of the DenseHybrid model: logits, hybrid score and its two components in one graph.

The graph has a fixed spatial size (the network grid; TensorRT and most deployment runtimes prefer
static shapes) and a dynamic batch. The weights' metadata JSON is embedded as the ONNX metadata
property `densehybrid_ros`, so a deployed .onnx file still knows its classes and threshold.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from densehybrid_ros.models import DenseHybrid
from densehybrid_ros.models.resnet import ResNet
from densehybrid_ros.weights import METADATA_KEY, WeightsMetadata

OUTPUT_NAMES = ("logits", "hybrid", "generative", "discriminative")


class HybridGraph(nn.Module):
    """Normalised image (B, 3, H, W) -> logits (B, K, H, W) and hybrid / generative / discriminative
    scores (B, H, W): `DenseHybrid.dense_outputs`, the same computation the Predictor runs."""

    def __init__(self, model: DenseHybrid):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.dense_outputs(image, OUTPUT_NAMES[1:])
        return (out.logits, *(out.scores[name] for name in OUTPUT_NAMES[1:]))


def export_onnx(
    model: DenseHybrid,
    metadata: WeightsMetadata,
    path: str | Path,
    height: int,
    width: int,
    max_batch: int = 16,
    opset: int = 18,
) -> Path:
    """Write the ONNX graph of `model` at network size (height, width); returns the path."""
    stride = ResNet.output_stride
    if height % stride or width % stride or height < stride or width < stride:
        raise ValueError(f"ONNX export size must be positive multiples of {stride}, got {height}x{width}")
    import onnx  # deployment-only dependency, imported on use

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = HybridGraph(model.float().eval().cpu())
    example = torch.zeros(1, 3, height, width)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            dynamo=True,
            opset_version=opset,
            input_names=["image"],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"image": {0: batch}},
            external_data=False,
            verbose=False,
        )
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata.to_json()
    onnx.save(proto, str(path))
    return path


class _quiet_exporter:
    """Silence torch.onnx's progress logging (it warns about torchvision ops this project never uses)."""

    def __enter__(self):
        self._level = logging.root.manager.disable
        logging.disable(logging.WARNING)

    def __exit__(self, *exc):
        logging.disable(self._level)
