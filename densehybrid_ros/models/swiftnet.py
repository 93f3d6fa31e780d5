"""SwiftNet-style single-scale segmenter (Orsic et al., CVPR 2019): ResNet encoder, spatial pyramid
pooling on the stride-32 features, and a ladder decoder that blends lateral skips from strides 16, 8
and 4. It yields stride-4 pre-logits and logits, the pair DenseHybrid builds on."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from densehybrid_ros.models.layers import BNReLUConv
from densehybrid_ros.models.resnet import ResNet
from densehybrid_ros.models.segmenter import SegmenterOutput


class SpatialPyramidPooling(nn.Module):
    """SwiftNet SPP: bottleneck, average pooling on aspect-aware grids, per-level projection, fusion."""

    def __init__(self, in_channels: int, width: int, out_channels: int, grids: tuple[int, ...]):
        super().__init__()
        if not grids:
            raise ValueError("spp_grids must name at least one grid size")
        level_width = max(width // len(grids), 1)
        self.grids = tuple(int(g) for g in grids)
        self.bottleneck = BNReLUConv(in_channels, width, kernel_size=1)
        self.levels = nn.ModuleList(BNReLUConv(width, level_width, kernel_size=1) for _ in self.grids)
        self.fuse = BNReLUConv(width + level_width * len(self.grids), out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bottleneck(x)
        height, width = x.shape[-2:]
        aspect = width / height
        pyramid = [x]
        for grid, level in zip(self.grids, self.levels):
            # Grid cells follow the feature map's aspect ratio (wide road images get wide grids).
            cells = (grid, max(1, round(aspect * grid)))
            pooled = level(F.adaptive_avg_pool2d(x, cells))
            pyramid.append(F.interpolate(pooled, size=(height, width), mode="bilinear", align_corners=False))
        return self.fuse(torch.cat(pyramid, dim=1))


class LadderUpsample(nn.Module):
    """One ladder step: project the skip, add it to the upsampled coarse features, blend with a 3x3."""

    def __init__(self, skip_channels: int, width: int):
        super().__init__()
        self.skip = BNReLUConv(skip_channels, width, kernel_size=1)
        self.blend = BNReLUConv(width, width, kernel_size=3)

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        skip = self.skip(skip)
        up = F.interpolate(coarse, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.blend(up + skip)


class SwiftNet(nn.Module):
    """ResNet + SPP + ladder decoder. `forward` returns stride-4 (pre_logits, logits)."""

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet18",
        backbone_width: int = 64,
        decoder_width: int = 128,
        spp_grids: tuple[int, ...] = (8, 4, 2, 1),
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.pre_logit_channels = decoder_width
        self.output_stride = ResNet.output_stride
        self.backbone = ResNet(backbone, backbone_width)
        c1, c2, c3, c4 = self.backbone.stage_channels
        self.spp = SpatialPyramidPooling(c4, decoder_width, decoder_width, spp_grids)
        self.up16 = LadderUpsample(c3, decoder_width)
        self.up8 = LadderUpsample(c2, decoder_width)
        self.up4 = LadderUpsample(c1, decoder_width)
        self.classifier = BNReLUConv(decoder_width, num_classes, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> SegmenterOutput:
        f4, f8, f16, f32 = self.backbone(x)
        z = self.up4(self.up8(self.up16(self.spp(f32), f16), f8), f4)
        return SegmenterOutput(pre_logits=z, logits=self.classifier(z))
