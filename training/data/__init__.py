"""Training data: closed-set (inlier) datasets, negative sources, augmentation and collates.

- :mod:`.inliers`: ``ds[i] -> (image HxWx3 uint8 RGB, labels HxW uint8, 255 = ignore)`` + ``ds.classes``.
- :mod:`.negatives`: ``ds[j] -> (image HxWx3 uint8, mask HxW bool)`` in mode mask / rectangle / mixed.
- :mod:`.augment`: :class:`InlierAugment`, :class:`NegativeResize`, :class:`AugmentedDataset`, collates.
- :mod:`.factory`: :func:`build_inlier_dataset`, :func:`build_negative_dataset` by kind name.
- :mod:`.labelmaps`: the id mappings and the excluded (inlier) classes of every negative source.
- :mod:`.coco_mask`: COCO polygon / RLE decoding.

Layouts, mappings and their public sources are documented in each module.
"""
from densehybrid_ros.datasets.base import DatasetError  # noqa: F401
from densehybrid_training.data.augment import (  # noqa: F401
    IMAGENET_MEAN, IMAGENET_STD, AugmentedDataset, InlierAugment, InlierCollate, NegativeCollate, NegativeResize,
    PhotometricJitter,
)
from densehybrid_training.data.common import ClassInfo, InlierDataset, NegativeDataset, sample_rng  # noqa: F401
from densehybrid_training.data.factory import (  # noqa: F401
    INLIER_KINDS, NEGATIVE_KINDS, build_inlier_dataset, build_negative_dataset,
)
from densehybrid_training.data.inliers import concat_inliers  # noqa: F401

__all__ = [
    "DatasetError", "IMAGENET_MEAN", "IMAGENET_STD", "AugmentedDataset", "InlierAugment", "InlierCollate",
    "NegativeCollate", "NegativeResize", "PhotometricJitter", "ClassInfo", "InlierDataset", "NegativeDataset",
    "sample_rng", "INLIER_KINDS", "NEGATIVE_KINDS", "build_inlier_dataset", "build_negative_dataset",
    "concat_inliers",
]
