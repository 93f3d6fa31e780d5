"""Synthetic negatives from a jointly trained normalizing flow (thesis 4.4, eq. 4.18-4.21).

One joint step (Fig. 4.5): sample the flow at a random size, paste the sample into inlier crops (4.17),
run the segmenter once, then route gradients:
- the segmenter's compound loss (4.16) updates the segmenter only (the pasted sample is a constant to it);
- the flow's loss L_mle + lambda * L_jsd (4.20) updates the flow only: L_jsd (4.19) reaches the flow THROUGH
  the segmenter's forward pass on the unquantized sample; L_mle (4.18) is the NLL of the inlier patches the
  samples replaced.
"""
from __future__ import annotations

import contextlib
import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from densehybrid_ros.classes import VOID
from densehybrid_ros.scores import class_posterior


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
    # every N steps: the boundary term's share of the flow gradient, JSD-to-uniform and max softmax on pasted vs
    # inlier pixels, sample statistics (OUT/joint_diagnostics.csv, TensorBoard) and a grid of what is pasted
    # (TensorBoard, OUT/pasted/step_*.png); 0 = off
    diagnostics_every: int = 0

    def validate(self) -> None:
        if not 0.0 <= self.real_prob <= 1.0:
            raise ValueError(f"real_prob must be in [0, 1], got {self.real_prob}")
        if not 8 <= self.side_range[0] <= self.side_range[1] or self.side_range[0] % 8 or self.side_range[1] % 8:
            raise ValueError(f"side_range must be multiples of 8 with 8 <= lo <= hi, got {self.side_range}")
        if self.boundary not in ("jsd", "detector"):
            raise ValueError(f"boundary must be 'jsd' or 'detector', got {self.boundary!r}")
        if self.jsd_weight < 0 or self.flow_lr <= 0 or self.temperature < 0 or self.mle_every < 1:
            raise ValueError("jsd_weight >= 0, flow_lr > 0, temperature >= 0 and mle_every >= 1 are required")
        if self.diagnostics_every < 0:
            raise ValueError(f"diagnostics_every must be >= 0 (0 = off), got {self.diagnostics_every}")


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
    from densehybrid_training.losses import outlier_likelihood_loss, outlier_posterior_loss

    return outlier_posterior_loss(inlier_logit, mask) + outlier_likelihood_loss(logits, mask)


def flow_mle_loss(flow, patches: torch.Tensor) -> torch.Tensor:
    """L_mle (4.18): mean NLL of inlier patches in bits/dim (patches in [0, 1], sides multiples of 8)."""
    return flow.bits_per_dim(patches).mean()


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run `module` in eval mode (BatchNorm normalises with, and never updates, its running statistics), then
    restore every submodule's own train/eval flag. Gradients are not switched off: use it for differentiable
    sampling (3.7) whose batch must not leak into the normalisation."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def masked_confidence(logits: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """The segmenter's confidence over the pixels of `mask`: mean JSD[U || P(y|x)] (4.19; ln 2 at most, 0 for a
    uniform posterior) and mean max_y P(y|x) (4.5), without gradients; NaN for an empty mask."""
    if not bool(mask.any()):
        return {"jsd": math.nan, "max_softmax": math.nan}
    with torch.no_grad():
        msp = class_posterior(logits.float()).amax(dim=1)[mask]
        return {"jsd": float(jsd_to_uniform(logits.detach(), mask)), "max_softmax": float(msp.mean())}


def flow_gradient_norms(boundary: torch.Tensor, mle: torch.Tensor | None, params: list) -> dict[str, float]:
    """L2 norms over all flow parameters of d(lambda * boundary term)/d zeta and d L_mle/d zeta (the two parts of
    4.20) and their ratio, by `torch.autograd.grad` with the graphs retained: nothing is accumulated into
    `.grad`, so the training step's routed gradients (`route_gradients`) are untouched. NaN where L_mle is absent."""
    def norm(loss: torch.Tensor) -> float:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads if g is not None))

    b = norm(boundary) if boundary.requires_grad else 0.0
    m = norm(mle) if mle is not None and mle.requires_grad else math.nan
    return {"grad_norm_boundary": b, "grad_norm_mle": m, "boundary_grad_share": b / m if m > 0 else math.nan}


def sample_grid(samples: torch.Tensor, columns: int = 8, gap: int = 2) -> np.ndarray:
    """(N, 3, h, w) samples in [0, 1] -> one uint8 (rows, cols, 3) RGB image, `columns` per row, `gap` px apart."""
    n, _, h, w = samples.shape
    cols = min(columns, n)
    rows = -(-n // cols)
    grid = np.zeros((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), np.float32)
    s = samples.detach().float().cpu().clamp(0, 1).permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = s[i]
    return (grid * 255).round().astype(np.uint8)


class JointDiagnostics:
    """Writes the joint-training diagnostics of `JointFlowTraining.diagnostics` to OUT/joint_diagnostics.csv
    (appended across resumes), TensorBoard (OUT/tensorboard, tags diag/*, image diag/pasted) and
    OUT/pasted/step_NNNNNNN.png."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.csv = self.out / "joint_diagnostics.csv"
        self._writer = None

    def write(self, step: int, row: dict[str, float], samples: torch.Tensor | None) -> None:
        import cv2
        from torch.utils.tensorboard import SummaryWriter

        self.out.mkdir(parents=True, exist_ok=True)
        new = not self.csv.is_file()
        with self.csv.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", *row])
            w.writerow([step, *(f"{v:.6g}" for v in row.values())])
        if self._writer is None:
            self._writer = SummaryWriter(log_dir=str(self.out / "tensorboard"))
        for name, value in row.items():
            self._writer.add_scalar(f"diag/{name}", value, step)
        if samples is not None:
            grid = sample_grid(samples)
            self._writer.add_image("diag/pasted", grid, step, dataformats="HWC")
            (self.out / "pasted").mkdir(exist_ok=True)
            cv2.imwrite(str(self.out / "pasted" / f"step_{step:07d}.png"), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
        self._writer.flush()


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
        self.last_samples: torch.Tensor | None = None  # what the latest `mix` pasted (for diagnostics)
        self.log: JointDiagnostics | None = None  # opened by the training loop when diagnostics are on

    def diagnostics_due(self, done: int) -> bool:
        return self.cfg.diagnostics_every > 0 and done % self.cfg.diagnostics_every == 0

    def sample(self, num: int, height: int, width: int) -> torch.Tensor:
        """Differentiable flow samples (3.7) drawn with eval-mode normalisation (`eval_mode`): BatchNorm uses its
        running statistics, not those of the generated batch, and sampling never changes them; gradients of
        L_jsd (4.19) still reach the flow's parameters through the samples."""
        with eval_mode(self.flow):
            return self.flow.sample(num, height, width, self.cfg.temperature)

    def diagnostics(self, logits: torch.Tensor, labels: torch.Tensor, d_out: torch.Tensor, synthetic: torch.Tensor,
                    flow_terms: dict[str, torch.Tensor]) -> dict[str, float]:
        """One step's diagnostics (issue 14): the boundary term's share of the flow gradient
        (`flow_gradient_norms`), JSD-to-uniform and max softmax on pasted vs inlier (not void, not negative)
        pixels (`masked_confidence`), and per-channel mean/std of the pasted samples in [0, 1]."""
        boundary = self.cfg.jsd_weight * flow_terms[self.cfg.boundary]
        row = flow_gradient_norms(boundary, flow_terms.get("mle_bpd"), list(self.flow.parameters()))
        inlier = ~d_out & (labels != VOID)
        for name, mask in (("synthetic", synthetic), ("inlier", inlier)):
            for key, value in masked_confidence(logits, mask).items():
                row[f"{key}_{name}"] = value
        s = self.last_samples
        for c, channel in enumerate("rgb"):
            row[f"sample_mean_{channel}"] = math.nan if s is None else float(s[:, c].mean())
            row[f"sample_std_{channel}"] = math.nan if s is None else float(s[:, c].std())
        return row

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
            self.last_samples = None
            return x, labels, d_out, synthetic, None
        H, W = labels.shape[-2:]
        lo, hi = self.cfg.side_range
        h = sample_side(rng, max(lo, self.multiple), hi, H - H % self.multiple)
        w = sample_side(rng, max(lo, self.multiple), hi, W - W % self.multiple)
        samples = self.sample(len(todo), h, w)
        self.last_samples = samples.detach()
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
