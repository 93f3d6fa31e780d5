"""ResNet-18/34 backbone whose parameter names and shapes follow torchvision's `resnet18`/`resnet34`.

With the default width (64) a torchvision ImageNet state dict, minus its `fc.*` classifier, loads into
`ResNet` with `strict=True` (see `densehybrid_training.imagenet`). A smaller `width` gives CPU-sized models that are
trained from scratch; the names stay the same, the shapes scale.
"""
from __future__ import annotations

import torch
from torch import nn

# Blocks per stage, as in torchvision.
DEPTHS: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
}


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: two 3x3 convs with a residual connection."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet feature extractor returning the outputs of layer1..layer4 (strides 4, 8, 16, 32)."""

    output_stride = 32

    def __init__(self, depth: str = "resnet18", width: int = 64):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"backbone must be one of {sorted(DEPTHS)}, got {depth!r}")
        if width < 8:
            raise ValueError(f"backbone width must be >= 8, got {width}")
        self.stage_channels = tuple(width * m for m in (1, 2, 4, 8))
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_planes = width
        for index, (blocks, planes) in enumerate(zip(DEPTHS[depth], self.stage_channels), start=1):
            stride = 1 if index == 1 else 2
            layer = [BasicBlock(in_planes, planes, stride)]
            layer += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*layer))
            in_planes = planes
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each block: every residual branch starts as identity.
        for module in self.modules():
            if isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return tuple(features)
