"""Segmentation models: a torchvision-compatible ResNet, a SwiftNet-style ladder decoder, and the
DenseHybrid wrapper that adds the open-set extras to any segmenter yielding (pre_logits, logits)."""

from densehybrid_ros.models.densehybrid import DenseHybrid, DenseOutputs, HybridOutput
from densehybrid_ros.models.factory import ModelConfig, build_model, build_segmenter
from densehybrid_ros.models.resnet import ResNet
from densehybrid_ros.models.segmenter import SegmenterOutput
from densehybrid_ros.models.swiftnet import SwiftNet

__all__ = [
    "DenseHybrid",
    "DenseOutputs",
    "HybridOutput",
    "ModelConfig",
    "ResNet",
    "SegmenterOutput",
    "SwiftNet",
    "build_model",
    "build_segmenter",
]
