"""Training engine: exact resume after SIGKILL, DDP (2 gloo processes) gradients = the mean of per-rank
gradients computed in one process, the step-seeded batch sampler, export/calibrate/CLI errors."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import render_small_sim
from densehybrid_training.checkpoint import load_checkpoint
from densehybrid_training.cli import build_model_and_dataset, main as train_main
from densehybrid_training.config import load_train_config
from densehybrid_training.engine import ClosedSetNet, compute_loss
from densehybrid_training.mixed import StepBatchSampler

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sim_train(tmp_path_factory):
    return render_small_sim(tmp_path_factory.mktemp("simtrain"), "train", 8, seed=4, frames_per_scene=4)


@pytest.fixture(scope="module")
def tiny_model_yaml(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text("num_classes: 15\nbackbone: resnet18\nbackbone_width: 8\ndecoder_width: 16\nspp_grids: [4, 2, 1]\n")
    return path


def _overrides(sim_train, model_yaml, out, **extra) -> list[str]:
    items = {"model": str(model_yaml), "data.root": str(sim_train), "data.crop": "[64,96]", "batch_size": 2,
             "checkpoint_every": 3, "log_every": 1, "image_every": 5, "out": str(out), "seed": 3, **extra}
    return [f"{k}={v}" for k, v in items.items()]


def _train_cmd(mode: str, overrides: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "densehybrid_training", mode]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


def _env() -> dict:
    # no PYTHONPATH: the runs import the installed `densehybrid_training`, as `densehybrid-train` does
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_sampler_batches_depend_only_on_the_step():
    a = StepBatchSampler(10, 2, 0, 12, seed=1)
    b = StepBatchSampler(10, 2, 7, 12, seed=1)
    assert list(a)[7:] == list(b)
    epoch0 = [i for batch in list(a)[:5] for i, _ in batch]
    assert sorted(epoch0) == list(range(10))  # one epoch visits every image once
    r0, r1 = StepBatchSampler(10, 2, 0, 2, seed=1, rank=0, world=2), StepBatchSampler(10, 2, 0, 2, seed=1, rank=1, world=2)
    assert not {i for b in r0 for i, _ in b} & {i for b in r1 for i, _ in b}


def test_kill_and_resume_gives_the_same_weights(sim_train, tiny_model_yaml, tmp_path):
    steps = 12
    full = subprocess.run(_train_cmd("segmenter", _overrides(sim_train, tiny_model_yaml, tmp_path / "full", steps=steps)),
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd("segmenter", _overrides(sim_train, tiny_model_yaml, out, steps=steps)), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # last.pt appears (atomically) after the first checkpoint, at step 3; kill the run right then
    while not (out / "checkpoints" / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed; make it longer"
    killed_at = load_checkpoint(out / "checkpoints" / "last.pt")["step"]
    assert 3 <= killed_at < steps and not (out / "checkpoints" / f"step_{steps:07d}.pt").exists()
    resumed = subprocess.run(_train_cmd("segmenter", _overrides(sim_train, tiny_model_yaml, out, steps=steps)),
                             env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    b = load_checkpoint(out / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == steps
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])
    assert a["config"] == {**b["config"], "out": a["config"]["out"]}
    assert (tmp_path / "full" / "tensorboard").is_dir()


def test_repeat_factor_sampling_reaches_the_run(sim_train, tiny_model_yaml, tmp_path):
    from densehybrid_training.class_balance import image_class_presence, repeat_factors
    from densehybrid_training.data.factory import build_inlier_dataset

    overrides = _overrides(sim_train, tiny_model_yaml, tmp_path / "rfs", steps=2, **{"data.repeat_threshold": 0.9})
    run = subprocess.run(_train_cmd("segmenter", overrides), env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    # the factors the run reports are those of this split's labels
    factors = repeat_factors(image_class_presence(build_inlier_dataset("sim", sim_train, "train"), 15), 0.9)
    assert (f"repeat-factor sampling (t = 0.9): 8 images, {int((factors > 1).sum())} drawn more often "
            f"(up to {factors.max():.2f}x)") in run.stdout
    assert factors.max() > 1  # some class of the 8 frames is shown by fewer than 90% of them


@pytest.mark.parametrize("mode", ["segmenter", "finetune"])
def test_ddp_two_processes_average_the_per_rank_gradients(sim_train, tiny_model_yaml, tmp_path, mode):
    extra = {"steps": 1}
    if mode == "finetune":
        # a closed-set checkpoint to start from
        seg = subprocess.run(_train_cmd("segmenter", _overrides(sim_train, tiny_model_yaml, tmp_path / "seg", steps=1)),
                             env=_env(), capture_output=True, text=True, timeout=300)
        assert seg.returncode == 0, seg.stderr
        extra.update({"data.negatives": "sim", "init": str(tmp_path / "seg" / "checkpoints" / "last.pt")})
    overrides = [f"mode={mode}"] + _overrides(sim_train, tiny_model_yaml, tmp_path / "ddp", **extra)
    (tmp_path / "overrides.txt").write_text("\n".join(overrides))
    # --standalone: the rendezvous store binds a port the OS chooses (port 0) and the workers join through it, so no
    # port is picked here that another process could take before torch.distributed binds it
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(ROOT / "test" / "ddp_grad_worker.py"), str(tmp_path / "overrides.txt"),
                          str(tmp_path / "ddp_grads.pt")], env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp_grads.pt", weights_only=True)
    # the same two batches, one process, no DDP: gradients of each, then their mean
    cfg = load_train_config(None, overrides)
    grads = []
    for rank in (0, 1):
        model, dataset, _ = build_model_and_dataset(mode, cfg)
        model.train()
        net = ClosedSetNet(model) if mode == "segmenter" else model
        batch = StepBatchSampler(len(dataset), cfg.batch_size, 0, 1, cfg.seed, rank, 2).batch(0)
        x, y, d = (torch.stack(t) for t in zip(*[dataset[k] for k in batch]))
        if mode == "finetune":
            assert d.any(), "finetune batches must contain pasted negatives"
        compute_loss(cfg, net, x, y, d)["total"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert set(ddp) == set(grads[0])
    for name, g in ddp.items():
        torch.testing.assert_close(g, (grads[0][name] + grads[1][name]) / 2, rtol=1e-4, atol=1e-6)


def test_cli_errors_are_clear(sim_train, tiny_model_yaml, tmp_path, capsys):
    assert train_main(["finetune", "--set", f"data.root={sim_train}", "--set", f"model={tiny_model_yaml}"]) == 2
    assert "finetune needs negatives" in capsys.readouterr().err
    assert train_main(["segmenter", "--set", "optim.lrr=1"]) == 2
    assert "unknown field(s) ['lrr']" in capsys.readouterr().err
    assert train_main(["segmenter", "--set", f"data.root={tmp_path / 'nope'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert train_main(["finetune", "--set", "loss_variant=authors", "--set", "loss.x_out_margin=8"]) == 2
    assert "x_out_margin applies to loss_variant 'thesis' only" in capsys.readouterr().err


def test_init_head_continues_a_finetuning_and_refuses_a_closed_set_init(sim_train, tiny_model_yaml, tmp_path):
    """`init_head`: a fine-tuning started from another fine-tuning (checkpoint or exported weights) takes its trained
    inlier head too; by default, and from a closed-set run, the head starts fresh."""
    from densehybrid_training.config import ConfigError
    from densehybrid_training.export import export

    seg, ft = tmp_path / "seg", tmp_path / "ft"
    seg_set = _overrides(sim_train, tiny_model_yaml, seg, steps=1)
    assert train_main(["segmenter", *[a for o in seg_set for a in ("--set", o)]]) == 0
    ft_set = _overrides(sim_train, tiny_model_yaml, ft, steps=1, **{"data.negatives": "sim",
                                                                    "init": str(seg / "checkpoints" / "last.pt")})
    assert train_main(["finetune", *[a for o in ft_set for a in ("--set", o)]]) == 0
    trained = load_checkpoint(ft / "checkpoints" / "last.pt")["model"]
    weights = export(ft / "checkpoints" / "last.pt", tmp_path / "ft.safetensors")

    def head(init: str, init_head: bool) -> dict:
        cfg = load_train_config(None, ["mode=finetune", *_overrides(sim_train, tiny_model_yaml, tmp_path / "x"),
                                       "data.negatives=sim", f"init={init}", f"init_head={str(init_head).lower()}"])
        model, _, _ = build_model_and_dataset("finetune", cfg)
        return {f"inlier_head.{k}": v for k, v in model.inlier_head.state_dict().items()}

    for init in (ft / "checkpoints" / "last.pt", weights):
        kept = head(str(init), True)
        assert all(torch.equal(v, trained[k]) for k, v in kept.items() if v.is_floating_point())
        fresh = head(str(init), False)
        assert any(not torch.equal(v, trained[k]) for k, v in fresh.items() if v.is_floating_point())
    with pytest.raises(ConfigError, match="not a DenseHybrid fine-tuning"):
        head(str(seg / "checkpoints" / "last.pt"), True)


@pytest.mark.parametrize("path", sorted((ROOT / "config" / "train").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_train_config_loads(path):
    """Each config under config/train loads and validates as the CLI reads it (a flow config: `flow:` at the top)."""
    from densehybrid_training.flow_train import FlowTrainConfig

    flow = "flow" in yaml.safe_load(path.read_text())
    cfg = load_train_config(path, [], cls=FlowTrainConfig if flow else None)
    assert isinstance(cfg, FlowTrainConfig) or cfg.mode in ("segmenter", "finetune")
