"""Benchmark (not a test): time and peak RSS of exact streaming AP/AUROC/FPR95 over N pixels.

``python -m densehybrid_ros.evaluation.bench_streaming --pixels 1e8 --batch 2e6``

Synthetic data, generated batch by batch (never all at once): float32 scores ``N(0,1) + 2 * anomaly``
(nearly all distinct), ~2% anomalies, ~5% void. Prints one JSON object: wall time of the update phase
(data generation included, and also reported alone), of ``compute()``, the temp-disk bytes of the spilled
runs, and the process's peak RSS (``ru_maxrss``), next to the size the raw inputs would take in RAM.
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

from densehybrid_ros.evaluation.streaming import StreamingAnomalyMetrics


def make_batch(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    labels = (rng.random(size, dtype=np.float32) < 0.02).astype(np.uint8)
    scores = rng.standard_normal(size, dtype=np.float32) + 2.0 * labels
    labels[rng.random(size, dtype=np.float32) < 0.05] = 255
    return scores, labels


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run(pixels: int, batch: int, max_buffer_pixels: int, seed: int = 0, tmp_dir: str | None = None) -> dict:
    rng = np.random.default_rng(seed)
    generate_s = 0.0
    start = time.perf_counter()
    with StreamingAnomalyMetrics(max_buffer_pixels=max_buffer_pixels, tmp_dir=tmp_dir) as acc:
        done = 0
        while done < pixels:
            size = min(batch, pixels - done)
            t0 = time.perf_counter()
            scores, labels = make_batch(rng, size)
            generate_s += time.perf_counter() - t0
            acc.update(scores, labels)
            done += size
        updated = time.perf_counter()
        runs_bytes = sum(p.stat().st_size for p in acc.temp_directory.iterdir()) if acc.temp_directory else 0
        num_runs = acc.num_runs
        result = acc.compute()
        computed = time.perf_counter()
    return {
        "pixels": pixels, "batch": batch, "max_buffer_pixels": max_buffer_pixels,
        "update_s": round(updated - start, 2), "of_which_data_generation_s": round(generate_s, 2),
        "compute_s": round(computed - updated, 2), "total_s": round(computed - start, 2),
        "runs_before_compute": num_runs, "spilled_bytes": runs_bytes,
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "raw_inputs_would_need_mib": round(pixels * 5 / 2**20, 1),  # float32 score + uint8 label
        "ap": result.ap, "auroc": result.auroc, "fpr95": result.fpr95,
        "num_positives": result.num_positives, "num_negatives": result.num_negatives,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pixels", type=float, default=1e8)
    parser.add_argument("--batch", type=float, default=2e6)
    parser.add_argument("--max-buffer-pixels", type=float, default=float(1 << 22))
    parser.add_argument("--tmp-dir", default=None)
    parser.add_argument("--json", action="store_true", help="indented JSON (the default output is one line)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    result = run(int(args.pixels), int(args.batch), int(args.max_buffer_pixels), tmp_dir=args.tmp_dir)
    text = json.dumps(result, indent=2 if args.json else None)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
