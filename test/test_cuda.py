"""CUDA code paths on a real GPU, each against the CPU float32 path (the reference) on the same weights and inputs.

Run on a GPU machine, with the project installed so that `densehybrid_training` imports (`pip install --no-deps -e .`):

    DENSEHYBRID_TEST_DEVICE=cuda python -m pytest -q test/test_cuda.py

The training tests need rosbags and rosbags-image too (densehybrid_training imports them through
densehybrid_ros.datasets) and are skipped, naming the package, where they are missing; the ONNX test needs onnx,
onnxruntime and onnxscript, the checkpoint test tensorboard, the cameras benchmark the sim's pybullet.

`DENSEHYBRID_TEST_DEVICE` (default "cuda") names the device under test: "cuda", "cuda:N" or "cpu".
- A CUDA device while `torch.cuda.is_available()` is False: every test is skipped (module `pytestmark`), so
  `make test` stays green on machines without a GPU.
- "cpu": the tests run with the CPU as the device under test instead of being skipped. Every comparison is then CPU
  against CPU: that checks the test code itself (set-up, helpers, tolerances), not CUDA. The checks of CUDA-only
  modes (float16 autocast, TF32, AMP) are skipped; the ONNX tests still ask for device "cuda" (ONNX Runtime chooses
  its providers without torch's CUDA). To check the test logic here:

      DENSEHYBRID_TEST_DEVICE=cpu .venv/bin/python -m pytest -q -p no:randomly test/test_cuda.py

Covered, one test each:
- `Predictor` (torch backend) on the device = on the CPU: one image at a time, and `predict_batch` / `predict_many`;
  float16 autocast and TF32 on CUDA within the reduced-precision tolerance, scores returned as float32;
- `Predictor` with "cuda:N", N >= the visible device count: ValueError naming the device;
- ONNX Runtime backend with a CUDA device: the provider list (`onnx_backend.select_providers`) falls back to the CPU
  provider on a build without CUDA, and its predictions equal the torch CPU path;
- training engine (`engine.optimizer_step`, as `engine.train` calls it): one step of the closed-set segmenter and
  one of fine-tuning with negatives, AMP off: losses, gradients and updated weights = CPU; AMP on CUDA: runs, finite
  loss close to the float32 one;
- SynDenseHybrid joint step (`synthetic.JointFlowTraining`, `engine._joint_step`) with the same flow noise on both
  devices: samples, L_jsd, L_mle and the segmenter's loss = CPU, gradients reach both the flow and the segmenter;
- checkpoints (`engine.train`, `checkpoint.py`) written on the device and resumed on the CPU as a CPU-only machine
  (no CUDA RNG state there) and the other way round: weights restored exactly, RNG state restored, the next step
  = the step on the original device;
- `densehybrid-bench overhead --device` (float32 and --fp16) and `densehybrid-bench cameras --device` at their
  smallest sizes: the JSON names the device and every timing is positive (cameras needs the sim's pybullet).
- a checkpoint's CUDA RNG state from a machine with more GPUs than this one: the visible devices' states are
  restored, the others ignored (set_rng_state_all would index past the visible devices);
- calibration's class-bias search (`calibrate.ClassBiasSearch`) fed by a Predictor on the device: the same pixels
  kept with the CPU's logits, the same confusion matrices up to near-ties.
  `densehybrid-bench train` runs on the config's device too (`time_steps`), but needs rendered sim frames (pybullet).

Precision. The float32 comparisons run with TF32 off (autouse fixture `_reference_setup`): PyTorch lets cuDNN
convolutions use TF32 by default (`torch.backends.cudnn.allow_tf32`), whose 10-bit mantissa is float16's, so that
path is checked at the reduced-precision tolerance, next to float16. Tolerances (device vs CPU float32):
- float32 scores: atol 1e-4 (SCORE_ATOL, as test_batched_inference and test_onnx); class ids equal except where the
  CPU's two largest logits lie within 1e-4 (near-ties, under 1 % of the pixels);
- float16 / TF32 scores: |diff| <= 1e-2 + 1e-2 |cpu|. One float16 rounding is relative 2^-11 ~ 4.9e-4; the tiny
  network's ~20 layers compound it to ~1e-3 of the logits (and of LSE(s), which is ~1-10 here), so 1e-2 relative
  leaves a margin of ~10 (measured on an H200, torch 2.11: max |diff| 6.4e-4 float16, 3.9e-4 TF32); the `msp` score
  lies in [-1, 0] (atol 1e-2); class ids may differ only where the CPU's top-2 logits lie within 5e-2, on at most
  1 % of the pixels;
- losses: rtol 1e-4; gradients: rtol 1e-3 plus atol 1e-4 of the network's largest gradient entry (float32 sums in
  another order; where the terms cancel, as for BatchNorm weights behind 1x1 pooling, |g| ~ 1e-10, only an absolute
  bound holds);
- updated weights: atol 1e-5 at the engine's lr 4e-4 (2.5e-2 lr; at least 5e-7, ~4 float32 ulps, for the flow's lr
  1e-5). Adam's first steps move every element by about lr * sign(gradient), so an element whose gradient is zero up
  to rounding (or of the order of Adam's eps, 1e-8) may step otherwise on the two devices: up to 0.2 % of all
  elements may differ by up to 2 lr per step, no more (`assert_states_close`; measured on the H200: 0.05 % of the
  flow's elements, whose gradients are that small, 0.001 % of the segmenter's);
- AMP: the float32 step's loss within 1e-2 relative (float16 activations, float32 loss terms).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import platform
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import TINY, randomize_batchnorm
from densehybrid_ros.models import build_model
from densehybrid_ros.predictor import Predictor, PredictorConfig
from densehybrid_ros.weights import Calibration, default_metadata

DEVICE = os.environ.get("DENSEHYBRID_TEST_DEVICE", "cuda").strip() or "cuda"
if not re.fullmatch(r"cpu|cuda(:\d+)?", DEVICE):
    raise ValueError(f"DENSEHYBRID_TEST_DEVICE must be cpu, cuda or cuda:N, got {DEVICE!r}")
ON_CUDA = DEVICE.startswith("cuda")

pytestmark = pytest.mark.skipif(
    ON_CUDA and not torch.cuda.is_available(),
    reason=f"DENSEHYBRID_TEST_DEVICE={DEVICE} but torch sees no CUDA device (DENSEHYBRID_TEST_DEVICE=cpu runs the "
           "test code against the CPU)")
cuda_only = pytest.mark.skipif(not ON_CUDA, reason="a CUDA-only mode: nothing to compare with "
                                                   "DENSEHYBRID_TEST_DEVICE=cpu")

SCORE_ATOL = 1e-4
TIE = 1e-4
REDUCED_RTOL, REDUCED_ATOL = 1e-2, 1e-2
REDUCED_TIE = 5e-2
LOSS_RTOL = 1e-4
GRAD_RTOL, GRAD_ATOL = 1e-3, 1e-4  # GRAD_ATOL: relative to the network's largest |gradient entry|
PARAM_ATOL_PER_LR = 2.5e-2  # updated weights: atol 2.5e-2 lr = 1e-5 at the engine's lr 4e-4
PARAM_ATOL_FLOOR = 5e-7  # ~4 float32 ulps of a weight of magnitude 1 (the flow's lr is 1e-5)
AMBIGUOUS_SHARE = 2e-3
SAMPLE_ATOL = 1e-4  # flow samples and pasted images, in [0, 1] units (1/40 of an 8-bit level)
AMP_RTOL = 1e-2
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(autouse=True)
def _reference_setup(one_torch_thread):
    """Single-threaded CPU (conftest), TF32 off for the float32 comparisons; the flags are restored after."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# ---------------------------------------------------------------- helpers
def frames(shapes, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


def calibrated(**fields):
    """TINY's metadata with a threshold (open-set maps compared too)."""
    return replace(default_metadata(TINY), calibration=Calibration(threshold=0.0, method="manual"), **fields)


def logit_gaps(reference: Predictor, images: list[np.ndarray]) -> list[np.ndarray]:
    """Per image of one `predict_batch` of the CPU reference: the gap between its two largest logits at the image's
    resolution (nearest, as the class ids are resized), from the predictor's own stages."""
    with torch.inference_mode():
        batch = reference.preprocess(images)
        logits = reference.forward(batch).logits.float()
    gaps = []
    for i, ((h, w), hw) in enumerate(zip(batch.network_sizes, batch.input_sizes)):
        crop = logits[i, :, :h, :w]
        if (h, w) != hw:
            crop = torch.nn.functional.interpolate(crop[None], size=hw, mode="nearest")[0]
        top2 = crop.topk(2, dim=0).values
        gaps.append((top2[0] - top2[1]).numpy())
    return gaps


def assert_float32_prediction(got, want, gap: np.ndarray, names=()) -> None:
    """`test_batched_inference.assert_same` (hybrid atol 1e-4, class ids off near-ties, open set away from them and
    from the threshold 0) plus the extra scores."""
    from test_batched_inference import assert_same

    assert_same(got, want, gap <= TIE, threshold=0.0)
    for name in names:
        assert got.scores[name].dtype == np.float32, name
        np.testing.assert_allclose(got.scores[name], want.scores[name], rtol=0, atol=SCORE_ATOL, err_msg=name)


def assert_terms_close(got: dict, want: dict, what: str) -> None:
    assert got.keys() == want.keys(), what
    for name, value in want.items():
        g, w = float(torch.as_tensor(got[name]).detach()), float(torch.as_tensor(value).detach())
        assert math.isfinite(g), f"{what} {name}"
        assert g == pytest.approx(w, rel=LOSS_RTOL, abs=1e-7), f"{what} {name}: {g!r} vs cpu {w!r}"


def grads_of(module: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: (None if p.grad is None else p.grad.detach().cpu().clone()) for n, p in module.named_parameters()}


def assert_grads_close(got: dict, want: dict, what: str) -> None:
    """Gradients within GRAD_RTOL, plus an absolute GRAD_ATOL of the network's largest gradient entry: a gradient is
    a float32 sum over many pixels, which the two devices add up in different orders, and where its terms cancel
    (BatchNorm weights behind 1x1 pooling: |g| ~ 1e-10) only an absolute bound at the scale of the terms holds."""
    assert got.keys() == want.keys(), what
    scale = max(float(w.abs().max()) for w in want.values() if w is not None)
    for name, w in want.items():
        g = got[name]
        assert (g is None) == (w is None), f"{what} {name}: gradient on one device only"
        if w is not None:
            torch.testing.assert_close(g, w, rtol=GRAD_RTOL, atol=GRAD_ATOL * scale,
                                       msg=lambda m, name=name: f"{what} grad {name}: {m}")


def state_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def assert_states_close(got: dict, want: dict, lr: float, steps: int, what: str) -> None:
    """State dicts after the same optimisation steps on the device and on the CPU: integer tensors (BatchNorm's
    num_batches_tracked) equal, floating ones within PARAM_ATOL_PER_LR * lr (1e-5 at the engine's lr 4e-4; at least
    PARAM_ATOL_FLOOR), except that up to AMBIGUOUS_SHARE of all elements may differ by up to 2 lr per step: Adam
    moves an element by about lr * sign(gradient), and a gradient that is zero up to rounding goes either way."""
    assert got.keys() == want.keys(), what
    atol = max(PARAM_ATOL_PER_LR * lr, PARAM_ATOL_FLOOR)
    far = total = 0
    for name, w in want.items():
        g = got[name].detach().cpu()
        w = w.detach().cpu()
        assert g.shape == w.shape and g.dtype == w.dtype, f"{what} {name}"
        if not w.is_floating_point():
            assert torch.equal(g, w), f"{what} {name}"
            continue
        diff = (g - w).abs()
        assert float(diff.max()) <= 2 * lr * steps + atol, f"{what} {name}: max |diff| {float(diff.max()):.3g}"
        far += int((diff > atol).sum())
        total += diff.numel()
    assert far <= AMBIGUOUS_SHARE * total, f"{what}: {far} of {total} elements differ by more than {atol:.3g}"


def tiny_train_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomize_batchnorm(build_model(TINY)).train()


def training_batch(negatives: bool, seed: int = 3, size=(64, 64)):
    """(x, labels, d_out) as `MixedContentDataset` batches them: some void rows, pasted rectangles when `negatives`."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, *size, generator=gen)
    labels = torch.randint(0, TINY.num_classes, (2, *size), generator=gen)
    labels[:, :4] = 255
    d_out = torch.zeros(2, *size, dtype=torch.bool)
    if negatives:
        d_out[0, 16:40, 20:52] = True
        d_out[1, 30:62, 4:28] = True
        labels[d_out] = 255
    return x, labels, d_out


# ---------------------------------------------------------------- 1. Predictor
def test_predictor_on_device_matches_cpu(tiny_model):
    """One image at a time, sizes that need padding (61x83), none (64x96) and a larger one, extra scores."""
    extra = ("msp", "energy")
    reference = Predictor(tiny_model, calibrated(), PredictorConfig(device="cpu", extra_scores=extra))
    under_test = Predictor(copy.deepcopy(tiny_model), calibrated(), PredictorConfig(device=DEVICE, extra_scores=extra))
    assert under_test.device.type == torch.device(DEVICE).type
    assert {p.device.type for p in under_test.model.parameters()} == {under_test.device.type}
    under_test.warmup(size=(32, 32))
    images = frames([(61, 83), (64, 96), (120, 200)], seed=1)
    assert under_test.preprocess(images[:1]).tensor.device.type == under_test.device.type
    for img, gap in zip(images, [logit_gaps(reference, [im])[0] for im in images]):
        got, want = under_test.predict(img), reference.predict(img)
        assert got.hybrid.dtype == np.float32 and got.class_ids.dtype == np.uint8
        assert_float32_prediction(got, want, gap, extra)


def test_predictor_batch_api_on_device_matches_cpu(tiny_model):
    """`predict_batch` (one padded forward for mixed sizes) and `predict_many` (one forward per grid size)."""
    reference = Predictor(tiny_model, calibrated(), PredictorConfig(extra_scores=("msp",)))
    under_test = Predictor(copy.deepcopy(tiny_model), calibrated(),
                           PredictorConfig(device=DEVICE, extra_scores=("msp",)))
    images = frames([(64, 96), (40, 50), (64, 96), (61, 83)], seed=2)
    for name in ("predict_batch", "predict_many"):
        got_all = getattr(under_test, name)(images)
        want_all = getattr(reference, name)(images)
        # predict_batch pads all four to one size (the padding enters the pyramid pooling): its own logits
        gaps = (logit_gaps(reference, images) if name == "predict_batch"
                else [logit_gaps(reference, [im])[0] for im in images])
        assert len(got_all) == len(images)
        for img, got, want, gap in zip(images, got_all, want_all, gaps):
            assert got.hybrid.shape == img.shape[:2], name
            assert_float32_prediction(got, want, gap, ("msp",))


@cuda_only
@pytest.mark.parametrize("mode", ["fp16", "tf32"])
def test_predictor_reduced_precision_on_cuda(tiny_model, mode):
    """float16 autocast (`fp16=True`) and cuDNN's default TF32: scores within the reduced-precision tolerance of the
    CPU's float32 ones, and still float32 arrays (PredictorConfig / Prediction docs)."""
    reference = Predictor(tiny_model, calibrated(), PredictorConfig(extra_scores=("msp",)))
    torch.backends.cudnn.allow_tf32 = mode == "tf32"  # restored by _reference_setup
    under_test = Predictor(copy.deepcopy(tiny_model), calibrated(),
                           PredictorConfig(device=DEVICE, fp16=mode == "fp16", extra_scores=("msp",)))
    images = frames([(61, 83), (64, 96), (120, 200)], seed=3)
    worst = 0.0
    for img, gap in zip(images, [logit_gaps(reference, [im])[0] for im in images]):
        got, want = under_test.predict(img), reference.predict(img)
        assert got.hybrid.dtype == np.float32 and got.scores["msp"].dtype == np.float32
        assert np.isfinite(got.hybrid).all()
        np.testing.assert_allclose(got.hybrid, want.hybrid, rtol=REDUCED_RTOL, atol=REDUCED_ATOL)
        np.testing.assert_allclose(got.scores["msp"], want.scores["msp"], rtol=0, atol=1e-2)
        differ = got.class_ids != want.class_ids
        assert not (differ & (gap > REDUCED_TIE)).any(), f"{int((differ & (gap > REDUCED_TIE)).sum())} class ids differ"
        assert differ.mean() <= 0.01
        worst = max(worst, float(np.abs(got.hybrid - want.hybrid).max()))
    print(f"{mode}: max |hybrid - cpu float32| = {worst:.2e}")


# ---------------------------------------------------------------- 2. Predictor device errors
def test_predictor_rejects_a_cuda_index_past_the_device_count(tiny_model):
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for device in (f"cuda:{count}", f"cuda:{count + 3}"):
        with pytest.raises(ValueError, match=re.escape(repr(device))) as error:
            Predictor(tiny_model, default_metadata(TINY), PredictorConfig(device=device))
        expected = f"only {count} CUDA device(s)" if torch.cuda.is_available() else "CUDA is not available"
        assert expected in str(error.value)
    assert next(tiny_model.parameters()).device.type == "cpu"  # the model was not moved


@cuda_only
def test_a_checkpoint_rng_state_of_more_gpus_than_visible_restores_the_visible_ones():
    from densehybrid_training.checkpoint import rng_state, set_rng_state

    torch.cuda.manual_seed_all(1)
    state = rng_state()
    want = [torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())]
    state["cuda"] = list(state["cuda"]) + [state["cuda"][0]]  # written where one more GPU was visible
    torch.cuda.manual_seed_all(2)
    set_rng_state(state)
    for i, expected in enumerate(want):
        assert torch.equal(torch.cuda.get_rng_state(i), expected)


# ---------------------------------------------------------------- 3. ONNX Runtime backend
ONNX_DEVICE = DEVICE if ON_CUDA else "cuda"  # ONNX Runtime picks its own providers: "cuda" needs no torch CUDA


def test_onnx_providers_for_a_cuda_device_fall_back_to_cpu():
    from densehybrid_ros.onnx_backend import select_providers

    index = int(ONNX_DEVICE.split(":")[1]) if ":" in ONNX_DEVICE else 0
    cpu, cuda, trt = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
    assert select_providers(ONNX_DEVICE, [cpu]) == [cpu]  # a CPU-only build: the CPU provider alone
    assert select_providers(ONNX_DEVICE, ["AzureExecutionProvider", cpu]) == [cpu]
    assert select_providers(ONNX_DEVICE, [cpu, cuda]) == [(cuda, {"device_id": index}), cpu]
    assert select_providers(ONNX_DEVICE, [cuda, cpu, trt]) == [(trt, {"device_id": index}),
                                                               (cuda, {"device_id": index}), cpu]
    assert select_providers("cpu", [trt, cuda, cpu]) == [cpu]
    ort = pytest.importorskip("onnxruntime")
    available = ort.get_available_providers()
    names = [p if isinstance(p, str) else p[0] for p in select_providers(ONNX_DEVICE, available)]
    assert names == [n for n in (trt, cuda) if n in available] + [cpu]


def test_onnx_backend_with_a_cuda_device_matches_torch_cpu(tmp_path, tiny_model):
    """As test_onnx / test_batched_inference export it; skipped when the installed torch cannot export."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from densehybrid_ros.onnx_export import export_onnx

    metadata = calibrated(input_size=(96, 64))  # (w, h): every image is resized to 64x96, the graph's grid
    try:
        path = export_onnx(copy.deepcopy(tiny_model), metadata, tmp_path / "tiny.onnx", height=64, width=96)
    except Exception as exc:  # noqa: BLE001  the exporter's failures vary by torch version
        pytest.skip(f"ONNX export fails with torch {torch.__version__}: {type(exc).__name__}: {str(exc)[:300]}")
    onnx_predictor = Predictor.from_onnx(path, PredictorConfig(device=ONNX_DEVICE, backend="onnxruntime"))
    providers = onnx_predictor.model.providers
    assert providers[-1] == "CPUExecutionProvider" and onnx_predictor.device.type == "cpu"  # pre/post on the host
    gpu = {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers())
    if gpu:
        assert providers[0] in gpu
    else:
        assert providers == ["CPUExecutionProvider"]  # the fallback of a CPU-only build
    reference = Predictor(tiny_model, metadata)
    images = frames([(64, 96), (120, 200), (48, 80)], seed=4)
    gaps = [logit_gaps(reference, [im])[0] for im in images]
    for img, got, gap in zip(images, onnx_predictor.predict_many(images), gaps):  # one session run of 3
        want = reference.predict(img)
        if gpu:  # cuDNN through ONNX Runtime may use TF32: the reduced-precision tolerance
            np.testing.assert_allclose(got.hybrid, want.hybrid, rtol=REDUCED_RTOL, atol=REDUCED_ATOL)
        else:
            assert_float32_prediction(got, want, gap)


# ---------------------------------------------------------------- 4. training engine
@pytest.fixture
def training():
    """Skip where `densehybrid_training` cannot be imported for want of a third-party package: it imports rosbags and
    rosbags-image as it is imported (densehybrid_training.config -> validation -> densehybrid_ros.evaluation ->
    datasets -> perception.image_codec). The project itself not installed is an error, not a skip."""
    try:
        import densehybrid_training.config  # noqa: F401
    except ModuleNotFoundError as exc:
        if (exc.name or "").startswith("densehybrid"):
            raise
        pytest.skip(f"densehybrid_training needs {exc.name!r}, which is not installed here")


def engine_step(mode: str, device: str, model0: torch.nn.Module, batch, amp: bool = False, **fields):
    """One `optimizer_step` set up as `engine.train` sets it up (model on the device, speed settings, param groups,
    Adam, GradScaler when AMP is on): returns (loss terms, model, optimizer, scaler)."""
    from densehybrid_training.config import TrainConfig
    from densehybrid_training.engine import (ClosedSetNet, apply_speed_settings, batch_to_device, optimizer_step,
                                             param_groups)

    cfg = TrainConfig(mode=mode, device=device, amp=amp, **fields)
    cfg.validate()
    dev = torch.device(device)
    model = copy.deepcopy(model0).to(dev)
    apply_speed_settings(cfg, model)
    closed = mode == "segmenter"
    net = ClosedSetNet(model) if closed else model
    optimizer = torch.optim.Adam(param_groups(model, cfg, closed), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if amp else None
    model.train()
    x, labels, d_out = batch_to_device(cfg, batch, dev)
    terms = optimizer_step(cfg, net, optimizer, scaler, x, labels, d_out)
    return terms, model, optimizer, scaler


ENGINE_CASES = {
    "segmenter": {},
    # fine-tuning with pasted negatives, class weights built on the host (engine.compute_loss) and NHWC batches
    "finetune": {"class_weights": (1.0, 0.5, 2.0, 1.5, 0.8), "speed": {"channels_last": True}},
}


@pytest.mark.parametrize("mode", list(ENGINE_CASES))
def test_engine_step_on_device_matches_cpu(training, mode):
    from densehybrid_training.config import SpeedConfig

    fields = dict(ENGINE_CASES[mode])
    if "speed" in fields:
        fields["speed"] = SpeedConfig(**fields["speed"])
    model0 = tiny_train_model()
    batch = training_batch(negatives=mode == "finetune")
    want_terms, want_model, want_opt, _ = engine_step(mode, "cpu", model0, batch, **fields)
    got_terms, got_model, got_opt, _ = engine_step(mode, DEVICE, model0, batch, **fields)
    assert {p.device.type for p in got_model.parameters()} == {torch.device(DEVICE).type}
    assert_terms_close(got_terms, want_terms, mode)
    assert_grads_close(grads_of(got_model), grads_of(want_model), mode)
    lr = want_opt.param_groups[1]["lr"]
    assert_states_close(state_of(got_model), state_of(want_model), lr, 1, mode)
    assert any(not torch.equal(a, b) for a, b in zip(state_of(want_model).values(), state_of(model0).values()))


@cuda_only
def test_engine_amp_step_on_cuda(training):
    """`amp: true` on CUDA (GradScaler + float16 autocast): the loss is float32, finite and close to the float32
    step's; the scaler either applies the update or skips an overflowing step (and halves its scale), as GradScaler
    does; within 4 steps on the batch one is applied, and every weight stays finite."""
    model0 = tiny_train_model()
    batch = training_batch(negatives=True)
    fp32_terms, *_ = engine_step("finetune", DEVICE, model0, batch)
    terms, model, optimizer, scaler = engine_step("finetune", DEVICE, model0, batch, amp=True)
    assert terms["total"].dtype == torch.float32 and torch.isfinite(terms["total"])
    for name in ("total", "cls", "d_in", "d_out", "x_out"):
        amp_value, fp32_value = float(terms[name].detach()), float(fp32_terms[name].detach())
        assert amp_value == pytest.approx(fp32_value, rel=AMP_RTOL, abs=1e-3), name
    from densehybrid_training.config import TrainConfig
    from densehybrid_training.engine import batch_to_device, optimizer_step

    cfg = TrainConfig(mode="finetune", device=DEVICE, amp=True)
    x, labels, d_out = batch_to_device(cfg, batch, torch.device(DEVICE))
    before = {n: p.detach().clone() for n, p in model0.named_parameters()}

    def applied() -> bool:
        return any(not torch.equal(p.detach().cpu(), before[n]) for n, p in model.named_parameters())

    steps = 1
    while not applied() and steps < 4:
        optimizer_step(cfg, model, optimizer, scaler, x, labels, d_out)
        steps += 1
    assert applied(), f"GradScaler skipped all {steps} steps (scale now {scaler.get_scale()})"
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ---------------------------------------------------------------- 5. joint synthetic-negative training
@pytest.fixture
def host_noise(training, monkeypatch):
    """The flow's noise drawn on the host from one seeded generator, then moved to the device that asked for it, so
    that both devices see the same draws: `distributions.standard_noise` (prior, squeeze-and-drop, cross-unit
    coupling) and `UniformDequantization` (the tiny flow's dequantizer). Returns reset(seed). Checked first: with a
    CPU generator the stand-ins draw exactly what the originals draw."""
    from densehybrid_training.flow import augment, dequantization, distributions

    state = {}

    def standard_noise(shape, like, generator=None):
        return torch.randn(shape, dtype=like.dtype, generator=state["gen"]).to(like.device)

    def uniform_forward(self, x, generator=None):
        u = torch.rand(x.shape, dtype=x.dtype, generator=state["gen"]).to(x.device)
        return x + u, x.new_zeros(x.shape[0])

    def reset(seed: int) -> None:
        state["gen"] = torch.Generator().manual_seed(seed)

    levels = torch.arange(48, dtype=torch.float32).view(1, 3, 4, 4)
    reset(9)
    ours = standard_noise((2, 3), levels), uniform_forward(None, levels)
    gen = torch.Generator().manual_seed(9)
    theirs = distributions.standard_noise((2, 3), levels, gen), dequantization.UniformDequantization()(levels, gen)
    assert torch.equal(ours[0], theirs[0]) and all(torch.equal(a, b) for a, b in zip(ours[1], theirs[1]))
    monkeypatch.setattr(distributions, "standard_noise", standard_noise)
    monkeypatch.setattr(augment, "standard_noise", standard_noise)
    monkeypatch.setattr(dequantization.UniformDequantization, "forward", uniform_forward)
    return reset


def joint_setup(device: str, base, model0):
    from densehybrid_training.synthetic import JointFlowTraining

    dev = torch.device(device)
    model = copy.deepcopy(model0).to(dev)
    joint = JointFlowTraining(copy.deepcopy(base.flow), base.cfg, MEAN, STD, seed=0, device=dev)
    return dev, model, joint


@pytest.mark.parametrize("sample_scale", [1.0, 0.5])
def test_joint_synthetic_step_on_device_matches_cpu(host_noise, tmp_path, sample_scale):
    """Flow samples pasted (4.17), the segmenter's loss (4.16), L_jsd (4.19) and L_mle (4.18) on the same weights and
    noise; gradients routed to the segmenter and to the flow (engine._joint_step's order); then one whole
    `engine._joint_step` per device: loss terms and both updated models agree. At sample_scale 0.5 the samples are
    upsampled and the replaced patches downsampled on the device too."""
    from test_train_synthetic_diagnostics import _joint, _step_inputs

    from densehybrid_training.config import TrainConfig
    from densehybrid_training.engine import _joint_step, param_groups
    from densehybrid_training.losses import densehybrid_loss

    # a "pretrained" tiny flow (BatchNorm stats, ActNorm initialised)
    base = _joint(seed=0, jsd_weight=0.5, sample_scale=sample_scale)
    model0 = tiny_train_model(1)
    x, labels, d_out = _step_inputs()
    runs = {}
    for role, device in (("reference", "cpu"), ("under_test", DEVICE)):  # by role: DEVICE may be "cpu" too
        dev, model, joint = joint_setup(device, base, model0)
        host_noise(123)
        mixed, labels2, d_out2, synthetic, replaced = joint.mix(x.to(dev), labels.to(dev), d_out.to(dev), step=0)
        out = model(mixed)
        seg = densehybrid_loss(out.logits, out.inlier_logit, labels2, d_out2)
        flow_terms = joint.flow_loss(out.logits, synthetic, replaced, step=0)
        assert {t.device.type for t in (*seg.values(), *flow_terms.values())} == {dev.type}
        seg["total"].backward(inputs=[p for p in model.parameters() if p.requires_grad], retain_graph=True)
        joint.backward_flow(flow_terms)
        runs[role] = {
            "x01": (mixed.detach() * torch.tensor(STD, device=dev).view(1, 3, 1, 1)
                    + torch.tensor(MEAN, device=dev).view(1, 3, 1, 1)).cpu(),
            "masks": [t.cpu() for t in (labels2, d_out2, synthetic)],
            "samples": [s.cpu() for s in joint.last_samples],
            "terms": {**seg, **flow_terms},
            "seg_grads": grads_of(model), "flow_grads": grads_of(joint.flow),
        }
    got, want = runs["under_test"], runs["reference"]
    assert all(torch.equal(a, b) for a, b in zip(got["masks"], want["masks"]))  # sizes, places, shapes: numpy RNG
    assert want["masks"][2].any()
    for a, b in zip(got["samples"], want["samples"]):
        torch.testing.assert_close(a, b, rtol=0, atol=SAMPLE_ATOL)
    torch.testing.assert_close(got["x01"], want["x01"], rtol=0, atol=SAMPLE_ATOL)
    assert {"jsd", "mle_bpd", "flow_total"} <= want["terms"].keys()
    assert_terms_close(got["terms"], want["terms"], "joint")
    assert_grads_close(got["seg_grads"], want["seg_grads"], "segmenter")
    assert_grads_close(got["flow_grads"], want["flow_grads"], "flow")
    for part in ("seg_grads", "flow_grads"):  # gradients reach both networks on the device
        assert sum(float(g.abs().sum()) for g in got[part].values() if g is not None) > 0, part

    # the engine's whole step: both optimizers step
    states = {}
    for role, device in (("reference", "cpu"), ("under_test", DEVICE)):
        dev, model, joint = joint_setup(device, base, model0)
        cfg = TrainConfig(mode="finetune", device=device, out=str(tmp_path / role),
                          synthetic=base.cfg)
        optimizer = torch.optim.Adam(param_groups(model, cfg, False), lr=cfg.optim.lr,
                                     weight_decay=cfg.optim.weight_decay)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        host_noise(123)
        terms = _joint_step(cfg, model, joint, optimizer, x.to(dev), labels.to(dev), d_out.to(dev), step=0)
        states[role] = terms, state_of(model), state_of(joint.flow), cfg.optim.lr, joint.cfg.flow_lr
    got_terms, got_seg, got_flow, lr, flow_lr = states["under_test"]
    want_terms, want_seg, want_flow, *_ = states["reference"]
    assert_terms_close(got_terms, want_terms, "_joint_step")
    assert_states_close(got_seg, want_seg, lr, 1, "segmenter after _joint_step")
    assert_states_close(got_flow, want_flow, flow_lr, 1, "flow after _joint_step")
    assert any(not torch.equal(want_flow[k], v) for k, v in state_of(base.flow).items())  # the flow did step


# ---------------------------------------------------------------- 6. checkpoints across devices
class TinyTrainingSet(torch.utils.data.Dataset):
    """Fixed items in the training loop's item contract (`MixedContentDataset`): key (index, epoch) -> normalised x
    (3, H, W), labels (H, W) int64 with 255 = void, d_out (H, W) bool (pasted-negative rectangles)."""

    def __init__(self, count: int = 4, size=(64, 64), seed: int = 5) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(count):
            x = torch.randn(3, *size, generator=gen)
            y = torch.randint(0, TINY.num_classes, size, generator=gen)
            d = torch.zeros(size, dtype=torch.bool)
            d[8 + 4 * i : 40 + 4 * i, 10:42] = True
            y[d] = 255
            self.items.append((x, y, d))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key):
        # draws from the global generators, as random augmentation would: the CPU one changes the batch, so a resume
        # must restore it; the CUDA one (where CUDA is visible) only advances, so that its restore is observable too
        x, y, d = self.items[key[0]]
        if torch.cuda.is_available():
            torch.rand(1, device="cuda")
        return x + 0.01 * torch.randn(x.shape), y, d


def run_training(device: str, out, steps: int):
    """`engine.train` of fine-tuning (amp off) from fixed initial weights, resuming from out/checkpoints/last.pt."""
    from densehybrid_training.config import TrainConfig
    from densehybrid_training.engine import train

    cfg = TrainConfig(mode="finetune", device=device, amp=False, steps=steps, batch_size=2, checkpoint_every=1000,
                      log_every=1000, image_every=1000, out=str(out), seed=3)
    model = tiny_train_model(2)
    return model, train(cfg, model, TinyTrainingSet()), cfg.optim.lr


@pytest.mark.parametrize("save_on, resume_on", [(DEVICE, "cpu"), ("cpu", DEVICE)],
                         ids=["device-to-cpu", "cpu-to-device"])
def test_checkpoint_moves_between_device_and_cpu(training, tmp_path, save_on, resume_on):
    """The CPU side plays a CPU-only machine (torch.cuda.is_available() False while it runs): a checkpoint written on
    the device carries the CUDA RNG state, which that machine must skip; one written there carries none, which the
    device must accept. Resumed at its own step (nothing left to train) the model holds the checkpoint's weights
    exactly and the RNG states are the saved ones (on both sides); one more step then equals one more step on the
    saving device."""
    pytest.importorskip("tensorboard")
    from densehybrid_training.checkpoint import load_checkpoint

    @contextlib.contextmanager
    def as_machine(device: str):
        if device == "cpu" and ON_CUDA:
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(torch.cuda, "is_available", lambda: False)
                yield
        else:
            yield

    with as_machine(save_on):
        _, last, lr = run_training(save_on, tmp_path / "a", steps=2)
    saved = load_checkpoint(last)
    assert saved["step"] == 2
    assert ("cuda" in saved["rng"]) == (ON_CUDA and save_on != "cpu")
    assert all(t.device.type == "cpu" for t in saved["model"].values())  # loaded with map_location cpu
    assert not torch.equal(saved["rng"]["torch"], torch.manual_seed(3).get_state())  # the data drew from it
    shutil.copytree(tmp_path / "a", tmp_path / "b")

    def resume_at_the_saved_step(device: str, out) -> bool:
        """Resume with nothing left to train: the checkpoint's weights and RNG states, exactly. True where the CUDA
        RNG state was restored and checked."""
        with as_machine(device):
            model, _, _ = run_training(device, out, steps=2)
            cpu_rng = torch.get_rng_state()
            cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        assert {t.device.type for t in model.state_dict().values()} == {torch.device(device).type}
        restored = state_of(model)
        assert restored.keys() == saved["model"].keys()
        assert all(torch.equal(restored[k], v) for k, v in saved["model"].items()), f"weights resumed on {device}"
        assert torch.equal(cpu_rng, saved["rng"]["torch"]), f"CPU RNG state resumed on {device}"
        if cuda_rng is None or "cuda" not in saved["rng"]:
            return False
        assert all(torch.equal(a, b) for a, b in zip(cuda_rng, saved["rng"]["cuda"])), f"CUDA RNG on {device}"
        return True

    cuda_checked = [resume_at_the_saved_step(resume_on, tmp_path / "a"),
                    resume_at_the_saved_step(save_on, tmp_path / "b")]
    assert any(cuda_checked) == ("cuda" in saved["rng"])
    with as_machine(resume_on):
        _, moved, _ = run_training(resume_on, tmp_path / "a", steps=3)
    with as_machine(save_on):
        _, stayed, _ = run_training(save_on, tmp_path / "b", steps=3)
    moved, stayed = load_checkpoint(moved), load_checkpoint(stayed)
    assert moved["step"] == stayed["step"] == 3
    assert_states_close(moved["model"], stayed["model"], lr, 3, f"step 3 on {resume_on} vs on {save_on}")


# ---------------------------------------------------------------- 7. calibration's class-bias search
def test_class_bias_search_on_device_matches_cpu(tiny_model, training):
    """`calibrate.ClassBiasSearch` fed by a Predictor on the device (as `calibrate --device` does): the same pixels
    are kept (the draws do not depend on the device) with the CPU's logits, and each tau's confusion matrix equals the
    CPU's except where the CPU's two largest logits lie within 1e-4."""
    from densehybrid_training.calibrate import ClassBiasSearch

    K = TINY.num_classes
    reference = Predictor(tiny_model, calibrated(), PredictorConfig(device="cpu"))
    under_test = Predictor(copy.deepcopy(tiny_model), calibrated(), PredictorConfig(device=DEVICE))
    searches = {name: ClassBiasSearch(tuple(np.linspace(2.0, 40.0, K)), taus=(0.0, 1.0), pixels_per_frame=300)
                for name in ("cpu", "device")}
    rng = np.random.default_rng(6)
    images = frames([(61, 83), (64, 96)], seed=7)
    near_ties = 0
    for i, image in enumerate(images):
        semantic = rng.integers(0, K, image.shape[:2]).astype(np.uint8)
        semantic[rng.random(semantic.shape) < 0.2] = 255  # void pixels are never kept
        for name, predictor in (("cpu", reference), ("device", under_test)):
            batch = predictor.preprocess([image])
            searches[name].update(predictor, batch, predictor.forward(batch), semantic, f"street{i}")
        near_ties += int((logit_gaps(reference, [image])[0] < 1e-4).sum())
    cpu, dev = searches["cpu"], searches["device"]
    assert all(np.array_equal(a, b) for a, b in zip(cpu.labels, dev.labels)) and cpu.groups == dev.groups
    for a, b in zip(cpu.logits, dev.logits):
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_allclose(b, a, atol=SCORE_ATOL)
    for tau in (0.0, 1.0):
        assert np.abs(cpu.confusion[tau] - dev.confusion[tau]).sum() <= 2 * near_ties


# ---------------------------------------------------------------- 8. benchmarks
def tiny_model_yaml(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(f"num_classes: {TINY.num_classes}\nbackbone: {TINY.backbone}\n"
                    f"backbone_width: {TINY.backbone_width}\ndecoder_width: {TINY.decoder_width}\n"
                    f"spp_grids: {list(TINY.spp_grids)}\n")
    return path


def device_name(device: str) -> str:
    """What the benchmarks write as "device" (bench.overhead / bench._cameras)."""
    dev = torch.device(device)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()


@pytest.mark.parametrize("fp16", [False, pytest.param(True, marks=cuda_only)], ids=["fp32", "fp16"])
def test_bench_overhead_on_device(tmp_path, capsys, fp16):
    from densehybrid_ros.tools.bench import main

    out = tmp_path / "overhead.json"
    argv = ["overhead", "--model", str(tiny_model_yaml(tmp_path)), "--sizes", "64x64", "96x64", "--repeats", "2",
            "--warmup", "1", "--device", DEVICE, "--json", "--out", str(out)] + (["--fp16"] if fp16 else [])
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    assert result["device"] == device_name(DEVICE) and result["fp16"] is fp16
    if ON_CUDA:
        assert result["device"] != (platform.processor() or platform.machine())
    assert [row["size"] for row in result["sizes"]] == ["64x64", "96x64"]
    for row in result["sizes"]:
        assert row["closed_ms"] > 0 and row["hybrid_ms"] > 0
        assert len(row["closed_ms_all"]) == len(row["hybrid_ms_all"]) == 2
        assert all(t > 0 for t in row["closed_ms_all"] + row["hybrid_ms_all"])
        assert row["conv_matmul_gflop"]["hybrid"] >= row["conv_matmul_gflop"]["closed"] > 0


def test_bench_cameras_on_device(tmp_path):
    pytest.importorskip("pybullet")  # the sim renders the frames
    from densehybrid_ros.tools.bench import cameras_throughput

    result = cameras_throughput(None, counts=(1, 2), cycles=1, size=(64, 32), device=DEVICE,
                                model=str(tiny_model_yaml(tmp_path)), threads=1)
    assert result["device"] == device_name(DEVICE) and result["backend"] == "torch"
    assert {(r["cameras"], r["mode"]) for r in result["runs"]} == {(n, m) for n in (1, 2)
                                                                   for m in ("batched", "one_by_one")}
    for row in result["runs"]:
        assert row["fps"] > 0 and row["cycle_ms"] > 0 and row["frame_latency_ms"] > 0 and row["seconds"] > 0
