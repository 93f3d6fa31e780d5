"""The backbone follows torchvision's ResNet naming and shapes, written out here from torchvision's
architecture description (not from the project's code), and loads such a state dict strictly."""
import pytest
import torch

from densehybrid_ros.models.resnet import ResNet
from densehybrid_training.imagenet import load_imagenet_backbone, read_state_dict

BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
# Published totals of torchvision.models.resnet18/34 (ImageNet, 1000 classes, fc included).
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672}


def torchvision_shapes(depth: str) -> dict[str, tuple]:
    shapes: dict[str, tuple] = {}

    def bn(prefix, c):
        shapes.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                       f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()})

    shapes["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    inplanes = 64
    for stage, (blocks, planes) in enumerate(zip(BLOCKS[depth], (64, 128, 256, 512)), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            cin = inplanes if b == 0 else planes
            shapes[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
            bn(f"{p}.bn1", planes)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            if b == 0 and stage > 1:  # stride 2 and a channel change: 1x1 projection shortcut
                shapes[f"{p}.downsample.0.weight"] = (planes, cin, 1, 1)
                bn(f"{p}.downsample.1", planes)
        inplanes = planes
    shapes["fc.weight"] = (1000, 512)
    shapes["fc.bias"] = (1000,)
    return shapes


@pytest.mark.parametrize("depth", sorted(BLOCKS))
def test_names_and_shapes_follow_torchvision(depth):
    expected = {k: v for k, v in torchvision_shapes(depth).items() if not k.startswith("fc.")}
    got = {k: tuple(v.shape) for k, v in ResNet(depth).state_dict().items()}
    assert got == expected


@pytest.mark.parametrize("depth", sorted(BLOCKS))
def test_parameter_count_matches_torchvision(depth):
    backbone = sum(p.numel() for p in ResNet(depth).parameters())
    assert backbone + 512 * 1000 + 1000 == TORCHVISION_PARAMS[depth]


def test_torchvision_checkpoint_loads_strictly(tmp_path):
    generator = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(s, generator=generator) if s else torch.tensor(7)) for k, s in torchvision_shapes("resnet18").items()}
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(state, path)  # the way torchvision checkpoints are distributed
    backbone = ResNet("resnet18")
    load_imagenet_backbone(backbone, read_state_dict(path))
    assert torch.equal(backbone.layer3[0].downsample[0].weight, state["layer3.0.downsample.0.weight"])
    assert torch.equal(backbone.bn1.running_var, state["bn1.running_var"])

    del state["layer4.1.bn2.running_mean"]
    with pytest.raises(RuntimeError, match="layer4.1.bn2.running_mean"):
        load_imagenet_backbone(ResNet("resnet18"), state)
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_imagenet_backbone(ResNet("resnet18", width=32), read_state_dict(path))
