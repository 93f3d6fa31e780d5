"""The console scripts as users run them (installed into the venv by `make venv`)."""
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def run(*args, timeout=300):
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_demo_console_script_refuses_missing_weights(tmp_path):
    """The installed entry point (the demo itself runs end to end in test_demo.py)."""
    result = subprocess.run([str(BIN / "densehybrid-demo"), "--out", str(tmp_path / "out"), "--weights",
                             str(tmp_path / "none.safetensors")], capture_output=True, text=True)
    assert result.returncode == 2 and "weights file not found" in result.stderr
    assert not (tmp_path / "out").exists()


def test_bench_overhead_json(tmp_path):
    out = tmp_path / "overhead.json"
    stdout = run(BIN / "densehybrid-bench", "overhead", "--model", "swiftnet_r18_cpu", "--sizes", "64x128",
                 "--repeats", "2", "--warmup", "0", "--json", "--out", out)
    result = json.loads(stdout)
    assert result == json.loads(out.read_text())
    row = result["sizes"][0]
    assert row["size"] == "64x128" and len(row["closed_ms_all"]) == len(row["hybrid_ms_all"]) == 2
    ratio = statistics.median(row["hybrid_ms_all"]) / statistics.median(row["closed_ms_all"])
    assert row["overhead_ratio"] == pytest.approx(ratio, rel=5e-3)  # inputs are rounded to 0.01 ms
    assert row["conv_matmul_flop_ratio"] > 1.0  # the inlier head adds a 1x1 conv


def test_bench_rejects_bad_sizes():
    result = subprocess.run([str(BIN / "densehybrid-bench"), "overhead", "--sizes", "100x100"], capture_output=True, text=True)
    assert result.returncode == 2 and "multiples of 32" in result.stderr
