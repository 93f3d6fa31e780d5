"""Synthetic negatives from a jointly trained normalizing flow (thesis 4.4, eq. 4.18-4.21).

One joint step (Fig. 4.5): sample the flow at a random size, paste the sample into inlier crops (4.17),
run the segmenter once, then route gradients:
- the segmenter's compound loss (4.16) updates the segmenter only (the pasted sample is a constant to it);
- the flow's loss L_mle + lambda * L_jsd (4.20) updates the flow only: L_jsd (4.19) reaches the flow THROUGH
  the segmenter's forward pass on the unquantized sample; L_mle (4.18) is the NLL of the inlier patches the
  samples replaced.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from training.paste import VOID


@dataclass(frozen=True)
class SyntheticConfig:
    flow_checkpoint: str = ""  # a `flow-pretrain` checkpoint
    real_prob: float = 0.0  # b of (4.21): an image gets a real negative with probability b, else a synthetic one
    side_range: tuple[int, int] = (16, 128)  # sample height/width range (public code: 16..216), step 8
    temperature: float = 1.0
    jsd_weight: float = 0.03  # lambda of (4.20)
    flow_lr: float = 1e-5
    mle_every: int = 1  # accumulate L_mle on the replaced patches every N steps
    # the flow's boundary term: 'jsd' (4.19, the thesis's choice) or 'detector' (the Tab. 6.10 ablation:
    # L_d + L_x^UB of the generated pixels, the segmenter's own negative-data terms, also weighted by lambda)
    boundary: str = "jsd"

    def validate(self) -> None:
        if not 0.0 <= self.real_prob <= 1.0:
            raise ValueError(f"real_prob must be in [0, 1], got {self.real_prob}")
        if not 8 <= self.side_range[0] <= self.side_range[1] or self.side_range[0] % 8 or self.side_range[1] % 8:
            raise ValueError(f"side_range must be multiples of 8 with 8 <= lo <= hi, got {self.side_range}")
        if self.boundary not in ("jsd", "detector"):
            raise ValueError(f"boundary must be 'jsd' or 'detector', got {self.boundary!r}")
        if self.jsd_weight < 0 or self.flow_lr <= 0 or self.temperature < 0 or self.mle_every < 1:
            raise ValueError("jsd_weight >= 0, flow_lr > 0, temperature >= 0 and mle_every >= 1 are required")


def jsd_to_uniform(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L_jsd (4.19): mean over masked pixels of JSD[U || P(y|x)], with U uniform over the K classes.

    JSD[U || P] = 1/2 KL(U || M) + 1/2 KL(P || M), M = (U + P) / 2; 0 when P is uniform, ln 2 at most.
    """
    log_p = torch.log_softmax(logits.float(), dim=1)
    p = log_p.exp()
    k = logits.shape[1]
    u = torch.full_like(p, 1.0 / k)
    log_m = torch.log((u + p) / 2)
    jsd = 0.5 * (u * (math.log(1.0 / k) - log_m)).sum(1) + 0.5 * (p * (log_p - log_m)).sum(1)
    m = mask.to(jsd.dtype)
    return (jsd * m).sum() / m.sum().clamp(min=1)


def detector_boundary_loss(logits: torch.Tensor, inlier_logit: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The ablation's boundary term (thesis Tab. 6.10, row L_mle + L_d + L_x^UB): the DenseHybrid outlier terms
    (4.15 outlier part + 4.14 outlier part) over generated pixels, so the flow seeks samples the hybrid detector
    already rejects instead of samples with a uniform class posterior."""
    from training.losses import outlier_likelihood_loss, outlier_posterior_loss

    return outlier_posterior_loss(inlier_logit, mask) + outlier_likelihood_loss(logits, mask)


def flow_mle_loss(flow, patches: torch.Tensor) -> torch.Tensor:
    """L_mle (4.18): mean NLL of inlier patches in bits/dim (patches in [0, 1], sides multiples of 8)."""
    return flow.bits_per_dim(patches).mean()


def sample_side(rng: np.random.Generator, lo: int, hi: int, limit: int) -> int:
    return int(rng.choice(np.arange(lo, min(hi, limit) + 1, 8)))


def paste_synthetic(x01: torch.Tensor, labels: torch.Tensor, d_out: torch.Tensor, sample: torch.Tensor,
                    top: int, left: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rectangle paste (4.17) of a differentiable sample into image `x01` (3, H, W, values in [0, 1]); returns
    the mixed image, labels (void inside), d_out and the replaced inlier patch crop(x+, m) of (4.18)."""
    _, h, w = sample.shape
    replaced = x01[:, top : top + h, left : left + w].clone()
    out = x01.clone()
    out[:, top : top + h, left : left + w] = sample
    lab = labels.clone()
    lab[top : top + h, left : left + w] = VOID
    dout = d_out.clone()
    dout[top : top + h, left : left + w] = True
    return out, lab, dout, replaced


def route_gradients(seg_loss: torch.Tensor, flow_loss: torch.Tensor, seg_params: list, flow_params: list) -> None:
    """Accumulate d seg_loss / d segmenter and d flow_loss / d flow, nothing else (4.16 vs 4.20)."""
    seg_loss.backward(inputs=seg_params, retain_graph=True)
    flow_loss.backward(inputs=flow_params)


class JointFlowTraining:
    """The flow side of SynDenseHybrid fine-tuning: owns the flow and its optimizer (separate from the
    segmenter's), pastes samples into a batch and routes gradients (see module doc)."""

    def __init__(self, flow, cfg: SyntheticConfig, mean, std, seed: int, device: torch.device) -> None:
        cfg.validate()
        self.flow = flow.to(device).train()
        self.cfg = cfg
        self.optimizer = torch.optim.Adam(self.flow.parameters(), lr=cfg.flow_lr)
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.seed = seed
        self.multiple = flow.size_multiple

    def state_dict(self) -> dict:
        return {"flow": self.flow.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.flow.load_state_dict(state["flow"])
        self.optimizer.load_state_dict(state["optimizer"])

    def mix(self, x: torch.Tensor, labels: torch.Tensor, d_out: torch.Tensor, step: int):
        """Paste one flow sample size per batch into every image that has no real negative; returns
        (mixed x, labels, d_out, synthetic mask, replaced inlier patches or None)."""
        rng = np.random.default_rng([self.seed, 104729, step])
        todo = [i for i in range(x.shape[0]) if not bool(d_out[i].any())]
        synthetic = torch.zeros_like(d_out)
        if not todo:
            return x, labels, d_out, synthetic, None
        H, W = labels.shape[-2:]
        lo, hi = self.cfg.side_range
        h = sample_side(rng, max(lo, self.multiple), hi, H - H % self.multiple)
        w = sample_side(rng, max(lo, self.multiple), hi, W - W % self.multiple)
        samples = self.flow.sample(len(todo), h, w, self.cfg.temperature)
        x01 = x * self.std + self.mean
        rows, labs, douts, replaced = [], [], [], []
        for i in range(x.shape[0]):
            if i in todo:
                top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
                xi, li, di, ri = paste_synthetic(x01[i], labels[i], d_out[i], samples[todo.index(i)], top, left)
                synthetic[i] = di & ~d_out[i]
                rows.append(xi), labs.append(li), douts.append(di), replaced.append(ri)
            else:
                rows.append(x01[i]), labs.append(labels[i]), douts.append(d_out[i])
        mixed = (torch.stack(rows) - self.mean) / self.std
        return mixed, torch.stack(labs), torch.stack(douts), synthetic, torch.stack(replaced)

    def flow_loss(self, logits: torch.Tensor, synthetic: torch.Tensor, replaced: torch.Tensor | None,
                  step: int, inlier_logit: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """L(zeta) = L_mle + lambda * L_jsd (4.20); with boundary='detector', lambda * (L_d + L_x^UB) instead."""
        if self.cfg.boundary == "jsd":
            terms = {"jsd": jsd_to_uniform(logits, synthetic)}
        else:
            if inlier_logit is None:
                raise ValueError("boundary='detector' needs the segmenter's inlier logit")
            terms = {"detector": detector_boundary_loss(logits, inlier_logit, synthetic)}
        total = self.cfg.jsd_weight * next(iter(terms.values()))
        if replaced is not None and step % self.cfg.mle_every == 0:
            # un-normalising can leave values a rounding error outside [0, 1]
            terms["mle_bpd"] = flow_mle_loss(self.flow, replaced.detach().clamp(0.0, 1.0))
            total = total + terms["mle_bpd"]
        terms["flow_total"] = total
        return terms

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
