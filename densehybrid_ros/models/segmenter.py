"""The contract between a closed-set segmenter and the DenseHybrid wrapper."""
from __future__ import annotations

from typing import NamedTuple, Protocol

import torch


class SegmenterOutput(NamedTuple):
    """What a segmenter yields for a batch (thesis 4.5: z = f1(x), s = f2(z)).

    pre_logits: (B, C, h, w) features z the class projection reads.
    logits:     (B, K, h, w) class logits s, same spatial size as pre_logits.
    """

    pre_logits: torch.Tensor
    logits: torch.Tensor


class Segmenter(Protocol):
    """Any closed-set segmenter DenseHybrid can wrap: an nn.Module with these attributes."""

    num_classes: int
    pre_logit_channels: int

    def __call__(self, x: torch.Tensor) -> SegmenterOutput: ...
