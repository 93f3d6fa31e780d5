"""Evaluation report: metrics.json, a summary table, PR/ROC curves, score histograms and example maps."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from densehybrid_ros.datasets.base import OOD_ANOMALY
from densehybrid_ros.evaluation.evaluate import EvalResult
from densehybrid_ros.visualize import heatmap, overlay, palette


def curves(values: np.ndarray, is_anomaly: np.ndarray) -> tuple[np.ndarray, ...]:
    """(recall, precision, fpr, tpr) over the distinct thresholds of a (sub)sample, highest score first."""
    order = np.argsort(-values, kind="stable")
    v, y = values[order], is_anomaly[order]
    last = np.r_[np.flatnonzero(np.diff(v)), v.size - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    P, N = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return tp / P, tp / np.maximum(tp + fp, 1), fp / N, tp / P


def summary_table(metrics: dict) -> str:
    rows = [f"{'score':<16}{'AP':>8}{'FPR95':>8}{'AUROC':>8}"]
    for name, entry in metrics["scores"].items():
        a = entry.get("anomaly")
        if a is None:
            rows.append(f"{name:<16}{'n/a':>8}{'n/a':>8}{'n/a':>8}   ({entry.get('anomaly_skipped', '')})")
        else:
            rows.append(f"{name:<16}{100 * a['ap']:>8.2f}{100 * a['fpr95']:>8.2f}{100 * a['auroc']:>8.2f}")
    if "closed_set" in metrics:
        rows.append(f"mIoU {100 * metrics['closed_set']['miou']:.2f}")
    if "open_set" in metrics:
        o = metrics["open_set"]
        rows.append(f"open-mIoU {100 * o['open_miou']:.2f}  mean F1 {100 * o['mean_f1']:.2f}  (threshold {o['threshold']:.4g})")
    if "cross_fold" in metrics:
        c = metrics["cross_fold"]
        rows.append(f"two-fold protocol: open-mIoU {100 * c['open_miou']:.2f}  mean F1 {100 * c['mean_f1']:.2f}  "
                    f"mIoU {100 * c['miou']:.2f}")
    if "components" in metrics:
        c = metrics["components"]
        rows.append(f"components: sIoU {100 * (c['siou'] or 0):.2f}  PPV {100 * (c['ppv'] or 0):.2f}  mean F1 {100 * (c['mean_f1'] or 0):.2f}")
    return "\n".join(rows)


def _plot_curves(result: EvalResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_pr, ax_roc) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, (values, labels) in result.subsample.items():
        if labels.size == 0 or labels.all() or not labels.any():
            continue
        recall, precision, fpr, tpr = curves(values.astype(np.float64), labels)
        ax_pr.plot(recall, precision, label=name)
        ax_roc.plot(fpr, tpr, label=name)
    ax_pr.set(xlabel="recall", ylabel="precision", title="PR (pixel subsample)", xlim=(0, 1), ylim=(0, 1.02))
    ax_roc.set(xlabel="FPR", ylabel="TPR", title="ROC (pixel subsample)", xlim=(0, 1), ylim=(0, 1.02))
    ax_roc.axhline(0.95, color="grey", lw=0.5, ls="--")
    for ax in (ax_pr, ax_roc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_histograms(result: EvalResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, (v, _) in result.subsample.items() if v.size]
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        values, labels = result.subsample[name]
        lo, hi = np.percentile(values, [0.5, 99.5]) if values.size else (0, 1)
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 60)
        ax.hist(values[~labels], bins=bins, density=True, alpha=0.6, label="inlier")
        ax.hist(values[labels], bins=bins, density=True, alpha=0.6, label="anomaly")
        ax.set(title=name, xlabel="score (higher = more anomalous)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _example_image(ex, classes_colors, threshold: float | None) -> np.ndarray:
    s, p = ex.sample, ex.prediction
    table = palette(classes_colors)
    lo, hi = np.percentile(p.hybrid, [1, 99.5])
    tiles = [s.image, heatmap(p.hybrid, float(lo), float(hi) if hi > lo else float(lo) + 1)]
    tiles.append(overlay(s.image, p.open_set if p.open_set is not None else p.class_ids, table))
    gt = np.zeros_like(s.image)
    gt[s.ood == OOD_ANOMALY] = (255, 140, 0)
    gt[s.ood == 255] = (60, 60, 60)
    tiles.append(cv2.addWeighted(s.image, 0.5, gt, 0.5, 0.0))
    return np.hstack(tiles)


def write_report(result: EvalResult, out: Path, classes_colors: list, title: str = "densehybrid_ros evaluation") -> Path:
    """Write metrics.json, curves.png, histograms.png, examples/*.png and report.md into `out`."""
    out = Path(out)
    (out / "examples").mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=1) + "\n")
    _plot_curves(result, out / "curves.png")
    _plot_histograms(result, out / "histograms.png")
    names = []
    for i, ex in enumerate(result.examples):
        name = f"examples/{i:02d}_{Path(ex.sample.name).name}.png"
        img = _example_image(ex, classes_colors, result.metrics.get("threshold"))
        cv2.imwrite(str(out / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        names.append(name)
    d = result.metrics["dataset"]
    lines = [f"# {title}", "", f"Dataset `{d['kind']}:{d['root']}` split `{d['split']}`: {d['images']} images, "
             f"{d['labelled_images']} labelled, {d['images_with_anomalies']} with anomalies.", "",
             "Metrics are exact and pooled over all valid pixels (void excluded); values in percent.", "",
             "```", summary_table(result.metrics), "```", "", "![curves](curves.png)", "", "![histograms](histograms.png)", ""]
    if names:
        lines += ["Examples: image | hybrid score | open-set map (unknown in the unknown colour) | ground truth "
                  "(anomaly orange, void grey)", ""]
        lines += [f"![{n}]({n})" for n in names]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.md"
