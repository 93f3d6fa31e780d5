"""`densehybrid-bench train` (also `python -m densehybrid_training.bench_train`): training steps per second with the
current defaults and with each speed-up, side by side in one run.

Each variant is a list of `--set` overrides of the same TrainConfig (same model, batch, crop and data); it
runs in its own process (thread settings, loader workers and torch.compile do not leak between variants),
with the engine's own functions (`apply_speed_settings`, `make_loader`, `optimizer_step`). Variants are
interleaved, in reversed order every other repeat, so that machine drift hits all of them alike. The first
`warmup` steps (compilation, worker start-up) are timed apart from the steady-state steps.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS: dict[str, list[str]] = {
    "default": [],
    "channels_last": ["speed.channels_last=true"],
    "workers1": ["data.workers=1"],
    "workers2": ["data.workers=2"],
    "threads1+workers1": ["speed.threads=1", "data.workers=1"],
    "compile": ["speed.compile=true"],
    "channels_last+workers1": ["speed.channels_last=true", "data.workers=1"],
}
# torch.compile is measured on request only: on the 2-core CPU its first steps took 391 s and its steady state
# was slower than eager (0.11 vs ~0.3 steps/s at batch 4, same run conditions), so it never pays here.
DEFAULT_VARIANTS = [v for v in VARIANTS if v != "compile"]


def time_steps(mode: str, config: Path | None, overrides: list[str], warmup: int, steps: int) -> dict:
    """Steps/s of `steps` training steps after `warmup` steps, in this process."""
    import torch

    from densehybrid_training.cli import build_model_and_dataset
    from densehybrid_training.config import load_train_config
    from densehybrid_training.engine import (ClosedSetNet, apply_speed_settings, compile_if_asked, make_loader,
                                             optimizer_step, param_groups, batch_to_device)
    from densehybrid_training.mixed import StepBatchSampler

    cfg = load_train_config(config, [f"mode={mode}", "init=null"] + overrides)
    cfg.validate()
    model, dataset, _ = build_model_and_dataset(mode, cfg, require_init=False)
    device = torch.device("cpu")
    apply_speed_settings(cfg, model)
    closed = mode == "segmenter"
    net = ClosedSetNet(model) if closed else model
    optimizer = torch.optim.Adam(param_groups(model, cfg, closed), lr=cfg.optim.lr)
    train_net = compile_if_asked(cfg, net)
    model.train()
    sampler = StepBatchSampler(len(dataset), cfg.batch_size, 0, warmup + steps, cfg.seed)
    start = time.perf_counter()
    t0 = start
    for i, batch in enumerate(make_loader(cfg, dataset, sampler, device)):
        if i == warmup:
            t0 = time.perf_counter()
        x, labels, d_out = batch_to_device(cfg, batch, device)
        optimizer_step(cfg, train_net, optimizer, None, x, labels, d_out)
    end = time.perf_counter()
    return {"warmup_s": round(t0 - start, 3), "steps": steps, "seconds": round(end - t0, 3),
            "steps_per_s": round(steps / (end - t0), 4), "threads": torch.get_num_threads(),
            "batch_size": cfg.batch_size, "crop": list(cfg.data.crop)}


def run_variant(mode: str, config: Path | None, overrides: list[str], warmup: int, steps: int) -> dict:
    cmd = [sys.executable, "-m", "densehybrid_training.bench_train", "--one", mode, "--warmup", str(warmup),
           "--steps", str(steps)]
    if config is not None:
        cmd += ["--config", str(config)]
    for o in overrides:
        cmd += ["--set", o]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"variant {overrides} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench(modes: list[str], configs: dict[str, Path | None], variants: list[str], common: list[str], warmup: int,
          steps: int, repeats: int) -> dict:
    rows: dict[tuple[str, str], list[dict]] = {(m, v): [] for m in modes for v in variants}
    for r in range(repeats):
        order = [(m, v) for m in modes for v in variants]
        for m, v in (order if r % 2 == 0 else order[::-1]):
            res = run_variant(m, configs[m], common + VARIANTS[v], warmup, steps)
            rows[(m, v)].append(res)
            print(f"  repeat {r + 1}: {m:9s} {v:24s} {res['steps_per_s']:.3f} steps/s (warm-up {res['warmup_s']:.1f} s)",
                  file=sys.stderr, flush=True)
    result = {"warmup": warmup, "steps": steps, "repeats": repeats, "common": common, "modes": {}}
    for m in modes:
        base = statistics.median(x["steps_per_s"] for x in rows[(m, "default")]) if "default" in variants else None
        table = {}
        for v in variants:
            sps = [x["steps_per_s"] for x in rows[(m, v)]]
            med = statistics.median(sps)
            table[v] = {"overrides": VARIANTS[v], "steps_per_s": sps, "median_steps_per_s": med,
                        "ratio_to_default": round(med / base, 3) if base else None,
                        "warmup_s": [x["warmup_s"] for x in rows[(m, v)]],
                        "batch_size": rows[(m, v)][0]["batch_size"], "crop": rows[(m, v)][0]["crop"]}
        result["modes"][m] = table
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="densehybrid-bench train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--one", choices=("segmenter", "finetune"), help=argparse.SUPPRESS)
    ap.add_argument("--config", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--segmenter-config", type=Path, default=Path("config/train/sim_segmenter.yaml"))
    ap.add_argument("--finetune-config", type=Path, default=Path("config/train/sim_finetune_real.yaml"))
    ap.add_argument("--modes", nargs="+", default=["segmenter", "finetune"], choices=("segmenter", "finetune"))
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="applied to every variant (e.g. data.root=data/sim_train_big)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(time_steps(args.one, args.config, args.overrides, args.warmup, args.steps)))
        return 0
    if args.warmup < 1 or args.steps < 1 or args.repeats < 1:
        print("densehybrid-bench train: error: warmup, steps and repeats must be >= 1", file=sys.stderr)
        return 2
    configs = {"segmenter": args.segmenter_config, "finetune": args.finetune_config}
    try:
        result = bench(args.modes, configs, args.variants, args.overrides, args.warmup, args.steps, args.repeats)
    except RuntimeError as exc:
        print(f"densehybrid-bench train: error: {exc}", file=sys.stderr)
        return 2
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for m, table in result["modes"].items():
            for v, row in table.items():
                print(f"{m:9s} {v:24s} median {row['median_steps_per_s']:.3f} steps/s  x{row['ratio_to_default']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
