"""densehybrid-eval-bag: deterministic scoring of a ground-truth bag, and obstacle localisation against true boxes.

    densehybrid-eval-bag --bag BAG --weights W --out DIR [--max-frames N] [--threshold T] [--scores hybrid,msp]
    densehybrid-eval-bag --bag BAG --outputs RECORDED_BAG --out DIR [--weights W] [--threshold T]
    densehybrid-eval-bag --bag BAG --oracle --out DIR                   (geometry check on the true anomaly mask)
    common: [--camera-height H] [--camera-pitch P] [--camera-roll R] [--locate ground|depth] [--min-area PX]
            [--image-topic ...] [--labels-topic ...] [--depth-topic ...] [--camera-info-topic ...]
            [--anomalies-topic ...]

This module is the command line only; the work is `densehybrid_ros.evaluation.bag_eval.evaluate_bag` (metrics through
`evaluation.evaluate`, obstacles by `evaluation.obstacle_metric`, recorded outputs by `evaluation.recorded`).

No DDS, no clock: the bag is read with rosbags (`bag` dataset, densehybrid_ros/datasets/rosbag.py) frame by frame
in stamp order, so the numbers do not depend on the machine's speed (ros-notes: "deterministic scoring reads the
bag directly").

Damaged bags (a recording cut short, flipped bytes) are read as far as they go (densehybrid_ros/bagio.py); a message
that fails to decode or to pass its check is skipped and counted per topic, its frame left out, and the evaluation
goes on. metrics.json "bag_reading" and the console say per bag how it was read, what was lost, and per topic how
many messages were read, expected, unreadable, undecodable or rejected (and why), and which frames were dropped.

Modes
- `--weights`: the shared `Predictor` runs through `densehybrid_ros.evaluation.evaluate` on the bag dataset
  (pixel AP / AUROC / FPR95, distance bins, mIoU / open-mIoU when the classes agree): DIR/metrics.json and
  DIR/report.md as densehybrid-eval writes them.
- `--outputs RECORDED_BAG`: no model runs. The node's outputs recorded from a live run (densehybrid-record of
  ~/anomaly_score 32FC1, ~/semantic mono8 and ~/obstacles; topic names configurable) are matched to the
  ground-truth frames by header stamp and scored by the same `evaluate` (the recorded maps stand in for the
  Predictor's). Ground-truth frames the node never answered are left out and counted (`missing_outputs`), so are
  those whose recorded maps are damaged or do not fit the ground truth (`skipped_outputs`: reason -> frames).
  `--weights` (optional) supplies the class names (for mIoU) and the calibrated threshold.
- `--oracle`: the ground-truth anomaly mask and classes go through the obstacle code; only "obstacles" is written.

Obstacle localisation (metrics.json "obstacles", `evaluation.obstacle_metric`): frame by frame in stamp order, the
anomaly mask (the hybrid score flagged at the node's threshold, `weights.resolve_threshold`: `--threshold`, else
`--operating-point`, else the weights' default point; the true mask with --oracle) goes through the node's ROS-free
obstacle code with the bag's CameraInfo, exactly as the node's perception pipeline runs it
(densehybrid_ros/perception/obstacles.py: `frame_obstacles`: connected components whose ground
contact is on the drivable surface of the predicted classes, placed on the ground plane of the camera mount, or with
the bag's depth with --locate depth, of a real object's size; then `ObstacleTracker`: published after N of the last M
frames, tracked through the miss budget). The node's parameters of the filter and confirmation are options of the same
names (--confirm-hits ...), with the node's defaults. In --outputs mode the recorded ~/obstacles markers are used
when the recorded bag has them. Predicted boxes are matched to the true
boxes of the anomalies topic (MarkerArray, ns "anomaly") greedily by increasing 3-D distance between box
centres, each at most once, within a gate of `gate_m + gate_rel x true range`.
- distance = range of the box centre from the optical centre; per match: absolute and relative distance error
  and the 3-D centre error;
- detection rate per true-range bin over the true boxes that count ("eligible": at least `--min-visible` visible
  pixels by the sim's `visible_px=N` marker text, when present, and within `--max-distance`);
- false obstacles: predicted boxes matched to no true box (a match to a box too small to be eligible is neither
  a detection nor a false obstacle), per frame.

Camera mount (height above the ground, pitch > 0 = looking down, roll; the node's convention): from
--camera-height/--camera-pitch/--camera-roll when given, else from the bag's /tf at the image stamp or
/tf_static (transform base_footprint -> the image frame, z up, as sim bags carry it), else the node's defaults
(1.5 m, 0, 0). metrics.json records which source each frame used ("mount_sources").
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from densehybrid_ros.evaluation.obstacle_metric import NODE_OBSTACLE_PARAMS, ObstacleOptions
from densehybrid_ros.evaluation.recorded import OUTPUT_TOPICS
from densehybrid_ros.perception.settings import DEFAULTS, SPECS


def build_parser() -> argparse.ArgumentParser:
    from densehybrid_ros.evaluation.cli import _scores

    ap = argparse.ArgumentParser(prog="densehybrid-eval-bag", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--bag", type=Path, required=True, help="ground-truth bag (or a YAML spec, see datasets/rosbag.py)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--outputs", type=Path, help="bag recorded from the node's outputs: score it, run no model")
    mode.add_argument("--oracle", action="store_true", help="obstacles from the true anomaly mask (geometry check)")
    ap.add_argument("--weights", type=Path, help="node weights (required unless --outputs or --oracle)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--threshold", type=float, default=None, help="open-set threshold (default: the calibrated one)")
    ap.add_argument("--scores", type=_scores, default=("hybrid",))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    g = ap.add_argument_group("ground-truth topics (defaults: the sim bag's)")
    for key in ("image", "labels", "depth", "camera_info", "anomalies"):
        g.add_argument(f"--{key.replace('_', '-')}-topic", default=None, help="'' = none" if key != "image" else None)
    g.add_argument("--anomaly-id", type=int, default=None, help="label value of anomaly pixels (default 15)")
    o = ap.add_argument_group("recorded outputs (--outputs)")
    o.add_argument("--score-topic", default=OUTPUT_TOPICS["score"])
    o.add_argument("--semantic-topic", default=OUTPUT_TOPICS["semantic"])
    o.add_argument("--obstacles-topic", default=OUTPUT_TOPICS["obstacles"])
    o.add_argument("--recompute-obstacles", action="store_true",
                   help="place obstacles from the recorded score map even when the recorded markers exist")
    b = ap.add_argument_group("obstacles")
    b.add_argument("--camera-height", type=float, default=None, help="[m] (default: /tf of the bag, else 1.5)")
    b.add_argument("--camera-pitch", type=float, default=None, help="[rad], > 0 = looking down (default: /tf, else 0)")
    b.add_argument("--camera-roll", type=float, default=None, help="[rad] (default: /tf, else 0)")
    b.add_argument("--locate", choices=("ground", "depth"), default="ground")
    b.add_argument("--min-area", type=int, default=DEFAULTS["min_obstacle_area"],
                   help="smallest component [px] (the node's min_obstacle_area)")
    b.add_argument("--max-obstacles", type=int, default=DEFAULTS["max_obstacles"])
    b.add_argument("--max-distance", type=float, default=DEFAULTS["obstacle_max_distance"])
    b.add_argument("--min-visible", type=int, default=None, help="eligible true boxes: visible pixels (default --min-area)")
    b.add_argument("--gate", type=float, default=2.0, help="matching gate [m] ...")
    b.add_argument("--gate-rel", type=float, default=0.2, help="... plus this fraction of the true range")
    b.add_argument("--operating-point", default=None,
                   help="the weights' operating point the obstacles are taken at, as the node's parameter (default: "
                        "the weights' default point; --threshold overrides it). Pixel metrics and open-mIoU: "
                        "--threshold, else the weights' TPR-95%% point, and every operating point reported")
    for name in NODE_OBSTACLE_PARAMS:  # the node's parameters, same names, meanings and defaults
        spec = SPECS[name]
        kind = ((lambda text: tuple(n.strip() for n in text.split(",") if n.strip())) if spec.type is list
                else _flag if spec.type is bool else spec.type)
        b.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None,
                       help=f"{spec.description} (the node's {name}; default {spec.default!r})".replace("%", "%%"))
    return ap


def _flag(text: str) -> bool:
    """A boolean parameter given on the command line: true/false, yes/no, on/off or 1/0."""
    value = text.strip().lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def ground_truth_topics(args: argparse.Namespace) -> dict:
    """The BagTopics overrides given ('' = no such topic)."""
    overrides = {}
    for key in ("image", "labels", "depth", "camera_info", "anomalies"):
        value = getattr(args, f"{key}_topic")
        if value is not None:
            overrides[key] = value or None
    if args.anomaly_id is not None:
        overrides["anomaly_id"] = args.anomaly_id
    return overrides


def obstacle_options(args: argparse.Namespace) -> ObstacleOptions:
    return ObstacleOptions(min_area=args.min_area, max_obstacles=args.max_obstacles, max_distance=args.max_distance,
                           locate=args.locate, gate_m=args.gate, gate_rel=args.gate_rel,
                           min_visible=args.min_visible if args.min_visible is not None else args.min_area,
                           camera_height=args.camera_height, camera_pitch=args.camera_pitch,
                           camera_roll=args.camera_roll,
                           node=tuple((name, getattr(args, name)) for name in NODE_OBSTACLE_PARAMS
                                      if getattr(args, name) is not None))


def bag_eval_config(args: argparse.Namespace):
    """The parsed options as a `bag_eval.BagEvalConfig`."""
    from densehybrid_ros.evaluation.bag_eval import BagEvalConfig

    return BagEvalConfig(bag=args.bag, weights=args.weights, outputs=args.outputs, oracle=args.oracle,
                         scores=tuple(args.scores), threshold=args.threshold, operating_point=args.operating_point,
                         max_frames=args.max_frames, device=args.device, ground_truth_topics=ground_truth_topics(args),
                         output_topics={"score": args.score_topic, "semantic": args.semantic_topic,
                                        "obstacles": args.obstacles_topic},
                         recompute_obstacles=args.recompute_obstacles, obstacles=obstacle_options(args),
                         progress=not args.quiet)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from densehybrid_ros.datasets.base import DatasetError
    from densehybrid_ros.evaluation.bag_eval import evaluate_bag
    from densehybrid_ros.weights import WeightsError

    try:
        evaluation = evaluate_bag(bag_eval_config(args))
        report = evaluation.write(args.out)
    except (DatasetError, WeightsError, ValueError, OSError) as exc:
        print(f"densehybrid-eval-bag: error: {exc}", file=sys.stderr)
        return 2
    print(evaluation.console(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
