"""Compare two evaluations of the same frames (two models, or two scores of two models) with paired bootstrap
intervals: do their AP and FPR95 differ beyond the noise?

    python -m densehybrid_ros.evaluation.compare A_DIR B_DIR [--scores hybrid,max_logit:energy]
                                                 [--resamples 1000] [--seed 0] [--json OUT]

A_DIR and B_DIR are `densehybrid-eval --out` directories: metrics.json and groups.npz (`bootstrap.GroupedStatistics`:
per score and group (street) the histograms the intervals are computed from). The groups are aligned by key, ONE
set of group weights (`bootstrap.group_weights`, A's group order) resamples both, and each run's AP / FPR95 / AUROC
of a replicate comes from its own histograms on its own score grid, as its report's intervals do (with A's group
order, --seed and --resamples of the evaluation, A's intervals are its report's). The interval of the per-replicate
differences A - B (`bootstrap.paired_difference`) says whether the two differ beyond the noise, like the report's
paired lines for two scores of one model. Point estimates are the exact pooled ones of each metrics.json.

--scores names A's scores (default: every score both evaluations have, in A's order); each is compared with B's score
of the same name or, written A_NAME:B_NAME, with B's B_NAME.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from densehybrid_ros.evaluation.bootstrap import (DEFAULT_LEVEL, DEFAULT_RESAMPLES, GROUPS_FILE, GroupedStatistics,
                                                  Interval, anomaly_metric_picks, group_weights, paired_difference,
                                                  percentile_interval)
from densehybrid_ros.evaluation.evaluate import jsonable
from densehybrid_ros.evaluation.report import BINNING_TOLERANCE, interval_text, paired_text, percent


@dataclass
class Evaluation:
    """One evaluation directory: its metrics.json and its grouped statistics."""

    path: Path
    metrics: dict
    statistics: GroupedStatistics


def load_evaluation(path: str | Path) -> Evaluation:
    """metrics.json and groups.npz of an evaluation directory (ValueError naming what is missing)."""
    path = Path(path)
    if not (path / "metrics.json").is_file():
        raise ValueError(f"{path}: no metrics.json; is this a densehybrid-eval --out directory?")
    if not (path / GROUPS_FILE).is_file():
        raise ValueError(f"{path}: no {GROUPS_FILE} (evaluations written before it was saved have none); "
                         f"re-run the evaluation (densehybrid-eval ... --out {path}) to compare it")
    return Evaluation(path, json.loads((path / "metrics.json").read_text()),
                      GroupedStatistics.load(path / GROUPS_FILE))


def score_pairs(a: Evaluation, b: Evaluation, scores: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(A's score, B's score) pairs: `scores` of A (an entry "X:Y" pairs A's X with B's Y) with the same names of B;
    by default every score both have, in A's order."""
    if scores is None:
        scores = [s for s in a.statistics.scores if s in b.statistics.scores]
        if not scores:
            raise ValueError(f"{a.path} and {b.path} have no score in common ({', '.join(a.statistics.scores)} vs "
                             f"{', '.join(b.statistics.scores)}); name them with --scores A_NAME:B_NAME")
    pairs = []
    for entry in scores:
        name_a, sep, name_b = entry.partition(":")
        if not name_a or (sep and not name_b):
            raise ValueError(f"--scores {entry!r}: write a score name X, or X:Y for A's X against B's Y")
        pairs.append((name_a, name_b if sep else name_a))
    for ev, names, side in ((a, [p[0] for p in pairs], "A"), (b, [p[1] for p in pairs], "B")):
        missing = [s for s in dict.fromkeys(names) if s not in ev.statistics.scores]
        if missing:
            raise ValueError(f"{side} ({ev.path}) has no grouped statistics of score(s) {', '.join(missing)}; "
                             f"it has {', '.join(ev.statistics.scores) or 'none'}")
    return pairs


def aligned(a: Evaluation, b: Evaluation) -> GroupedStatistics:
    """B's statistics with its groups in A's order (ValueError naming the groups only one of them has)."""
    keys_a, keys_b = set(a.statistics.keys), set(b.statistics.keys)
    if keys_a != keys_b:
        only = lambda keys: ", ".join(sorted(keys)[:10]) + (" ..." if len(keys) > 10 else "")  # noqa: E731
        parts = [f"{len(s)} only in {side} ({ev.path}): {only(s)}"
                 for s, side, ev in ((keys_a - keys_b, "A", a), (keys_b - keys_a, "B", b)) if s]
        raise ValueError("the evaluations have different groups, so they are not of the same frames: "
                         + "; ".join(parts))
    return b.statistics.reordered(a.statistics.keys)


def _check_same_pixels(a: Evaluation, stats_b: GroupedStatistics, name_a: str, name_b: str) -> None:
    """Same keys but other frames (another split: sim streets are scene0, scene1, ... in every split; another
    --max-images) show as other numbers of anomaly / inlier pixels per group."""
    g = len(a.statistics.keys)
    counts_a = [c.sum(1) for c in a.statistics.scores[name_a].counts(g)]
    counts_b = [c.sum(1) for c in stats_b.scores[name_b].counts(g)]
    differ = np.flatnonzero((counts_a[0] != counts_b[0]) | (counts_a[1] != counts_b[1]))
    if differ.size:
        i = differ[0]
        raise ValueError(f"{differ.size} of {g} groups hold different pixels in A and B (not the same frames and "
                         f"labels), e.g. {a.statistics.keys[i]!r}: {counts_a[0][i]} anomaly / {counts_a[1][i]} inlier "
                         f"pixels in A ({name_a}), {counts_b[0][i]} / {counts_b[1][i]} in B ({name_b})")


def _point(metrics: dict, score: str, key: str) -> float:
    """The exact pooled metric of metrics.json (NaN where it has none)."""
    value = ((metrics.get("scores", {}).get(score) or {}).get("anomaly") or {}).get(key)
    return math.nan if value is None else float(value)


def compare(a: Evaluation, b: Evaluation, pairs: Sequence[tuple[str, str]], resamples: int = DEFAULT_RESAMPLES,
            seed: int = 0, level: float = DEFAULT_LEVEL) -> dict:
    """Per pair, each run's intervals of AP / FPR95 / AUROC and the paired interval of A - B, on one set of group
    weights (see the module doc); JSON-ready (NaN -> null)."""
    if resamples < 1:
        raise ValueError(f"--resamples must be >= 1, got {resamples}")
    stats_b = aligned(a, b)
    num_groups = len(a.statistics.keys)
    if num_groups < 2:
        raise ValueError(f"the evaluations have {num_groups} group(s): a bootstrap over groups needs at least 2")
    weights = group_weights(num_groups, resamples, seed)
    picks = anomaly_metric_picks()
    replicates_a: dict[str, dict[str, np.ndarray]] = {}
    replicates_b: dict[str, dict[str, np.ndarray]] = {}
    out_pairs = []
    for name_a, name_b in pairs:
        _check_same_pixels(a, stats_b, name_a, name_b)
        if name_a not in replicates_a:
            replicates_a[name_a] = a.statistics.scores[name_a].replicates(weights)
        if name_b not in replicates_b:
            replicates_b[name_b] = stats_b.scores[name_b].replicates(weights)
        rep_a, rep_b = replicates_a[name_a], replicates_b[name_b]
        entry: dict = {"score_a": name_a, "score_b": name_b, "a": {}, "b": {}, "difference": {}}
        for i, key in enumerate(picks):
            point_a, point_b = _point(a.metrics, name_a, key), _point(b.metrics, name_b, key)
            for side, point, rep in (("a", point_a, rep_a), ("b", point_b, rep_b)):
                binned = rep.get("binned")
                entry[side][key] = asdict(Interval(point, *percentile_interval(rep[key], level),
                                                   None if binned is None else float(binned[i])))
            entry["difference"][key] = asdict(paired_difference(point_a, point_b, rep_a[key], rep_b[key], level))
        out_pairs.append(entry)
    run = lambda ev: {"dir": str(ev.path), "dataset": ev.metrics.get("dataset")}  # noqa: E731
    return jsonable({"a": run(a), "b": run(b),
                     "bootstrap": {"resamples": resamples, "seed": seed, "level": level, "groups": num_groups,
                                   "grouped_by": a.statistics.grouped_by},
                     "pairs": out_pairs})


def _label(pair: dict) -> str:
    return pair["score_a"] if pair["score_a"] == pair["score_b"] else f"{pair['score_a']}:{pair['score_b']}"


def _dataset(entry: dict | None) -> str:
    if not entry:
        return ""
    return f" ({entry.get('kind')}:{entry.get('root')} split {entry.get('split')}, {entry.get('images')} images)"


def compare_table(result: dict) -> str:
    """What the command prints: both runs' AP and FPR95 with their intervals, then A - B per pair with the paired
    interval and whether it holds 0 ("within noise"), as the report's paired lines."""
    boot = result["bootstrap"]
    width = max(16, *(len(_label(p)) + 2 for p in result["pairs"]))
    rows = [f"A: {result['a']['dir']}{_dataset(result['a']['dataset'])}",
            f"B: {result['b']['dir']}{_dataset(result['b']['dataset'])}",
            f"{100 * boot['level']:g}% intervals: bootstrap over {boot['groups']} {boot['grouped_by']}s, "
            f"{boot['resamples']} resamples (seed {boot['seed']}), the same draws for A and B",
            (f"{'score':<{width}}" + "".join(f"{name:>8}{'':>17}" for name in ("A AP", "A FPR95", "B AP", "B FPR95"))
             ).rstrip()]
    warnings = []
    for pair in result["pairs"]:
        rows.append(f"{_label(pair):<{width}}" + "".join(
            f"{percent(pair[side][key]['point']):>8}{interval_text(pair[side], key):>17}" for side in ("a", "b")
            for key in ("ap", "fpr95")))
        for side in ("a", "b"):
            for key in ("ap", "fpr95"):
                iv = pair[side][key]
                point, binned = iv["point"], iv["binned_point"]
                if None not in (point, binned) and abs(binned - point) > BINNING_TOLERANCE:
                    warnings.append(f"WARNING: {side.upper()} {pair['score_' + side]} {key}: the binned statistics "
                                    f"give {percent(binned)} against the exact {percent(point)}; this "
                                    "interval is unreliable")
    rows += warnings
    rows.append("paired differences, A minus B (same resampled groups):")
    for pair in result["pairs"]:
        d = pair["difference"]
        rows.append(f"  {_label(pair):<{width - 1}}"
                    + "; ".join(paired_text(key.upper(), d[key]) for key in ("ap", "fpr95")))
    return "\n".join(rows)


def _names(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"no score names in {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m densehybrid_ros.evaluation.compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path, metavar="A_DIR", help="an evaluation directory (densehybrid-eval --out)")
    ap.add_argument("b", type=Path, metavar="B_DIR", help="an evaluation of the same frames")
    ap.add_argument("--scores", type=_names, default=None,
                    help="A's scores, comma-separated, each X or X:Y (B's Y); default: every score both have")
    ap.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES)
    ap.add_argument("--seed", type=int, default=0, help="of the group draws (densehybrid-eval's is 0)")
    ap.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the numbers to OUT")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        a, b = load_evaluation(args.a), load_evaluation(args.b)
        result = compare(a, b, score_pairs(a, b, args.scores), args.resamples, args.seed)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1) + "\n")
    except (ValueError, OSError) as exc:
        print(f"compare: error: {exc}", file=sys.stderr)
        return 2
    print(compare_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
