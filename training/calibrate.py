"""Open-set threshold at TPR 95% on held-out data with anomalies, written into the weights' metadata."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from densehybrid_ros.datasets import open_dataset
from densehybrid_ros.evaluation.streaming import StreamingAnomalyMetrics
from densehybrid_ros.evaluation.thresholds import fusion_threshold
from densehybrid_ros.predictor import Predictor, PredictorConfig
from densehybrid_ros.weights import Calibration, load_weights, save_weights

TARGET_TPR = 0.95


def calibrate(weights: Path, dataset_spec: str, split: str | None, out: Path, device: str = "cpu",
              max_images: int | None = None, progress: bool = True) -> tuple[float, dict]:
    """Choose the hybrid-score threshold detecting 95% of the anomaly pixels of `dataset_spec` (exact, pooled),
    save `out` = the same weights with that threshold. Returns (threshold, anomaly metrics on that data)."""
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
    # the node marks unknown where score > threshold; this value makes that select exactly score >= threshold95
    threshold = fusion_threshold(metrics.threshold95)
    calibrated = replace(meta, calibration=Calibration(threshold=threshold, method="tpr95", target_tpr=TARGET_TPR,
                                                       dataset=f"{dataset_spec} split={split or dataset.split} images={n}"))
    save_weights(out, model, calibrated)
    return threshold, {"ap": metrics.ap, "fpr95": metrics.fpr95, "auroc": metrics.auroc, "tpr": metrics.tpr95}
