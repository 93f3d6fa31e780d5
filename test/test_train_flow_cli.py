"""`flow-pretrain` / `flow-eval` and SynDenseHybrid fine-tuning run end to end through the training CLI on a
small sim split: MLE lowers bits/dim, the evaluation writes its bounds and sample grid, and a joint step moves
the segmenter and the flow (with either boundary term of the flow objective)."""
from __future__ import annotations

import json

import cv2
import pytest
import torch

from conftest import render_small_sim
from training.checkpoint import load_checkpoint, save_checkpoint
from training.cli import main as train_main
from training.synthetic import detector_boundary_loss


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
