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


def rows_by_step(path: Path, what: str) -> tuple[list[int], list[str], dict[int, dict[str, str]]]:
    """A CSV with a `step` column: its steps sorted, its other columns, and the rows by step (a repeated step, as
    after a resume, keeps its last row). ValueError names `what` the file should have been when it has no step."""
    rows: dict[int, dict[str, str]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if "step" not in (reader.fieldnames or []):
            raise ValueError(f"{path}: no 'step' column (not {what}?)")
        columns = [c for c in reader.fieldnames if c != "step"]
        for row in reader:
            rows[int(row["step"])] = row
    return sorted(rows), columns, rows


def read_val_csv(path: Path) -> tuple[list[int], dict[str, list[float]]]:
    """Rows of a Validator CSV (step, miou, iou_<class>...), sorted by step; a repeated step keeps its last row."""
    steps, columns, rows = rows_by_step(path, "a Validator val.csv")
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


# Joint SynDenseHybrid diagnostics (training/synthetic.py: JointDiagnostics writes OUT/joint_diagnostics.csv)
JOINT_COLUMNS = ("jsd_synthetic", "jsd_inlier", "max_softmax_synthetic", "max_softmax_inlier", "mle_bpd",
                 "boundary_grad_share", "jsd_weight", "sample_saturated")


def read_joint_diagnostics(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Steps and float columns of a joint_diagnostics.csv, sorted by step (a step logged twice keeps its last row;
    empty cells, as in rows of an older version, are NaN)."""
    ordered, columns, rows = rows_by_step(path, "a joint_diagnostics.csv")
    if not rows:
        raise ValueError(f"{path}: no diagnostics rows")
    steps = np.array(ordered)
    values = {c: np.array([float(rows[s][c]) if rows[s].get(c) not in (None, "") else np.nan for s in ordered])
              for c in columns}
    return steps, values


def joint_summary(values: dict[str, np.ndarray], edge: int = 5) -> dict[str, tuple[float, float]]:
    """(first, last) per JOINT_COLUMNS column: the means of its first and last `edge` finite values (NaN if none)."""
    if edge < 1:
        raise ValueError(f"edge must be >= 1, got {edge}")
    out = {}
    for name in JOINT_COLUMNS:
        v = values.get(name, np.array([]))
        v = v[np.isfinite(v)]
        out[name] = (float(v[:edge].mean()), float(v[-edge:].mean())) if v.size else (float("nan"), float("nan"))
    return out


def plot_joint(steps: np.ndarray, values: dict[str, np.ndarray], out: Path, title: str = "") -> None:
    """Three panels over the joint steps: the segmenter's JSD-to-uniform (4.19) on pasted synthetic vs inlier pixels
    (samples at the boundary of the inlier distribution sit below the inliers), the flow's inlier bits/dim (L_mle of
    the replaced patches), and the boundary term's share of the flow gradient with lambda."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nan = np.full(steps.shape, np.nan)
    fig, (ax_jsd, ax_bpd, ax_share) = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, style in (("synthetic", "o-"), ("inlier", "s-")):
        ax_jsd.plot(steps, values.get(f"jsd_{name}", nan), style, ms=3, label=f"JSD to uniform, {name} pixels")
    ax_jsd.plot(steps, values.get("sample_saturated", nan), ":", label="share of sample values at 0 or 1 (no gradient)")
    ax_jsd.set(xlabel="joint step", ylabel="JSD [nats] (ln 2 at most)", title="segmenter on pasted vs inlier pixels")
    ax_bpd.plot(steps, values.get("mle_bpd", nan), ".-")
    ax_bpd.set(xlabel="joint step", ylabel="bits/dim", title="flow: L_mle on the replaced inlier patches")
    ax_share.plot(steps, values.get("boundary_grad_share", nan), ".-", label="|grad lambda L_jsd| / |grad L_mle|")
    ax_share.plot(steps, values.get("jsd_weight", nan), "--", label="lambda")
    ax_share.set(xlabel="joint step", title="boundary term's share of the flow gradient", yscale="log")
    for ax in (ax_jsd, ax_bpd, ax_share):
        ax.grid(alpha=0.3)
    for ax in (ax_jsd, ax_share):
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def joint_main(run: Path, out: Path, edge: int = 5) -> int:
    path = run / "joint_diagnostics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run} a joint (synthetic-negative) run's out directory?")
    steps, values = read_joint_diagnostics(path)
    plot_joint(steps, values, out, run.name)
    for name, (first, last) in joint_summary(values, edge).items():
        print(f"{name}: {first:.4g} -> {last:.4g} (mean of the first / last {edge} logged values, steps "
              f"{steps[0]}-{steps[-1]})")
    print(f"wrote {out}")
    return 0
