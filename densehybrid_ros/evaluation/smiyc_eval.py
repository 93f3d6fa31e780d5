"""SMIYC benchmark mode for `densehybrid-eval`: the official code's numbers next to the exact ones.

`evaluate` stays the exact one-pass evaluation. For the SMIYC kinds, `smiyc_mode` adds two further passes of the
prediction source over the labelled frames only (the second needs the first's threshold):

1. ``smiyc_pixel``: `SmiycPixelMetrics` per score: percentile bins (768, the leaderboard's 'PixBinaryClass')
   on the score maps cast to float16 as the benchmark's ``Evaluation.save_output`` stores them, and uniform
   bins (4096, 'PixBinaryClass-uniThr') on the float32 maps, only where the scores lie in [0, 1] as the
   benchmark assumes (see `smiyc_pixel_pass` for why not float16 there);
2. ``components_best_f1``: the SMIYC component metrics (sIoU, PPV, mean F1) of the hybrid score at the
   best-F1 threshold of its percentile curve, binarised as the benchmark's SegEval does (``score >
   threshold``, the kind's size filter), next to the ``components`` at the calibrated threshold.

Bounded memory: one frame's maps at a time plus the per-frame bin counts.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Iterator

import numpy as np
from tqdm import tqdm

from densehybrid_ros.datasets.base import EvalDataset
from densehybrid_ros.evaluation.component_metrics import ComponentMetrics
from densehybrid_ros.evaluation.evaluate import COMPONENT_FILTERS, jsonable
from densehybrid_ros.evaluation.metrics import score_maps
from densehybrid_ros.evaluation.smiyc_metrics import PERCENTILES, UNIFORM, SmiycPixelMetrics, as_submitted
from densehybrid_ros.evaluation.sources import PredictionSource, as_source
from densehybrid_ros.predictor import Predictor

Source = PredictionSource | Predictor


def labelled_maps(source: Source, dataset: EvalDataset, max_images: int | None, progress: bool,
                  desc: str) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """(ood labels, {score name: map}) of every labelled image among the first `max_images`, predicted anew (frames
    without labels are not predicted)."""
    source = as_source(source)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    for i in tqdm(range(n), desc=desc, unit="img", disable=not progress):
        sample = dataset[i]
        if sample.ood is not None:
            yield sample.ood, score_maps(source.predict(sample))


def _finish(accumulator: SmiycPixelMetrics) -> dict:
    """The accumulator's metrics with its bin count, or the reason they are undefined."""
    try:
        return {"num_bins": accumulator.num_bins, **accumulator.compute()}
    except ValueError as exc:
        return {"num_bins": accumulator.num_bins, "skipped": str(exc)}


def smiyc_pixel_pass(source: Source, dataset: EvalDataset, scores: tuple[str, ...], max_images: int | None,
                     progress: bool) -> dict:
    """The benchmark's pixel metrics per score and bin strategy.

    Percentile bins see the maps stored as float16 (`as_submitted`), as the benchmark scores a submission.
    Uniform bins see the float32 maps: float16 cannot hold 4096 distinct edges in [0, 1] and NumPy (>= 2)
    refuses such bins, so the benchmark's own uniform mode fails on its float16 storage there.
    A score or strategy whose maps the benchmark cannot take (uniform bins and scores outside [0, 1], or
    float16 overflow) is reported as skipped, with the reason, instead of aborting the evaluation."""
    live = {s: {PERCENTILES: SmiycPixelMetrics(PERCENTILES), UNIFORM: SmiycPixelMetrics(UNIFORM)} for s in scores}
    skipped: dict[str, dict[str, str]] = {s: {} for s in scores}
    frames = 0
    for ood, maps in labelled_maps(source, dataset, max_images, progress, f"smiyc pixel {dataset.kind}"):
        frames += 1
        for s in scores:
            for strategy, acc in list(live[s].items()):
                try:
                    acc.update(as_submitted(maps[s]) if strategy == PERCENTILES else maps[s], ood)
                except ValueError as exc:
                    skipped[s][strategy] = str(exc)
                    del live[s][strategy]
    results = {s: {strategy: _finish(live[s][strategy]) if strategy in live[s] else {"skipped": skipped[s][strategy]}
                   for strategy in (PERCENTILES, UNIFORM)} for s in scores}
    return {"maps": {PERCENTILES: "float16 (as the benchmark stores them)", UNIFORM: "float32"},
            "labelled_images": frames, "scores": results}


def components_pass(source: Source, dataset: EvalDataset, threshold: float, max_images: int | None,
                    progress: bool) -> dict:
    """SMIYC component metrics of the float16-stored hybrid maps at ``score > threshold`` (the benchmark's
    SegEval rule), with the kind's size filter."""
    components = ComponentMetrics(COMPONENT_FILTERS[dataset.kind])
    for ood, maps in labelled_maps(source, dataset, max_images, progress, f"smiyc components {dataset.kind}"):
        components.update_scores(as_submitted(maps["hybrid"]), ood, threshold)
    return asdict(components.compute())


def smiyc_mode(source: Source, dataset: EvalDataset, scores: tuple[str, ...], max_images: int | None,
               progress: bool = True) -> dict:
    """``smiyc_pixel`` (all scores) and ``components_best_f1`` (hybrid, at the best-F1 threshold of its
    percentile curve, as the benchmark's SegEval takes it) for a SMIYC dataset."""
    pixel = smiyc_pixel_pass(source, dataset, scores, max_images, progress)
    out: dict = {"smiyc_pixel": pixel}
    hybrid = pixel["scores"]["hybrid"][PERCENTILES]
    if "best_F1_threshold" not in hybrid:
        out["components_best_f1_skipped"] = f"no best-F1 threshold: {hybrid['skipped']}"
        return jsonable(out)
    threshold = hybrid["best_F1_threshold"]
    try:
        out["components_best_f1"] = {"score": "hybrid", "threshold": threshold, "rule": "float16 score > threshold",
                                     **components_pass(source, dataset, threshold, max_images, progress)}
    except ValueError as exc:
        out["components_best_f1_skipped"] = str(exc)
    return jsonable(out)


def _row(name: str, strategy: str, entry: dict) -> str:
    """One table row, in percent."""
    if "AP" not in entry:
        return f"{name:<16}{strategy:<13}     n/a   (skipped: the reason is in metrics.json)"
    return (f"{name:<16}{strategy:<13}{100 * entry['AP']:>8.2f}{100 * entry['FPR95']:>8.2f}{100 * entry['AUROC']:>8.2f}"
            f"{100 * entry['best_F1']:>9.2f}")


def smiyc_table(metrics: dict) -> str:
    """The SMIYC-mode numbers as text ('' when there are none); values in percent."""
    if "smiyc_pixel" not in metrics:
        return ""
    rows = ["SMIYC benchmark mode (the official code's binned curves; percentiles on float16-stored maps):",
            f"{'score':<16}{'bins':<13}{'AP':>8}{'FPR95':>8}{'AUROC':>8}{'best F1':>9}"]
    for name, entry in metrics["smiyc_pixel"]["scores"].items():
        rows += [_row(name, strategy, entry[strategy]) for strategy in (PERCENTILES, UNIFORM)]
    c = metrics.get("components_best_f1")
    if c is not None:
        rows.append(f"components at the best-F1 threshold {c['threshold']:.6g} (hybrid, percentiles): "
                    f"sIoU {100 * (c['siou'] or 0):.2f}  PPV {100 * (c['ppv'] or 0):.2f}  "
                    f"mean F1 {100 * (c['mean_f1'] or 0):.2f}")
    else:
        rows.append(f"components at the best-F1 threshold: n/a ({metrics.get('components_best_f1_skipped', '')})")
    return "\n".join(rows)
