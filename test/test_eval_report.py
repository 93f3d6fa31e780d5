"""densehybrid-eval end to end on a small sim split: metrics vs sklearn on the same predictions, report files."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from conftest import make_sim_weights, render_small_sim
from densehybrid_ros.datasets import open_dataset
from densehybrid_ros.evaluation.bootstrap import GROUPS_FILE, GroupedStatistics
from densehybrid_ros.evaluation.cli import main as eval_main
from densehybrid_ros.evaluation.evaluate import EvalOptions, evaluate
from densehybrid_ros.evaluation.report import write_report
from densehybrid_ros.predictor import Predictor, PredictorConfig
from densehybrid_ros.sim.taxonomy import SIM_CLASSES

SCORES = ("hybrid", "generative", "discriminative", "msp")


@pytest.fixture(scope="module")
def sim_split(tmp_path_factory):
    return render_small_sim(tmp_path_factory.mktemp("simval"), "val", 5, seed=2, frames_per_scene=5)


@pytest.fixture(scope="module")
def sim_weights(tmp_path_factory):
    return make_sim_weights(tmp_path_factory.mktemp("w") / "sim.safetensors")


def test_evaluate_matches_sklearn_on_the_same_predictions(sim_split, sim_weights, tmp_path):
    predictor = Predictor.from_weights(sim_weights, PredictorConfig(extra_scores=SCORES[1:]))
    dataset = open_dataset(f"sim:{sim_split}")
    result = evaluate(predictor, dataset, EvalOptions(scores=SCORES), progress=False)
    m = result.metrics
    # independent: run the predictor again, pool valid pixels, ask sklearn
    values = {s: [] for s in SCORES}
    labels = []
    for i in range(len(dataset)):
        sample = dataset[i]
        pred = predictor.predict(sample.image)
        valid = sample.ood != 255
        labels.append(sample.ood[valid] == 1)
        for s in SCORES:
            values[s].append((pred.hybrid if s == "hybrid" else pred.scores[s])[valid])
    y = np.concatenate(labels)
    assert y.any() and not y.all()
    for s in SCORES:
        v = np.concatenate(values[s]).astype(np.float64)
        assert m["scores"][s]["anomaly"]["ap"] == pytest.approx(average_precision_score(y, v), abs=1e-9)
        assert m["scores"][s]["anomaly"]["auroc"] == pytest.approx(roc_auc_score(y, v), abs=1e-9)
        assert [b["lower"] for b in m["scores"][s]["distance_bins"]][:2] == [0.0, 10.0]
    assert 0.0 <= m["closed_set"]["miou"] <= 1.0 and 0.0 <= m["open_set"]["open_miou"] <= m["open_set"]["miou"] + 1e-12
    assert set(m["ensemble"]) >= {"rho", "alpha", "e", "c1", "c2", "hybrid_helps"}
    report = write_report(result, tmp_path / "report", [c for _, c in SIM_CLASSES])
    assert report.is_file() and (tmp_path / "report" / "curves.png").stat().st_size > 10_000
    assert (tmp_path / "report" / "histograms.png").is_file()
    assert len(list((tmp_path / "report" / "examples").glob("*.png"))) == len(result.examples) > 0
    assert json.loads((tmp_path / "report" / "metrics.json").read_text()) == m


def test_cli_writes_report_and_rejects_bad_input(sim_split, sim_weights, tmp_path, capsys):
    rc = eval_main(["--weights", str(sim_weights), "--dataset", f"sim:{sim_split}", "--scores", "hybrid,msp",
                    "--out", str(tmp_path / "out"), "--quiet", "--max-images", "3"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "hybrid" in out and "msp" in out and "open-mIoU" in out
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["dataset"]["images"] == 3 and set(metrics["scores"]) == {"hybrid", "msp"}
    groups = GroupedStatistics.load(tmp_path / "out" / GROUPS_FILE)  # for evaluation.compare
    dataset = open_dataset(f"sim:{sim_split}")
    assert groups.keys == tuple(dict.fromkeys(dataset.group(i) for i in range(3)))
    assert set(groups.scores) == {"hybrid", "msp"}
    anomaly = sum(int((dataset[i].ood == 1).sum()) for i in range(3))
    assert all(h.counts(len(groups.keys))[0].sum() == anomaly for h in groups.scores.values())
    assert eval_main(["--weights", str(sim_weights), "--dataset", "nosuchkind:/x", "--out", str(tmp_path / "o2")]) == 2
    assert "unknown dataset kind 'nosuchkind'" in capsys.readouterr().err
    assert eval_main(["--weights", str(tmp_path / "missing.safetensors"), "--dataset", f"sim:{sim_split}",
                      "--out", str(tmp_path / "o3")]) == 2


def test_cli_two_fold_protocol_matches_the_protocol_on_the_same_predictions(sim_split, sim_weights, tmp_path):
    from densehybrid_ros.evaluation.thresholds import cross_fold_open_set

    fold_b = render_small_sim(tmp_path / "simtest", "test", 3, seed=5, frames_per_scene=3)
    rc = eval_main(["--weights", str(sim_weights), "--dataset", f"sim:{sim_split}", "--fold-b", f"sim:{fold_b}",
                    "--scores", "hybrid", "--out", str(tmp_path / "out"), "--quiet"])
    assert rc == 0
    got = json.loads((tmp_path / "out" / "metrics.json").read_text())["cross_fold"]
    predictor = Predictor.from_weights(sim_weights)

    def fold(root):
        ds = open_dataset(f"sim:{root}")
        preds = [(predictor.predict(ds[i].image), ds[i].semantic) for i in range(len(ds))]
        return [(p.hybrid, sem, p.class_ids) for p, sem in preds]

    ref = cross_fold_open_set(fold(sim_split), fold(fold_b), len(SIM_CLASSES))
    assert got["open_miou"] == pytest.approx(ref.open_miou, abs=1e-12)
    assert got["mean_f1"] == pytest.approx(ref.mean_f1, abs=1e-12)
    assert got["fold_a"]["images"] == 5 and got["fold_b"]["images"] == 3
    assert got["fold_b"]["applied_threshold"] == pytest.approx(ref.fold_b.applied_threshold)


def test_summary_warns_when_binned_replicates_disagree_with_the_exact_point():
    from densehybrid_ros.evaluation.report import summary_table

    def iv(point, binned):
        return {"point": point, "low": point - 0.05, "high": point + 0.05, "binned_point": binned}

    anomaly = {"ap": 0.404, "fpr95": 0.09, "auroc": 0.98}
    metrics = {"scores": {"hybrid": {"anomaly": anomaly,
                                     "intervals": {"ap": iv(0.404, 0.317), "fpr95": iv(0.09, 0.0905)}}}}
    lines = [line for line in summary_table(metrics).splitlines() if line.startswith("WARNING")]
    assert lines == ["WARNING: hybrid ap: the binned statistics give 31.70 against the exact 40.40; "
                     "this interval is unreliable"]


def test_summary_says_which_paired_differences_are_within_noise():
    from densehybrid_ros.evaluation.report import summary_table

    anomaly = {"ap": 0.75, "fpr95": 0.0126, "auroc": 0.99}
    metrics = {"scores": {"hybrid": {"anomaly": anomaly}, "discriminative": {"anomaly": anomaly}},
               "paired": {"reference": "hybrid", "level": 0.95, "differences": {"discriminative": {
                   "ap": {"point": -0.0245, "low": -0.051, "high": 0.004},
                   "fpr95": {"point": -0.0014, "low": -0.0025, "high": -0.0004},
                   "auroc": {"point": 0.0004, "low": 0.0001, "high": 0.0007}}}}}
    lines = summary_table(metrics).splitlines()
    at = lines.index("paired differences, hybrid minus (same resampled groups):")
    assert lines[at + 1] == ("  discriminative AP -2.45 [-5.10, +0.40] within noise; "
                             "FPR95 -0.14 [-0.25, -0.04]")
