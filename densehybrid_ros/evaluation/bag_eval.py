"""Bag evaluation as functions: a ground-truth bag scored by `evaluate` with the obstacle metric, in one of three modes
(`densehybrid-eval-bag`, evaluation/bag_cli.py, documents them; the demo calls `evaluate_bag` directly).

- predictor: the shared Predictor on the bag's frames (`LivePredictions`), obstacles at the node's threshold;
- outputs: the node's recorded outputs (`RecordedOutputs`) on the ground-truth frames that have them;
- oracle: the ground truth itself (`GroundTruth`) through the obstacle code only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from densehybrid_ros.datasets.base import DatasetError, EvalSample
from densehybrid_ros.datasets.rosbag import BagDataset, open_bag
from densehybrid_ros.evaluation.evaluate import EvalOptions, EvalResult, build_metrics, evaluate
from densehybrid_ros.evaluation.obstacle_metric import ObstacleMetric, ObstacleOptions, obstacle_summary
from densehybrid_ros.evaluation.recorded import OUTPUT_TOPICS, RecordedOutputs
from densehybrid_ros.evaluation.sources import GroundTruth, LivePredictions
from densehybrid_ros.paths import written_whole
from densehybrid_ros.predictor import Predictor, PredictorConfig
from densehybrid_ros.weights import Calibration, load_weights, resolve_threshold

NO_CLASS_COLORS = [(128, 128, 128)]  # report colours of recorded outputs without weights


@dataclass(frozen=True)
class BagEvalConfig:
    """What to evaluate and how (densehybrid-eval-bag's options)."""

    bag: Path  # ground-truth bag, or a YAML spec naming one (datasets/rosbag.py)
    weights: Path | None = None  # run this model; with `outputs`: class names and calibration only
    outputs: Path | None = None  # a bag of the node's recorded outputs: score it, run no model
    oracle: bool = False  # obstacles from the true anomaly masks (geometry check)
    scores: tuple[str, ...] = ("hybrid",)  # "hybrid" is always first
    threshold: float | None = None  # overrides the weights' thresholds (pixel metrics and obstacles)
    operating_point: str | None = None  # the weights' point the obstacles are taken at (the node's parameter)
    max_frames: int | None = None
    device: str = "cpu"
    ground_truth_topics: Mapping[str, Any] = field(default_factory=dict)  # BagTopics overrides (None = no topic)
    output_topics: Mapping[str, str | None] = field(default_factory=lambda: dict(OUTPUT_TOPICS))
    recompute_obstacles: bool = False  # outputs: place obstacles from the recorded scores despite recorded markers
    obstacles: ObstacleOptions = ObstacleOptions()
    progress: bool = False


@dataclass
class BagEvaluation:
    metrics: dict  # metrics.json
    result: EvalResult | None  # for the report (None: oracle, obstacles only)
    class_colors: list
    reading_lines: list[str]  # how the bags were read, for a console

    def write(self, out: Path) -> Path | None:
        """OUT/metrics.json, and unless oracle the report as densehybrid-eval writes it; the report's path."""
        from densehybrid_ros.evaluation.report import write_report

        if self.result is None:
            out.mkdir(parents=True, exist_ok=True)
            with written_whole(out / "metrics.json") as partial:
                partial.write_text(json.dumps(self.metrics, indent=1) + "\n")
            return None
        return write_report(self.result, out, self.class_colors, title="densehybrid_ros bag evaluation")

    def console(self, report: Path | None) -> str:
        """What densehybrid-eval-bag prints: the summary table (not for oracle), the obstacles, the bag reading and
        the report's path."""
        from densehybrid_ros.evaluation.report import summary_table

        lines = [] if self.result is None else [summary_table(self.metrics)]
        lines += [obstacle_summary(self.metrics["obstacles"]), *self.reading_lines]
        return "\n".join(lines + ([] if report is None else [f"report: {report}"]))


class FrameSubset:
    """The frames of a dataset at `indices` (ground-truth frames that have recorded outputs)."""

    def __init__(self, dataset: BagDataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices
        self.kind, self.root, self.split, self.classes = dataset.kind, dataset.root, dataset.split, dataset.classes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> EvalSample:
        return self.dataset[self.indices[index]]


def evaluate_bag(config: BagEvalConfig) -> BagEvaluation:
    """Evaluate a bag (see `BagEvalConfig`). Errors: DatasetError, WeightsError, ValueError, OSError, each naming
    the problem; the bags are closed in any case."""
    if config.max_frames is not None and config.max_frames < 1:
        raise ValueError("--max-frames must be >= 1")
    if not (config.outputs or config.oracle or config.weights):
        raise ValueError("give --weights (run the model), --outputs RECORDED_BAG or --oracle")
    config.obstacles.validate()
    dataset = open_bag(config.bag, **config.ground_truth_topics)
    recorded = None
    try:
        scores = tuple(dict.fromkeys(("hybrid",) + tuple(config.scores)))
        eval_options = EvalOptions(scores=scores, max_images=config.max_frames, threshold=config.threshold)
        if config.oracle:
            metrics, result, colors = evaluate_oracle(dataset, config.obstacles, config.max_frames), None, []
        elif config.outputs:
            metadata = load_weights(config.weights)[1] if config.weights else None
            if scores != ("hybrid",):
                raise ValueError("--outputs scores the recorded hybrid score only (--scores hybrid)")
            # the recording's open-set maps and pixel metrics: the thesis protocol's point unless a threshold is given
            threshold = config.threshold if config.threshold is not None else (metadata.threshold if metadata else None)
            recorded = RecordedOutputs(config.outputs, config.output_topics, metadata, threshold)
            node_threshold = (resolve_threshold(metadata.calibration, config.threshold, config.operating_point).value
                              if metadata else config.threshold)
            result = evaluate_outputs(dataset, recorded, config.obstacles, eval_options, node_threshold,
                                      config.recompute_obstacles, config.progress,
                                      metadata.calibration if metadata else None)
            metrics, colors = result.metrics, [c.color for c in metadata.classes] if metadata else NO_CLASS_COLORS
        else:
            extra = tuple(s for s in scores if s != "hybrid")
            predictor = Predictor.from_weights(config.weights,
                                               PredictorConfig(device=config.device, extra_scores=extra))
            calibration = predictor.metadata.calibration
            threshold = resolve_threshold(calibration, config.threshold, config.operating_point).value
            result = evaluate_predictor(dataset, predictor, threshold, config.obstacles, eval_options, config.progress)
            metrics, colors = result.metrics, [c.color for c in predictor.metadata.classes]
        metrics["bag_reading"], reading_lines = bag_reading(dataset, recorded)
        if (config.outputs and not config.weights
                and metrics.get("outputs", {}).get("obstacles_from") == "recorded anomaly score"):
            reading_lines.append("obstacles placed from the recorded scores without --weights: no instant "
                                 "confirmation (the node confirms at once at the weights' instant_confirm_point)")
        return BagEvaluation(metrics, result, colors, reading_lines)
    finally:
        for closable in (dataset, recorded):
            if closable is not None:
                closable.close()


def evaluate_predictor(dataset: BagDataset, predictor: Predictor, threshold: float | None, options: ObstacleOptions,
                       eval_options: EvalOptions, progress: bool = False) -> EvalResult:
    """`evaluate` of the Predictor with its open-set maps and the obstacles at `threshold` (the node's,
    `weights.resolve_threshold`); the pixel metrics at `eval_options.threshold`, else the thesis protocol's.
    metrics: evaluate's, then "mode" and "obstacles" (with the threshold)."""
    source = LivePredictions(predictor, threshold)
    obstacle_metric = ObstacleMetric(options, source.class_names, threshold, calibration=predictor.metadata.calibration)
    metrics = build_metrics(eval_options, source, dataset) + [obstacle_metric]
    result = evaluate(source, dataset, metrics, progress, max_images=eval_options.max_images)
    obstacles = result.metrics.pop("obstacles")
    result.metrics.update(mode="predictor", obstacles={**obstacles, "threshold": threshold})
    return result


def evaluate_outputs(dataset: BagDataset, recorded: RecordedOutputs, options: ObstacleOptions,
                     eval_options: EvalOptions, obstacle_threshold: float | None = None,
                     recompute_obstacles: bool = False, progress: bool = False,
                     calibration: Calibration | None = None) -> EvalResult:
    """`evaluate` of the recorded node outputs over the ground-truth frames that have them, the pixel metrics at the
    recording's threshold. Obstacles: the recorded markers, else (none recorded, or `recompute_obstacles`) placed from
    the recorded scores at `obstacle_threshold` (the node's; default: the recording's threshold), confirmed with the
    weights' `calibration` (instant confirmation) as the node does. metrics: evaluate's,
    then "mode", "outputs" (frames scored, missing, skipped and why) and "obstacles"."""
    indices, skipped = [], {}
    for i, stamp in enumerate(dataset.stamps):
        reason = recorded.skip_reason(stamp, dataset.image_size(i))
        if reason is None:
            indices.append(i)
        else:
            skipped[reason] = skipped.get(reason, 0) + 1
    missing = skipped.pop("no output", 0)
    if not indices and not skipped:
        raise DatasetError(f"no recorded output on {recorded.topics['score']} has the header stamp of a ground-truth "
                           f"frame of {dataset.root} (were the outputs recorded while this bag was replayed?)")
    if not indices:
        raise DatasetError(f"none of the recorded outputs in {recorded.bag.path} can be scored: {skipped} (the node "
                           "publishes at camera resolution)")
    subset = FrameSubset(dataset, indices)
    use_markers = recorded.has_obstacles and not recompute_obstacles
    threshold = obstacle_threshold if obstacle_threshold is not None else recorded.threshold
    metrics = (build_metrics(replace(eval_options, threshold=recorded.threshold), recorded, subset)
               + [ObstacleMetric(options, recorded.class_names, threshold, recorded_markers=use_markers,
                                 calibration=calibration)])
    result = evaluate(recorded, subset, metrics, progress, max_images=eval_options.max_images)
    obstacles = result.metrics.pop("obstacles")
    result.metrics.update(mode="outputs", outputs={
        "bag": str(recorded.bag.path), "topics": recorded.topics, "ground_truth_frames": len(dataset.stamps),
        "scored_frames": len(indices), "missing_outputs": missing, "skipped_outputs": skipped,
        "obstacles_from": "recorded markers" if use_markers else "recorded anomaly score"}, obstacles=obstacles)
    return result


def evaluate_oracle(dataset: BagDataset, options: ObstacleOptions, max_frames: int | None = None) -> dict:
    """Obstacle localisation on the ground-truth anomaly masks and classes (no model) through the node's filter and
    confirmation: the ceiling of the geometry and the obstacle rules. metrics: "mode", "dataset", "obstacles"."""
    source = GroundTruth(dataset.classes)
    n = len(dataset) if max_frames is None else min(max_frames, len(dataset))
    result = evaluate(source, dataset, [ObstacleMetric(options, source.class_names, source.threshold)],
                      progress=False, max_images=n)
    return {"mode": "oracle", "dataset": {"kind": dataset.kind, "root": str(dataset.root), "images": n},
            "obstacles": result.metrics["obstacles"]}


def bag_reading(dataset: BagDataset, recorded: RecordedOutputs | None) -> tuple[dict, list[str]]:
    """metrics.json's "bag_reading" (per bag: how it was read, what was lost, per-topic skipped messages; the frames
    used) and the same for the console."""
    reading, lines = {"ground_truth": dataset.reading()}, dataset.reading_lines()
    if recorded is not None:
        reading["outputs"] = recorded.bag.report.as_dict()
        lines += recorded.bag.report.lines()
    return reading, lines
