"""Synthetic negatives from a jointly trained normalizing flow (thesis 4.4, eq. 4.18-4.21).

One joint step (Fig. 4.5): sample the flow at a random size, paste the sample into inlier crops (4.17),
run the segmenter once, then route gradients:
- the segmenter's compound loss (4.16) updates the segmenter only (the pasted sample is a constant to it);
- the flow's loss L_mle + lambda * L_jsd (4.20) updates the flow only: L_jsd (4.19) reaches the flow THROUGH
  the segmenter's forward pass on the unquantized sample; L_mle (4.18) is the NLL of the inlier patches the
  samples replaced.

Negatives (`SyntheticConfig`): one per image without a real negative (b of 4.21 = `real_prob`), of one size per batch
or its own size per image (`sizes`), each side uniform or log-uniform in `side_range` (`side_scale`), pasted as the
whole rectangle or as an object-like smooth blob (`shape`, `blob_mask`), at a uniform position or, with probability
`ground_prob`, standing on a ground pixel (`paste.ground_position`, as the real negatives can); the pasted pixels
are d_out with label void, L_mle scores the inlier patch under the sample's frame.
The flow may draw each negative at a fraction of its size, upsampled (`sample_scale`), and may be trained on every N-th
step only (`flow_every`; the other steps paste samples drawn without gradients).
`source` swaps the flow for the controls of thesis Tab. 6.11 (uniform noise, inlier crops) on the same path, with no
flow. lambda of (4.20) is fixed (`jsd_weight`) or held at a share of the flow gradient (`boundary_share`,
`BoundaryShareController`); the flow's optimiser follows `flow_optim` (`densehybrid_training.flow_optim`).
"""
from __future__ import annotations

import contextlib
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from densehybrid_ros.classes import VOID
from densehybrid_ros.scores import class_posterior
from densehybrid_training.flow_optim import FLOW_GRAD_CLIP, FlowOptimConfig, build_flow_optimizer
from densehybrid_training.paste import ground_position, random_side


SOURCES = ("flow", "uniform", "inlier_crops")
SHAPES = ("rectangle", "blob", "mixed")
SIZES = ("batch", "image")
SIDE_SCALES = ("uniform", "log")
MLE_NORMS = ("batch", "running")
MIXED_BLOB_PROB = 0.5  # shape 'mixed': a blob with this probability (the real negatives' object-mask share)


@dataclass(frozen=True)
class SyntheticConfig:
    flow_checkpoint: str = ""  # a `flow-pretrain` checkpoint (source 'flow' only)
    real_prob: float = 0.0  # b of (4.21): an image gets a real negative with probability b, else a synthetic one
    # where the pasted negatives come from: 'flow' (thesis 4.4), or the controls of thesis Tab. 6.11 on the same
    # paste and loss path with no flow at all: 'uniform' (i.i.d. uniform noise patches) or 'inlier_crops' (a patch
    # of another inlier image of the batch, [53])
    source: str = "flow"
    # the pasted region inside the sample's h x w frame: 'rectangle' (all of it), 'blob' (a random smooth
    # star-shaped mask, `blob_mask`) or 'mixed' (a blob with probability 0.5, like the real negatives' masks)
    shape: str = "rectangle"
    # 'batch': one sample size per batch (earlier behaviour); 'image': every image draws its own (thesis Fig. 6.8:
    # "we sample the normalizing flow at different resolutions to mimic anomalies of different sizes")
    sizes: str = "batch"
    side_range: tuple[int, int] = (16, 128)  # sample height/width range (public code: 16..216), step 8
    # each side 'uniform' over the steps of side_range (public code) or 'log' (log-uniform: as many 16-32 px sides
    # as 64-128 px ones, the sizes of far anomalies as common as those of near ones; `sample_side_log`)
    side_scale: str = "uniform"
    # chance that a negative stands on the ground: the middle of its mask's lowest row on a random pixel of the
    # data config's `negative_ground_classes` (`paste.ground_position`); 0 = uniform positions (public code)
    ground_prob: float = 0.0
    temperature: float = 1.0
    # the flow draws each negative at this fraction of its pasted size (each side rounded to the flow's size multiple,
    # at least one multiple) and it is upsampled bilinearly to that size; L_mle then scores the replaced patch
    # area-downsampled to the sample's size, so the flow is trained on the scale it samples at. 1 = the thesis
    # (samples at their pasted size, Fig. 6.8); < 1 draws smoother, coarser negatives from s^2 of the pixels (the
    # flow's time falls less: its calls on small samples are bound by per-operation overhead)
    sample_scale: float = 1.0
    jsd_weight: float = 0.03  # lambda of (4.20); with boundary_share > 0 only its starting value
    # > 0: keep ||d(lambda L_boundary)/d zeta|| / ||d L_mle/d zeta|| at this target on average by rescaling lambda
    # from a running average of the measured gradient-norm ratio (`BoundaryShareController`); 0: lambda = jsd_weight
    # fixed
    boundary_share: float = 0.0
    share_every: int = 10  # recompute lambda every N measurements, i.e. flow updates (the running average: every one)
    share_momentum: float = 0.9  # running-average momentum of the gradient-norm ratio
    # how the running average of the ratio is taken: "mean" (arithmetic; spike steps dominate it, so the typical
    # step's share ends far below the target: median 0.034 against 0.25 in the 5,400-step run at temperature 1.3)
    # or "log" (geometric: the typical step sits near the target; `BoundaryShareController`)
    share_average: str = "mean"
    lambda_range: tuple[float, float] = (1e-4, 1e3)  # clamp of the adapted lambda
    flow_lr: float = 1e-5
    flow_optim: FlowOptimConfig = field(default_factory=FlowOptimConfig)  # recipe adam | thesis (flow_optim.py)
    mle_every: int = 1  # accumulate L_mle on the replaced patches every N steps
    # train the flow on every N-th joint step (those whose count of done steps is a multiple of N): there its
    # samples carry gradients and L(zeta) (4.20) steps the flow's optimizer; on the other steps fresh samples are
    # drawn without gradients and the segmenter trains on them as always. 1 = every step (thesis). A CPU
    # trade-off (issue 14; `densehybrid-bench train --modes joint`, cpu-m, 2 cores): a step that trains the flow
    # takes ~7.2 s, one that only draws samples ~2.7 s (the flow's backward and L_mle are the difference)
    flow_every: int = 1
    # normalisation of the coupling nets' BatchNorm in L_mle: 'batch' (statistics of the replaced patches, as in
    # pretraining; they also update the running statistics) or 'running' (the pretrained running statistics,
    # frozen: the density whose likelihood is trained is exactly the one the samples are drawn from)
    mle_norm: str = "batch"
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
        for name, allowed in (("source", SOURCES), ("shape", SHAPES), ("sizes", SIZES), ("mle_norm", MLE_NORMS),
                              ("boundary", ("jsd", "detector")), ("side_scale", SIDE_SCALES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.jsd_weight < 0 or self.flow_lr <= 0 or self.temperature < 0 or self.mle_every < 1:
            raise ValueError("jsd_weight >= 0, flow_lr > 0, temperature >= 0 and mle_every >= 1 are required")
        if not 0.0 <= self.ground_prob <= 1.0:
            raise ValueError(f"ground_prob must be in [0, 1], got {self.ground_prob}")
        if self.diagnostics_every < 0:
            raise ValueError(f"diagnostics_every must be >= 0 (0 = off), got {self.diagnostics_every}")
        if not 0.0 < self.sample_scale <= 1.0:
            raise ValueError(f"sample_scale must be in (0, 1], got {self.sample_scale}")
        if self.flow_every < 1:
            raise ValueError(f"flow_every must be >= 1, got {self.flow_every}")
        if self.flow_every > 1 and self.mle_every > 1:
            raise ValueError(f"flow_every ({self.flow_every}) and mle_every ({self.mle_every}) cannot both exceed 1: "
                             "the steps that train the flow would skip L_mle in a pattern neither names")
        if self.source == "flow" and self.diagnostics_every % self.flow_every:
            raise ValueError(f"diagnostics_every ({self.diagnostics_every}) must be a multiple of flow_every "
                             f"({self.flow_every}): diagnostics are taken on steps that train the flow")
        if self.boundary_share < 0:
            raise ValueError(f"boundary_share must be >= 0 (0 = fixed lambda), got {self.boundary_share}")
        if self.share_every < 1 or not 0.0 <= self.share_momentum < 1.0:
            raise ValueError(f"share_every must be >= 1 and share_momentum in [0, 1), got {self.share_every} and "
                             f"{self.share_momentum}")
        if self.share_average not in SHARE_AVERAGES:
            raise ValueError(f"share_average must be one of {SHARE_AVERAGES}, got {self.share_average!r}")
        if not 0 < self.lambda_range[0] <= self.lambda_range[1]:
            raise ValueError(f"lambda_range must satisfy 0 < lo <= hi, got {self.lambda_range}")
        if self.boundary_share > 0 and not self.lambda_range[0] <= self.jsd_weight <= self.lambda_range[1]:
            raise ValueError(f"jsd_weight {self.jsd_weight} (the starting lambda) lies outside lambda_range "
                             f"{self.lambda_range}")
        self.flow_optim.validate()
        if self.flow_optim.finetune_steps:
            raise ValueError("flow_optim.finetune_steps is for flow pretraining; joint training runs at flow_lr")


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


def flow_mle_loss(flow, patches) -> torch.Tensor:
    """L_mle (4.18) per dimension: mean over images of each inlier patch's NLL in bits/dim (patches in [0, 1],
    sides multiples of the flow's size multiple).

    `patches`: one (N, 3, h, w) batch, or a list of (3, h_i, w_i) patches of different sizes (per-image sample
    sizes); patches of one size go through the flow together (BatchNorm in train mode sees them as one batch),
    and every image weighs the same whatever its size.

    Units: the thesis writes L_mle as the image-wide NLL -E[ln p(crop)] (nats per crop). Per dimension
    (bits/dim = nats / (C h w ln 2)) keeps the gradient scale independent of the patch size, which varies 64x
    between 16x16 and 128x128 samples; lambda of (4.20) is then chosen against this unit (issue 14 measurements,
    `SyntheticConfig.boundary_share`)."""
    if isinstance(patches, torch.Tensor):
        return flow.bits_per_dim(patches).mean()
    groups: dict[tuple[int, int], list[int]] = {}
    for i, patch in enumerate(patches):
        groups.setdefault(tuple(patch.shape[-2:]), []).append(i)
    total = None
    for indices in groups.values():
        bpd = flow.bits_per_dim(torch.stack([patches[i] for i in indices])).sum()
        total = bpd if total is None else total + bpd
    return total / len(patches)


def sample_size(height: int, width: int, scale: float, multiple: int) -> tuple[int, int]:
    """The size a flow draws a negative of height x width at (`SyntheticConfig.sample_scale`): `scale` of each side,
    rounded to the flow's size multiple, at least one multiple; the size itself at scale 1 (sides multiples of it)."""
    return (max(multiple, multiple * int(height * scale / multiple + 0.5)),
            max(multiple, multiple * int(width * scale / multiple + 0.5)))


def upsample_samples(samples: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Samples (N, 3, h, w) bilinearly upsampled to height x width (half-pixel centres); unchanged at that size."""
    if tuple(samples.shape[-2:]) == (height, width):
        return samples
    return F.interpolate(samples, size=(height, width), mode="bilinear", align_corners=False)


def saturated_count(samples: torch.Tensor) -> tuple[int, int]:
    """(values at exactly 0 or 1, all values) of flow samples (`DenseFlow.sample`, before upsampling). There the
    sampler's final clamp is active, so no gradient of the boundary term (4.19) reaches the flow through them. With
    the sim flow's pretrained samples, 0.2% of the values at temperature 1, 37% at 1.2 and all at 1.5 are (README)."""
    s = samples.detach()
    return int(((s <= 0) | (s >= 1)).sum()), s.numel()


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


def sample_grid(samples, columns: int = 8, gap: int = 2) -> np.ndarray:
    """Samples in [0, 1], a (N, 3, h, w) batch or a list of (3, h_i, w_i) tiles of any sizes -> one uint8
    (rows, cols, 3) RGB image, `columns` per row, each tile at the top left of a cell of the largest size,
    cells `gap` px apart (black elsewhere)."""
    tiles = [t.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() for t in samples]
    n = len(tiles)
    h, w = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
    cols = min(columns, n)
    rows = -(-n // cols)
    grid = np.zeros((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), np.float32)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[r * (h + gap) : r * (h + gap) + t.shape[0], c * (w + gap) : c * (w + gap) + t.shape[1]] = t
    return (grid * 255).round().astype(np.uint8)


class JointDiagnostics:
    """Writes the joint-training diagnostics of `JointFlowTraining.diagnostics` to OUT/joint_diagnostics.csv
    (appended across resumes), TensorBoard (OUT/tensorboard, tags diag/*, image diag/pasted) and
    OUT/pasted/step_NNNNNNN.png."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.csv = self.out / "joint_diagnostics.csv"
        self._columns: list[str] | None = None
        self._writer = None

    def write(self, step: int, row: dict[str, float], samples: torch.Tensor | None) -> None:
        import cv2
        from torch.utils.tensorboard import SummaryWriter

        self.out.mkdir(parents=True, exist_ok=True)
        if self._columns is None or not set(row) <= set(self._columns):  # the file is read once, not per write
            self._columns = self._reconcile(["step", *row])
        with self.csv.open("a", newline="") as f:
            csv.DictWriter(f, self._columns, restval="").writerow(
                {"step": step, **{k: f"{v:.6g}" for k, v in row.items()}})
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

    def _reconcile(self, columns: list[str]) -> list[str]:
        """The CSV's columns for rows with `columns`: the file's header, extended (and the file rewritten under
        one header) when a run resumed by a version that logs other columns; a new file gets `columns`."""
        if not self.csv.is_file():
            self._rewrite([], columns)
            return columns
        with self.csv.open(newline="") as f:
            reader = csv.DictReader(f)
            old = list(reader)
            header = list(reader.fieldnames or columns)
        if header != columns:
            header += [c for c in columns if c not in header]
            self._rewrite(old, header)
        return header

    def _rewrite(self, rows: list[dict], columns: list[str]) -> None:
        tmp = self.csv.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, columns, restval="")
            w.writeheader()
            w.writerows(rows)
        tmp.replace(self.csv)


def sample_side(rng: np.random.Generator, lo: int, hi: int, limit: int) -> int:
    return int(rng.choice(np.arange(lo, min(hi, limit) + 1, 8)))


BLOB_HARMONICS = (2, 3, 4, 5)  # angular frequencies of the blob outline (no k = 1: the blob stays centred)
BLOB_ROUGHNESS = 0.35  # a_k ~ U(0, roughness / k): sum a_k <= 0.45, so r(theta) >= 0.55 > 0


def blob_mask_from(height: int, width: int, amplitudes, phases, harmonics=BLOB_HARMONICS) -> np.ndarray:
    """A smooth star-shaped mask inscribed in a ``height x width`` frame (bool, (height, width)).

    With pixel centres in frame-normalised coordinates ``u = (col + 0.5 - W/2) / (W/2)``, ``v = (row + 0.5 - H/2) /
    (H/2)``, polar ``rho = sqrt(u^2 + v^2)``, ``theta = atan2(v, u)``, a pixel is inside iff

        rho <= r(theta) / max_phi r(phi),   r(theta) = 1 + sum_k a_k cos(k theta + phi_k),

    so the outline is a smooth closed curve reaching the frame's inscribed ellipse in its widest direction, every
    ray from the centre crosses it once (one component, no holes), and all ``a_k = 0`` gives the inscribed ellipse
    ``u^2 + v^2 <= 1`` (area ~ pi/4 of the frame). ``max r`` is taken over 720 angles."""
    amplitudes = np.asarray(amplitudes, np.float64)
    phases = np.asarray(phases, np.float64)
    k = np.asarray(harmonics, np.float64)
    if amplitudes.shape != k.shape or phases.shape != k.shape:
        raise ValueError(f"need one amplitude and phase per harmonic {tuple(harmonics)}")

    def radius(theta: np.ndarray) -> np.ndarray:
        return 1.0 + (amplitudes * np.cos(np.multiply.outer(theta, k) + phases)).sum(-1)

    if radius(np.linspace(0, 2 * np.pi, 720, endpoint=False)).min() <= 0:
        raise ValueError("blob radius must stay positive: sum of amplitudes < 1")
    r_max = radius(np.linspace(0, 2 * np.pi, 720, endpoint=False)).max()
    v = (np.arange(height) + 0.5 - height / 2) / (height / 2)
    u = (np.arange(width) + 0.5 - width / 2) / (width / 2)
    vv, uu = np.meshgrid(v, u, indexing="ij")
    return np.hypot(uu, vv) <= radius(np.arctan2(vv, uu)) / r_max


def blob_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random object-like mask for a synthetic negative (`blob_mask_from` with ``a_k ~ U(0, 0.35 / k)`` and
    uniform phases): the real negatives are object masks half of the time (public recipe), and a user without
    negative data has no object masks to borrow, so the shapes are random smooth blobs."""
    k = np.asarray(BLOB_HARMONICS, np.float64)
    amplitudes = rng.uniform(0.0, BLOB_ROUGHNESS / k)
    phases = rng.uniform(0.0, 2 * np.pi, size=k.shape)
    return blob_mask_from(height, width, amplitudes, phases)


def paste_synthetic(x01: torch.Tensor, labels: torch.Tensor, d_out: torch.Tensor, sample: torch.Tensor,
                    top: int, left: int, mask: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paste (4.17) of a (differentiable) sample (3, h, w) into image `x01` (3, H, W, values in [0, 1]) at
    (top, left), where `mask` (h, w, bool; None = the whole rectangle) is true; returns the mixed image, labels
    (void on pasted pixels), d_out (true on pasted pixels) and the replaced inlier patch crop(x+, m) of (4.18):
    the image's content under the sample's whole h x w frame (the flow scores rectangles)."""
    _, h, w = sample.shape
    replaced = x01[:, top : top + h, left : left + w].clone()
    region = (torch.ones((h, w), dtype=torch.bool, device=x01.device) if mask is None
              else mask.to(x01.device, torch.bool))
    out = x01.clone()
    out[:, top : top + h, left : left + w] = torch.where(region, sample.to(x01.dtype), replaced)
    lab = labels.clone()
    lab[top : top + h, left : left + w] = lab[top : top + h, left : left + w].masked_fill(region, VOID)
    dout = d_out.clone()
    dout[top : top + h, left : left + w] |= region
    return out, lab, dout, replaced


def route_gradients(seg_loss: torch.Tensor, flow_loss: torch.Tensor, seg_params: list, flow_params: list) -> None:
    """Accumulate d seg_loss / d segmenter and d flow_loss / d flow, nothing else (4.16 vs 4.20)."""
    seg_loss.backward(inputs=seg_params, retain_graph=True)
    flow_loss.backward(inputs=flow_params)


def _grads(loss: torch.Tensor | None, params: list, retain: bool = False) -> list[torch.Tensor | None]:
    if loss is None or not loss.requires_grad:
        return [None] * len(params)
    return list(torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True))


def _norm(grads: list[torch.Tensor | None]) -> float:
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads if g is not None))


SHARE_AVERAGES = ("mean", "log")  # running averages BoundaryShareController offers


class BoundaryShareController:
    """lambda of (4.20) that keeps the boundary term's share of the flow gradient at a target (issue 14):

        r_t = ||d L_boundary / d zeta|| / ||d L_mle / d zeta||        (one step's ratio, over all flow parameters)
        lambda = clamp(target / avg(r), lambda_range)

    with an exponential running average of r (momentum `momentum`, the first measurement initialises it), updated at
    every measurement: arithmetic (`average` "mean") or geometric ("log": the running average of ln r, so that
    lambda * r_t sits near the target on a typical step even when r_t is heavy-tailed); lambda is recomputed at the
    first measurement and then every `every` measurements, so the per-step shares lambda * r_t that the diagnostics
    report (`boundary_grad_share`) sit at the target on average where r_t varies moderately: ~15x at temperature 1
    (0.02-0.31). Each r_t enters the average clipped to [avg / SPIKE, avg * SPIKE]: one exploding step (r = 1e6 at
    temperature 1.5) would otherwise pin lambda to its floor for hundreds of steps. The applied gradient is not
    clipped per term, only as a whole (`FLOW_GRAD_CLIP`), so with the arithmetic average a heavy-tailed r_t leaves
    most steps below the target and a few far above it (temperature 1.5, 800-step val pilot: per-step share median
    0.014, mean 8.7; temperature 1.3, 5,400 steps: median 0.034). Measurements without both gradients (no L_mle
    this step, or no generated pixels) are skipped."""

    SPIKE = 10.0

    def __init__(self, target: float, every: int, momentum: float, lam: float, lam_range: tuple[float, float],
                 average: str = "mean"):
        if average not in SHARE_AVERAGES:
            raise ValueError(f"average must be one of {SHARE_AVERAGES}, got {average!r}")
        self.target, self.every, self.momentum, self.average = target, every, momentum, average
        self.lam, self.lam_range = lam, lam_range
        self.avg_ratio: float | None = None
        self.count = 0

    def update(self, norm_boundary: float, norm_mle: float) -> float:
        if not (norm_boundary > 0 and norm_mle > 0 and math.isfinite(norm_boundary) and math.isfinite(norm_mle)):
            return self.lam
        ratio = norm_boundary / norm_mle
        if self.avg_ratio is None:
            self.avg_ratio = ratio
        else:
            ratio = min(self.avg_ratio * self.SPIKE, max(self.avg_ratio / self.SPIKE, ratio))
            if self.average == "log":
                self.avg_ratio = self.avg_ratio ** self.momentum * ratio ** (1 - self.momentum)
            else:
                self.avg_ratio = self.momentum * self.avg_ratio + (1 - self.momentum) * ratio
        self.count += 1
        if (self.count - 1) % self.every == 0:
            lo, hi = self.lam_range
            self.lam = min(hi, max(lo, self.target / self.avg_ratio))
        return self.lam

    def state_dict(self) -> dict:
        return {"lam": self.lam, "avg_ratio": self.avg_ratio, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.lam, self.avg_ratio, self.count = state["lam"], state["avg_ratio"], int(state["count"])


class JointFlowTraining:
    """The negative side of SynDenseHybrid fine-tuning: pastes negatives into a batch; with source 'flow' it also
    owns the flow and its optimizer (separate from the segmenter's) and routes the flow's gradients (see module
    doc). The controls (source 'uniform' or 'inlier_crops', thesis Tab. 6.11) go through the same sizes, shapes,
    paste and segmenter loss with no flow (`flow` may be None)."""

    def __init__(self, flow, cfg: SyntheticConfig, mean, std, seed: int, device: torch.device,
                 epoch_steps: int = 0, ground_ids: tuple[int, ...] = ()) -> None:
        cfg.validate()
        if cfg.ground_prob > 0 and not ground_ids:
            raise ValueError("synthetic.ground_prob > 0 needs the ground's class ids (data.negative_ground_classes)")
        self.cfg = cfg
        self.ground_ids = tuple(ground_ids)
        self.flow = self.optimizer = self.scheduler = self.share = None
        self.multiple = 8
        if cfg.source == "flow":
            if flow is None:
                raise ValueError("synthetic.source 'flow' needs a flow (synthetic.flow_checkpoint)")
            self.flow = flow.to(device).train()
            self.optimizer, self.scheduler = build_flow_optimizer(self.flow.parameters(), cfg.flow_lr,
                                                                  cfg.flow_optim, "joint", epoch_steps=epoch_steps)
            self.multiple = flow.size_multiple
            if cfg.boundary_share > 0:
                self.share = BoundaryShareController(cfg.boundary_share, cfg.share_every, cfg.share_momentum,
                                                     cfg.jsd_weight, cfg.lambda_range, cfg.share_average)
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.seed = seed
        self.last_samples: list[torch.Tensor] | None = None  # what the latest `mix` pasted, one tile per image
        self.last_pixels: torch.Tensor | None = None  # (3, n): the values of every pasted pixel of the latest `mix`
        self.last_norms: dict[str, float] = {}  # gradient norms of the latest `backward_flow` (adaptive lambda)
        self._saturated = [0, 0]  # saturated_count of the flow samples drawn by the latest `mix`
        self.log: JointDiagnostics | None = None  # opened by the training loop when diagnostics are on

    @property
    def jsd_weight(self) -> float:
        """lambda of (4.20) in force: fixed `cfg.jsd_weight`, or the `BoundaryShareController`'s."""
        return self.cfg.jsd_weight if self.share is None else self.share.lam

    def diagnostics_due(self, done: int) -> bool:
        return self.cfg.diagnostics_every > 0 and done % self.cfg.diagnostics_every == 0

    def trains_flow(self, step: int) -> bool:
        """Whether joint step `step` (0-based) trains the flow: every `flow_every`-th one, with a flow."""
        return self.flow is not None and (step + 1) % self.cfg.flow_every == 0

    def sample(self, num: int, height: int, width: int) -> torch.Tensor:
        """Differentiable flow samples (3.7) drawn with eval-mode normalisation (`eval_mode`): BatchNorm uses its
        running statistics, not those of the generated batch, and sampling never changes them; gradients of
        L_jsd (4.19) still reach the flow's parameters through the samples."""
        with eval_mode(self.flow):
            return self.flow.sample(num, height, width, self.cfg.temperature)

    def flow_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the flow samples a negative of height x width at (`sample_size` at `sample_scale`)."""
        return sample_size(height, width, self.cfg.sample_scale, self.multiple)

    def _flow_negatives(self, num: int, height: int, width: int) -> torch.Tensor:
        """`num` flow samples drawn at `flow_size` and upsampled to height x width (`upsample_samples`); their
        saturated values are counted for the diagnostics (`saturated_count`)."""
        samples = self.sample(num, *self.flow_size(height, width))
        self._saturated = [a + b for a, b in zip(self._saturated, saturated_count(samples))]
        return upsample_samples(samples, height, width)

    def diagnostics(self, logits: torch.Tensor, labels: torch.Tensor, d_out: torch.Tensor, synthetic: torch.Tensor,
                    flow_terms: dict[str, torch.Tensor]) -> dict[str, float]:
        """One step's diagnostics (issue 14): lambda, the boundary term's share of the flow gradient
        (`flow_gradient_norms`; NaN without a flow), L_mle (bits/dim of the replaced inlier patches), JSD-to-uniform
        and max softmax on pasted vs inlier (not void, not negative) pixels (`masked_confidence`), per-channel
        mean/std of the pasted pixels in [0, 1], and the share of the flow's sample values saturated at 0 or 1
        (`saturated_count`; NaN for the controls)."""
        if self.flow is not None:
            boundary = self.jsd_weight * flow_terms[self.cfg.boundary]
            row = flow_gradient_norms(boundary, flow_terms.get("mle_bpd"), list(self.flow.parameters()))
        else:
            row = {"grad_norm_boundary": math.nan, "grad_norm_mle": math.nan, "boundary_grad_share": math.nan}
        row["jsd_weight"] = self.jsd_weight if self.flow is not None else math.nan
        mle = flow_terms.get("mle_bpd")
        row["mle_bpd"] = math.nan if mle is None else float(mle.detach())  # inlier bits/dim of the replaced patches
        inlier = ~d_out & (labels != VOID)
        for name, mask in (("synthetic", synthetic), ("inlier", inlier)):
            for key, value in masked_confidence(logits, mask).items():
                row[f"{key}_{name}"] = value
        saturated, total = self._saturated
        row["sample_saturated"] = saturated / total if total else math.nan  # no gradient through these (clamp)
        s = self.last_pixels
        for c, channel in enumerate("rgb"):
            row[f"sample_mean_{channel}"] = math.nan if s is None else float(s[c].mean())
            row[f"sample_std_{channel}"] = math.nan if s is None else float(s[c].std())
        return row

    def state_dict(self) -> dict:
        if self.flow is None:
            return {}
        state = {"flow": self.flow.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict()}
        if self.share is not None:
            state["share"] = self.share.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if self.flow is None:
            return
        self.flow.load_state_dict(state["flow"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "scheduler" in state:  # checkpoints from before the flow had a schedule: constant lr
            self.scheduler.load_state_dict(state["scheduler"])
        if self.share is not None and "share" in state:
            self.share.load_state_dict(state["share"])

    def _draw_size(self, rng: np.random.Generator, H: int, W: int) -> tuple[int, int]:
        lo, hi = self.cfg.side_range
        m = self.multiple
        if self.cfg.side_scale == "log":
            lo = -(-max(lo, m) // m) * m  # the flow's multiple (8 or 16) may not divide side_range's 8-px steps
            return (random_side(rng, lo, min(hi - hi % m, H - H % m), "log", m),
                    random_side(rng, lo, min(hi - hi % m, W - W % m), "log", m))
        return sample_side(rng, max(lo, m), hi, H - H % m), sample_side(rng, max(lo, m), hi, W - W % m)

    def _position(self, rng: np.random.Generator, labels: torch.Tensor, mask: torch.Tensor | None, h: int,
                  w: int) -> tuple[int, int]:
        """Where a negative of h x w (`mask`, None = the whole rectangle) goes in an image with `labels`: on the
        ground with probability `ground_prob` (`paste.ground_position`), else (or without ground pixels) uniform."""
        H, W = labels.shape
        if rng.random() < self.cfg.ground_prob:
            ground = np.isin(labels.cpu().numpy(), self.ground_ids)
            region = np.ones((h, w), bool) if mask is None else mask.cpu().numpy()
            position = ground_position(rng, ground, region)
            if position is not None:
                return position
        return int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))

    def _content(self, sizes: list[tuple[int, int]], x01: torch.Tensor, todo: list[int],
                 rng: np.random.Generator) -> list[torch.Tensor]:
        """One negative (3, h, w) in [0, 1] per image of `todo`: flow samples, uniform noise, or a crop of another
        inlier image of the batch (the same image, elsewhere, in a batch of one)."""
        if self.cfg.source == "flow":
            if len(set(sizes)) == 1 and self.cfg.sizes == "batch":
                return list(self._flow_negatives(len(todo), *sizes[0]).unbind(0))
            return [self._flow_negatives(1, h, w)[0] for h, w in sizes]
        if self.cfg.source == "uniform":
            return [torch.from_numpy(rng.random((3, h, w), dtype=np.float32)).to(x01.device, x01.dtype)
                    for h, w in sizes]
        n, _, H, W = x01.shape
        out = []
        for i, (h, w) in zip(todo, sizes):
            others = [j for j in range(n) if j != i] or [i]
            j = others[int(rng.integers(len(others)))]
            top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
            out.append(x01[j, :, top : top + h, left : left + w].detach().clone())
        return out

    def mix(self, x: torch.Tensor, labels: torch.Tensor, d_out: torch.Tensor, step: int):
        """Paste one negative into every image that has no real negative; returns (mixed x, labels, d_out,
        synthetic mask, replaced inlier patches or None). Sizes (`cfg.sizes`), positions, shapes (`cfg.shape`) and
        the controls' content come from a generator seeded by (seed, step); flow samples from torch's RNG.
        Replaced patches (source 'flow' only): one (N, 3, h, w) batch with one size per batch, else a list."""
        rng = np.random.default_rng([self.seed, 104729, step])
        self._saturated = [0, 0]
        todo = [i for i in range(x.shape[0]) if not bool(d_out[i].any())]
        synthetic = torch.zeros_like(d_out)
        if not todo:
            self.last_samples = self.last_pixels = None
            return x, labels, d_out, synthetic, None
        H, W = labels.shape[-2:]
        if self.cfg.sizes == "batch":
            sizes = [self._draw_size(rng, H, W)] * len(todo)
        else:
            sizes = [self._draw_size(rng, H, W) for _ in todo]
        x01 = x * self.std + self.mean
        samples = None
        if self.cfg.source == "flow":  # drawn before the shapes: the latents come from torch's RNG, in this order
            with contextlib.nullcontext() if self.trains_flow(step) else torch.no_grad():
                samples = self._content(sizes, x01, todo, rng)
        grounded = self.cfg.ground_prob > 0
        if not grounded:  # the public code's draw order: all positions, then all shapes
            positions = [(int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))) for h, w in sizes]
        masks = []
        for h, w in sizes:
            blob = self.cfg.shape == "blob" or (self.cfg.shape == "mixed" and rng.random() < MIXED_BLOB_PROB)
            masks.append(torch.from_numpy(blob_mask(rng, h, w)).to(x.device) if blob else None)
        if grounded:  # a grounded position depends on the shape (its lowest row stands on the ground)
            positions = [self._position(rng, labels[i], masks[k], *sizes[k]) for k, i in enumerate(todo)]
        if samples is None:
            samples = self._content(sizes, x01, todo, rng)
        rows, labs, douts, replaced, tiles, pixels = [], [], [], [], [], []
        for i in range(x.shape[0]):
            if i in todo:
                k = todo.index(i)
                xi, li, di, ri = paste_synthetic(x01[i], labels[i], d_out[i], samples[k], *positions[k], masks[k])
                synthetic[i] = di & ~d_out[i]
                rows.append(xi), labs.append(li), douts.append(di), replaced.append(ri)
                s = samples[k].detach()
                tiles.append(s if masks[k] is None else s * masks[k])
                pixels.append(s.reshape(3, -1) if masks[k] is None else s[:, masks[k]])
            else:
                rows.append(x01[i]), labs.append(labels[i]), douts.append(d_out[i])
        self.last_samples, self.last_pixels = tiles, torch.cat(pixels, dim=1)
        mixed = (torch.stack(rows) - self.mean) / self.std
        if self.cfg.source != "flow":
            patches = None
        elif self.cfg.sizes == "batch":
            patches = torch.stack(replaced)
        else:
            patches = replaced
        return mixed, torch.stack(labs), torch.stack(douts), synthetic, patches

    def flow_loss(self, logits: torch.Tensor, synthetic: torch.Tensor, replaced, step: int,
                  inlier_logit: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """L(zeta) = L_mle + lambda * L_jsd (4.20); with boundary='detector', lambda * (L_d + L_x^UB) instead.
        Empty without a flow (the controls train no generator) and on steps that do not train it (`flow_every`)."""
        if not self.trains_flow(step):
            return {}
        if self.cfg.boundary == "jsd":
            terms = {"jsd": jsd_to_uniform(logits, synthetic)}
        else:
            if inlier_logit is None:
                raise ValueError("boundary='detector' needs the segmenter's inlier logit")
            terms = {"detector": detector_boundary_loss(logits, inlier_logit, synthetic)}
        total = self.jsd_weight * next(iter(terms.values()))
        if replaced is not None and step % self.cfg.mle_every == 0:
            # un-normalising can leave values a rounding error outside [0, 1]
            patches = (self._to_flow_size(replaced.detach().clamp(0.0, 1.0)) if isinstance(replaced, torch.Tensor)
                       else [self._to_flow_size(p.detach().clamp(0.0, 1.0)[None])[0] for p in replaced])
            with eval_mode(self.flow) if self.cfg.mle_norm == "running" else contextlib.nullcontext():
                terms["mle_bpd"] = flow_mle_loss(self.flow, patches)
            total = total + terms["mle_bpd"]
        terms["flow_total"] = total
        return terms

    def _to_flow_size(self, patches: torch.Tensor) -> torch.Tensor:
        """Replaced inlier patches (N, 3, h, w) area-downsampled to the size their samples were drawn at."""
        size = self.flow_size(*patches.shape[-2:])
        return patches if size == tuple(patches.shape[-2:]) else F.interpolate(patches, size=size, mode="area")

    def backward_flow(self, flow_terms: dict[str, torch.Tensor]) -> None:
        """Accumulate d flow_total / d zeta into the flow's `.grad` (the flow half of `route_gradients`; call after
        the segmenter's backward with retain_graph). With `boundary_share` the two terms' gradients are taken apart
        (`torch.autograd.grad`: their graphs share only the parameters, so this costs what one backward does),
        summed as lambda * g_boundary + g_mle with the lambda of `flow_total`, and their norms update lambda for the
        next steps (`BoundaryShareController`)."""
        params = list(self.flow.parameters())
        if self.share is None:
            flow_terms["flow_total"].backward(inputs=params)
            return
        lam = self.jsd_weight
        g_b = _grads(flow_terms[self.cfg.boundary], params)
        g_m = _grads(flow_terms.get("mle_bpd"), params)
        for p, b, m in zip(params, g_b, g_m):
            parts = [t for t in (None if b is None else lam * b, m) if t is not None]
            if parts:
                g = parts[0] if len(parts) == 1 else parts[0] + parts[1]
                p.grad = g if p.grad is None else p.grad + g
        nb, nm = _norm(g_b), (_norm(g_m) if "mle_bpd" in flow_terms else math.nan)
        self.last_norms = {"grad_norm_boundary_unit": nb, "grad_norm_mle": nm, "lambda_used": lam}
        self.share.update(nb, nm)

    def step(self) -> None:
        """One flow optimizer step on the accumulated gradient, its norm clipped to `FLOW_GRAD_CLIP` as in
        pretraining."""
        if self.flow is None:
            return
        torch.nn.utils.clip_grad_norm_(self.flow.parameters(), FLOW_GRAD_CLIP)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
