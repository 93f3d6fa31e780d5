"""Closed-set validation during training: mIoU on evenly spaced frames of a held-out split, every N steps,
appended to OUT/val.csv (step, mIoU, per-class IoU) and TensorBoard, so that a run shows when it flattens."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from densehybrid_ros.datasets import open_dataset
from densehybrid_ros.evaluation.segmentation_metrics import closed_set_confusion, iou_per_class
from densehybrid_ros.models import DenseHybrid


@dataclass(frozen=True)
class ValidationConfig:
    dataset: str = ""  # KIND:PATH of held-out frames with semantic labels (e.g. sim:data/sim_val_big); "" = none
    frames: int = 120  # evenly spaced frames of it
    every: int = 1000  # steps

    def validate(self) -> None:
        if self.dataset and (self.frames < 1 or self.every < 1):
            raise ValueError(f"validation.frames and validation.every must be >= 1, got {self.frames}, {self.every}")


class Validator:
    def __init__(self, cfg: ValidationConfig, mean, std, out: Path) -> None:
        self.cfg = cfg
        self.dataset = open_dataset(cfg.dataset)
        n = len(self.dataset)
        self.indices = np.unique(np.linspace(0, n - 1, min(cfg.frames, n)).round().astype(int))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.csv = Path(out) / "val.csv"

    def due(self, step: int) -> bool:
        return step % self.cfg.every == 0

    @torch.no_grad()
    def run(self, model: DenseHybrid, step: int, device: torch.device) -> dict:
        was_training = model.training
        model.eval()
        K = model.num_classes
        cm = np.zeros((K, K), np.int64)
        for i in self.indices:
            sample = self.dataset[int(i)]
            x = torch.from_numpy(np.ascontiguousarray(sample.image)).permute(2, 0, 1)[None].float() / 255.0
            x = ((x - self.mean) / self.std).to(device)
            H, W = x.shape[-2:]
            pad_h, pad_w = (-H) % 32, (-W) % 32  # the segmenter needs multiples of 32
            x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h))
            pred = model.closed_set(x)[0, :H, :W].cpu().numpy()
            cm += closed_set_confusion(sample.semantic, pred, K)
        model.train(was_training)
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = iou_per_class(cm)
        row = {"step": step, "miou": float(np.nanmean(iou)), "iou": [float(v) for v in iou]}
        new = not self.csv.is_file()
        with self.csv.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "miou"] + [f"iou_{c}" for c in self.dataset.classes])
            w.writerow([step, f"{row['miou']:.5f}"] + [f"{v:.5f}" for v in row["iou"]])
        return row
