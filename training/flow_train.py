"""`flow-pretrain` (MLE of DenseFlow on random inlier crops, thesis 4.4) and `flow-eval` (bits/dim, samples)."""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from densehybrid_ros.config import from_dict
from densehybrid_training.checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from densehybrid_training.config import DataConfig
from densehybrid_training.flow import DenseFlow, DenseFlowConfig, flow_config
from densehybrid_training.flow_optim import FLOW_GRAD_CLIP, FlowOptimConfig, build_flow_optimizer
from densehybrid_training.mixed import MixedContentDataset, StepBatchSampler


@dataclass(frozen=True)
class FlowDataConfig(DataConfig):
    """Inlier crops for the flow: 64x64 by default (thesis 4.4)."""

    crop: tuple[int, int] = (64, 64)
    scale_range: tuple[float, float] = (0.5, 1.0)


@dataclass(frozen=True)
class FlowTrainConfig:
    flow: str = "45-6"  # preset: 74-10, 45-6, cpu, cpu-m, cpu-l, tiny (training/flow/model.py PRESETS)
    flow_overrides: dict[str, Any] = field(default_factory=dict)  # DenseFlowConfig fields
    out: str = "runs/flow"
    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-3  # base learning rate (thesis 5.3: 10^-3 with Adamax)
    optim: FlowOptimConfig = field(default_factory=FlowOptimConfig)  # recipe: adam | thesis (flow_optim.py)
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 20
    device: str = "auto"
    data: FlowDataConfig = field(default_factory=FlowDataConfig)

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("steps and batch_size must be >= 1 and lr > 0")
        self.optim.validate()
        if self.optim.finetune_steps > self.steps:
            raise ValueError(f"optim.finetune_steps ({self.optim.finetune_steps}) exceeds steps ({self.steps})")
        self.flow_config()

    def flow_config(self) -> DenseFlowConfig:
        base = asdict(flow_config(self.flow))
        return from_dict(DenseFlowConfig, {**base, **self.flow_overrides}, "flow_overrides")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def crops_dataset(cfg: FlowTrainConfig):
    """Inlier crops in [0, 1] (no normalisation: the flow models pixel levels)."""
    from densehybrid_training.data.augment import InlierAugment
    from densehybrid_training.data.factory import build_inlier_dataset

    inliers = build_inlier_dataset(cfg.data.inliers, cfg.data.root, cfg.data.split)
    augment = InlierAugment(cfg.data.crop, cfg.data.scale_range, 0.5, False)
    return MixedContentDataset(inliers, augment, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), cfg.seed)


def load_flow(checkpoint: str | Path) -> DenseFlow:
    state = load_checkpoint(Path(checkpoint))
    if "flow_config" not in state["extra"]:
        raise ValueError(f"{checkpoint}: not a flow-pretrain checkpoint")
    flow = DenseFlow(from_dict(DenseFlowConfig, state["extra"]["flow_config"]))
    flow.load_state_dict(state["model"])
    return flow


def pretrain(cfg: FlowTrainConfig) -> Path:
    """MLE (bits/dim) on random crops; resumes from OUT/checkpoints/last.pt. Optimiser and schedule:
    `cfg.optim` (`densehybrid_training.flow_optim`: 'adam' or the thesis 5.3 recipe; an epoch is one pass over
    the inlier images, images // batch size steps)."""
    cfg.validate()
    device = _device(cfg.device)
    torch.manual_seed(cfg.seed)
    fcfg = cfg.flow_config()
    flow = DenseFlow(fcfg).to(device)
    dataset = crops_dataset(cfg)
    optimizer, scheduler = build_flow_optimizer(flow.parameters(), cfg.lr, cfg.optim, "pretrain", cfg.steps,
                                                len(dataset) // cfg.batch_size)
    ckpt_dir = Path(cfg.out) / "checkpoints"
    last = ckpt_dir / "last.pt"
    start = 0
    if last.is_file():
        state = load_checkpoint(last)
        flow.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start = int(state["step"])
    sampler = StepBatchSampler(len(dataset), cfg.batch_size, start, cfg.steps, cfg.seed)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(Path(cfg.out) / "tensorboard"))
    bar = tqdm(total=cfg.steps, initial=start, desc="flow-pretrain", unit="step")
    flow.train()
    log = (Path(cfg.out) / "bits_per_dim.csv").open("a")  # step,bpd; appended across resumes
    for step, batch in enumerate(sampler, start=start):
        x = torch.stack([dataset[k][0] for k in batch]).to(device)
        bpd = flow.bits_per_dim(x).mean()
        optimizer.zero_grad(set_to_none=True)
        bpd.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), FLOW_GRAD_CLIP)
        optimizer.step()
        scheduler.step()
        done = step + 1
        bar.update(1)
        if done % cfg.log_every == 0 or done == cfg.steps:
            writer.add_scalar("flow/bits_per_dim", bpd.item(), done)
            writer.add_scalar("flow/lr", optimizer.param_groups[0]["lr"], done)
            bar.set_postfix(bpd=f"{bpd.item():.3f}")
            log.write(f"{done},{bpd.item():.4f}\n")
            log.flush()
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            path = save_checkpoint(ckpt_dir / f"step_{done:07d}.pt", step=done, model=flow, optimizer=optimizer,
                                   scheduler=scheduler, scaler=None, config=asdict(cfg),
                                   extra={"flow_config": asdict(fcfg)})
            shutil.copyfile(path, last.with_suffix(".pt.tmp"))  # then an atomic rename
            last.with_suffix(".pt.tmp").replace(last)
    bar.close()
    writer.close()
    log.close()
    return last


@torch.no_grad()
def evaluate_flow(checkpoint: Path, cfg: FlowTrainConfig, images: int, k: int, out: Path,
                  sizes=((32, 32), (64, 64), (64, 128)), temperatures=(1.0, 0.7)) -> dict:
    """Bits/dim (ELBO and IWBO-k) on `images` crops of cfg.data, and a PNG grid of samples."""
    import cv2

    device = _device(cfg.device)
    flow = load_flow(checkpoint).to(device).eval()
    dataset = crops_dataset(cfg)
    keys = StepBatchSampler(len(dataset), 1, 0, images, cfg.seed + 1)
    x = torch.stack([dataset[b[0]][0] for b in keys]).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    elbo = flow.bits_per_dim(x, 1, generator=gen).mean().item()
    iwbo = flow.bits_per_dim(x, k, batch_samples=min(k, 8), generator=gen).mean().item()
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for t in temperatures:
        tiles = []
        for h, w in sizes:
            s = flow.sample(4, h, w, t, generator=gen).cpu().numpy()
            tile = np.zeros((4 * (max(hh for hh, _ in sizes) + 4), w + 4, 3), np.float32)
            for i in range(4):
                tile[i * (h + 4) : i * (h + 4) + h, :w] = s[i].transpose(1, 2, 0)
            tiles.append(tile)
        rows.append(np.hstack(tiles))
    grid = (np.vstack(rows) * 255).clip(0, 255).astype(np.uint8)
    cv2.imwrite(str(out / "flow_samples.png"), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    result = {"elbo_bpd": elbo, f"iwbo{k}_bpd": iwbo, "images": images, "crop": list(cfg.data.crop),
              "samples_png": str(out / "flow_samples.png")}
    return result
