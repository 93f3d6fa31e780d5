"""Learning curves of training runs: the validation mIoU of OUT/val.csv (and chosen per-class IoUs) and the
training loss logged to OUT/tensorboard, one figure per call, so a reader can see where a run flattens.

    densehybrid-train curves --run runs/sim_segmenter_big --run runs/sim_finetune_real_big --out curves.png

Steps of a run resumed several times come from several event files; a step logged twice keeps its latest value."""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class RunCurves:
    name: str
    val_steps: list[int] = field(default_factory=list)
    val: dict[str, list[float]] = field(default_factory=dict)  # "miou", "iou_<class>" -> values at val_steps
    loss_steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)  # loss/total at loss_steps


def read_val_csv(path: Path) -> tuple[list[int], dict[str, list[float]]]:
    """Rows of a Validator CSV (step, miou, iou_<class>...), sorted by step; a repeated step keeps its last row."""
    rows: dict[int, dict[str, str]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows[int(row["step"])] = row
    steps = sorted(rows)
    columns = [c for c in (next(iter(rows.values())).keys() if rows else []) if c != "step"]
    return steps, {c: [float(rows[s][c]) for s in steps] for c in columns}


def read_scalar(logdir: Path, tag: str) -> tuple[list[int], list[float]]:
    """One TensorBoard scalar over every event file of `logdir` (in file order, later files win per step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[int, float] = {}
    for events in sorted(logdir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags().get("scalars", []):
            for event in acc.Scalars(tag):
                values[int(event.step)] = float(event.value)
    steps = sorted(values)
    return steps, [values[s] for s in steps]


def load_run(run: Path, loss_tag: str = "loss/total") -> RunCurves:
    curves = RunCurves(name=run.name)
    if (run / "val.csv").is_file():
        curves.val_steps, curves.val = read_val_csv(run / "val.csv")
    if (run / "tensorboard").is_dir():
        curves.loss_steps, curves.loss = read_scalar(run / "tensorboard", loss_tag)
    if not curves.val_steps and not curves.loss_steps:
        raise FileNotFoundError(f"{run}: neither val.csv nor TensorBoard losses found")
    return curves


def smooth(values: list[float], window: int) -> np.ndarray:
    """Trailing moving average over `window` points (shorter at the start), for a readable loss curve."""
    v = np.asarray(values, dtype=np.float64)
    if window <= 1 or v.size == 0:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, v.size + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def plot(runs: list[RunCurves], out: Path, classes: list[str], window: int = 20) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_val, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.2))
    offset = 0
    for run in runs:
        if run.val_steps:
            steps = np.asarray(run.val_steps) + offset
            ax_val.plot(steps, 100 * np.asarray(run.val["miou"]), "o-", label=f"{run.name} mIoU")
            for c in classes:
                key = f"iou_{c}"
                if key in run.val:
                    ax_val.plot(steps, 100 * np.asarray(run.val[key]), ".--", alpha=0.6, label=f"{run.name} {c}")
        if run.loss_steps:
            ax_loss.plot(np.asarray(run.loss_steps) + offset, smooth(run.loss, window), label=run.name)
        offset += max(run.val_steps[-1:] + run.loss_steps[-1:])
    ax_val.set(xlabel="step (runs one after another)", ylabel="val IoU [%]", title="validation")
    ax_loss.set(xlabel="step (runs one after another)", ylabel="training loss", title=f"training loss (mean of {window} logs)")
    for ax in (ax_val, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(runs: list[Path], out: Path, classes: list[str], window: int) -> int:
    loaded = [load_run(r) for r in runs]
    plot(loaded, out, classes, window)
    for run in loaded:
        if run.val_steps:
            last = ", ".join(f"{s}: {100 * m:.1f}" for s, m in zip(run.val_steps[-4:], run.val["miou"][-4:]))
            print(f"{run.name}: val mIoU at steps {last}")
    print(f"wrote {out}")
    return 0
