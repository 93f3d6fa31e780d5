"""`densehybrid-bench soak` for a few seconds: the perception node as its own process over real DDS, fed a sim bag
it writes itself. No timing is asserted (the figures belong to the soak run itself); what holds on any machine is the
accounting: every frame sent is answered or counted as dropped by the node, nothing fails, the node's resident memory
is sampled. The RSS growth formula is checked on a hand-worked series, the RSS reading against getrusage."""
from __future__ import annotations

import json
import os

import pytest

from conftest import make_sim_weights


def test_soak_accounts_for_every_frame(tmp_path):
    from densehybrid_ros.tools.bench import main

    weights = make_sim_weights(tmp_path / "sim.safetensors")
    out = tmp_path / "soak.json"
    status = main(["soak", "--minutes", "0.1", "--frames", "60", "--rate", "20", "--weights", str(weights),
                   "--bag-frames", "6", "--size", "128x64", "--sample-period", "1", "--settle-minutes", "0.02",
                   "--logs", str(tmp_path / "logs"), "--out", str(out)])
    assert status == 0
    result = json.loads(out.read_text())
    log = (tmp_path / "logs" / "node.log").read_text(errors="replace")
    f = result["frames"]
    assert f["sent"] > 0 and f["answered"] > 0, (f, log[-2000:])
    assert f["sent"] <= 60
    # the identity the soak exists for: every frame answered or dropped by the node's newest-frame policy
    assert f["sent"] == f["answered"] + f["dropped"], (f, log[-2000:])
    assert f["unaccounted"] == 0 and f["lost_in_transport"] == 0 and f["processed_not_answered"] == 0, f
    assert f["node_received"] == f["sent"] and f["node_processed"] == f["answered"], f
    assert result["drained"] is True
    assert result["errors"] == 0 and result["error_detail"]["node_log_error_lines"] == 0, (result["error_detail"], log)
    assert result["acceptance"]["no_errors"] and result["acceptance"]["all_accounted"]
    # outputs: calibrated weights, so open_set defines answers too; every processed frame sent each image output
    assert result["answer_outputs"] == ["semantic", "semantic_color", "anomaly_score", "open_set", "overlay"]
    for output in result["answer_outputs"]:
        assert result["messages_per_output"][f"/soak/densehybrid_perception/{output}"] >= f["answered"]
    # resident memory of the node process: a series of positive samples, the last one after the last frame
    series = result["rss_series"]
    assert len(series) >= 2 and all(s["rss_mib"] > 0 for s in series)
    assert series[-1]["sent"] == f["sent"] and [s["t_s"] for s in series] == sorted(s["t_s"] for s in series)
    assert result["rss"]["max_mib"] == max(s["rss_mib"] for s in series)
    assert result["rss"]["growth_after_settle_pct"] is not None and result["rss"]["at_settle_mib"] > 0


def test_rss_growth_after_settle_by_hand():
    from densehybrid_ros.tools.bench_soak import rss_summary

    samples = [(0.0, 80.0), (150.0, 100.0), (300.0, 200.0), (360.0, 210.0), (600.0, 205.0)]
    r = rss_summary(samples, settle_s=300.0)
    assert r["at_settle_mib"] == 200.0 and r["max_after_settle_mib"] == 210.0
    assert r["growth_after_settle_pct"] == pytest.approx(5.0)  # (210 - 200) / 200
    assert r["growth_pct"] == pytest.approx(162.5)  # (210 - 80) / 80
    # least squares over the three samples after minute 5: t mean 420, rss mean 205;
    # cov = (-120)(-5) + (-60)(5) + 180 * 0 = 300, var = 14400 + 3600 + 32400 = 50400 -> 300/50400 MiB/s
    assert r["slope_after_settle_mib_per_min"] == pytest.approx(round(60 * 300 / 50400, 4))
    short = rss_summary(samples[:2], settle_s=300.0)
    assert short["growth_after_settle_pct"] is None and short["slope_after_settle_mib_per_min"] is None
    assert short["growth_pct"] == pytest.approx(25.0)  # (100 - 80) / 80


def _statm_resident_mib() -> float:
    """Resident set size from /proc/self/statm (pages), an independent reading of the same kernel counter."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_rss_reading_matches_statm():
    from densehybrid_ros.tools.bench_soak import read_rss_mib

    # ru_maxrss is a high-water mark the kernel updates lazily (it can lag the current RSS), so the reference is
    # statm, read just before and after; memory may move in between, hence the 1 MiB margin
    before = _statm_resident_mib()
    rss = read_rss_mib(os.getpid())
    after = _statm_resident_mib()
    assert rss is not None and min(before, after) - 1.0 <= rss <= max(before, after) + 1.0
    assert read_rss_mib(2**22 + 1) is None  # above the kernel's pid_max default: no such process
