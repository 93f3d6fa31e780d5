"""Predictor: shapes and dtypes at camera resolution, normalisation and score path against a direct
computation, batching, thresholds, and clear errors on bad images."""
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from densehybrid_ros.predictor import Predictor, PredictorConfig
from densehybrid_ros.weights import Calibration, Normalization, default_metadata

from conftest import TINY

RNG = np.random.default_rng(7)


def image(h, w):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_scores_match_direct_computation_at_grid_size(tiny_model):
    """A 64x96 image needs no resize or padding: hybrid must equal the formula applied to the network's
    native outputs on the image normalised by hand, upsampled to the image size."""
    metadata = replace(default_metadata(TINY), normalization=Normalization(mean=(0.3, 0.4, 0.5), std=(0.2, 0.25, 0.3)))
    predictor = Predictor(tiny_model, metadata, PredictorConfig(extra_scores=("msp",)))
    img = image(64, 96)
    out = predictor.predict(img)
    x = (img.astype(np.float64) / 255.0 - [0.3, 0.4, 0.5]) / [0.2, 0.25, 0.3]
    with torch.no_grad():
        s, g = tiny_model.native(torch.tensor(x.transpose(2, 0, 1)[None], dtype=torch.float32))
    s64, g64 = s.double().numpy(), g.double().numpy()
    p = np.exp(s64) / np.exp(s64).sum(axis=1, keepdims=True)
    native = {"hybrid": np.log(1 - 1 / (1 + np.exp(-g64[:, 0]))) - np.log(np.exp(s64).sum(axis=1)), "msp": -p.max(axis=1)}
    for name, value in native.items():
        expected = F.interpolate(torch.tensor(value)[:, None], size=(64, 96), mode="bilinear", align_corners=False)[0, 0]
        got = out.hybrid if name == "hybrid" else out.scores[name]
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, err_msg=name)
    ids = F.interpolate(s, size=(64, 96), mode="bilinear", align_corners=False).argmax(dim=1)[0].numpy()
    assert (out.class_ids == ids).mean() > 0.999  # ties at float precision aside


@pytest.mark.parametrize("shape", [(61, 83), (120, 200), (1, 1)])
def test_outputs_at_input_resolution(tiny_model, shape):
    metadata = replace(default_metadata(TINY), calibration=Calibration(threshold=0.0, method="manual"))
    out = Predictor(tiny_model, metadata, PredictorConfig(extra_scores=("entropy", "energy"))).predict(image(*shape))
    assert out.class_ids.shape == out.hybrid.shape == out.open_set.shape == shape
    assert out.class_ids.dtype == np.uint8 and out.open_set.dtype == np.uint8 and out.hybrid.dtype == np.float32
    assert set(out.scores) == {"entropy", "energy"} and all(v.shape == shape for v in out.scores.values())
    assert out.class_ids.max() < TINY.num_classes


def test_network_grid_resize_and_network_resolution_output(tiny_model):
    metadata = replace(default_metadata(TINY), input_size=(128, 64))
    predictor = Predictor(tiny_model, metadata)
    assert predictor.predict(image(300, 500)).hybrid.shape == (300, 500)
    net = Predictor(tiny_model, metadata, PredictorConfig(output_resolution="network"))
    assert net.predict(image(300, 500)).class_ids.shape == (64, 128)


def test_open_set_is_class_ids_with_unknown_over_threshold(tiny_model):
    probe = Predictor(tiny_model, default_metadata(TINY)).predict(image(64, 64))
    assert probe.open_set is None  # uncalibrated weights: no open-set map
    threshold = float(np.median(probe.hybrid))
    out = Predictor(tiny_model, default_metadata(TINY), PredictorConfig(threshold=threshold)).predict(image(64, 64))
    unknown = out.hybrid > threshold
    assert 0 < unknown.sum() < unknown.size
    assert np.all(out.open_set[unknown] == TINY.num_classes)
    assert np.array_equal(out.open_set[~unknown], out.class_ids[~unknown])


def test_batch_equals_one_by_one(tiny_model):
    predictor = Predictor(tiny_model, default_metadata(TINY), PredictorConfig(extra_scores=("msp",)))
    images = [image(64, 96) for _ in range(3)]
    batched = predictor.predict_batch(images)
    for img, b in zip(images, batched):
        single = predictor.predict(img)
        np.testing.assert_allclose(b.hybrid, single.hybrid, atol=1e-5)
        np.testing.assert_allclose(b.scores["msp"], single.scores["msp"], atol=1e-5)
        assert (b.class_ids == single.class_ids).mean() > 0.999
    assert predictor.predict_batch([]) == []


def test_from_weights_file(tiny_weights):
    out = Predictor.from_weights(tiny_weights).predict(image(40, 50))
    assert out.hybrid.shape == (40, 50) and np.isfinite(out.hybrid).all()


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8), np.uint8), r"shape \(H, W, 3\)"),
        (np.zeros((8, 8, 4), np.uint8), r"shape \(H, W, 3\)"),
        (np.zeros((0, 8, 3), np.uint8), "empty"),
        ([[0, 0, 0]], "numpy array"),
    ],
)
def test_bad_images_get_clear_errors(tiny_model, bad, message):
    with pytest.raises(ValueError, match=message):
        Predictor(tiny_model, default_metadata(TINY)).predict(bad)


def test_bad_predictor_config(tiny_model):
    with pytest.raises(ValueError, match="unknown extra score"):
        Predictor(tiny_model, default_metadata(TINY), PredictorConfig(extra_scores=("odin",)))
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        Predictor(tiny_model, default_metadata(TINY), PredictorConfig(fp16=True))
    with pytest.raises(ValueError, match="device"):
        Predictor(tiny_model, default_metadata(TINY), PredictorConfig(device="tpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            Predictor(tiny_model, default_metadata(TINY), PredictorConfig(device="cuda"))


def test_cpu_allocator_setting_is_applied_in_a_fresh_process():
    """mallopt returns 1 on success; the helper reports it (glibc, as on this platform)."""
    import subprocess
    import sys

    code = "from densehybrid_ros.cpu_memory import retain_freed_memory as r; print(r(), r())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True"]
