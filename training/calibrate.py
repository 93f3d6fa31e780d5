"""Open-set operating points on held-out data with anomalies, written into the weights' metadata (one pass).

- ``tpr95``: the highest threshold flagging at least 95% of the anomaly pixels (the thesis protocol; evaluation's
  open-mIoU uses it; also the metadata's legacy ``threshold``);
- ``fpr1``: the lowest threshold flagging at most 1% of the inlier pixels (few false alarms: the node's default);
- ``fpr05``: the same at 0.5% (fewer false alarms; a model whose anomalies stand out more can afford it: the
  recipe chooses the default point on the val bags);
- ``f1``: the threshold of the best pixel F1.

Every threshold is an attained score applied with the project's rule ``score >= threshold``
(`densehybrid_ros.scores.is_anomalous`); all three come from one exact pooled curve
(`densehybrid_ros.evaluation.anomaly_metrics.AnomalyMetrics`).
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from densehybrid_ros.datasets import open_dataset
from densehybrid_ros.evaluation.anomaly_metrics import AnomalyMetrics
from densehybrid_ros.evaluation.streaming import StreamingAnomalyMetrics
from densehybrid_ros.predictor import Predictor, PredictorConfig
from densehybrid_ros.weights import Calibration, OperatingPoint, load_weights, save_weights

TARGET_TPR = 0.95
LOW_FALSE_ALARM_POINTS = {"fpr1": "0.01", "fpr05": "0.005"}  # point name -> AnomalyMetrics.tpr_at_fpr level
DEFAULT_POINT = "fpr1"


def operating_points(metrics: AnomalyMetrics) -> dict[str, OperatingPoint]:
    """The calibrated points of one exact pooled curve: tpr95, fpr1, fpr05 and f1 (see the module docstring)."""
    points = {"tpr95": OperatingPoint(metrics.threshold95, "highest threshold flagging at least 95% of the held-out "
                                      "anomaly pixels (thesis protocol, used for open-mIoU)", metrics.tpr95,
                                      metrics.fpr95)}
    for name, level in LOW_FALSE_ALARM_POINTS.items():
        low, share = metrics.tpr_at_fpr[level], f"{float(level) * 100:g}%"
        if not math.isfinite(low["threshold"]):
            raise ValueError(f"the highest score already flags more than {share} of the inlier pixels: no {name} point")
        points[name] = OperatingPoint(low["threshold"], f"lowest threshold flagging at most {share} of the held-out "
                                      "inlier pixels", low["tpr"], low["fpr"])
    points["f1"] = OperatingPoint(metrics.best_f1_threshold, f"best pixel F1 ({metrics.best_f1:.4f}) on the held-out "
                                  "data")
    return points


def calibrate(weights: Path, dataset_spec: str, split: str | None, out: Path, device: str = "cpu",
              max_images: int | None = None, progress: bool = True,
              default_point: str = DEFAULT_POINT) -> tuple[float, dict]:
    """Compute the operating points of `dataset_spec` (exact, pooled) and save `out` = the same weights with them
    (the node applies `default_point`; legacy threshold: tpr95). Returns (the tpr95 threshold, anomaly metrics on
    that data with "operating_points": name -> {threshold, method, tpr, fpr})."""
    names = ("tpr95", *LOW_FALSE_ALARM_POINTS, "f1")
    if default_point not in names:
        raise ValueError(f"default point {default_point!r} is not one of {', '.join(names)}")
    model, meta = load_weights(weights)
    predictor = Predictor(model, meta, PredictorConfig(device=device))
    dataset = open_dataset(dataset_spec, split)
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    with StreamingAnomalyMetrics() as stream:
        for i in tqdm(range(n), desc="calibrate", unit="img", disable=not progress):
            sample = dataset[i]
            if sample.ood is None:
                raise ValueError(f"{dataset_spec}: image {sample.name} has no anomaly labels; calibration needs them")
            stream.update(predictor.predict(sample.image).hybrid, sample.ood)
        metrics = stream.compute()
    points = operating_points(metrics)
    calibrated = replace(meta, calibration=Calibration(
        threshold=points["tpr95"].threshold, method="tpr95", target_tpr=TARGET_TPR,
        dataset=f"{dataset_spec} split={split or dataset.split} images={n}", operating_points=points,
        default=default_point))
    save_weights(out, model, calibrated)
    return points["tpr95"].threshold, {
        "ap": metrics.ap, "fpr95": metrics.fpr95, "auroc": metrics.auroc, "tpr": metrics.tpr95,
        "operating_points": {name: {"threshold": p.threshold, "method": p.method, "tpr": p.tpr, "fpr": p.fpr}
                             for name, p in points.items()}}
