"""`densehybrid-eval`: evaluate node weights on a dataset with the shared Predictor.

    densehybrid-eval --weights W.safetensors --dataset KIND:PATH [--split S] [--scores hybrid,msp,max_logit]
                     --out DIR [--max-images N] [--per-image] [--threshold T] [--device cpu|cuda]
                     [--fold-b KIND:PATH [--fold-b-split S]]   two-fold threshold protocol (open-mIoU)
                     [--no-smiyc-mode]

Writes DIR/metrics.json and DIR/report.md (+ curves, histograms, examples) and prints a summary table; DIR/groups.npz
keeps the bootstrap's per-street histograms, for comparing two evaluations of the same frames with paired intervals:
``python -m densehybrid_ros.evaluation.compare A_DIR B_DIR`` (evaluation/compare.py).

SMIYC kinds (smiyc-anomaly, smiyc-obstacle, smiyc-laf-noknown) also get the benchmark's own numbers, in two
further passes over the labelled frames (`densehybrid_ros.evaluation.smiyc_eval`): the official code's binned
pixel metrics (``smiyc_pixel``: 768 percentile bins on the maps stored as float16, as the benchmark stores
submissions; 4096 uniform bins where scores lie in [0, 1]), then the component metrics at the hybrid score's
best-F1 threshold of that curve (``components_best_f1``), next to the exact metrics and the calibrated-threshold
``components``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from densehybrid_ros.scores import SCORES


def _scores(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in names if s not in SCORES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown score(s) {unknown or text!r}; available: {', '.join(sorted(SCORES))}")
    return names


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="densehybrid-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--dataset", required=True, help="KIND:PATH, e.g. sim:data/sim_test or streethazards:/data/sh")
    ap.add_argument("--split", default=None)
    ap.add_argument("--scores", type=_scores, default=("hybrid", "generative", "discriminative", "msp", "max_logit"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument("--per-image", action="store_true", help="also the StreetHazards per-image-averaged metrics")
    ap.add_argument("--threshold", type=float, default=None, help="open-set threshold (default: the calibrated one)")
    ap.add_argument("--fold-b", default=None, metavar="KIND:PATH",
                    help="second fold for the two-fold threshold protocol (the --dataset is fold A)")
    ap.add_argument("--fold-b-split", default=None)
    ap.add_argument("--no-smiyc-mode", action="store_true",
                    help="SMIYC kinds: skip the benchmark-mode pixel metrics and the best-F1 component metrics "
                         "(two further passes over the labelled frames)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from densehybrid_ros.datasets import DatasetError, open_dataset
    from densehybrid_ros.evaluation.evaluate import COMPONENT_FILTERS, EvalOptions, evaluate
    from densehybrid_ros.evaluation.report import summary_table, write_report
    from densehybrid_ros.evaluation.smiyc_eval import smiyc_mode, smiyc_table
    from densehybrid_ros.evaluation.sources import LivePredictions
    from densehybrid_ros.predictor import Predictor, PredictorConfig
    from densehybrid_ros.weights import WeightsError

    try:
        if args.max_images is not None and args.max_images < 1:
            raise ValueError("--max-images must be >= 1")
        scores = tuple(dict.fromkeys(("hybrid",) + args.scores))
        extra = tuple(s for s in scores if s != "hybrid")
        predictor = Predictor.from_weights(args.weights, PredictorConfig(device=args.device, extra_scores=extra))
        source = LivePredictions(predictor, predictor.threshold)  # open-set maps (report examples) at the weights' own
        dataset = open_dataset(args.dataset, args.split)
        options = EvalOptions(scores=scores, max_images=args.max_images, per_image=args.per_image, threshold=args.threshold)
        result = evaluate(source, dataset, options, progress=not args.quiet)
        if args.fold_b:
            from densehybrid_ros.evaluation.evaluate import cross_fold

            result.metrics["cross_fold"] = cross_fold(source, dataset, open_dataset(args.fold_b, args.fold_b_split),
                                                      args.max_images)
        if dataset.kind in COMPONENT_FILTERS and not args.no_smiyc_mode:
            result.metrics.update(smiyc_mode(source, dataset, scores, args.max_images, progress=not args.quiet))
        report = write_report(result, args.out, [c.color for c in predictor.metadata.classes])
        smiyc_text = smiyc_table(result.metrics)
        if smiyc_text:
            with report.open("a") as f:
                f.write(f"\n## SMIYC benchmark mode\n\n```\n{smiyc_text}\n```\n")
    except (DatasetError, WeightsError, ValueError, OSError) as exc:
        print(f"densehybrid-eval: error: {exc}", file=sys.stderr)
        return 2
    print(summary_table(result.metrics))
    if smiyc_text:
        print(smiyc_text)
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
