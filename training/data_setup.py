"""From a DataConfig to the three things the trainer needs: inliers, negatives (or None) and augmentation."""
from __future__ import annotations

from densehybrid_training.config import DataConfig
from densehybrid_training.data.augment import InlierAugment
from densehybrid_training.data.factory import build_inlier_dataset, build_negative_dataset


def build_training_data(cfg: DataConfig, with_negatives: bool):
    """(inlier dataset, negative dataset or None, InlierAugment). Real negatives are used only when the
    config names a source and the run fine-tunes; without one, fine-tuning needs synthetic negatives."""
    cfg.validate()
    inliers = build_inlier_dataset(cfg.inliers, cfg.root, cfg.split)
    negatives = None
    if with_negatives and cfg.negatives:
        negatives = build_negative_dataset(cfg.negatives, cfg.negatives_root or cfg.root, mode=cfg.negative_mode)
    augment = InlierAugment(cfg.crop, cfg.scale_range, 0.5 if cfg.flip else 0.0, cfg.jitter)
    return inliers, negatives, augment
