"""Comparing two evaluations of the same frames (evaluation/compare.py) on hand-made evaluations written by the real
path (`evaluate` + `write_report`): point estimates against sklearn on the pooled pixels, the paired interval against
sklearn's per-replicate differences on the drawn streets (aligned by key although B saw the streets in another order),
a run against itself, a clearly worse run, scores on grids of other ranges, and the errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_curve

from densehybrid_ros.datasets.base import EvalSample
from densehybrid_ros.evaluation.bootstrap import GROUPS_FILE, GroupedStatistics, group_weights, percentile_interval
from densehybrid_ros.evaluation.compare import main as compare_main
from densehybrid_ros.evaluation.evaluate import EvalOptions, evaluate
from densehybrid_ros.evaluation.report import write_report
from densehybrid_ros.predictor import Prediction

SCORES = ("hybrid", "max_logit")
STREETS, FRAMES_PER_STREET, SHAPE = 8, 2, (20, 30)
EVAL_RESAMPLES = 200  # the evaluations' own intervals (metrics.json); compare runs with the same seed 0


class Streets:
    """Labelled frames (ood 0 inlier / 1 anomaly / 255 void) of `streets` streets, in `order` (frame indices)."""

    kind, split, root, classes = "streets", "val", Path("streets"), None

    def __init__(self, streets: int = STREETS, order: list[int] | None = None, seed: int = 3) -> None:
        rng = np.random.default_rng(seed)
        self.ood = {}
        for i in range(streets * FRAMES_PER_STREET):
            ood = (rng.random(SHAPE) < rng.uniform(0.05, 0.2)).astype(np.uint8)
            ood[0] = 255
            self.ood[f"f{i:02d}"] = ood
        names = sorted(self.ood)
        self.names = [names[i] for i in order] if order is not None else names

    def __len__(self) -> int:
        return len(self.names)

    def group(self, i: int) -> str:
        return street(self.names[i])

    def __getitem__(self, i: int) -> EvalSample:
        name = self.names[i]
        return EvalSample(name=name, image=np.zeros(SHAPE + (3,), np.uint8), ood=self.ood[name])


def street(frame: str) -> str:
    return f"street{int(frame[1:]) // FRAMES_PER_STREET}"


class MapSource:
    """A model as fixed score maps per frame name (`maps[name][score]`)."""

    num_classes, class_names, scores, threshold, operating_points = 1, (), SCORES, None, {}

    def __init__(self, maps: dict[str, dict[str, np.ndarray]]) -> None:
        self.maps = maps

    def predict(self, sample: EvalSample) -> Prediction:
        m = self.maps[sample.name]
        return Prediction(class_ids=np.zeros(SHAPE, np.uint8), hybrid=m["hybrid"], open_set=None,
                          scores={"max_logit": m["max_logit"]})


def model_maps(frames: Streets, seed: int, separation: float = 1.0) -> dict[str, dict[str, np.ndarray]]:
    """Scores higher on anomaly pixels by a street-dependent amount (streets differ in difficulty); max_logit is the
    weaker score."""
    rng = np.random.default_rng(seed)
    shift = {f"street{g}": 0.6 + 0.5 * g for g in range(STREETS)}
    maps = {}
    for name, ood in sorted(frames.ood.items()):
        anomaly = (ood == 1) * separation * shift[street(name)]
        maps[name] = {"hybrid": (rng.normal(size=SHAPE) + anomaly).astype(np.float32),
                      "max_logit": (1.5 * rng.normal(size=SHAPE) + 0.6 * anomaly).astype(np.float32)}
    return maps


def write_evaluation(out: Path, frames: Streets, maps: dict) -> Path:
    options = EvalOptions(scores=SCORES, keep_examples=0, bootstrap_resamples=EVAL_RESAMPLES)
    write_report(evaluate(MapSource(maps), frames, options, progress=False), out, [])
    return out


def pooled(frames: Streets, maps: dict, score: str, names: list[str] | None = None):
    """(labels, scores) of the valid pixels of frames `names` (all by default), pooled, for sklearn."""
    names = sorted(frames.ood) if names is None else names
    keep = [frames.ood[n] != 255 for n in names]
    labels = np.concatenate([frames.ood[n][k] == 1 for n, k in zip(names, keep)])
    return labels, np.concatenate([maps[n][score][k] for n, k in zip(names, keep)]).astype(np.float64)


def sklearn_fpr95(labels: np.ndarray, scores: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(fpr[np.flatnonzero(tpr >= 0.95)[0]])  # the first point, from high to low threshold


def run_compare(a: Path, b: Path, out: Path, *args: str) -> dict:
    assert compare_main([str(a), str(b), "--json", str(out), *args]) == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A: a model on the streets in dataset order; B: another model on the same frames read in reverse order (its
    group index differs); worse: A with every anomaly pixel's scores lowered; scaled: A's scores times 1024 (the
    same ranking on a grid of another range)."""
    root = tmp_path_factory.mktemp("compare")
    frames = Streets()
    reverse = Streets(order=list(range(len(frames)))[::-1])
    maps_a, maps_b = model_maps(frames, seed=1), model_maps(frames, seed=2, separation=0.8)
    maps_worse = {n: {s: m - np.float32(1.5) * (frames.ood[n] == 1) for s, m in v.items()} for n, v in maps_a.items()}
    maps_scaled = {n: {s: m * np.float32(1024) for s, m in v.items()} for n, v in maps_a.items()}
    return {"frames": frames, "maps": {"a": maps_a, "b": maps_b, "worse": maps_worse, "scaled": maps_scaled},
            "a": write_evaluation(root / "a", frames, maps_a), "b": write_evaluation(root / "b", reverse, maps_b),
            "worse": write_evaluation(root / "worse", frames, maps_worse),
            "scaled": write_evaluation(root / "scaled", frames, maps_scaled)}


def test_groups_file_holds_the_per_street_counts_of_the_pixels(runs):
    frames, maps = runs["frames"], runs["maps"]["b"]
    stats = GroupedStatistics.load(runs["b"] / GROUPS_FILE)
    assert stats.keys == tuple(f"street{g}" for g in range(STREETS))[::-1]  # B read the streets last first
    assert stats.grouped_by == "street" and set(stats.scores) == set(SCORES)
    for score, hist in stats.scores.items():
        pos, neg = hist.counts(len(stats.keys))
        grid = hist.grid
        for g, key in enumerate(stats.keys):
            labels, values = pooled(frames, maps, score, [n for n in sorted(frames.ood) if street(n) == key])
            cells = np.floor((values - grid.lo) / grid.step).astype(int)  # each pixel's cell, by hand
            assert np.array_equal(pos[g], np.bincount(cells[labels], minlength=grid.num_bins))
            assert np.array_equal(neg[g], np.bincount(cells[~labels], minlength=grid.num_bins))
    assert (runs["b"] / GROUPS_FILE).stat().st_size < 60_000


def test_point_estimates_and_paired_interval_match_sklearn(runs, tmp_path):
    frames, maps_a, maps_b = runs["frames"], runs["maps"]["a"], runs["maps"]["b"]
    resamples = 40
    got = run_compare(runs["a"], runs["b"], tmp_path / "c.json", "--scores", "hybrid,hybrid:max_logit",
                      "--resamples", str(resamples), "--seed", "4")
    assert got["bootstrap"] == {"resamples": resamples, "seed": 4, "level": 0.95, "groups": STREETS,
                                "grouped_by": "street"}
    assert [(p["score_a"], p["score_b"]) for p in got["pairs"]] == [("hybrid", "hybrid"), ("hybrid", "max_logit")]
    # A's group order is its dataset's: street0, street1, ...; one draw for both runs
    weights = group_weights(STREETS, resamples, 4)
    by_street = {f"street{g}": [n for n in sorted(frames.ood) if street(n) == f"street{g}"] for g in range(STREETS)}
    for pair in got["pairs"]:
        y, s_a = pooled(frames, maps_a, pair["score_a"])
        _, s_b = pooled(frames, maps_b, pair["score_b"])
        ap_a, ap_b = average_precision_score(y, s_a), average_precision_score(y, s_b)
        assert pair["a"]["ap"]["point"] == pytest.approx(ap_a, abs=1e-9)
        assert pair["b"]["ap"]["point"] == pytest.approx(ap_b, abs=1e-9)
        assert pair["a"]["ap"]["binned_point"] == pytest.approx(ap_a, abs=2e-3)
        assert pair["b"]["ap"]["binned_point"] == pytest.approx(ap_b, abs=2e-3)
        assert pair["a"]["fpr95"]["point"] == pytest.approx(sklearn_fpr95(y, s_a), abs=1e-9)
        assert pair["b"]["fpr95"]["point"] == pytest.approx(sklearn_fpr95(y, s_b), abs=1e-9)
        assert pair["difference"]["ap"]["point"] == pytest.approx(ap_a - ap_b, abs=1e-9)
        direct = {"ap": [], "fpr95": []}
        for w in weights:
            names = [n for g, k in enumerate(w) for _ in range(k) for n in by_street[f"street{g}"]]
            y_r, a_r = pooled(frames, maps_a, pair["score_a"], names)
            _, b_r = pooled(frames, maps_b, pair["score_b"], names)
            direct["ap"].append(average_precision_score(y_r, a_r) - average_precision_score(y_r, b_r))
            direct["fpr95"].append(sklearn_fpr95(y_r, a_r) - sklearn_fpr95(y_r, b_r))
        for key, tol in (("ap", 3e-3), ("fpr95", 3e-3)):
            low, high = percentile_interval(np.array(direct[key]))
            assert pair["difference"][key]["low"] == pytest.approx(low, abs=tol)
            assert pair["difference"][key]["high"] == pytest.approx(high, abs=tol)


def test_a_run_against_itself_differs_by_exactly_zero_and_keeps_its_own_intervals(runs, tmp_path, capsys):
    got = run_compare(runs["a"], runs["a"], tmp_path / "c.json", "--resamples", str(EVAL_RESAMPLES))
    assert [p["score_a"] for p in got["pairs"]] == list(SCORES)  # default: every score both have
    metrics = json.loads((runs["a"] / "metrics.json").read_text())
    for pair in got["pairs"]:
        for key in ("ap", "fpr95", "auroc"):
            d = pair["difference"][key]
            assert (d["point"], d["low"], d["high"]) == (0.0, 0.0, 0.0)
            # the same seed and resamples as the evaluation and A's group order: A's intervals are its report's
            own = metrics["scores"][pair["score_a"]]["intervals"][key]
            assert pair["a"][key] == pair["b"][key] == own
    out = capsys.readouterr().out.splitlines()
    at = out.index("paired differences, A minus B (same resampled groups):")
    assert out[at + 1] == ("  hybrid         AP +0.00 [+0.00, +0.00] within noise; "
                           "FPR95 +0.00 [+0.00, +0.00] within noise")


def test_a_clearly_worse_run_differs_beyond_the_noise(runs, tmp_path, capsys):
    got = run_compare(runs["a"], runs["worse"], tmp_path / "c.json", "--scores", "hybrid")
    (pair,) = got["pairs"]
    assert pair["difference"]["ap"]["low"] > 0  # A's AP higher on every resample
    assert pair["difference"]["fpr95"]["high"] < 0  # and its FPR95 lower
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.startswith("  hybrid         AP +") and "within noise" not in row


def test_grids_of_other_ranges_each_give_their_own_metrics(runs, tmp_path):
    """Scores times 1024 rank the pixels alike: the same exact metrics, and replicates that differ only by binning,
    although the two histograms lie on grids of other cells."""
    grids = [GroupedStatistics.load(runs[r] / GROUPS_FILE).scores["hybrid"].grid for r in ("a", "scaled")]
    assert grids[1].step > 500 * grids[0].step
    got = run_compare(runs["a"], runs["scaled"], tmp_path / "c.json", "--scores", "hybrid")
    d = got["pairs"][0]["difference"]
    for key in ("ap", "fpr95"):
        assert d[key]["point"] == 0.0
        assert -2e-3 < d[key]["low"] <= d[key]["high"] < 2e-3


def test_errors_name_the_problem(runs, tmp_path, capsys):
    # an evaluation of fewer streets
    fewer = Streets(streets=STREETS - 2)
    short = write_evaluation(tmp_path / "short", fewer, {n: runs["maps"]["a"][n] for n in fewer.ood})
    assert compare_main([str(runs["a"]), str(short)]) == 2
    err = capsys.readouterr().err
    assert "different groups" in err and f"2 only in A ({runs['a']}): street6, street7" in err
    # the same street names on other frames (as sim splits all have scene0, scene1, ...)
    other = Streets(seed=11)
    elsewhere = write_evaluation(tmp_path / "other", other, model_maps(other, seed=1))
    assert compare_main([str(runs["a"]), str(elsewhere)]) == 2
    assert "hold different pixels in A and B" in capsys.readouterr().err
    # an evaluation made before groups.npz was saved
    old = tmp_path / "old"
    shutil.copytree(runs["a"], old)
    (old / GROUPS_FILE).unlink()
    assert compare_main([str(old), str(runs["a"])]) == 2
    err = capsys.readouterr().err
    assert f"{old}: no {GROUPS_FILE}" in err and "re-run the evaluation" in err
    (old / GROUPS_FILE).write_bytes(b"not a zip")
    assert compare_main([str(old), str(runs["a"])]) == 2
    assert f"{old / GROUPS_FILE}: not a readable groups file" in capsys.readouterr().err
    # scores
    assert compare_main([str(runs["a"]), str(runs["b"]), "--scores", "msp"]) == 2
    assert f"A ({runs['a']}) has no grouped statistics of score(s) msp" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:No artists with labels")  # the report's curves of an empty subsample
def test_a_write_over_an_old_evaluation_leaves_no_stale_groups_file(runs, tmp_path):
    from densehybrid_ros.evaluation.evaluate import EvalResult

    out = tmp_path / "e"
    shutil.copytree(runs["a"], out)
    metrics = json.loads((out / "metrics.json").read_text())
    write_report(EvalResult(metrics, {}), out, [])  # a result without pixel statistics
    assert not (out / GROUPS_FILE).exists()
