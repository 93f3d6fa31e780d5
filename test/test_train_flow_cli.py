"""`flow-pretrain` / `flow-eval` and SynDenseHybrid fine-tuning run end to end through the training CLI on a
small sim split: MLE lowers bits/dim, the evaluation writes its bounds and sample grid, and a joint step moves
the segmenter and the flow (with either boundary term of the flow objective)."""
from __future__ import annotations

import json

import cv2
import pytest
import torch

from conftest import render_small_sim
from densehybrid_training.checkpoint import load_checkpoint, save_checkpoint
from densehybrid_training.cli import main as train_main
from densehybrid_training.synthetic import detector_boundary_loss


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread):
    """Single-threaded (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def sim_train(tmp_path_factory):
    return render_small_sim(tmp_path_factory.mktemp("simflow"), "train", 6, seed=5, frames_per_scene=3)


@pytest.fixture(scope="module")
def pretrained(sim_train, tmp_path_factory):
    out = tmp_path_factory.mktemp("flow")
    args = ["flow-pretrain"]
    for o in ("flow=tiny", f"out={out}", f"data.root={sim_train}", "data.crop=[32,32]", "batch_size=4",
              "steps=40", "lr=0.02", "log_every=5", "checkpoint_every=20"):
        args += ["--set", o]
    assert train_main(args) == 0
    return out


def test_flow_pretraining_lowers_bits_per_dim(pretrained):
    rows = [line.split(",") for line in (pretrained / "bits_per_dim.csv").read_text().split()]
    steps, bpd = [int(r[0]) for r in rows], [float(r[1]) for r in rows]
    assert steps == list(range(5, 45, 5))
    # a fresh flow is near 8 bits/dim (uniform over 256 levels); MLE must move it down
    assert all(0 < b < 20 for b in bpd)
    assert sum(bpd[-3:]) / 3 < bpd[0] - 0.5, bpd
    state = load_checkpoint(pretrained / "checkpoints" / "last.pt")
    assert state["step"] == 40 and state["extra"]["flow_config"]["growth"] == 2


def test_flow_eval_writes_bounds_and_a_sample_grid(pretrained, sim_train, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["flow-eval", "--checkpoint", str(pretrained / "checkpoints" / "last.pt"), "--out", str(out),
            "--images", "4", "--k", "4", "--set", f"data.root={sim_train}", "--set", "data.crop=[32,32]"]
    assert train_main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 < result["iwbo4_bpd"] < 20 and 0 < result["elbo_bpd"] < 20
    grid = cv2.imread(result["samples_png"])
    # 2 temperatures x 4 samples of the tallest size (64 + 4 px each); 3 sizes side by side (widths + 4 px)
    assert grid.shape == (2 * 4 * 68, (32 + 4) + (64 + 4) + (128 + 4), 3)
    assert grid.std() > 1.0  # samples, not a blank canvas


def test_flow_eval_rejects_a_segmenter_checkpoint(sim_train, tmp_path, capsys):
    net = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    seg = save_checkpoint(tmp_path / "not_a_flow.pt", step=1, model=net, optimizer=optimizer,
                          scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0), scaler=None, config={})
    rc = train_main(["flow-eval", "--checkpoint", str(seg), "--out", str(tmp_path / "e"),
                     "--set", f"data.root={sim_train}"])
    assert rc != 0 and "not a flow-pretrain checkpoint" in capsys.readouterr().err


def test_detector_boundary_term_by_hand():
    g = torch.tensor([[[[2.0, -1.0, 0.5]]]])  # inlier logit, (1, 1, 1, 3)
    logits = torch.tensor([[[[1.0, 0.0, 3.0]], [[0.0, 2.0, -1.0]]]])  # (1, 2, 1, 3)
    mask = torch.tensor([[[True, False, True]]])
    import math

    def term(i: int) -> float:
        s = logits[0, :, 0, i].tolist()
        return -math.log(1 / (1 + math.exp(g[0, 0, 0, i].item()))) + math.log(sum(math.exp(v) for v in s))

    expected = (term(0) + term(2)) / 2
    assert detector_boundary_loss(logits, g, mask).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("boundary", ["jsd", "detector"])
def test_joint_finetuning_updates_segmenter_and_flow(pretrained, sim_train, tmp_path, boundary):
    model_yaml = tmp_path / "tiny.yaml"
    model_yaml.write_text("num_classes: 15\nbackbone: resnet18\nbackbone_width: 8\ndecoder_width: 16\n"
                          "spp_grids: [4, 2, 1]\n")
    common = [f"model={model_yaml}", f"data.root={sim_train}", "data.crop=[64,128]", "batch_size=2", "seed=1",
              "log_every=1", "image_every=100"]
    seg_out, ft_out = tmp_path / "seg", tmp_path / "ft"
    args = ["segmenter"] + [a for o in common + [f"out={seg_out}", "steps=1"] for a in ("--set", o)]
    assert train_main(args) == 0
    flow_ckpt = pretrained / "checkpoints" / "last.pt"
    overrides = common + [f"out={ft_out}", "steps=2", "checkpoint_every=2", f"init={seg_out}/checkpoints/last.pt",
                          f"synthetic.flow_checkpoint={flow_ckpt}", "synthetic.side_range=[16,32]",
                          "synthetic.flow_lr=0.01", f"synthetic.boundary={boundary}"]
    assert train_main(["finetune"] + [a for o in overrides for a in ("--set", o)]) == 0
    done = load_checkpoint(ft_out / "checkpoints" / "last.pt")
    before_flow = load_checkpoint(flow_ckpt)["model"]
    after_flow = done["extra"]["joint"]["flow"]
    moved = [n for n, t in before_flow.items() if t.is_floating_point() and not torch.equal(t, after_flow[n])]
    assert moved, "the flow's optimizer never changed the flow"
    before_seg = load_checkpoint(seg_out / "checkpoints" / "last.pt")["model"]
    assert any(not torch.equal(t, done["model"][n]) for n, t in before_seg.items() if t.is_floating_point())
    assert done["config"]["synthetic"]["boundary"] == boundary


def _states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


def _optimizer_states_equal(a: dict, b: dict) -> None:
    assert len(a["state"]) == len(b["state"])
    for sa, sb in zip(a["state"].values(), b["state"].values()):
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), key


def test_flow_pretraining_resumed_equals_an_uninterrupted_run(sim_train, tmp_path):
    """Stopped at its step-4 checkpoint and started again on the same directory, flow pretraining ends with the same
    flow and optimizer as a run that never stopped."""
    def run(out, steps: int) -> None:
        args = ["flow-pretrain"]
        for o in ("flow=tiny", f"out={out}", f"data.root={sim_train}", "data.crop=[32,32]", "batch_size=2",
                  f"steps={steps}", "lr=0.02", "log_every=2", "checkpoint_every=4", "seed=3"):
            args += ["--set", o]
        assert train_main(args) == 0

    run(tmp_path / "full", 8)
    run(tmp_path / "resumed", 4)  # the interruption: this run ends at its step-4 checkpoint
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["step"] == 4
    run(tmp_path / "resumed", 8)  # resumes from last.pt
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 8
    _states_equal(a["model"], b["model"])
    _optimizer_states_equal(a["optimizer"], b["optimizer"])
    assert (tmp_path / "resumed" / "bits_per_dim.csv").read_text() == (tmp_path / "full" / "bits_per_dim.csv").read_text()


@pytest.fixture(scope="module")
def closed_set(sim_train, tmp_path_factory):
    """A 1-step closed-set checkpoint of the tiny segmenter and its model file (the joint runs start from it)."""
    out = tmp_path_factory.mktemp("closed")
    model_yaml = out / "tiny.yaml"
    model_yaml.write_text("num_classes: 15\nbackbone: resnet18\nbackbone_width: 8\ndecoder_width: 16\n"
                          "spp_grids: [4, 2, 1]\n")
    common = [f"model={model_yaml}", f"data.root={sim_train}", "data.crop=[64,128]", "batch_size=2", "seed=1",
              "log_every=1", "image_every=100"]
    args = ["segmenter"] + [a for o in common + [f"out={out / 'seg'}", "steps=1"] for a in ("--set", o)]
    assert train_main(args) == 0
    return common, out / "seg" / "checkpoints" / "last.pt", sim_train


def test_joint_finetuning_resumed_equals_an_uninterrupted_run(pretrained, closed_set, tmp_path):
    """SynDenseHybrid fine-tuning stopped after 2 of 4 steps and resumed: the segmenter, the jointly trained flow and
    both optimizers end as in a run that never stopped (the flow's samples depend on the restored RNG states)."""
    from densehybrid_training.cli import run_training

    common, init, _ = closed_set
    flow_ckpt = pretrained / "checkpoints" / "last.pt"

    def overrides(out) -> list[str]:
        return common + [f"out={out}", "steps=4", "checkpoint_every=2", f"init={init}",
                         f"synthetic.flow_checkpoint={flow_ckpt}", "synthetic.side_range=[16,32]",
                         "synthetic.flow_lr=0.01"]

    run_training("finetune", None, overrides(tmp_path / "full"))
    run_training("finetune", None, overrides(tmp_path / "resumed"), stop_after=2)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["step"] == 2
    run_training("finetune", None, overrides(tmp_path / "resumed"))
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 4
    _states_equal(a["model"], b["model"])
    _optimizer_states_equal(a["optimizer"], b["optimizer"])
    _states_equal(a["extra"]["joint"]["flow"], b["extra"]["joint"]["flow"])
    _optimizer_states_equal(a["extra"]["joint"]["optimizer"], b["extra"]["joint"]["optimizer"])
    pretrained_flow = load_checkpoint(flow_ckpt)["model"]
    assert any(not torch.equal(t, pretrained_flow[n]) for n, t in a["extra"]["joint"]["flow"].items()
               if t.is_floating_point())  # the flow did train


@pytest.mark.parametrize("real_prob", [0.0, 1.0])
def test_real_prob_is_the_share_of_images_with_a_real_negative(pretrained, closed_set, real_prob):
    """SyntheticConfig.real_prob = b of (4.21): an image gets a real negative with probability b, else (in the joint
    step) a flow sample; b = 0 and b = 1 are the two certain cases."""
    from densehybrid_training.cli import build_model_and_dataset
    from densehybrid_training.config import load_train_config

    common, init, root = closed_set
    cfg = load_train_config(None, ["mode=finetune", *common, f"init={init}", "data.negatives=sim",
                                   f"data.negatives_root={root}",
                                   f"synthetic.flow_checkpoint={pretrained / 'checkpoints' / 'last.pt'}",
                                   f"synthetic.real_prob={real_prob}", "data.paste_prob=0.5"])
    _, dataset, _ = build_model_and_dataset("finetune", cfg)
    with_negative = [bool(dataset[(i, epoch)][2].any()) for i in range(len(dataset)) for epoch in (0, 1)]
    assert with_negative == [real_prob == 1.0] * (2 * len(dataset))  # data.paste_prob is not used with a flow


def test_sampling_temperature_scales_the_flow_samples(pretrained):
    """temperature scales the latents' standard deviation: at 0 the pasted sample is the flow's image of the prior
    means, the same whatever the random state; at 1 two random states give two different samples."""
    from densehybrid_training.flow_train import load_flow
    from densehybrid_training.synthetic import JointFlowTraining, SyntheticConfig

    def pasted(temperature: float, torch_seed: int) -> torch.Tensor:
        joint = JointFlowTraining(load_flow(pretrained / "checkpoints" / "last.pt"),
                                  SyntheticConfig(side_range=(16, 16), temperature=temperature), (0.5, 0.5, 0.5),
                                  (0.25, 0.25, 0.25), 0, torch.device("cpu"))
        joint.flow.eval()
        torch.manual_seed(torch_seed)
        with torch.no_grad():
            mixed, _, _, synthetic, _ = joint.mix(torch.zeros(1, 3, 32, 32), torch.zeros(1, 32, 32, dtype=torch.long),
                                                  torch.zeros(1, 32, 32, dtype=torch.bool), step=0)
        return mixed[0][:, synthetic[0]]

    assert torch.equal(pasted(0.0, 1), pasted(0.0, 2))
    assert not torch.equal(pasted(1.0, 1), pasted(1.0, 2))
    assert (pasted(0.5, 1) - pasted(0.0, 1)).abs().mean() < (pasted(1.0, 1) - pasted(0.0, 1)).abs().mean()


def test_flow_shift_holds_the_segmenter_fixed_and_scores_the_same_latents(pretrained, closed_set, tmp_path,
                                                                           capsys):
    """`densehybrid-train flow-shift`: the jointly trained flow is read back from a real joint checkpoint; its JSD-to-
    uniform rows equal an independent per-pixel JSD (scipy) on the segmenter's logits; a flow compared with an
    identical copy gives identical rows (same latents, frames and places); a checkpoint without a flow is refused."""
    import numpy as np
    from scipy.spatial.distance import jensenshannon

    from densehybrid_ros.datasets import open_dataset
    from densehybrid_ros.predictor import Predictor
    from densehybrid_training.boundary_shift import (boundary_shift, decode_samples, load_joint_flow, paste_squares,
                                                     segmenter_logits)
    from densehybrid_training.cli import run_training
    from densehybrid_training.flow_train import load_flow
    from densehybrid_training.synthetic import eval_mode

    common, init, root = closed_set
    flow_ckpt = pretrained / "checkpoints" / "last.pt"
    run_training("finetune", None, common + [f"out={tmp_path / 'joint'}", "steps=2", f"init={init}",
                                             f"synthetic.flow_checkpoint={flow_ckpt}", "synthetic.side_range=[16,32]",
                                             "synthetic.flow_lr=0.01"])
    joint_ckpt = tmp_path / "joint" / "checkpoints" / "last.pt"
    weights = tmp_path / "closed.safetensors"
    assert train_main(["export", "--checkpoint", str(init), "--out", str(weights)]) == 0
    out = tmp_path / "shift.json"
    assert train_main(["flow-shift", "--flow", f"pretrained={flow_ckpt}", "--joint", str(joint_ckpt), "--weights",
                       str(weights), "--dataset", f"sim:{root}", "--images", "3", "--size", "16", "--out",
                       str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {r["source"]: r for r in result["rows"]}
    assert set(rows) == {"pretrained", "joint", "uniform"} and result["parameter_change"]["pretrained->joint"] > 0

    cold = tmp_path / "cold.json"  # temperature 0: every flow decodes its prior's mean
    assert train_main(["flow-shift", "--flow", f"pretrained={flow_ckpt}", "--joint", str(joint_ckpt), "--weights",
                       str(weights), "--dataset", f"sim:{root}", "--images", "3", "--size", "16", "--temperature",
                       "0", "--out", str(cold)]) == 0
    cold_result = json.loads(cold.read_text())
    cold_rows = {r["source"]: r for r in cold_result["rows"]}
    assert cold_result["temperature"] == 0.0 and result["temperature"] == 1.0
    assert cold_rows["uniform"] == rows["uniform"]  # noise does not depend on the flows' temperature

    # the same numbers, independently: scipy's JSD (base e, squared distance) per pasted pixel, averaged per frame
    data = open_dataset(f"sim:{root}")
    frames = [data[int(i)].image for i in np.linspace(0, len(data) - 1, 3).astype(int)]
    predictor = Predictor.from_weights(weights)
    joint_flow = load_joint_flow(joint_ckpt)
    with torch.no_grad(), eval_mode(joint_flow):
        mean_samples = joint_flow.sample(3, 16, 16, 0.0).clamp(0, 1)
    assert torch.equal(mean_samples[0], mean_samples[2])  # no randomness left at temperature 0
    with torch.no_grad(), eval_mode(joint_flow):  # the same latents as flow-shift's samples (seeded generator)
        raw = joint_flow.sample(3, 16, 16, 1.0, generator=torch.Generator().manual_seed(0))
    assert result["saturated"]["joint"] == pytest.approx(int(((raw <= 0) | (raw >= 1)).sum()) / raw.numel(), abs=1e-12)
    assert set(result["saturated"]) == {"pretrained", "joint"}
    for source, samples, table in (
            ("joint", decode_samples(joint_flow, 3, 16, 0), rows),
            ("uniform", torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)), rows),
            ("joint", mean_samples, cold_rows)):
        pasted, masks = paste_squares(frames, samples, 0)
        per_frame = []
        for frame, mask in zip(pasted, masks):
            p = segmenter_logits(predictor, frame).softmax(1)[0].permute(1, 2, 0).numpy()[mask].astype(np.float64)
            u = np.full(p.shape[1], 1.0 / p.shape[1])
            per_frame.append(np.mean([jensenshannon(q, u, base=np.e) ** 2 for q in p]))
        assert table[source]["jsd"] == pytest.approx(np.mean(per_frame), abs=1e-5), source
        assert 0 <= table[source]["jsd"] <= np.log(2)

    twin = boundary_shift({"a": load_flow(flow_ckpt), "b": load_flow(flow_ckpt)}, {"closed": predictor},
                          frames, size=16)
    a, b = (r for r in twin if r.source in ("a", "b"))
    assert (a.jsd, a.max_softmax) == (b.jsd, b.max_softmax)
    assert train_main(["flow-shift", "--joint", str(flow_ckpt), "--weights", str(weights), "--dataset",
                       f"sim:{root}", "--images", "3"]) == 2  # a flow-pretrain checkpoint holds no joint flow
    assert "not a SynDenseHybrid fine-tuning checkpoint with a flow" in capsys.readouterr().err


def test_flow_shift_samples_at_a_fraction_of_their_size_like_joint_training(pretrained):
    """`decode_samples(..., sample_scale=0.5)`: the same latents drawn at half the side (16 -> 8 px) and upsampled
    bilinearly (cv2, half-pixel centres), as `synthetic.sample_scale` draws the negatives of joint training."""
    import cv2
    import numpy as np

    from densehybrid_training.boundary_shift import decode_samples
    from densehybrid_training.flow_train import load_flow
    from densehybrid_training.synthetic import eval_mode

    flow = load_flow(pretrained / "checkpoints" / "last.pt")
    got = decode_samples(flow, 2, 16, seed=4, sample_scale=0.5)
    with torch.no_grad(), eval_mode(flow):
        small = flow.sample(2, 8, 8, 1.0, generator=torch.Generator().manual_seed(4))
    for k in range(2):
        expected = cv2.resize(small[k].permute(1, 2, 0).numpy(), (16, 16), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(got[k].permute(1, 2, 0).numpy(), np.clip(expected, 0, 1), atol=1e-5)
    assert torch.equal(decode_samples(flow, 2, 16, seed=4), decode_samples(flow, 2, 16, seed=4, sample_scale=1.0))
    assert train_main(["flow-shift", "--flow", str(pretrained / "checkpoints" / "last.pt"), "--weights", "w",
                       "--dataset", "sim:x", "--sample-scale", "0"]) == 2
