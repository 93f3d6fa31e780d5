"""ONNX Runtime execution of an exported DenseHybrid graph (`densehybrid_ros.onnx_export`). ROS-free.

`OnnxBackend` stands in for the PyTorch model inside the `Predictor`: it has the one method the Predictor calls,
`dense_outputs(batch, score_names)`, and returns the same `DenseOutputs` (upsampled logits, their argmax, the
scores), so pre- and postprocessing, open-set fusion and batching are the Predictor's own code for both backends.

- The graph has a fixed spatial size (the network grid it was exported at) and a dynamic batch: the Predictor
  resizes every image to that grid, so one session serves cameras of any size.
- Scores come from the graph: hybrid, generative, discriminative (`onnx_export.OUTPUT_NAMES`); other extra scores
  need the PyTorch backend.
- Providers: for device cuda / cuda:N, TensorRT and CUDA when this onnxruntime build has them (in that order,
  device_id N), then CPU; for device cpu, CPU only. `providers` lists what the session really uses.
- The weights' metadata travels inside the .onnx (`densehybrid_ros` metadata property): `read_onnx_metadata`.
- `cached_export` exports a weights file once per (file contents, size) into a cache directory
  ($DENSEHYBRID_CACHE, else $XDG_CACHE_HOME/densehybrid_ros, else ~/.cache/densehybrid_ros).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from densehybrid_ros.models.densehybrid import DenseOutputs
from densehybrid_ros.paths import written_whole
from densehybrid_ros.scores import closed_set_decision
from densehybrid_ros.weights import METADATA_KEY, WeightsMetadata, file_sha256

GRAPH_SCORES = ("hybrid", "generative", "discriminative")


def select_providers(device: str, available: Sequence[str]) -> list:
    """ONNX Runtime providers for `device` ("cpu", "cuda", "cuda:N"), best first, CPU always last."""
    providers: list = []
    if device.startswith("cuda"):
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        for name in ("TensorrtExecutionProvider", "CUDAExecutionProvider"):
            if name in available:
                providers.append((name, {"device_id": index}))
    providers.append("CPUExecutionProvider")
    return providers


def read_onnx_metadata(path: str | Path) -> WeightsMetadata:
    """The weights metadata embedded by `export_onnx` (classes, normalisation, threshold...)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise ValueError(f"{path}: no '{METADATA_KEY}' metadata; export it with densehybrid_ros.onnx_export.export_onnx")
    return WeightsMetadata.from_json(props[METADATA_KEY])


class OnnxBackend:
    """An `onnxruntime.InferenceSession` of an exported DenseHybrid graph, with `DenseHybrid.dense_outputs`'s
    interface. Inputs and outputs pass through host memory (numpy)."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads if threads is not None else torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.path), sess_options=options,
                                            providers=select_providers(device, ort.get_available_providers()))
        self.providers = list(self.session.get_providers())
        (image,) = self.session.get_inputs()
        shape = image.shape
        if len(shape) != 4 or not all(isinstance(s, int) for s in shape[1:]) or shape[1] != 3:
            raise ValueError(f"{self.path}: expected an input (batch, 3, H, W) with a fixed H and W, got {shape}")
        self.input_name = image.name
        self.input_hw = (int(shape[2]), int(shape[3]))
        self.output_names = [o.name for o in self.session.get_outputs()]
        if "logits" not in self.output_names or "hybrid" not in self.output_names:
            raise ValueError(f"{self.path}: outputs {self.output_names} lack 'logits' and 'hybrid' (not a DenseHybrid export)")

    def dense_outputs(self, x: torch.Tensor, score_names: Sequence[str] = ("hybrid",),
                      class_bias: torch.Tensor | None = None) -> DenseOutputs:
        """Logits (B, K, H, W), class ids (B, H, W) int64 (`scores.closed_set_decision` with `class_bias`) and the
        named scores (B, H, W) float32, on x's device."""
        if tuple(x.shape[-2:]) != self.input_hw:
            raise ValueError(f"the ONNX graph runs at {self.input_hw[0]}x{self.input_hw[1]}, got a batch of "
                             f"{x.shape[-2]}x{x.shape[-1]}")
        missing = [n for n in score_names if n not in self.output_names]
        if missing:
            raise ValueError(f"score(s) {missing} are not outputs of {self.path.name} (it has {self.output_names}); "
                             "use the torch backend for them")
        names = ["logits", *score_names]
        feed = np.ascontiguousarray(x.detach().float().cpu().numpy())
        outputs = self.session.run(names, {self.input_name: feed})
        tensors = {n: torch.from_numpy(np.asarray(o, dtype=np.float32)).to(x.device) for n, o in zip(names, outputs)}
        logits = tensors.pop("logits")
        return DenseOutputs(logits, closed_set_decision(logits, class_bias), tensors)


def cache_dir() -> Path:
    if os.environ.get("DENSEHYBRID_CACHE"):
        return Path(os.environ["DENSEHYBRID_CACHE"])
    base = Path(os.environ["XDG_CACHE_HOME"]) if os.environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "densehybrid_ros"


def cached_export(weights: str | Path, height: int, width: int, directory: str | Path | None = None) -> Path:
    """The ONNX export of a weights file at network size height x width, exported on first use and reused after
    (keyed by the file's contents and the size)."""
    from densehybrid_ros.onnx_export import export_onnx
    from densehybrid_ros.weights import load_weights

    weights = Path(weights)
    directory = Path(directory) if directory is not None else cache_dir()
    target = directory / f"{weights.stem}-{file_sha256(weights)[:16]}-{height}x{width}.onnx"
    if target.is_file():
        return target
    model, metadata = load_weights(weights)
    with written_whole(target) as partial:  # a concurrent reader never sees a half-written file
        export_onnx(model, metadata, partial, height=height, width=width)
    return target
