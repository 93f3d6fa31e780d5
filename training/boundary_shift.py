"""Did the flow itself move its samples towards the boundary of the inlier distribution? (issue 14)

The joint-training diagnostics (`JointDiagnostics`) log the segmenter's JSD-to-uniform (4.19) on the samples it is
being trained on, so a falling curve mixes two learners: the flow moving its samples, and the segmenter learning to
be unsure of whatever is pasted (it falls with uniform noise too). This check holds the segmenter fixed: the same
latents are decoded by each flow (pretrained, jointly trained), pasted as `size` x `size` squares into the same
held-out frames at the same places, and scored by each given segmenter; uniform noise is the reference. A lower
JSD-to-uniform under the same segmenter means the flow's samples moved towards its decision boundary.

    densehybrid-train flow-shift --flow pretrained=runs/flow/checkpoints/last.pt \\
        --joint runs/joint/checkpoints/last.pt --weights closed.safetensors --weights joint.safetensors \\
        --dataset sim:data/sim_val_big --images 48 --out shift.json
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from densehybrid_ros.predictor import Predictor
from densehybrid_training.checkpoint import load_checkpoint
from densehybrid_training.flow.model import DenseFlow
from densehybrid_training.flow_train import load_flow
from densehybrid_training.synthetic import (eval_mode, jsd_to_uniform, sample_size, saturated_count,
                                            upsample_samples)

UNIFORM = "uniform"


@dataclass(frozen=True)
class ShiftRow:
    segmenter: str
    source: str  # a flow's name, or 'uniform'
    jsd: float  # mean over frames of the JSD-to-uniform on the pasted pixels (nats, ln 2 at most)
    jsd_ci: float  # half-width of its 95% normal interval over frames
    max_softmax: float  # mean over frames of the mean max softmax on the pasted pixels


def load_joint_flow(checkpoint: str | Path) -> DenseFlow:
    """The flow of a SynDenseHybrid fine-tuning checkpoint: the architecture of the pretrained flow its config names
    (`synthetic.flow_checkpoint`) with the jointly trained parameters the checkpoint holds."""
    state = load_checkpoint(Path(checkpoint))
    joint = (state.get("extra") or {}).get("joint") or {}
    if "flow" not in joint:
        raise ValueError(f"{checkpoint}: not a SynDenseHybrid fine-tuning checkpoint with a flow (extra.joint.flow)")
    pretrained = ((state.get("config") or {}).get("synthetic") or {}).get("flow_checkpoint")
    if not pretrained:
        raise ValueError(f"{checkpoint}: its config names no synthetic.flow_checkpoint")
    flow = load_flow(pretrained)
    flow.load_state_dict(joint["flow"])
    return flow


def relative_change(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """||theta_b - theta_a|| / ||theta_a|| over all parameters (relative L2)."""
    pa, pb = list(a.parameters()), list(b.parameters())
    if [p.shape for p in pa] != [p.shape for p in pb]:
        raise ValueError("the two flows have different architectures")
    with torch.no_grad():
        diff = sum(float(((x - y) ** 2).sum()) for x, y in zip(pa, pb))
        norm = sum(float((x ** 2).sum()) for x in pa)
    return math.sqrt(diff / norm)


def decode_samples(flow: DenseFlow, num: int, size: int, seed: int, temperature: float = 1.0,
                   sample_scale: float = 1.0) -> torch.Tensor:
    """`num` size x size samples in [0, 1] from fixed latents (seeded generator), with eval-mode normalisation as in
    joint training (`JointFlowTraining.sample`): two flows of one architecture decode the same latents. With
    `sample_scale` < 1 they are drawn smaller and upsampled, as joint training does (`synthetic.sample_scale`)."""
    return upsample_samples(_drawn(flow, num, size, seed, temperature, sample_scale), size, size).clamp(0, 1)


def _drawn(flow: DenseFlow, num: int, size: int, seed: int, temperature: float, sample_scale: float) -> torch.Tensor:
    """The samples `decode_samples` upsamples: drawn at `sample_size` from the seeded latents, eval-mode."""
    generator = torch.Generator().manual_seed(seed)
    small = sample_size(size, size, sample_scale, flow.size_multiple)
    with torch.no_grad(), eval_mode(flow):
        return flow.sample(num, *small, temperature, generator=generator)


def sample_saturation(flow: DenseFlow, num: int, size: int, seed: int, temperature: float = 1.0,
                      sample_scale: float = 1.0) -> float:
    """Share of the values of `decode_samples`' samples (the same latents, before upsampling) at exactly 0 or 1,
    where no gradient of the boundary term reaches the flow (`saturated_count`)."""
    saturated, total = saturated_count(_drawn(flow, num, size, seed, temperature, sample_scale))
    return saturated / total


def paste_squares(images: list[np.ndarray], samples: torch.Tensor, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames (H, W, 3 uint8) with sample k (in [0, 1], quantised to 8 bits like any camera frame) pasted into frame
    k at a seeded place in the lower half (where road anomalies are): (the pasted frames, (N, H, W) bool mask of the
    pasted pixels)."""
    size = samples.shape[-1]
    height, width = images[0].shape[:2]
    if height // 2 + size > height or size > width:
        raise ValueError(f"a {size}x{size} sample does not fit the lower half of a {width}x{height} frame")
    tiles = (samples * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    rng = np.random.default_rng(seed)
    out, mask = [], np.zeros((len(images), height, width), dtype=bool)
    for k, image in enumerate(images):
        if image.shape[:2] != (height, width):
            raise ValueError(f"frames of one size are needed, got {image.shape[:2]} and {(height, width)}")
        top = int(rng.integers(height // 2, height - size + 1))
        left = int(rng.integers(0, width - size + 1))
        pasted = image.copy()
        pasted[top : top + size, left : left + size] = tiles[k]
        mask[k, top : top + size, left : left + size] = True
        out.append(pasted)
    return out, mask


def segmenter_logits(predictor: Predictor, image: np.ndarray) -> torch.Tensor:
    """(1, K, H, W) class logits at the frame's size, through the Predictor's own preprocessing (resize to the
    weights' network grid, normalisation) and forward pass."""
    batch = predictor.preprocess([image])
    h, w = batch.network_sizes[0]
    logits = predictor.forward(batch).logits[:, :, :h, :w].float()
    return F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)


def boundary_shift(flows: dict[str, DenseFlow], segmenters: dict[str, Predictor], images: list[np.ndarray],
                   size: int = 64, seed: int = 0, temperature: float = 1.0,
                   sample_scale: float = 1.0) -> list[ShiftRow]:
    """JSD-to-uniform (4.19) and max softmax on pasted pixels, for every segmenter x (every flow, uniform noise):
    the same latents, frames and places for every source; every flow samples at `temperature` and `sample_scale`
    (`synthetic.temperature` and `synthetic.sample_scale` of joint training)."""
    n = len(images)
    sources = {name: decode_samples(flow, n, size, seed, temperature, sample_scale) for name, flow in flows.items()}
    sources[UNIFORM] = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    pasted = {source: paste_squares(images, samples, seed) for source, samples in sources.items()}
    rows = []
    for seg_name, predictor in segmenters.items():
        for source, (frames, masks) in pasted.items():
            jsd, top = [], []
            for frame, mask in zip(frames, masks):
                logits = segmenter_logits(predictor, frame)
                region = torch.from_numpy(mask)[None]
                jsd.append(float(jsd_to_uniform(logits, region)))
                top.append(float(logits.softmax(1).max(1).values[region].mean()))
            ci = 1.96 * float(np.std(jsd, ddof=1)) / math.sqrt(n) if n > 1 else math.nan
            rows.append(ShiftRow(seg_name, source, float(np.mean(jsd)), ci, float(np.mean(top))))
    return rows


def _named(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    return (name, path) if sep and name else (Path(text).stem, text)


def main(flow_args: list[str], joint: Path | None, weights: list[Path], dataset: str, split: str | None,
         images: int, size: int, seed: int, out: Path | None, temperature: float = 1.0,
         sample_scale: float = 1.0) -> int:
    """`densehybrid-train flow-shift`: prints one line per segmenter x source and writes them to `out` (JSON)."""
    import json

    from densehybrid_ros.datasets import open_dataset
    from densehybrid_ros.paths import written_whole

    if not 0.0 < sample_scale <= 1.0:
        raise ValueError(f"--sample-scale must be in (0, 1], got {sample_scale}")
    if images < 2:
        raise ValueError(f"--images must be >= 2 (an interval needs two frames), got {images}")
    flows = {name: load_flow(path) for name, path in map(_named, flow_args)}
    if joint is not None:
        flows["joint"] = load_joint_flow(joint)
    if not flows:
        raise ValueError("give at least one --flow NAME=CHECKPOINT or --joint CHECKPOINT")
    if not weights:
        raise ValueError("give at least one --weights W.safetensors (the segmenter that scores the samples)")
    data = open_dataset(dataset, split)
    if len(data) < images:
        raise ValueError(f"{dataset}: {len(data)} frames, fewer than --images {images}")
    picked = [data[int(i)].image for i in np.linspace(0, len(data) - 1, images).astype(int)]
    segmenters = {Path(w).stem: Predictor.from_weights(w) for w in weights}
    rows = boundary_shift(flows, segmenters, picked, size, seed, temperature, sample_scale)
    result = {"images": images, "size": size, "seed": seed, "temperature": temperature,
              "sample_scale": sample_scale, "dataset": dataset,
              "rows": [asdict(r) for r in rows]}
    result["saturated"] = {name: sample_saturation(flow, images, size, seed, temperature, sample_scale)
                           for name, flow in flows.items()}
    for name, share in result["saturated"].items():
        print(f"flow {name}: {100 * share:.1f}% of the sample values saturated at 0 or 1 (no gradient through them)")
    if "joint" in flows and len(flows) > 1:
        base = next(name for name in flows if name != "joint")
        result["parameter_change"] = {f"{base}->joint": relative_change(flows[base], flows["joint"])}
        print(f"flow parameters {base} -> joint: {result['parameter_change'][f'{base}->joint']:.4f} (relative L2)")
    for r in rows:
        print(f"{r.segmenter:<40} {r.source:<12} JSD-to-uniform {r.jsd:.3f} +- {r.jsd_ci:.3f}  "
              f"max softmax {r.max_softmax:.3f}")
    if out is not None:
        with written_whole(out) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=1) + "\n")
    return 0
