"""The training loop shared by `segmenter` (closed-set cross-entropy) and `finetune` (DenseHybrid, 4.16).

Runs as one process or under torchrun (DDP; gloo on CPU). Adam with the backbone at lr/4, cosine decay,
AMP on CUDA, checkpoints every N steps with exact resume, tqdm progress and TensorBoard logs on rank 0.
"""
from __future__ import annotations

import math
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm import tqdm

from densehybrid_ros.classes import VOID
from densehybrid_ros.models import DenseHybrid
from densehybrid_training import distributed
from densehybrid_training.checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from densehybrid_training.config import TrainConfig
from densehybrid_training.losses import authors_code_loss, classification_loss, densehybrid_loss
from densehybrid_training.mixed import MixedContentDataset, StepBatchSampler


def param_groups(model: DenseHybrid, cfg: TrainConfig, closed_set: bool) -> list[dict]:
    """Backbone at lr * backbone_lr_factor (thesis: lr/4), everything else at lr."""
    net = model.segmenter if closed_set else model
    backbone = [p for n, p in net.named_parameters() if n.startswith(("backbone.", "segmenter.backbone."))]
    ids = {id(p) for p in backbone}
    rest = [p for p in net.parameters() if id(p) not in ids]
    lr = cfg.optim.lr
    return [{"params": backbone, "lr": lr * cfg.optim.backbone_lr_factor, "name": "backbone"},
            {"params": rest, "lr": lr, "name": "head"}]


def cosine(total: int, min_ratio: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        t = min(step, total) / max(total, 1)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return factor


class ClosedSetNet(torch.nn.Module):
    """The segmenter alone, logits upsampled to the label size (no inlier head: nothing unused under DDP)."""

    def __init__(self, model: DenseHybrid) -> None:
        super().__init__()
        self.segmenter = model.segmenter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.segmenter(x).logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def compute_loss(cfg: TrainConfig, net: torch.nn.Module, x, labels, d_out) -> dict[str, torch.Tensor]:
    weights = None if cfg.class_weights is None else torch.tensor(cfg.class_weights, dtype=torch.float32)
    if cfg.mode == "segmenter":
        logits = net(x)
        cls = classification_loss(logits, labels, torch.zeros_like(d_out), weights)
        return {"cls": cls, "total": cls}
    out = net(x)
    if cfg.loss_variant == "authors":
        return authors_code_loss(out.logits, out.inlier_logit, labels, d_out, class_weights=weights)
    return densehybrid_loss(out.logits, out.inlier_logit, labels, d_out, cfg.loss, weights)


def apply_speed_settings(cfg: TrainConfig, model: DenseHybrid) -> None:
    """Thread count and memory layout of `cfg.speed` (before the optimizer sees the parameters)."""
    if cfg.speed.threads:
        torch.set_num_threads(cfg.speed.threads)
    if cfg.speed.channels_last:
        model.to(memory_format=torch.channels_last)


def compile_if_asked(cfg: TrainConfig, net: torch.nn.Module) -> torch.nn.Module:
    return torch.compile(net) if cfg.speed.compile else net


def make_loader(cfg: TrainConfig, dataset, sampler, device: torch.device) -> DataLoader:
    """Batches of `sampler`; with data.workers > 0, loaded ahead in worker processes (data.prefetch each)."""
    extra = {"prefetch_factor": cfg.data.prefetch, "persistent_workers": True} if cfg.data.workers else {}
    # its own generator: a DataLoader iterator draws a base seed at creation, which from the global torch RNG would
    # shift the restored RNG state of a resumed run by one draw (and with it the flow samples of joint fine-tuning)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.data.workers,
                      pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(cfg.seed), **extra)


def batch_to_device(cfg: TrainConfig, batch, device: torch.device) -> tuple[torch.Tensor, ...]:
    x, labels, d_out = (t.to(device, non_blocking=True) for t in batch)
    if cfg.speed.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, labels, d_out


def optimizer_step(cfg: TrainConfig, train_net: torch.nn.Module, optimizer, scaler, x, labels, d_out) -> dict:
    """One plain (no flow) step: forward, loss, backward, update; returns the loss terms."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        with torch.autocast("cuda", dtype=torch.float16):
            terms = compute_loss(cfg, train_net, x, labels, d_out)
        scaler.scale(terms["total"]).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        terms = compute_loss(cfg, train_net, x, labels, d_out)
        terms["total"].backward()
        optimizer.step()
    return terms


def checkpoint_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.out) / "checkpoints"


def train(cfg: TrainConfig, model: DenseHybrid, dataset: MixedContentDataset, meta: dict | None = None,
          stop_after: int | None = None, joint=None, image_weights: Sequence[float] | None = None) -> Path:
    """Train until `cfg.steps` (resuming from out/checkpoints/last.pt if present); returns the last checkpoint.
    `stop_after` ends this process early after that many steps (used to test resumption). `joint` (a
    `densehybrid_training.synthetic.JointFlowTraining`) adds synthetic negatives from a jointly trained flow.
    `image_weights`: draw the training images in proportion to them (repeat-factor sampling) instead of once each
    per epoch."""
    cfg.validate()
    info = distributed.setup(cfg.device)
    closed = cfg.mode == "segmenter"
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model.to(info.device)
    apply_speed_settings(cfg, model)
    net: torch.nn.Module = ClosedSetNet(model) if closed else model
    optimizer = torch.optim.Adam(param_groups(model, cfg, closed), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine(cfg.steps, cfg.optim.min_lr_ratio))
    if joint is not None and info.enabled:
        raise ValueError("fine-tuning with a jointly trained flow runs in one process (no DDP) in this version")
    use_amp = cfg.amp and info.device.type == "cuda" and joint is None
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    start = 0
    last = checkpoint_dir(cfg) / "last.pt"
    if last.is_file():
        state = load_checkpoint(last)
        if state["config"].get("mode") != cfg.mode:
            raise ValueError(f"{last} was written by a {state['config'].get('mode')!r} run, this is {cfg.mode!r}; "
                             f"use another --out or remove it")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        if joint is not None:
            joint.load_state_dict(state["extra"]["joint"])
        start = int(state["step"])
    train_net = DDP(net, device_ids=[info.device.index] if info.device.type == "cuda" else None) if info.enabled else net
    train_net = compile_if_asked(cfg, train_net)
    stop = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    sampler = StepBatchSampler(len(dataset), cfg.batch_size, start, stop, cfg.seed, info.rank, info.world_size,
                               image_weights)
    loader = make_loader(cfg, dataset, sampler, info.device)
    writer = _tensorboard(cfg) if info.is_main else None
    validator = None
    if cfg.validation.dataset and info.is_main:
        from densehybrid_ros.weights import Normalization
        from densehybrid_training.validation import Validator

        norm = Normalization()
        validator = Validator(cfg.validation, norm.mean, norm.std, Path(cfg.out))
    config_dict = asdict(cfg)
    bar = tqdm(total=cfg.steps, initial=start, desc=cfg.mode, unit="step", disable=not info.is_main)
    model.train()
    step = start
    for step, batch in enumerate(loader, start=start):
        x, labels, d_out = batch_to_device(cfg, batch, info.device)
        if joint is not None:
            optimizer.zero_grad(set_to_none=True)
            terms = _joint_step(cfg, model, joint, optimizer, x, labels, d_out, step)
        else:
            terms = optimizer_step(cfg, train_net, optimizer, scaler, x, labels, d_out)
        scheduler.step()
        done = step + 1
        bar.update(1)
        if writer is not None and (done % cfg.log_every == 0 or done == stop):
            for name, value in terms.items():  # rank 0's own batch
                writer.add_scalar(f"loss/{name}", value.item(), done)
            for group in optimizer.param_groups:
                writer.add_scalar(f"lr/{group['name']}", group["lr"], done)
            bar.set_postfix(loss=f"{terms['total'].item():.4f}")
        if validator is not None and validator.due(done):
            row = validator.run(model, done, info.device)
            writer.add_scalar("val/miou", row["miou"], done)
            bar.write(f"step {done}: val mIoU {100 * row['miou']:.2f}")
        if writer is not None and done % cfg.image_every == 0:
            _log_images(writer, x, labels, d_out, done)
        if done % cfg.checkpoint_every == 0 or done == stop:
            if info.is_main:
                extra = dict(meta or {})
                if joint is not None:
                    extra["joint"] = joint.state_dict()
                path = save_checkpoint(checkpoint_dir(cfg) / f"step_{done:07d}.pt", step=done, model=model,
                                       optimizer=optimizer, scheduler=scheduler, scaler=scaler, config=config_dict,
                                       extra=extra)
                shutil.copyfile(path, checkpoint_dir(cfg) / "last.pt.tmp")
                (checkpoint_dir(cfg) / "last.pt.tmp").replace(last)
            distributed.barrier(info)
    bar.close()
    if writer is not None:
        writer.close()
    distributed.teardown()
    return last


def _joint_step(cfg: TrainConfig, model: DenseHybrid, joint, optimizer, x, labels, d_out, step: int) -> dict:
    """One SynDenseHybrid step: paste negatives (`joint.mix`), one segmenter forward, the segmenter's loss (4.16)
    into the segmenter only; with a flow (synthetic.source 'flow') the flow's loss (4.20) into the flow only
    (`JointFlowTraining.backward_flow`, the flow half of `densehybrid_training.synthetic.route_gradients`), then both
    optimizers step; with `synthetic.flow_every` N > 1 only every N-th step trains the flow (the others paste
    samples drawn without gradients). The controls (source 'uniform' / 'inlier_crops') update the segmenter alone.
    Every `synthetic.diagnostics_every` steps the step's diagnostics (`JointFlowTraining.diagnostics`, read-only on
    gradients) go to OUT (`JointDiagnostics`)."""
    from densehybrid_training.synthetic import JointDiagnostics

    mixed, labels, d_out, synthetic, replaced = joint.mix(x, labels, d_out, step)
    out = model(mixed)
    weights = None if cfg.class_weights is None else torch.tensor(cfg.class_weights, dtype=torch.float32)
    terms = densehybrid_loss(out.logits, out.inlier_logit, labels, d_out, cfg.loss, weights)
    flow_terms = joint.flow_loss(out.logits, synthetic, replaced, step, out.inlier_logit)
    if joint.diagnostics_due(step + 1):
        if joint.log is None:
            joint.log = JointDiagnostics(Path(cfg.out))
        joint.log.write(step + 1, joint.diagnostics(out.logits, labels, d_out, synthetic, flow_terms),
                        joint.last_samples)
    seg_params = [p for p in model.parameters() if p.requires_grad]
    terms["total"].backward(inputs=seg_params, retain_graph=bool(flow_terms))
    if flow_terms:  # a step that trains the flow (`synthetic.flow_every`)
        joint.backward_flow(flow_terms)
        joint.step()
    optimizer.step()
    extra = {f"flow/{k}": v for k, v in flow_terms.items()}
    if flow_terms:
        extra["flow/lambda"] = torch.tensor(joint.jsd_weight)
        extra["flow/lr"] = torch.tensor(joint.optimizer.param_groups[0]["lr"])
    return {**terms, **extra}


def _tensorboard(cfg: TrainConfig):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(Path(cfg.out) / "tensorboard"))


def _log_images(writer, x: torch.Tensor, labels: torch.Tensor, d_out: torch.Tensor, step: int) -> None:
    img = x[0].detach().float().cpu()
    img = (img - img.min()) / (img.max() - img.min() + 1e-6)
    writer.add_image("sample/image", img, step)
    lab = labels[0].detach().cpu().float()
    writer.add_image("sample/labels", (lab.masked_fill(lab == VOID, -1) + 1)[None] / 256.0, step)
    writer.add_image("sample/d_out", d_out[0].detach().cpu().float()[None], step)
