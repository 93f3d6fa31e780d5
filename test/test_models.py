"""Segmenter and DenseHybrid wrapper: shapes, head structure, any-segmenter wrapping, and the
inference path (scores computed natively, then upsampled) against a direct computation."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from densehybrid_ros.config import ConfigError, from_dict, load_yaml
from densehybrid_ros.models import DenseHybrid, ModelConfig, SegmenterOutput, build_model
from densehybrid_ros.paths import model_config_path

from conftest import TINY, randomize_batchnorm


@pytest.mark.parametrize("size", [(64, 128), (96, 64), (224, 320)])
def test_swiftnet_yields_stride4_prelogits_and_logits(size):
    model = build_model(TINY).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        pre_logits, logits = model.segmenter(x)
        full = model(x)
    assert pre_logits.shape == (2, TINY.decoder_width, size[0] // 4, size[1] // 4)
    assert logits.shape == (2, TINY.num_classes, size[0] // 4, size[1] // 4)
    assert full.logits.shape == (2, TINY.num_classes, *size) and full.inlier_logit.shape == (2, 1, *size)


def test_inlier_head_is_bn_relu_conv1x1_on_prelogits():
    head = build_model(TINY).inlier_head
    layers = list(head.children())
    assert [type(m) for m in layers] == [nn.BatchNorm2d, nn.ReLU, nn.Conv2d]
    assert layers[0].num_features == TINY.decoder_width
    assert layers[2].kernel_size == (1, 1) and layers[2].out_channels == 1


class PlainSegmenter(nn.Module):
    """Not a SwiftNet: any module yielding (pre_logits, logits) can be wrapped."""

    num_classes = 3
    pre_logit_channels = 6

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.classify = nn.Conv2d(6, 3, 1)

    def forward(self, x):
        z = self.features(x)
        return SegmenterOutput(z, self.classify(z))


def test_wraps_any_segmenter_and_matches_direct_computation():
    torch.manual_seed(0)
    model = randomize_batchnorm(DenseHybrid(PlainSegmenter())).eval()
    x = torch.randn(1, 3, 16, 20)
    with torch.no_grad():
        out = model.dense_outputs(x, ("hybrid", "msp"))
        z = model.segmenter.features(x)
        s = model.segmenter.classify(z)
        bn = model.inlier_head.norm
        g = model.inlier_head.conv(torch.relu((z - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
                                              * bn.weight[:, None, None] + bn.bias[:, None, None]))
    s64, g64 = s.double().numpy(), g.double().numpy()
    native = np.log(1 - 1 / (1 + np.exp(-g64[:, 0]))) - np.log(np.exp(s64).sum(axis=1))
    expected = F.interpolate(torch.tensor(native)[:, None], size=(16, 20), mode="bilinear", align_corners=False)[:, 0]
    np.testing.assert_allclose(out.scores["hybrid"].numpy(), expected.numpy(), atol=1e-5)
    upsampled = F.interpolate(s, size=(16, 20), mode="bilinear", align_corners=False)
    assert torch.equal(out.class_ids, upsampled.argmax(dim=1))
    assert torch.equal(model.closed_set(x), out.class_ids)


def test_wrapper_rejects_segmenter_without_contract():
    with pytest.raises(TypeError, match="must expose an int attribute .num_classes."):
        DenseHybrid(nn.Conv2d(3, 3, 1))


def test_model_presets_load_and_config_errors_name_the_field(tmp_path):
    for name in ("swiftnet_r18", "swiftnet_r18_cpu", "swiftnet_r34"):
        config = load_yaml(ModelConfig, model_config_path(name))
        assert config.num_classes == 19
    with pytest.raises(ConfigError, match="decoder_width: expected an integer"):
        from_dict(ModelConfig, {"num_classes": 3, "decoder_width": "wide"})
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['depth'\]"):
        from_dict(ModelConfig, {"num_classes": 3, "depth": 50})
    with pytest.raises(ConfigError, match="backbone must be one of"):
        from_dict(ModelConfig, {"num_classes": 3, "backbone": "resnet50"})
    with pytest.raises(ConfigError, match="num_classes: required"):
        from_dict(ModelConfig, {})
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_classes: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(ModelConfig, bad)
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(ModelConfig, tmp_path / "missing.yaml")
