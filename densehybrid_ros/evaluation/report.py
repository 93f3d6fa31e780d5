"""Evaluation report: metrics.json, groups.npz (the bootstrap's grouped statistics, for comparing evaluations:
evaluation/compare.py), a summary table, PR/ROC curves, score histograms and example maps."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from densehybrid_ros.datasets.base import OOD_ANOMALY
from densehybrid_ros.evaluation.bootstrap import GROUPS_FILE
from densehybrid_ros.evaluation.evaluate import EvalResult
from densehybrid_ros.paths import written_whole
from densehybrid_ros.perception.presentation import heatmap, overlay, palette


def curves(values: np.ndarray, is_anomaly: np.ndarray) -> tuple[np.ndarray, ...]:
    """(recall, precision, fpr, tpr) over the distinct thresholds of a (sub)sample, highest score first."""
    order = np.argsort(-values, kind="stable")
    v, y = values[order], is_anomaly[order]
    last = np.r_[np.flatnonzero(np.diff(v)), v.size - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    P, N = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return tp / P, tp / np.maximum(tp + fp, 1), fp / N, tp / P


def percent(v) -> str:
    """A fraction as a percentage with two decimals ('12.34'), '-' for a missing value."""
    return "-" if v is None else f"{100 * v:.2f}"


def interval_text(entry: dict | None, key: str) -> str:
    """'[10.10, 14.20]', the interval of `key` in an intervals dict, as percentages; '' where there is none."""
    iv = (entry or {}).get(key)
    return "" if iv is None else f"[{percent(iv['low'])}, {percent(iv['high'])}]"


def _edge(v) -> str:
    return "inf" if v is None else f"{v:g}"  # metrics.json writes inf as null


BINNING_TOLERANCE = 0.01  # 1 point of AP/FPR95/AUROC: the score grid's binning error is normally far below


def binning_warnings(metrics: dict) -> list[str]:
    """A line per anomaly metric whose bootstrap replicates (binned) disagree with the exact point estimate by
    more than `BINNING_TOLERANCE`: its interval is then not to be trusted."""
    out = []
    for name, entry in metrics["scores"].items():
        for key, iv in (entry.get("intervals") or {}).items():
            binned = iv.get("binned_point")
            if binned is not None and abs(binned - iv["point"]) > BINNING_TOLERANCE:
                out.append(f"WARNING: {name} {key}: the binned statistics give {percent(binned)} against the exact "
                           f"{percent(iv['point'])}; this interval is unreliable")
    return out


def paired_rows(metrics: dict) -> list[str]:
    """The reference score minus each other score (AP, FPR95) with the paired 95% interval, and whether that interval
    holds 0 ("within noise")."""
    paired = metrics.get("paired")
    if not paired:
        return []
    ref = paired["reference"]
    rows = [f"paired differences, {ref} minus (same resampled groups):"]
    for name, d in paired["differences"].items():
        rows.append(f"  {name:<15}" + "; ".join(paired_text(key.upper(), d[key]) for key in ("ap", "fpr95")))
    return rows


def paired_text(label: str, iv: dict) -> str:
    """'AP +1.23 [+0.40, +2.10]' for a paired difference, with ' within noise' where its interval holds 0."""
    if iv["point"] is None or iv["low"] is None or iv["high"] is None:  # metrics.json writes NaN as null
        return f"{label} n/a"
    noise = " within noise" if iv["low"] <= 0.0 <= iv["high"] else ""
    return f"{label} {100 * iv['point']:+.2f} [{100 * iv['low']:+.2f}, {100 * iv['high']:+.2f}]{noise}"


def summary_table(metrics: dict) -> str:
    boot = metrics.get("bootstrap")
    rows = []
    if boot:
        rows.append(f"95% intervals: bootstrap over {boot['groups']} {boot['grouped_by']}s, {boot['resamples']} resamples")
    rows.append(f"{'score':<16}{'AP':>8}{'':>17}{'FPR95':>8}{'':>17}{'AUROC':>8}"
                f"{'TPR@FPR1%':>11}{'TPR@FPR0.1%':>13}{'FPR@TPR50%':>12}")
    for name, entry in metrics["scores"].items():
        a = entry.get("anomaly")
        if a is None:
            rows.append(f"{name:<16}{'n/a':>8}{'':>17}{'n/a':>8}{'':>17}{'n/a':>8}   ({entry.get('anomaly_skipped', '')})")
            continue
        iv = entry.get("intervals")
        op_f, op_t = a.get("tpr_at_fpr") or {}, a.get("fpr_at_tpr") or {}
        rows.append(f"{name:<16}{percent(a['ap']):>8}{interval_text(iv, 'ap'):>17}{percent(a['fpr95']):>8}{interval_text(iv, 'fpr95'):>17}"
                    f"{percent(a['auroc']):>8}{percent(op_f.get('0.01', {}).get('tpr')):>11}"
                    f"{percent(op_f.get('0.001', {}).get('tpr')):>13}{percent(op_t.get('0.5', {}).get('fpr')):>12}")
    rows += binning_warnings(metrics)
    rows += paired_rows(metrics)
    if "closed_set" in metrics:
        c = metrics["closed_set"]
        rows.append(f"mIoU {percent(c['miou'])} {interval_text(c.get('intervals'), 'miou')}")
        ious = c.get("iou", {})
        rows.append("IoU per class: " + ", ".join(f"{k} {percent(v)}" for k, v in ious.items()))
    if "open_set" in metrics:
        o = metrics["open_set"]
        rows.append(f"open-mIoU {100 * o['open_miou']:.2f}  mean F1 {100 * o['mean_f1']:.2f}  (threshold {o['threshold']:.4g})")
    if metrics.get("operating_points"):
        rows.append(f"{'operating point':<16}{'threshold':>11}{'TPR':>8}{'FPR':>8}{'open-mIoU':>11}{'mean F1':>9}")
        for name, p in metrics["operating_points"].items():
            rows.append(f"{name:<16}{p['threshold']:>11.4g}{percent(p['tpr']):>8}{percent(p['fpr']):>8}"
                        f"{percent(p.get('open_miou')):>11}{percent(p.get('mean_f1')):>9}")
        for name in metrics["operating_points"]:
            bins = metrics.get("recall_by_distance") or []
            if bins:
                rows.append(f"  {name} recall by distance [m]: " + "; ".join(
                    f"{_edge(b['lower'])}-{_edge(b['upper'])}: {percent(b['recall'].get(name))}" for b in bins))
    if "cross_fold" in metrics:
        c = metrics["cross_fold"]
        rows.append(f"two-fold protocol: open-mIoU {100 * c['open_miou']:.2f}  mean F1 {100 * c['mean_f1']:.2f}  "
                    f"mIoU {100 * c['miou']:.2f}")
    hybrid = metrics["scores"].get("hybrid", {})
    if hybrid.get("distance_bins"):
        rec = {(b["lower"], b["upper"]): b for b in metrics.get("recall_by_distance", [])}
        rows.append("hybrid by distance [m]: " + "; ".join(
            f"{_edge(b['lower'])}-{_edge(b['upper'])}: AP {percent((b.get('metrics') or {}).get('ap'))}"
            f" recall@t {percent(rec.get((b['lower'], b['upper']), {}).get('recall', {}).get('threshold'))}"
            for b in hybrid["distance_bins"]))
    near = hybrid.get("near")
    if near and near.get("metrics"):
        rows.append(f"hybrid nearer than {_edge(near['upper'])} m: AP {percent(near['metrics']['ap'])}  "
                    f"FPR95 {percent(near['metrics']['fpr95'])}")
    if hybrid.get("size_bins"):
        rec = {(b["lower"], b["upper"]): b for b in metrics.get("recall_by_size", [])}
        rows.append("hybrid by anomaly size [px]: " + "; ".join(
            f"{_edge(b['lower'])}-{_edge(b['upper'])} ({b['num_components']}): AP {percent(b['ap'])}"
            f" recall@t {percent(rec.get((b['lower'], b['upper']), {}).get('recall', {}).get('threshold'))}"
            for b in hybrid["size_bins"]))
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
    """Write metrics.json, groups.npz (where the result has grouped statistics), curves.png, histograms.png,
    examples/*.png and report.md into `out`."""
    out = Path(out)
    (out / "examples").mkdir(parents=True, exist_ok=True)
    # before metrics.json, whose existence marks a finished evaluation; never a stale one beside a new metrics.json
    if result.groups is not None:
        with written_whole(out / GROUPS_FILE) as partial:
            result.groups.save(partial)
    else:
        (out / GROUPS_FILE).unlink(missing_ok=True)
    with written_whole(out / "metrics.json") as partial:  # recipes skip evaluations whose metrics.json exists
        partial.write_text(json.dumps(result.metrics, indent=1) + "\n")
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
