"""Predictor: shapes and dtypes at camera resolution, normalisation and score path against a direct
computation, batching, thresholds, and clear errors on bad images."""
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from densehybrid_ros.predictor import OWN_THRESHOLD, Batch, Predictor, PredictorConfig
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


def test_threshold_per_call_and_the_read_only_default(tiny_model):
    """Omitted (OWN_THRESHOLD) = the predictor's own threshold (resolved at construction), a float = that one, None =
    no open-set map; the open-set map is class ids with K where s_H >= the threshold, in float32 (the rule by hand)."""
    K = TINY.num_classes
    calibrated = replace(default_metadata(TINY), calibration=Calibration(threshold=0.0, method="manual"))
    predictor = Predictor(tiny_model, calibrated)
    assert predictor.threshold == 0.0  # weights.resolve_threshold: the weights' calibration
    assert Predictor(tiny_model, calibrated, PredictorConfig(threshold=-2.5)).threshold == -2.5  # config overrides
    img = image(64, 96)
    own = predictor.predict(img)
    t = float(np.sort(own.hybrid, axis=None)[own.hybrid.size // 3])  # an attained score
    by_hand = lambda out, thr: np.where(out.hybrid >= np.float32(thr), K, out.class_ids)  # noqa: E731
    np.testing.assert_array_equal(own.open_set, by_hand(own, 0.0))
    assert predictor.predict(img, threshold=OWN_THRESHOLD).open_set.tolist() == own.open_set.tolist()
    given = predictor.predict(img, threshold=t)
    assert 0 < (given.open_set == K).sum() < given.open_set.size
    np.testing.assert_array_equal(given.open_set, by_hand(given, t))
    assert predictor.predict(img, threshold=None).open_set is None
    np.testing.assert_array_equal(predictor.predict(img, None).hybrid, own.hybrid)  # scores do not depend on it
    # the same per call through predict_batch and predict_many, and on uncalibrated weights
    uncalibrated = Predictor(tiny_model, default_metadata(TINY))
    assert uncalibrated.threshold is None and uncalibrated.predict(img).open_set is None
    for got in (uncalibrated.predict_batch([img], t)[0], uncalibrated.predict_many([img], threshold=t)[0]):
        np.testing.assert_array_equal(got.open_set, by_hand(got, t))
    assert predictor.predict_many([img, img], None)[1].open_set is None
    assert predictor.threshold == 0.0  # no call changed it


def test_predictor_is_immutable(tiny_model):
    predictor = Predictor(tiny_model, default_metadata(TINY))
    with pytest.raises(AttributeError, match="pass threshold= to predict"):
        predictor.threshold = 1.0
    for name, value in (("config", PredictorConfig(threshold=1.0)), ("num_classes", 3), ("new_attribute", 1)):
        with pytest.raises(AttributeError, match="immutable"):
            setattr(predictor, name, value)
    with pytest.raises(AttributeError, match="immutable"):
        del predictor.metadata
    assert predictor.threshold is None and predictor.num_classes == TINY.num_classes
    img = image(32, 32)
    with pytest.raises(TypeError, match="threshold must be a number"):
        predictor.predict(img, threshold="0.5")
    with pytest.raises(ValueError, match="NaN"):
        predictor.predict_many([img], threshold=float("nan"))


def test_public_stages_compose_to_predict_batch(tiny_model):
    """preprocess -> forward -> postprocess is predict_batch: the batch holds the normalised, padded images (by hand)
    and each image's grid and input size; the outputs are the model's dense outputs at the padded size."""
    metadata = replace(default_metadata(TINY), calibration=Calibration(threshold=0.0, method="manual"))
    predictor = Predictor(tiny_model, metadata, PredictorConfig(extra_scores=("msp",)))
    images = [image(61, 83), image(40, 50)]
    batch = predictor.preprocess(images)
    assert isinstance(batch, Batch) and len(batch) == 2
    assert batch.input_sizes == batch.network_sizes == ((61, 83), (40, 50))  # no grid: each at its own size
    assert tuple(batch.tensor.shape) == (2, 3, 64, 96)  # padded to the largest, a multiple of 32
    mean, std = np.array(metadata.normalization.mean), np.array(metadata.normalization.std)
    expected = np.zeros((2, 3, 64, 96))
    for i, img in enumerate(images):
        expected[i, :, :img.shape[0], :img.shape[1]] = ((img / 255.0 - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(batch.tensor.numpy(), expected, atol=1e-5)
    outputs = predictor.forward(batch)
    assert tuple(outputs.class_ids.shape) == (2, 64, 96) and set(outputs.scores) == {"hybrid", "msp"}
    staged = predictor.postprocess(batch, outputs)
    for got, want in zip(staged, predictor.predict_batch(images)):
        np.testing.assert_array_equal(got.hybrid, want.hybrid)
        np.testing.assert_array_equal(got.scores["msp"], want.scores["msp"])
        np.testing.assert_array_equal(got.class_ids, want.class_ids)
        np.testing.assert_array_equal(got.open_set, want.open_set)
    assert [p.open_set for p in predictor.postprocess(batch, outputs, None)] == [None, None]
    grid = Predictor(tiny_model, replace(metadata, input_size=(128, 64)))
    assert grid.preprocess([image(300, 500)]).network_sizes == ((64, 128),)  # (h, w) of the weights' (w, h) grid
    with pytest.raises(ValueError, match="at least one image"):
        predictor.preprocess([])


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
    for device in ("tpu", "cuda:x", "cuda:-1", "cuda:", "cudax", "cpu:0"):  # named in the error, before any use
        with pytest.raises(ValueError, match=f"device must be .*got {device!r}"):
            Predictor(tiny_model, default_metadata(TINY), PredictorConfig(device=device))
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
