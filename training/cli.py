"""`densehybrid-train` (also `python -m densehybrid_training`): the offline training module.

    densehybrid-train segmenter --config C.yaml [--set key=value ...]      closed-set cross-entropy
    densehybrid-train finetune  --config C.yaml [--set key=value ...]      DenseHybrid with pasted negatives (4.16)
    densehybrid-train calibrate --weights W --dataset KIND:PATH --out W2 [--default-point P]   operating points
    densehybrid-train flow-pretrain --config F.yaml [--set key=value ...]  DenseFlow MLE on inlier crops
    densehybrid-train flow-eval --checkpoint C --out DIR [--config F.yaml]   bits/dim + sample grid
    densehybrid-train export    --checkpoint CKPT --out W.safetensors [--input-size 512x256] [--onnx W.onnx]
    densehybrid-train curves    --run OUT [--run OUT2 ...] --out curves.png     val mIoU and training loss
    densehybrid-train joint-curves --run OUT --out diag.png                      SynDenseHybrid diagnostics
    densehybrid-train flow-shift --flow NAME=C --joint CKPT --weights W --dataset KIND:PATH   the flow's own shift

Multi-process / multi-GPU: `torchrun --nproc_per_node N -m densehybrid_training segmenter --config C.yaml`.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from densehybrid_ros.config import ConfigError, load_yaml

if TYPE_CHECKING:  # imported where used: the CLI starts without torch
    from densehybrid_training.config import DataConfig
    from densehybrid_training.mixed import PasteOptions


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 512x256, got {text!r}") from None
    if w % 32 or h % 32 or w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"input size must be positive multiples of 32, got {w}x{h}")
    return w, h


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="densehybrid-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name, text in (("segmenter", "closed-set training"), ("finetune", "DenseHybrid fine-tuning with negatives")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", type=Path, default=None, help="YAML TrainConfig")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    for name, text in (("flow-pretrain", "DenseFlow MLE on random inlier crops"),):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", type=Path, default=None, help="YAML FlowTrainConfig")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    f = sub.add_parser("flow-eval", help="bits/dim (ELBO, IWBO) on held-out crops and a PNG grid of samples")
    f.add_argument("--checkpoint", type=Path, required=True)
    f.add_argument("--config", type=Path, default=None, help="YAML FlowTrainConfig (data to evaluate on)")
    f.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    f.add_argument("--images", type=int, default=64)
    f.add_argument("--k", type=int, default=16, help="importance samples of the IWBO")
    f.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("calibrate", help="operating points (TPR 95%%, FPR 1%%, FPR 0.5%%, best F1) written into the "
                                         "weights, one of them the node's default")
    c.add_argument("--weights", type=Path, required=True)
    c.add_argument("--dataset", required=True, help="held-out data with anomalies, KIND:PATH (e.g. sim:data/val)")
    c.add_argument("--split", default=None)
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--max-images", type=int, default=None)
    c.add_argument("--device", default="cpu")
    c.add_argument("--default-point", default="fpr1", choices=("tpr95", "fpr1", "fpr05", "f1"),
                   help="the point the node applies unless told otherwise (default fpr1)")
    c.add_argument("--class-bias", default="auto", choices=("auto", "tau", "none"),
                   help="auto (default): also choose the closed-set decision's class bias (-tau ln w, tau by mIoU on "
                        "the same data, then per-class offsets where they raise the mIoU of held-out streets) when "
                        "the weights were trained with class weights; tau: -tau ln w alone; none: write none")
    e = sub.add_parser("export", help="node weights from a training checkpoint")
    e.add_argument("--checkpoint", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--input-size", type=_size, default=None, help="WxH grid the node resizes frames to")
    e.add_argument("--onnx", type=Path, default=None)
    k = sub.add_parser("curves", help="learning curves (val mIoU from OUT/val.csv, loss from OUT/tensorboard)")
    k.add_argument("--run", dest="runs", type=Path, action="append", required=True,
                   help="a run's out directory; several are drawn one after another (closed-set, then fine-tuning)")
    k.add_argument("--out", type=Path, required=True, help="PNG")
    k.add_argument("--classes", default="", help="comma-separated classes whose val IoU is drawn too")
    k.add_argument("--window", type=int, default=20, help="moving average over this many logged losses")
    j = sub.add_parser("joint-curves", help="SynDenseHybrid diagnostics over joint training (OUT/joint_diagnostics."
                       "csv): JSD-to-uniform on samples vs inliers, inlier bits/dim, the boundary gradient's share")
    j.add_argument("--run", type=Path, required=True, help="a joint run's out directory")
    j.add_argument("--out", type=Path, required=True, help="PNG")
    j.add_argument("--edge", type=int, default=5, help="the printed first/last values average this many rows")
    s = sub.add_parser("flow-shift", help="the flow's own move towards the boundary, the segmenter held fixed: the "
                       "same latents from each flow (and uniform noise) pasted into the same frames, JSD-to-uniform "
                       "under each segmenter")
    s.add_argument("--flow", action="append", default=[], metavar="NAME=CHECKPOINT", help="a flow-pretrain checkpoint")
    s.add_argument("--joint", type=Path, default=None, help="a SynDenseHybrid fine-tuning checkpoint (its flow)")
    s.add_argument("--weights", type=Path, action="append", default=[], help="a segmenter that scores the samples")
    s.add_argument("--dataset", required=True, help="held-out frames, KIND:PATH (e.g. sim:data/sim_val_big)")
    s.add_argument("--split", default=None)
    s.add_argument("--images", type=int, default=48)
    s.add_argument("--size", type=int, default=64, help="side of the pasted square samples")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--temperature", type=float, default=1.0,
                   help="sampling temperature of every flow (synthetic.temperature of joint training)")
    s.add_argument("--sample-scale", type=float, default=1.0,
                   help="draw the samples at this fraction of --size and upsample them (synthetic.sample_scale)")
    s.add_argument("--out", type=Path, default=None, help="JSON")
    return ap


def build_model_and_dataset(command: str, cfg, require_init: bool = True):
    """The model (initialised per `cfg.init`) and the training dataset of a `segmenter`/`finetune` run.
    `require_init=False` lets a finetune model start from fresh weights (throughput benchmarks only)."""
    from densehybrid_ros.models import ModelConfig, build_model
    from densehybrid_ros.paths import model_config_path
    from densehybrid_ros.weights import Normalization, load_weights
    from densehybrid_training.checkpoint import load_checkpoint
    from densehybrid_training.data_setup import build_training_data
    from densehybrid_training.mixed import MixedContentDataset

    if command == "finetune" and not cfg.data.negatives and cfg.synthetic is None:
        raise ConfigError("finetune needs negatives: set data.negatives (ade20k, ade20k-full, coco, sim) and/or "
                          "synthetic (synthetic.flow_checkpoint: a flow-pretrain checkpoint, or synthetic.source: "
                          "uniform | inlier_crops)")
    inliers, negatives, augment = build_training_data(cfg.data, with_negatives=command == "finetune")
    classes = [{"name": n, "color": list(c)} for n, c in inliers.classes]
    arch = dataclasses.replace(load_yaml(ModelConfig, model_config_path(cfg.model)), num_classes=len(classes))
    import torch

    torch.manual_seed(cfg.seed)  # the same initial weights in every process of a run
    model = build_model(arch)
    if command == "segmenter" and cfg.init:
        from densehybrid_training.imagenet import load_imagenet_backbone, read_state_dict

        load_imagenet_backbone(model.segmenter.backbone, read_state_dict(cfg.init))
    if command == "finetune" and (cfg.init or require_init):
        if not cfg.init:
            raise ConfigError("finetune needs `init`: a closed-set checkpoint (.pt) or node weights (.safetensors)")
        if str(cfg.init).endswith(".safetensors"):
            loaded, init_meta = load_weights(cfg.init)
            state, init_mode = loaded.state_dict(), init_meta.provenance.get("mode")
        else:
            checkpoint = load_checkpoint(Path(cfg.init))
            state, init_mode = checkpoint["model"], checkpoint.get("config", {}).get("mode")
        # a closed-set run's inlier head was never trained: unless init_head, keep this model's fresh head
        parts = ("segmenter.", "inlier_head.") if cfg.init_head else ("segmenter.",)
        if cfg.init_head and init_mode != "finetune":
            raise ConfigError(f"init_head: init {cfg.init} is not a DenseHybrid fine-tuning (its mode is "
                              f"{init_mode!r}): its inlier head was never trained")
        missing = model.load_state_dict({k: v for k, v in state.items() if k.startswith(parts)}, strict=False)
        if missing.unexpected_keys or any(k.startswith(parts) for k in missing.missing_keys):
            raise ConfigError(f"init {cfg.init} does not match model {cfg.model} with {len(classes)} classes")
    norm = Normalization()
    # with a flow, an image gets a real negative with probability b = synthetic.real_prob (4.21)
    paste_prob = cfg.data.paste_prob if cfg.synthetic is None else cfg.synthetic.real_prob
    dataset = MixedContentDataset(inliers, augment, norm.mean, norm.std, cfg.seed, negatives, paste_prob,
                                  paste_options(cfg.data, [c["name"] for c in classes]))
    meta = {"architecture": dataclasses.asdict(arch), "classes": classes}
    return model, dataset, meta


def ground_class_ids(data: DataConfig, class_names: list[str]) -> tuple[int, ...]:
    """The ids of `data.negative_ground_classes` (the ground negatives may stand on) among the dataset's classes; a
    name the dataset lacks is a ConfigError."""
    unknown = [n for n in data.negative_ground_classes if n not in class_names]
    if unknown:
        raise ConfigError(f"data.negative_ground_classes: {unknown} not among the dataset's classes {class_names}")
    return tuple(class_names.index(n) for n in data.negative_ground_classes)


def joint_training(cfg, meta: dict, flow, device, epoch_steps: int = 0):
    """The negative side of a synthetic-negative fine-tuning (`synthetic.JointFlowTraining`) for `cfg`, its ground
    classes looked up in the dataset's classes (`meta`) when synthetic negatives may stand on the ground."""
    from densehybrid_ros.weights import Normalization
    from densehybrid_training.synthetic import JointFlowTraining

    norm = Normalization()
    ground_ids = (ground_class_ids(cfg.data, [c["name"] for c in meta["classes"]])
                  if cfg.synthetic.ground_prob > 0 else ())
    return JointFlowTraining(flow, cfg.synthetic, norm.mean, norm.std, cfg.seed, device, epoch_steps=epoch_steps,
                             ground_ids=ground_ids)


def paste_options(data: DataConfig, class_names: list[str]) -> PasteOptions:
    """The data config's pasting of real negatives, its ground classes looked up in the dataset's classes (a name
    the dataset lacks is a ConfigError when negatives may stand on the ground)."""
    from densehybrid_training.mixed import PasteOptions

    ground_ids = ground_class_ids(data, class_names) if data.negative_ground_prob > 0 else ()
    return PasteOptions(side=tuple(data.negative_side), side_scale=data.negative_side_scale,
                        per_image=data.negatives_per_image, ground_prob=data.negative_ground_prob,
                        ground_ids=ground_ids)


def run_training(command: str, config_path: Path | None, overrides: list[str], stop_after: int | None = None) -> Path:
    from densehybrid_training.config import load_train_config
    from densehybrid_training.engine import train

    from densehybrid_training.class_balance import class_weights, image_class_presence, repeat_factors

    cfg = load_train_config(config_path, [f"mode={command}"] + list(overrides))
    cfg.validate()
    if command == "finetune" and cfg.synthetic is not None and cfg.synthetic.source == "flow" \
            and not cfg.synthetic.flow_checkpoint:
        raise ConfigError("synthetic.flow_checkpoint: required with synthetic.source 'flow' (a flow-pretrain "
                          "checkpoint); the controls 'uniform' and 'inlier_crops' need none")
    model, dataset, meta = build_model_and_dataset(command, cfg)
    if cfg.class_balance != "none" and cfg.class_weights is None:
        cfg = dataclasses.replace(cfg, class_weights=tuple(class_weights(cfg.class_balance, dataset.inliers,
                                                                          model.num_classes)))
    image_weights = None
    if cfg.data.repeat_threshold > 0:
        presence = image_class_presence(dataset.inliers, model.num_classes)
        image_weights = repeat_factors(presence, cfg.data.repeat_threshold)
        print(f"repeat-factor sampling (t = {cfg.data.repeat_threshold:g}): {len(image_weights)} images, "
              f"{int((image_weights > 1).sum())} drawn more often (up to {image_weights.max():.2f}x)", flush=True)
    joint = None
    if command == "finetune" and cfg.synthetic is not None:
        from densehybrid_training.distributed import setup
        from densehybrid_training.flow_train import load_flow

        flow = load_flow(cfg.synthetic.flow_checkpoint) if cfg.synthetic.source == "flow" else None
        joint = joint_training(cfg, meta, flow, setup(cfg.device).device, epoch_steps=len(dataset) // cfg.batch_size)
    return train(cfg, model, dataset, meta, stop_after=stop_after, joint=joint, image_weights=image_weights)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("segmenter", "finetune"):
            last = run_training(args.command, args.config, args.overrides)
            print(f"checkpoint: {last}")
        elif args.command in ("flow-pretrain", "flow-eval"):
            from densehybrid_training.config import load_train_config
            from densehybrid_training.flow_train import FlowTrainConfig, evaluate_flow, pretrain

            fcfg = load_train_config(args.config, args.overrides, cls=FlowTrainConfig)
            if args.command == "flow-pretrain":
                print(f"checkpoint: {pretrain(fcfg)}")
            else:
                import json

                print(json.dumps(evaluate_flow(args.checkpoint, fcfg, args.images, args.k, args.out), indent=1))
        elif args.command == "calibrate":
            from densehybrid_training.calibrate import calibrate

            _, m = calibrate(args.weights, args.dataset, args.split, args.out, args.device, args.max_images,
                             default_point=args.default_point, class_bias=args.class_bias)
            print(f"AP {100 * m['ap']:.2f}, FPR95 {100 * m['fpr95']:.2f}, AUROC {100 * m['auroc']:.2f} on the "
                  f"calibration data; operating points (default {args.default_point}) -> {args.out}")
            for name, p in m["operating_points"].items():
                rates = "" if p["tpr"] is None else f"  TPR {p['tpr']:.4f}  FPR {p['fpr']:.4f}"
                print(f"  {name:<6} threshold {p['threshold']:.6g}{rates}  ({p['method']})")
            if m["class_bias_miou"]:
                print("closed-set mIoU by tau: " + ", ".join(f"{t:g} {100 * v:.2f}" for t, v in m["class_bias_miou"].items()))
            if m["class_bias_refinement"].get("offsets") is not None:
                print("per-class offsets: " + ", ".join(f"{o:+.1f}" for o in m["class_bias_refinement"]["offsets"]))
            print(f"class bias: {m['class_bias'] or 'none'}")
        elif args.command == "flow-shift":
            from densehybrid_training.boundary_shift import main as shift_main

            return shift_main(args.flow, args.joint, args.weights, args.dataset, args.split, args.images, args.size,
                              args.seed, args.out, args.temperature, args.sample_scale)
        elif args.command == "joint-curves":
            from densehybrid_training.curves import joint_main

            return joint_main(args.run, args.out, args.edge)
        elif args.command == "curves":
            from densehybrid_training.curves import main as curves_main

            classes = [c.strip() for c in args.classes.split(",") if c.strip()]
            return curves_main(args.runs, args.out, classes, args.window)
        else:
            from densehybrid_training.export import export

            print(f"weights: {export(args.checkpoint, args.out, args.input_size, args.onnx)}")
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"densehybrid-train: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
