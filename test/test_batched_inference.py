"""Multi-camera inference core, ROS-free: batched = one-by-one, the ONNX Runtime backend = PyTorch, the per-camera
mailbox, and the multi-camera parameters.

Tolerances (batched vs one-by-one, and ONNX Runtime vs PyTorch): scores (hybrid) atol 1e-4; class ids equal except
where the two largest logits of the pixel are within 1e-4 of each other (a near-tie may flip on float rounding).
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from conftest import TINY, randomize_batchnorm
from densehybrid_ros.models import build_model
from densehybrid_ros.perception.mailbox import BatchMailbox
from densehybrid_ros.perception.settings import (Settings, SettingsError, check_update, split_mount_param,
                                                  with_mount_values)
from densehybrid_ros.predictor import Predictor, PredictorConfig
from densehybrid_ros.weights import default_metadata, save_weights

SCORE_ATOL = 1e-4
TIE = 1e-4
RNG = np.random.default_rng(7)


def image(h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def near_ties(predictor: Predictor, img: np.ndarray) -> np.ndarray:
    """Pixels whose top-2 logits (at the image's resolution, one-by-one) are within TIE of each other."""
    with torch.inference_mode():
        batch = predictor.preprocess([img])
        ((h, w),) = batch.network_sizes
        logits = predictor.model.dense_outputs(batch.tensor, ("hybrid",)).logits[0, :, :h, :w].float()
        if (h, w) != img.shape[:2]:
            logits = torch.nn.functional.interpolate(logits[None], size=img.shape[:2], mode="nearest")[0]
    top2 = logits.topk(2, dim=0).values
    return (top2[0] - top2[1]).abs().numpy() <= TIE


def assert_same(got, expected, ties: np.ndarray, threshold: float | None = None) -> None:
    assert got.hybrid.shape == expected.hybrid.shape and got.hybrid.dtype == np.float32
    assert ties.mean() < 0.01  # the exemption is for rare near-ties only
    np.testing.assert_allclose(got.hybrid, expected.hybrid, rtol=0, atol=SCORE_ATOL)
    differ = got.class_ids != expected.class_ids
    assert not (differ & ~ties).any(), f"{int((differ & ~ties).sum())} class ids differ away from near-ties"
    if expected.open_set is not None:
        # open set = class ids, or K where s_H > threshold: compare away from near-ties and the threshold
        clear = ~ties & (np.abs(expected.hybrid - threshold) > SCORE_ATOL)
        np.testing.assert_array_equal(got.open_set[clear], expected.open_set[clear])


@pytest.fixture
def tiny_net(one_torch_thread):
    torch.manual_seed(0)
    return randomize_batchnorm(build_model(TINY)).eval()


# ---------------------------------------------------------------- batched = one-by-one
def test_predict_many_equals_one_by_one_for_mixed_camera_sizes(tiny_net):
    predictor = Predictor(tiny_net, default_metadata(TINY))
    probe = predictor.predict(image(64, 96))
    threshold = float(np.median(probe.hybrid))  # also compare the open-set map
    images = [image(64, 96), image(48, 80), image(64, 96), image(50, 70), image(48, 80)]  # 3 grid sizes
    forwards = []
    real = predictor.model.dense_outputs
    predictor.model.dense_outputs = lambda x, names, **kw: forwards.append(x.shape[0]) or real(x, names, **kw)
    batched = predictor.predict_many(images, threshold=threshold)
    assert sorted(forwards) == [1, 2, 2]  # one forward per grid size, not per image
    for img, got in zip(images, batched):
        assert got.class_ids.shape == img.shape[:2] and got.open_set is not None
        assert_same(got, predictor.predict(img, threshold=threshold), near_ties(predictor, img), threshold)


def test_weights_with_an_input_size_batch_every_camera_into_one_forward(tiny_net):
    predictor = Predictor(tiny_net, default_metadata(TINY, input_size=(96, 64)))
    images = [image(120, 200), image(48, 80), image(64, 96), image(90, 60)]
    forwards = []
    real = predictor.model.dense_outputs
    predictor.model.dense_outputs = lambda x, names, **kw: forwards.append(tuple(x.shape)) or real(x, names, **kw)
    batched = predictor.predict_many(images)
    assert forwards == [(4, 3, 64, 96)]
    for img, got in zip(images, batched):
        assert got.hybrid.shape == img.shape[:2]  # back at each camera's resolution
        assert_same(got, predictor.predict(img), near_ties(predictor, img))
    assert predictor.predict_many([]) == []


def test_perception_predicts_in_one_batch_then_presents_per_camera(tiny_weights, one_torch_thread):
    from densehybrid_ros.perception.camera import CameraModel
    from densehybrid_ros.perception.pipeline import CameraFrame, Perception, Wanted
    from densehybrid_ros.perception.settings import with_mount_values

    perception = Perception(Predictor.from_weights(tiny_weights), cameras=("front", "left"))
    front, left = image(48, 80), image(40, 64)
    low = -1e6  # every pixel unknown: one obstacle per camera
    # each frame's obstacles as they come (1 of 1 frames) and no size limit: one whole-image obstacle per camera
    settings = Settings.from_values({"threshold": low, "min_obstacle_area": 1, "cameras": ["front", "left"],
                                     "confirm_hits": 1, "confirm_window": 1, "obstacle_max_width": 1000.0,
                                     "obstacle_max_height": 1000.0})
    predictions = perception.predict([front, left], settings)
    everything = Wanted(semantic=True, semantic_color=True, anomaly_score=True, open_set=True, overlay=True,
                        obstacles=True)
    results = {}
    for name, rgb, prediction, pitch in (("front", front, predictions[0], 0.2), ("left", left, predictions[1], 0.4)):
        cam = CameraModel(fx=60.0, fy=60.0, cx=rgb.shape[1] / 2, cy=rgb.shape[0] / 2)
        mount = with_mount_values(settings.mount, {"camera_pitch": pitch})
        results[name] = perception.present(CameraFrame(rgb, everything, name, cam, mount), prediction, settings)
    assert results["front"].overlay.shape == (48, 80, 3) and results["left"].overlay.shape == (40, 64, 3)
    (a,), (b,) = results["front"].obstacles, results["left"].obstacles
    assert a.id == 0 and b.id == 0  # each camera its own tracker, own ids
    assert a.distance != pytest.approx(b.distance)  # its own mounting


# ---------------------------------------------------------------- ONNX Runtime backend
def test_onnxruntime_backend_matches_pytorch(tmp_path, tiny_net, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("DENSEHYBRID_CACHE", str(tmp_path / "cache"))
    metadata = default_metadata(TINY, input_size=(96, 64))
    weights = save_weights(tmp_path / "tiny.safetensors", tiny_net, metadata)
    torch_predictor = Predictor.from_weights(weights, PredictorConfig(threshold=0.0))
    onnx_predictor = Predictor.from_weights(weights, PredictorConfig(threshold=0.0, backend="onnxruntime"))
    assert onnx_predictor.model.providers == ["CPUExecutionProvider"]
    exported = list((tmp_path / "cache").glob("tiny-*-64x96.onnx"))
    assert len(exported) == 1  # exported once into the cache...
    Predictor.from_weights(weights, PredictorConfig(backend="onnxruntime"))
    assert list((tmp_path / "cache").glob("*.onnx")) == exported  # ...and reused
    probe = torch_predictor.predict(image(64, 96))
    threshold = float(np.median(probe.hybrid))
    images = [image(64, 96), image(120, 200), image(48, 80)]
    for img, got in zip(images, onnx_predictor.predict_many(images, threshold)):  # a batch of 3 through the session
        assert_same(got, torch_predictor.predict(img, threshold), near_ties(torch_predictor, img), threshold)
    # from the .onnx alone (metadata embedded): same classes and outputs
    alone = Predictor.from_onnx(exported[0], PredictorConfig(threshold=threshold))
    assert alone.metadata.classes == metadata.classes and alone.network_size(1, 1) == (64, 96)
    np.testing.assert_allclose(alone.predict(images[0]).hybrid, torch_predictor.predict(images[0]).hybrid,
                               rtol=0, atol=SCORE_ATOL)
    alone.warmup(batch=2)  # at the graph's grid


def test_onnxruntime_backend_errors(tmp_path, tiny_net):
    pytest.importorskip("onnxruntime")
    from densehybrid_ros.onnx_backend import select_providers
    from densehybrid_ros.onnx_export import export_onnx

    weights = save_weights(tmp_path / "tiny.safetensors", tiny_net, default_metadata(TINY))  # no input_size
    with pytest.raises(ValueError, match="needs a fixed network grid"):
        Predictor.from_weights(weights, PredictorConfig(backend="onnxruntime"))
    with pytest.raises(ValueError, match="fp16 needs"):
        PredictorConfig(device="cuda", fp16=True, backend="onnxruntime").validate()
    with pytest.raises(ValueError, match="backend must be one of"):
        PredictorConfig(backend="tensorflow").validate()
    path = export_onnx(tiny_net, default_metadata(TINY), tmp_path / "m.onnx", height=64, width=96)
    with pytest.raises(ValueError, match="not outputs of the ONNX graph"):
        Predictor.from_onnx(path, PredictorConfig(extra_scores=("msp",)))
    predictor = Predictor.from_onnx(path)  # no input_size: the graph's grid is the network grid
    assert predictor.network_size(480, 640) == (64, 96) and predictor.device.type == "cpu"
    assert predictor.predict(image(30, 40)).hybrid.shape == (30, 40)
    assert select_providers("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert select_providers("cuda:1", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        ("TensorrtExecutionProvider", {"device_id": 1}), ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider"]
    assert select_providers("cuda", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]  # CPU build: CPU


# ---------------------------------------------------------------- the per-camera mailbox
def test_batch_mailbox_keeps_the_newest_frame_per_camera_and_counts_drops():
    box = BatchMailbox(["front", "left"])
    assert box.put("front", 1) is False and box.put("front", 2) is True  # 1 dropped
    assert box.put("left", 10) is False
    assert box.take_batch(timeout=1.0) == {"front": 2, "left": 10}
    assert box.take_batch(timeout=0.01) == {}
    with pytest.raises(KeyError):
        box.put("rear", 1)
    with pytest.raises(ValueError):
        BatchMailbox(["a", "a"])


class ManualClock:
    """The mailbox's clock, moved by the test only: whether a wait has expired is decided by this clock, so the checks
    below depend on the order of events, not on how fast this machine runs them."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def take_in_thread(box: BatchMailbox, **kwargs) -> tuple[threading.Thread, list]:
    """`box.take_batch(**kwargs)` in a worker thread (as the node's worker calls it); the result lands in the list."""
    result: list = []
    worker = threading.Thread(target=lambda: result.append(box.take_batch(**kwargs)), daemon=True)
    worker.start()
    return worker, result


def finished(worker: threading.Thread, result: list):
    """The take's result; fails (instead of hanging) when it does not return within a generous deadline."""
    worker.join(30)
    assert not worker.is_alive(), "take_batch did not return"
    return result[0]


def test_batch_mailbox_waits_boundedly_for_live_cameras_only():
    clock = ManualClock()
    box = BatchMailbox(["front", "left"], clock=clock)
    # left is live (posted at t=0) but late: front's batch waits for it; its frame completes the batch at once,
    # with the clock still before the end of the wait
    box.put("left", 0)
    assert box.take_batch(timeout=1.0) == {"left": 0}
    box.put("front", 1)
    worker, result = take_in_thread(box, timeout=30.0, wait=0.5)
    box.put("left", 11)
    assert finished(worker, result) == {"front": 1, "left": 11}
    # left stays silent: the batch waits until `wait` has passed on the clock, not less
    clock.now = 0.25
    box.put("front", 2)  # arrives at 0.25; left (last frame at 0) is still live
    worker, result = take_in_thread(box, timeout=30.0, wait=0.125)
    worker.join(0.5)  # several of the mailbox's re-checks, the clock standing still
    assert worker.is_alive() and result == []
    clock.now = 0.375  # = arrival + wait (exact in binary)
    assert finished(worker, result) == {"front": 2}
    # once left has been quiet for `live` s it is not waited for at all (the clock never reaches the wait's end)
    clock.now = 5.0
    box.put("front", 3)
    worker, result = take_in_thread(box, timeout=30.0, wait=1000.0, live=1.0)
    assert finished(worker, result) == {"front": 3}
    # a frame that waited `wait` already (busy worker) goes at once, even with a live camera missing
    box.put("left", 12)
    assert box.take_batch(timeout=1.0) == {"left": 12}  # left live again (posted at 5.0)
    box.put("front", 4)
    clock.now = 5.06
    worker, result = take_in_thread(box, timeout=30.0, wait=0.05)
    assert finished(worker, result) == {"front": 4}
    # close wakes a waiting worker with nothing
    worker, result = take_in_thread(box, timeout=30.0)
    box.close()
    assert finished(worker, result) == {} and box.closed


# ---------------------------------------------------------------- parameters
def test_camera_parameters_are_validated_with_clear_errors():
    s = Settings.from_values({"cameras": ["front", "left"], "depth_topic": "depth"})
    assert s.cameras == ("front", "left") and Settings.from_values({}).cameras == ()
    assert s.batch_wait_ms == 10.0 and s.backend == "torch"
    cases = {
        "duplicate camera name(s) ['front']": ["front", "left", "front"],
        "invalid camera name(s) ['9cam', 'a/b', '', 'x__y']": ["9cam", "a/b", "", "x__y", "ok_1"],
        "at most 16 cameras": [f"c{i}" for i in range(17)],
        "cameras must be strings": ["front", 3],
    }
    for message, cameras in cases.items():
        with pytest.raises(SettingsError) as error:
            Settings.from_values({"cameras": cameras})
        assert message in str(error.value), str(error.value)
    with pytest.raises(SettingsError) as error:  # every problem at once
        Settings.from_values({"cameras": ["a", "a", "-"], "backend": "tensorrt", "batch_wait_ms": -1.0})
    for part in ("duplicate", "invalid camera", "backend must be one of", "batch_wait_ms must be in"):
        assert part in str(error.value)
    with pytest.raises(SettingsError, match="depth_topic '/depth' is absolute, but there are 2 cameras"):
        Settings.from_values({"cameras": ["front", "left"], "depth_topic": "/depth"})
    assert Settings.from_values({"cameras": ["front"], "depth_topic": "/depth"}).depth_topic == "/depth"
    with pytest.raises(SettingsError, match="fp16 needs backend torch"):
        Settings.from_values({"device": "cuda", "fp16": True, "backend": "onnxruntime"})
    assert "cleanup" in check_update("cameras", ["a"], configured=True)  # read at configure
    assert check_update("batch_wait_ms", 0.0, configured=True) is None  # runtime
    mounted = with_mount_values(s.mount, {"camera_height": 2.5, "camera_pitch": 0.1})
    assert (mounted.height, mounted.pitch, mounted.roll) == (2.5, 0.1, 0.0)
    with pytest.raises(SettingsError, match="camera_pitch must be in"):
        with_mount_values(s.mount, {"camera_pitch": 3.0})
    assert split_mount_param("front.camera_pitch") == ("front", "camera_pitch")
    assert split_mount_param("camera_pitch") is None and split_mount_param("front.threshold") is None
    assert Settings.from_values({}).replace(cameras=["a"]).cameras == ("a",)


# ---------------------------------------------------------------- densehybrid-bench cameras (runs; no timing asserted)
def test_bench_cameras_runs_both_modes_and_backends(tmp_path, capsys):
    import json

    from conftest import make_sim_weights
    from densehybrid_ros.tools.bench import cameras_throughput, main

    weights = make_sim_weights(tmp_path / "sim.safetensors")
    assert main(["cameras", "--weights", str(weights), "--counts", "1", "2", "--cycles", "2", "--size", "128x64",
                 "--threads", "1", "--json", "--out", str(tmp_path / "cameras.json")]) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "cameras.json").read_text())
    assert json.loads(printed[printed.index("{"):]) == result
    assert result["benchmark"] == "cameras" and result["torch_threads"] == 1
    assert (result["size"], result["size_hxw"]) == ("128x64", "64x128")  # --size is WxH
    assert [(r["cameras"], r["mode"]) for r in result["runs"]] == [
        (1, "batched"), (1, "one_by_one"), (2, "batched"), (2, "one_by_one")]
    for r in result["runs"]:  # frames counted per cycle; fps = those frames over the summed cycle times
        assert r["frames"] == 2 * r["cameras"] and r["fps"] == pytest.approx(r["frames"] / r["seconds"], rel=1e-2)
    assert set(result["speedup_batched_over_one_by_one"]) == {"1", "2"}
    onnx = cameras_throughput(weights, counts=(2,), cycles=1, size=(128, 64), backend="onnxruntime", threads=1)
    assert onnx["backend"] == "onnxruntime [CPUExecutionProvider]" and len(onnx["runs"]) == 2
