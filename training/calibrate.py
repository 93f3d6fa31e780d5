"""Open-set operating points on held-out data with anomalies, written into the weights' metadata (one pass).

- ``tpr95``: the highest threshold flagging at least 95% of the anomaly pixels (the thesis protocol; evaluation's
  open-mIoU uses it; also the metadata's legacy ``threshold``);
- ``fpr1``: the lowest threshold flagging at most 1% of the inlier pixels (few false alarms: the node's default);
- ``fpr05``: the same at 0.5% (fewer false alarms; a model whose anomalies stand out more can afford it: the
  recipe chooses the default point on the val bags);
- ``f1``: the threshold of the best pixel F1.

With class weights in the weights' provenance (a run trained with `class_balance: enet`), the same pass also chooses
the class bias of the closed-set decision (`class_balance.logit_adjustment_bias`, b = -tau ln w): the tau of
`CLASS_BIAS_TAUS` with the best closed-set mIoU on the held-out data (tau = 0, no bias, is one of them). Mode "auto"
then lets each class move its bias (`class_balance.refine_class_bias`, on `PIXELS_PER_FRAME` random labelled pixels
of every frame) and keeps the per-class biases only when they pass a street split: fitted on either half of the
held-out streets (frames grouped by `dataset.group`, by frame where the data has no groups), they must raise the mIoU
of the other half over the tau bias's; the kept values are then fitted on all the pixels. Mode "tau": the tau bias
alone.

Every threshold is an attained score applied with the project's rule ``score >= threshold``
(`densehybrid_ros.scores.is_anomalous`); all three come from one exact pooled curve
(`densehybrid_ros.evaluation.anomaly_metrics.AnomalyMetrics`).
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Hashable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from densehybrid_ros.datasets import open_dataset
from densehybrid_ros.evaluation.anomaly_metrics import AnomalyMetrics
from densehybrid_ros.evaluation.segmentation_metrics import closed_set_confusion, mean_iou
from densehybrid_ros.evaluation.streaming import StreamingAnomalyMetrics
from densehybrid_ros.predictor import Predictor, PredictorConfig
from densehybrid_ros.scores import closed_set_decision
from densehybrid_ros.weights import (Calibration, ClassBias, OperatingPoint, WeightsMetadata, load_weights,
                                     save_weights)
from densehybrid_training.class_balance import logit_adjustment_bias, pixel_miou, refine_class_bias

CLASS_BIAS_TAUS = tuple(round(0.1 * i, 1) for i in range(11))  # 0, 0.1, ..., 1
CLASS_BIAS_MODES = ("auto", "tau", "none")
PIXELS_PER_FRAME = 4096  # labelled pixels per frame kept for the per-class refinement (float32: 60 KB per class)
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


def training_class_weights(meta: WeightsMetadata) -> tuple[float, ...] | None:
    """The per-class loss weights the model was trained with, from its provenance (export copies the run's config);
    None when it was trained without them or the file does not say."""
    config = meta.provenance.get("config") if isinstance(meta.provenance, dict) else None
    weights = config.get("class_weights") if isinstance(config, dict) else None
    if weights is None:
        return None
    if not isinstance(weights, list) or len(weights) != meta.num_classes:
        raise ValueError(f"provenance.config.class_weights must list {meta.num_classes} numbers, got {weights!r}")
    return tuple(float(w) for w in weights)


class ClassBiasSearch:
    """Closed-set confusion matrices of each tau's decision argmax_k (s_k - tau ln w_k), pooled over frames; with
    `refine`, also `pixels_per_frame` random labelled pixels of each frame (raw logits at the labels' resolution,
    class, group) for the per-class refinement."""

    def __init__(self, class_weights: tuple[float, ...], taus: tuple[float, ...] = CLASS_BIAS_TAUS,
                 refine: bool = True, pixels_per_frame: int = PIXELS_PER_FRAME, seed: int = 0):
        self.biases = {tau: logit_adjustment_bias(class_weights, tau) for tau in taus}
        self.num_classes = len(class_weights)
        self.confusion = {tau: np.zeros((self.num_classes, self.num_classes), np.int64) for tau in taus}
        self.refine, self.pixels_per_frame = refine, pixels_per_frame
        self.rng = np.random.default_rng(seed)
        self.logits: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.groups: list[Hashable] = []
        self.refinement: dict = {}

    def update(self, predictor: Predictor, batch, outputs, semantic: np.ndarray, group: Hashable = None) -> None:
        for tau, bias in self.biases.items():
            ids = closed_set_decision(outputs.logits, torch.tensor(bias))
            prediction = predictor.postprocess(batch, outputs._replace(class_ids=ids), None)[0]
            self.confusion[tau] += closed_set_confusion(semantic, prediction.class_ids, self.num_classes)
        if self.refine:
            self._keep_pixels(batch, outputs, semantic, group)

    def _keep_pixels(self, batch, outputs, semantic: np.ndarray, group: Hashable) -> None:
        # the logits resized as `Predictor.postprocess` resizes the class ids (nearest), so a pixel's decision here is
        # the one the node makes there
        h, w = batch.network_sizes[0]
        logits = torch.nn.functional.interpolate(outputs.logits[:1, :, :h, :w].float(), size=semantic.shape,
                                                 mode="nearest")[0]
        labelled = np.flatnonzero(semantic.ravel() < self.num_classes)
        if labelled.size == 0:
            return
        picks = self.rng.choice(labelled, size=min(self.pixels_per_frame, labelled.size), replace=False)
        columns = torch.as_tensor(picks, device=logits.device)
        self.logits.append(logits.reshape(self.num_classes, -1)[:, columns].T.cpu().numpy())
        self.labels.append(semantic.ravel()[picks].astype(np.int64))
        self.groups.append(group)

    def miou(self) -> dict[float, float]:
        return {tau: mean_iou(cm) for tau, cm in self.confusion.items()}

    def best(self, where: str) -> ClassBias:
        """The bias of the tau with the best mIoU (the smaller tau on a tie); with `refine`, the per-class biases
        fitted from it where they pass the street split (module docstring; `self.refinement` says how it went)."""
        scores = self.miou()
        tau = max(scores, key=lambda t: (scores[t], -t))
        method = (f"b = -{tau:g} ln w (the training's class weights): best closed-set mIoU ({100 * scores[tau]:.2f}, "
                  f"{100 * scores[0.0]:.2f} without) over tau in {min(scores):g}..{max(scores):g} on {where}")
        if not self.refine or not self.logits:
            return ClassBias(self.biases[tau], method)
        refined, note = self._refine(np.asarray(self.biases[tau], np.float32))
        if refined is None:
            return ClassBias(self.biases[tau], f"{method}; per-class offsets not kept ({note})")
        return ClassBias(tuple(float(b) for b in refined), f"{method}; then per-class offsets by coordinate ascent on "
                         f"mIoU over {self.pixels_per_frame} labelled pixels per frame ({note})")

    def _refine(self, start: np.ndarray) -> tuple[np.ndarray | None, str]:
        x, y = np.concatenate(self.logits), np.concatenate(self.labels)
        frame_half = np.array([zlib.crc32(repr(g).encode()) % 2 for g in self.groups])
        half = np.repeat(frame_half, [len(labels) for labels in self.labels])
        gains = []
        for h in (0, 1):
            fit, check = half == h, half != h
            if not fit.any() or not check.any():
                self.refinement = {"kept": False, "held_out_gain": None}
                return None, "the held-out frames do not make two halves of streets"
            fitted = refine_class_bias(x[fit], y[fit], start)
            gains.append(_sampled_miou(x[check], y[check], fitted, self.num_classes)
                         - _sampled_miou(x[check], y[check], start, self.num_classes))
        shown = ", ".join(f"{100 * g:+.2f}" for g in gains)
        if min(gains) <= 0:
            self.refinement = {"kept": False, "held_out_gain": gains}
            return None, f"fitted on either half of the streets, mIoU of the other half {shown} points"
        refined = refine_class_bias(x, y, start)
        self.refinement = {"kept": True, "held_out_gain": gains, "offsets": (refined - start).tolist(),
                           "sampled_miou": _sampled_miou(x, y, refined, self.num_classes),
                           "sampled_miou_start": _sampled_miou(x, y, start, self.num_classes)}
        return refined, (f"fitted on either half of the streets: mIoU of the other half {shown} points; on these "
                         f"pixels {100 * self.refinement['sampled_miou']:.2f} vs "
                         f"{100 * self.refinement['sampled_miou_start']:.2f}")


def _sampled_miou(logits: np.ndarray, labels: np.ndarray, bias: np.ndarray, num_classes: int) -> float:
    return pixel_miou(labels, (logits + bias).argmax(axis=1), num_classes)


def calibrate(weights: Path, dataset_spec: str, split: str | None, out: Path, device: str = "cpu",
              max_images: int | None = None, progress: bool = True,
              default_point: str = DEFAULT_POINT, class_bias: str = "auto") -> tuple[float, dict]:
    """Compute the operating points of `dataset_spec` (exact, pooled) and save `out` = the same weights with them
    (the node applies `default_point`; legacy threshold: tpr95). `class_bias` "auto": also choose the class bias on
    the same frames when the weights name their training's class weights (`training_class_weights`) and the data
    has semantic labels, else none (tau, then per-class where that passes the street split: module docstring);
    "tau": the tau bias alone; "none": write none. Returns (the tpr95 threshold, anomaly metrics on that data
    with "operating_points": name -> {threshold, method, tpr, fpr}, "class_bias": its method or None and
    "class_bias_miou": tau -> closed-set mIoU, "class_bias_refinement": how the per-class step went)."""
    names = ("tpr95", *LOW_FALSE_ALARM_POINTS, "f1")
    if default_point not in names:
        raise ValueError(f"default point {default_point!r} is not one of {', '.join(names)}")
    if class_bias not in CLASS_BIAS_MODES:
        raise ValueError(f"class_bias must be one of {CLASS_BIAS_MODES}, got {class_bias!r}")
    model, meta = load_weights(weights)
    # decisions are searched from the raw logits: a bias the file already holds is not applied
    predictor = Predictor(model, replace(meta, class_bias=None), PredictorConfig(device=device))
    dataset = open_dataset(dataset_spec, split)
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    where = f"{dataset_spec} split={split or dataset.split} images={n}"
    class_weights = training_class_weights(meta) if class_bias != "none" else None
    search = None if class_weights is None else ClassBiasSearch(class_weights, refine=class_bias == "auto")
    group_of = getattr(dataset, "group", None)
    with StreamingAnomalyMetrics() as stream:
        for i in tqdm(range(n), desc="calibrate", unit="img", disable=not progress):
            sample = dataset[i]
            if sample.ood is None:
                raise ValueError(f"{dataset_spec}: image {sample.name} has no anomaly labels; calibration needs them")
            if search is not None and sample.semantic is None:
                search = None  # a class bias needs semantic labels on every frame
            batch = predictor.preprocess([sample.image])
            outputs = predictor.forward(batch)
            stream.update(predictor.postprocess(batch, outputs, None)[0].hybrid, sample.ood)
            if search is not None:
                search.update(predictor, batch, outputs, sample.semantic,
                              group_of(i) if group_of is not None else sample.name)
        metrics = stream.compute()
    points = operating_points(metrics)
    bias = None if search is None else search.best(where)
    calibrated = replace(meta, class_bias=bias, calibration=Calibration(
        threshold=points["tpr95"].threshold, method="tpr95", target_tpr=TARGET_TPR, dataset=where,
        operating_points=points, default=default_point))
    save_weights(out, model, calibrated)
    return points["tpr95"].threshold, {
        "ap": metrics.ap, "fpr95": metrics.fpr95, "auroc": metrics.auroc, "tpr": metrics.tpr95,
        "operating_points": {name: {"threshold": p.threshold, "method": p.method, "tpr": p.tpr, "fpr": p.fpr}
                             for name, p in points.items()},
        "class_bias": None if bias is None else bias.method,
        "class_bias_miou": {} if search is None else search.miou(),
        "class_bias_refinement": {} if search is None else search.refinement}
