"""`densehybrid-bench train` (also `python -m densehybrid_training.bench_train`): training steps per second with the
current defaults and with each speed-up, side by side in one run.

Each variant is a list of `--set` overrides of the same TrainConfig (same model, batch, crop and data); it
runs in its own process (thread settings, loader workers and torch.compile do not leak between variants),
with the engine's own functions (`apply_speed_settings`, `make_loader`, `optimizer_step`). Variants are
interleaved, in reversed order every other repeat, so that machine drift hits all of them alike. The first
`warmup` steps (compilation, worker start-up) are timed apart from the steady-state steps. The steps run on the
config's `device` as training picks it (`auto`: CUDA when there; `--set device=cpu` or `device=cuda:1` to choose),
timed after the device's queued work has finished.

Mode `joint` times SynDenseHybrid steps (`engine._joint_step`: flow sampling, paste, segmenter, L_mle, routed
backward, both optimizers) with one variant per DenseFlow preset (`--flow-presets`, built fresh: the timing does
not depend on trained weights), at the joint config's crop, batch, sample sizes and shapes (`--joint-config`):

    densehybrid-bench train --modes joint --flow-presets tiny cpu cpu_m cpu_l --warmup 1 --steps 3 --repeats 2

With `--set synthetic.flow_every=N` only every N-th step trains the flow: time a multiple of N steps (any N steps in
a row hold exactly one that does).
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


def time_steps(mode: str, config: Path | None, overrides: list[str], warmup: int, steps: int,
               flow: str | None = None) -> dict:
    """Steps/s of `steps` training steps after `warmup` steps, in this process (`joint`: with a fresh `flow`)."""
    import torch

    from densehybrid_training.cli import build_model_and_dataset, joint_training
    from densehybrid_training.config import load_train_config
    from densehybrid_training.engine import (ClosedSetNet, apply_speed_settings, compile_if_asked, make_loader,
                                             optimizer_step, param_groups, batch_to_device, _joint_step)
    from densehybrid_training.distributed import pick_device
    from densehybrid_training.mixed import StepBatchSampler

    train_mode = "finetune" if mode == "joint" else mode
    cfg = load_train_config(config, [f"mode={train_mode}", "init=null"] + overrides)
    cfg.validate()
    model, dataset, meta = build_model_and_dataset(train_mode, cfg, require_init=False)
    device = pick_device(cfg.device)  # the config's device, as training picks it (auto: CUDA when there)
    model.to(device)
    apply_speed_settings(cfg, model)
    closed = mode == "segmenter"
    net = ClosedSetNet(model) if closed else model
    optimizer = torch.optim.Adam(param_groups(model, cfg, closed), lr=cfg.optim.lr)
    train_net = compile_if_asked(cfg, net)
    joint = None
    if mode == "joint":
        from densehybrid_training.flow import build_flow, parameter_count

        if cfg.synthetic is None:
            raise ValueError("mode joint needs a config with a `synthetic` section")
        fresh = build_flow(flow or "cpu")
        joint = joint_training(cfg, meta, fresh if cfg.synthetic.source == "flow" else None, device)
    model.train()
    sampler = StepBatchSampler(len(dataset), cfg.batch_size, 0, warmup + steps, cfg.seed)

    def now() -> float:  # after the device's queued work: CUDA runs asynchronously
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    start = now()
    t0 = start
    for i, batch in enumerate(make_loader(cfg, dataset, sampler, device)):
        if i == warmup:
            t0 = now()
        x, labels, d_out = batch_to_device(cfg, batch, device)
        if joint is not None:
            optimizer.zero_grad(set_to_none=True)
            _joint_step(cfg, model, joint, optimizer, x, labels, d_out, i)
        else:
            optimizer_step(cfg, train_net, optimizer, None, x, labels, d_out)
    end = now()
    result = {"warmup_s": round(t0 - start, 3), "steps": steps, "seconds": round(end - t0, 3),
              "steps_per_s": round(steps / (end - t0), 4), "threads": torch.get_num_threads(),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "batch_size": cfg.batch_size, "crop": list(cfg.data.crop)}
    if joint is not None and joint.flow is not None:
        result.update(flow=flow or "cpu", flow_name=joint.flow.config.name, flow_params=parameter_count(joint.flow),
                      side_range=list(cfg.synthetic.side_range), side_scale=cfg.synthetic.side_scale,
                      sizes=cfg.synthetic.sizes, shape=cfg.synthetic.shape, ground_prob=cfg.synthetic.ground_prob)
    return result


def run_variant(mode: str, config: Path | None, overrides: list[str], warmup: int, steps: int,
                flow: str | None = None) -> dict:
    cmd = [sys.executable, "-m", "densehybrid_training.bench_train", "--one", mode, "--warmup", str(warmup),
           "--steps", str(steps)]
    if flow is not None:
        cmd += ["--flow", flow]
    if config is not None:
        cmd += ["--config", str(config)]
    for o in overrides:
        cmd += ["--set", o]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"variant {overrides} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench(modes: list[str], configs: dict[str, Path | None], variants: list[str], common: list[str], warmup: int,
          steps: int, repeats: int, flow_presets: list[str] = ("cpu",)) -> dict:
    """Every (mode, variant) `repeats` times, interleaved; mode `joint` has one variant per flow preset (its
    ratios are to the `cpu` preset, or the first one listed), the other modes the speed `variants`."""
    def variants_of(m: str) -> list[str]:
        return [f"flow:{p}" for p in flow_presets] if m == "joint" else variants

    def run(m: str, v: str) -> dict:
        if m == "joint":
            return run_variant(m, configs[m], common, warmup, steps, flow=v.split(":", 1)[1])
        return run_variant(m, configs[m], common + VARIANTS[v], warmup, steps)

    rows: dict[tuple[str, str], list[dict]] = {(m, v): [] for m in modes for v in variants_of(m)}
    for r in range(repeats):
        order = [(m, v) for m in modes for v in variants_of(m)]
        for m, v in (order if r % 2 == 0 else order[::-1]):
            res = run(m, v)
            rows[(m, v)].append(res)
            print(f"  repeat {r + 1}: {m:9s} {v:24s} {res['steps_per_s']:.3f} steps/s "
                  f"(warm-up {res['warmup_s']:.1f} s)", file=sys.stderr, flush=True)
    result = {"warmup": warmup, "steps": steps, "repeats": repeats, "common": common, "modes": {}}
    for m in modes:
        names = variants_of(m)
        if m == "joint":
            reference = "flow:cpu" if "flow:cpu" in names else names[0]
        else:
            reference = "default" if "default" in names else None
        base = statistics.median(x["steps_per_s"] for x in rows[(m, reference)]) if reference else None
        table = {}
        for v in names:
            sps = [x["steps_per_s"] for x in rows[(m, v)]]
            med = statistics.median(sps)
            table[v] = {"overrides": VARIANTS.get(v, []), "steps_per_s": sps, "median_steps_per_s": med,
                        "ratio_to_default": round(med / base, 3) if base else None,
                        "warmup_s": [x["warmup_s"] for x in rows[(m, v)]],
                        "batch_size": rows[(m, v)][0]["batch_size"], "crop": rows[(m, v)][0]["crop"]}
            for key in ("flow_name", "flow_params", "side_range", "sizes", "shape"):
                if key in rows[(m, v)][0]:
                    table[v][key] = rows[(m, v)][0][key]
        result["modes"][m] = table
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="densehybrid-bench train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--one", choices=("segmenter", "finetune", "joint"), help=argparse.SUPPRESS)
    ap.add_argument("--flow", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--config", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--segmenter-config", type=Path, default=Path("config/train/sim_segmenter.yaml"))
    ap.add_argument("--finetune-config", type=Path, default=Path("config/train/sim_finetune_real.yaml"))
    ap.add_argument("--joint-config", type=Path, default=Path("config/train/sim_synthetic_big.yaml"))
    ap.add_argument("--modes", nargs="+", default=["segmenter", "finetune"], choices=("segmenter", "finetune", "joint"))
    ap.add_argument("--flow-presets", nargs="+", default=["cpu"], help="mode joint: DenseFlow presets to compare")
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="applied to every variant (e.g. data.root=data/sim_train_big, device=cuda)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(time_steps(args.one, args.config, args.overrides, args.warmup, args.steps, args.flow)))
        return 0
    if args.warmup < 1 or args.steps < 1 or args.repeats < 1:
        print("densehybrid-bench train: error: warmup, steps and repeats must be >= 1", file=sys.stderr)
        return 2
    configs = {"segmenter": args.segmenter_config, "finetune": args.finetune_config, "joint": args.joint_config}
    try:
        result = bench(args.modes, configs, args.variants, args.overrides, args.warmup, args.steps, args.repeats,
                       args.flow_presets)
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
