"""Initialise a segmenter's backbone from a torchvision ImageNet ResNet checkpoint.

The project's `ResNet` uses torchvision's parameter names and shapes, so a torchvision state dict loads
with `strict=True` once its ImageNet classifier (`fc.weight`, `fc.bias`) is set aside: a segmenter has
no use for it. Checkpoints are read with `torch.load(weights_only=True)` (tensors only, no arbitrary
code) or from safetensors; this runs offline, on files the user chose, never in the node.
"""
from __future__ import annotations

from pathlib import Path

import torch

from densehybrid_ros.models.resnet import ResNet

CLASSIFIER_KEYS = ("fc.weight", "fc.bias")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a torch.save file (loaded with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ImageNet checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def load_imagenet_backbone(backbone: ResNet, state_dict: dict[str, torch.Tensor]) -> None:
    """Load torchvision ResNet weights into `backbone` with strict=True (minus the fc classifier).

    Raises RuntimeError (from torch) naming missing/unexpected keys or shape mismatches.
    """
    features = {k: v for k, v in state_dict.items() if k not in CLASSIFIER_KEYS}
    backbone.load_state_dict(features, strict=True)
