"""Bundle trained sim-world weights as a model that ships with the package (models/NAME.safetensors), with a
record (models/NAME.json) of what a later check must reproduce:

- the file's sha256 and a summary of its metadata (architecture, classes, calibrated threshold, class bias);
- the metrics reached on the full sim test split (copied from a `densehybrid-eval` metrics.json);
- the metrics on a small "check" split that anyone can re-render in seconds from a fixed seed
  (test/test_bundled_models.py renders it afresh and recomputes them independently).

    python -m densehybrid_training.bundle --weights runs/sim_synthetic_big_g768_calibrated.safetensors \
        --name densehybrid_sim_synthetic --eval runs/eval_sim_synthetic_big_g768_sim_test_big/metrics.json \
        --recipe training/recipes/sim_synthetic_big.sh
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path

CHECK_SPLIT = {"split": "test", "frames": 16, "seed": 101, "width": 512, "height": 256}
CHECK_SCORES = ("hybrid", "max_logit", "msp")


def render_check_split(root: Path) -> Path:
    """The small check split (CHECK_SPLIT), rendered deterministically into `root`."""
    from densehybrid_ros.sim.dataset import render_dataset
    from densehybrid_ros.sim.world import SimConfig

    config = dataclasses.replace(SimConfig(), width=CHECK_SPLIT["width"], height=CHECK_SPLIT["height"])
    render_dataset(root, CHECK_SPLIT["split"], CHECK_SPLIT["frames"], seed=CHECK_SPLIT["seed"], config=config,
                   workers=1, progress=False)
    return root


def _anomaly(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("ap", "fpr95", "auroc")}


def summarize(metrics: dict) -> dict:
    """AP / FPR95 / AUROC per score, mIoU, open-mIoU from an evaluation metrics.json."""
    out = {"scores": {name: _anomaly(s["anomaly"]) for name, s in metrics["scores"].items()}}
    if "closed_set" in metrics:
        out["miou"] = metrics["closed_set"]["miou"]
    if "open_set" in metrics:
        out["open_miou"] = metrics["open_set"]["open_miou"]
        out["threshold"] = metrics["open_set"]["threshold"]
    return out


def check_metrics(weights: Path, root: Path) -> dict:
    from densehybrid_ros.datasets import open_dataset
    from densehybrid_ros.evaluation.evaluate import EvalOptions, evaluate
    from densehybrid_ros.predictor import Predictor, PredictorConfig

    predictor = Predictor.from_weights(weights, PredictorConfig(extra_scores=CHECK_SCORES[1:]))
    result = evaluate(predictor, open_dataset(f"sim:{root}"), EvalOptions(scores=CHECK_SCORES),
                      progress=False)
    return summarize(result.metrics)


def bundle(weights: Path, name: str, eval_metrics: Path, recipe: str, out_dir: Path) -> Path:
    from densehybrid_ros.weights import file_sha256, load_weights

    model, metadata = load_weights(weights)
    if metadata.calibration.threshold is None:
        raise ValueError(f"{weights}: not calibrated (run densehybrid-train calibrate first)")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}.safetensors"
    shutil.copyfile(weights, target)
    with tempfile.TemporaryDirectory(prefix="densehybrid_check_") as tmp:
        check = check_metrics(target, render_check_split(Path(tmp) / "check"))
    record = {
        "weights": target.name,
        "sha256": file_sha256(target),
        "bytes": target.stat().st_size,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "architecture": dataclasses.asdict(metadata.architecture),
        "input_size": list(metadata.input_size) if metadata.input_size else None,
        "classes": [c.name for c in metadata.classes],
        "threshold": metadata.calibration.threshold,
        "calibration": dataclasses.asdict(metadata.calibration),
        "class_bias": None if metadata.class_bias is None else dataclasses.asdict(metadata.class_bias),
        "recipe": recipe,
        "sim_test": summarize(json.loads(Path(eval_metrics).read_text())),
        "check_split": {**CHECK_SPLIT, "metrics": check},
    }
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m densehybrid_training.bundle", description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, required=True, help="calibrated weights (.safetensors)")
    ap.add_argument("--name", required=True)
    ap.add_argument("--eval", type=Path, required=True, help="densehybrid-eval metrics.json on the sim test split")
    ap.add_argument("--recipe", required=True, help="the command/script that reproduces the weights")
    ap.add_argument("--out-dir", type=Path, default=Path("models"))
    args = ap.parse_args(argv)
    try:
        print(bundle(args.weights, args.name, args.eval, args.recipe, args.out_dir))
    except (OSError, ValueError, KeyError) as error:
        print(f"bundle: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
