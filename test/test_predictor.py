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


def hybrid_by_hand(model, x: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, torch.Tensor]:
    """s_H (4.11) of the network's native outputs on the normalised (1, 3, H, W) input `x`, upsampled bilinearly to
    `size`; and the class logits upsampled likewise."""
    with torch.no_grad():
        s, g = model.native(torch.tensor(x, dtype=torch.float32))
    s64, g64 = s.double().numpy(), g.double().numpy()
    native = np.log(1 - 1 / (1 + np.exp(-g64[:, 0]))) - np.log(np.exp(s64).sum(axis=1))
    up = F.interpolate(torch.tensor(native)[:, None], size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
    return up, F.interpolate(s, size=size, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("shape", [(61, 83), (120, 200), (1, 1)])
def test_outputs_at_input_resolution(tiny_model, shape):
    """No network grid: the image is padded (after normalisation: zeros) to a multiple of 32, run once, and the maps
    are cropped back to the image: equal to the same steps done by hand."""
    metadata = replace(default_metadata(TINY), calibration=Calibration(threshold=0.0, method="manual"))
    img = image(*shape)
    out = Predictor(tiny_model, metadata, PredictorConfig(extra_scores=("entropy", "energy"))).predict(img)
    assert out.class_ids.shape == out.hybrid.shape == out.open_set.shape == shape
    assert out.class_ids.dtype == np.uint8 and out.open_set.dtype == np.uint8 and out.hybrid.dtype == np.float32
    assert set(out.scores) == {"entropy", "energy"} and all(v.shape == shape for v in out.scores.values())
    mean, std = np.array(metadata.normalization.mean), np.array(metadata.normalization.std)
    padded = (-(-shape[0] // 32) * 32, -(-shape[1] // 32) * 32)
    x = np.zeros((1, 3, *padded))
    x[0, :, :shape[0], :shape[1]] = ((img / 255.0 - mean) / std).transpose(2, 0, 1)
    hybrid, logits = hybrid_by_hand(tiny_model, x, padded)
    np.testing.assert_allclose(out.hybrid, hybrid[:shape[0], :shape[1]], atol=1e-4)
    ids = logits.argmax(dim=1)[0, :shape[0], :shape[1]].numpy()
    assert (out.class_ids == ids).mean() > 0.99  # ties at float precision aside
    np.testing.assert_array_equal(out.open_set, np.where(out.hybrid >= 0.0, TINY.num_classes, out.class_ids))


def test_network_grid_resize_and_network_resolution_output(tiny_model):
    """With an input_size the image is resized (bilinear, antialiased) to that grid; the maps come back at the grid
    ("network") or upsampled to the image: scores bilinearly, class ids by nearest neighbour."""
    metadata = replace(default_metadata(TINY), input_size=(128, 64))
    img = image(300, 500)
    mean, std = np.array(metadata.normalization.mean), np.array(metadata.normalization.std)
    resized = F.interpolate(torch.tensor(img, dtype=torch.float32).permute(2, 0, 1)[None], size=(64, 128),
                            mode="bilinear", align_corners=False, antialias=True)[0].numpy()
    x = ((resized.transpose(1, 2, 0) / 255.0 - mean) / std).transpose(2, 0, 1)[None]
    hybrid_net, logits = hybrid_by_hand(tiny_model, x, (64, 128))
    net = Predictor(tiny_model, metadata, PredictorConfig(output_resolution="network")).predict(img)
    assert net.class_ids.shape == (64, 128)
    np.testing.assert_allclose(net.hybrid, hybrid_net, atol=1e-4)
    assert (net.class_ids == logits.argmax(dim=1)[0].numpy()).mean() > 0.99
    full = Predictor(tiny_model, metadata).predict(img)
    expected = F.interpolate(torch.tensor(net.hybrid)[None, None], size=(300, 500), mode="bilinear",
                             align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(full.hybrid, expected, atol=1e-5)
    rows, cols = (np.arange(300) * 64) // 300, (np.arange(500) * 128) // 500  # nearest: the covering grid cell
    assert (full.class_ids == net.class_ids[rows][:, cols]).mean() > 0.99  # float rounding at cell edges aside


def test_open_set_is_class_ids_with_unknown_at_or_over_threshold(tiny_model):
    probe = Predictor(tiny_model, default_metadata(TINY)).predict(image(64, 64))
    assert probe.open_set is None  # uncalibrated weights: no open-set map
    img = image(64, 64)
    reference = Predictor(tiny_model, default_metadata(TINY)).predict(img)
    threshold = float(np.sort(reference.hybrid, axis=None)[reference.hybrid.size // 2])  # an attained score
    out = Predictor(tiny_model, default_metadata(TINY), PredictorConfig(threshold=threshold)).predict(img)
    unknown = out.hybrid >= np.float32(threshold)
    assert 0 < unknown.sum() < unknown.size and (out.hybrid[unknown] == np.float32(threshold)).any()
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
