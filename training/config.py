"""Training configs: dataclasses loaded from YAML (densehybrid_ros.config.from_dict names bad fields),
with `--set a.b=value` command-line overrides."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from densehybrid_ros.config import ConfigError, from_dict
from densehybrid_ros.perception.settings import DRIVABLE_CLASSES
from densehybrid_ros.predictor import DEVICE_RE
from densehybrid_training.losses import LossWeights
from densehybrid_training.paste import check_pasting
from densehybrid_training.synthetic import SyntheticConfig
from densehybrid_training.validation import ValidationConfig


@dataclass(frozen=True)
class DataConfig:
    inliers: str = "sim"  # inlier dataset kind (densehybrid_training.data factory name)
    root: str = ""
    split: str = "train"
    negatives: str | None = None  # negative dataset kind; None = no real negatives
    negatives_root: str = ""
    negative_mode: str = "mixed"  # "mask" (union of object masks), "rectangle", or "mixed" (each with p = 0.5)
    crop: tuple[int, int] = (256, 512)  # (H, W) training crop
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    jitter: bool = True
    paste_prob: float = 1.0  # fraction of fine-tuning images that get a negative
    negative_side: tuple[int, int] = (16, 128)  # pasted patch sides (px), public recipe: 16..min(H, W) step 8
    negative_side_scale: str = "uniform"  # "uniform" (public recipe) or "log" (as many far-sized as near-sized)
    negatives_per_image: int = 1  # negatives pasted into each image that gets any (public recipe: 1)
    negative_ground_prob: float = 0.0  # chance that a negative stands on a ground pixel (public recipe: 0)
    negative_ground_classes: tuple[str, ...] = DRIVABLE_CLASSES  # class names of that ground
    # repeat-factor sampling (class_balance.repeat_factors): images showing a class that fewer than this share of
    # the training images show are drawn more often; 0 = every image once per epoch
    repeat_threshold: float = 0.0
    workers: int = 0  # loader worker processes (0 = load in the training process)
    prefetch: int = 2  # batches each worker loads ahead (with workers > 0)

    def validate(self) -> None:
        if self.workers < 0 or self.prefetch < 1:
            raise ValueError(f"workers must be >= 0 and prefetch >= 1, got {self.workers} and {self.prefetch}")
        if self.negative_mode not in ("mask", "rectangle", "mixed"):
            raise ValueError(f"negative_mode must be 'mask', 'rectangle' or 'mixed', got {self.negative_mode!r}")
        if min(self.crop) < 32 or self.crop[0] % 32 or self.crop[1] % 32:
            raise ValueError(f"crop must be multiples of 32 and >= 32, got {self.crop}")
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {self.scale_range}")
        if not 0.0 <= self.paste_prob <= 1.0:
            raise ValueError(f"paste_prob must be in [0, 1], got {self.paste_prob}")
        check_pasting(self.negative_side, self.negative_side_scale, self.negatives_per_image, self.negative_ground_prob)
        if self.negative_ground_prob > 0 and not self.negative_ground_classes:
            raise ValueError("negative_ground_prob > 0 needs negative_ground_classes")
        if not 0.0 <= self.repeat_threshold <= 1.0:
            raise ValueError(f"repeat_threshold must be in [0, 1], got {self.repeat_threshold}")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 4e-4
    backbone_lr_factor: float = 0.25  # backbone lr = lr / 4 (thesis 5.3)
    weight_decay: float = 1e-4
    min_lr_ratio: float = 0.01  # cosine decay down to lr * min_lr_ratio

    def validate(self) -> None:
        if self.lr <= 0 or self.backbone_lr_factor < 0 or self.weight_decay < 0:
            raise ValueError("lr must be > 0, backbone_lr_factor and weight_decay >= 0")


@dataclass(frozen=True)
class SpeedConfig:
    """Throughput settings; `densehybrid-bench train` measures each against the plain defaults."""

    channels_last: bool = False  # model and batches in torch.channels_last (NHWC convolutions)
    compile: bool = False  # torch.compile the training network (inductor)
    threads: int = 0  # torch intra-op threads (0 = torch's default)

    def validate(self) -> None:
        if self.threads < 0:
            raise ValueError(f"speed.threads must be >= 0, got {self.threads}")


@dataclass(frozen=True)
class TrainConfig:
    mode: str = "segmenter"  # "segmenter" (closed-set CE) or "finetune" (DenseHybrid, 4.16)
    model: str = "swiftnet_r18_cpu"  # preset name (config/model/) or YAML path
    init: str | None = None  # segmenter: ImageNet checkpoint; finetune: closed-set checkpoint or weights
    # finetune: also take the inlier-posterior head from `init`, which must then be a DenseHybrid fine-tuning
    # (continuing one on new data); off, the head starts fresh (a closed-set init has none trained)
    init_head: bool = False
    out: str = "runs/train"
    steps: int = 1000
    batch_size: int = 8
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # autocast float16 on CUDA
    checkpoint_every: int = 200
    log_every: int = 20
    image_every: int = 200  # TensorBoard sample images
    loss: LossWeights = LossWeights()
    loss_variant: str = "thesis"  # "thesis" (4.16) or "authors" (public code, for comparison)
    class_balance: str = "none"  # "none" or "enet": class-weighted L_cls (densehybrid_training.class_balance)
    class_weights: tuple[float, ...] | None = None  # filled in from the training labels when class_balance != none
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    synthetic: SyntheticConfig | None = None  # finetune with negatives sampled from a jointly trained flow

    def validate(self) -> None:
        if self.synthetic is not None:
            self.synthetic.validate()
        if self.mode not in ("segmenter", "finetune"):
            raise ValueError(f"mode must be 'segmenter' or 'finetune', got {self.mode!r}")
        if self.class_balance not in ("none", "enet"):
            raise ValueError(f"class_balance must be 'none' or 'enet', got {self.class_balance!r}")
        if self.loss_variant not in ("thesis", "authors"):
            raise ValueError(f"loss_variant must be 'thesis' or 'authors', got {self.loss_variant!r}")
        if self.loss_variant == "authors" and self.loss.x_out_margin is not None:
            raise ValueError("loss.x_out_margin applies to loss_variant 'thesis' only (the authors' variant is "
                             "their code's loss, unbounded)")
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("steps, batch_size, checkpoint_every and log_every must be >= 1")
        if self.device != "auto" and not DEVICE_RE.match(self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        self.loss.validate()
        self.data.validate()
        self.speed.validate()
        self.validation.validate()


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['optim.lr=1e-3', 'data.crop=[128,256]'] -> nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not KEY=VALUE")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _number_or_value(yaml.safe_load(text))
    return out


def _number_or_value(value: Any) -> Any:
    """YAML 1.1 reads '1e-3' as a string; numbers written that way are numbers here."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _merge(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        base[k] = _merge(dict(base.get(k) or {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base


def load_train_config(path: str | Path | None, overrides: list[str] = (), cls: type = None):
    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    data = _merge(data, parse_overrides(list(overrides)))
    try:
        return from_dict(cls or TrainConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{path or 'config'}: {exc}") from None
