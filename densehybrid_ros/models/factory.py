"""Architecture config and model construction."""
from __future__ import annotations

from dataclasses import dataclass

from densehybrid_ros.models.densehybrid import DenseHybrid
from densehybrid_ros.models.resnet import DEPTHS
from densehybrid_ros.models.swiftnet import SwiftNet


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a DenseHybrid SwiftNet. Stored in every weights file (`architecture`)."""

    num_classes: int
    backbone: str = "resnet18"
    backbone_width: int = 64  # 64 = torchvision's ResNet (ImageNet checkpoints load); smaller for CPU
    decoder_width: int = 128  # pre-logit channels
    spp_grids: tuple[int, ...] = (8, 4, 2, 1)

    def validate(self) -> None:
        if self.backbone not in DEPTHS:
            raise ValueError(f"backbone must be one of {sorted(DEPTHS)}, got {self.backbone!r}")
        if not 1 <= self.num_classes <= 254:
            # uint8 class maps: ids 0..K-1, K = unknown, 255 = void.
            raise ValueError(f"num_classes must be in 1..254, got {self.num_classes}")
        if self.backbone_width < 8 or self.decoder_width < 8:
            raise ValueError("backbone_width and decoder_width must be >= 8")
        if not self.spp_grids or min(self.spp_grids) < 1:
            raise ValueError(f"spp_grids must be positive, got {self.spp_grids}")


def build_segmenter(config: ModelConfig) -> SwiftNet:
    """The closed-set segmenter described by `config`."""
    config.validate()
    return SwiftNet(
        num_classes=config.num_classes,
        backbone=config.backbone,
        backbone_width=config.backbone_width,
        decoder_width=config.decoder_width,
        spp_grids=config.spp_grids,
    )


def build_model(config: ModelConfig) -> DenseHybrid:
    """Segmenter wrapped with the DenseHybrid head."""
    return DenseHybrid(build_segmenter(config))
