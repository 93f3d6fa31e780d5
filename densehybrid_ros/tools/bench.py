"""Benchmarks. `densehybrid-bench overhead`: cost of the DenseHybrid outputs over the closed-set model.

Both variants run on the same weights and the same input, interleaved (alternating order each repeat)
so that machine drift hits both alike:
- closed: segmenter -> logits upsampled to input size -> argmax class ids (`DenseHybrid.closed_set`);
- hybrid: the same plus the inlier head, the hybrid score upsampled to input size and the open-set map
  (`DenseHybrid.dense_outputs` + `open_set_fusion`, the path the Predictor runs).
On CPU both run with the Predictor's allocator setting (`cpu_memory.retain_freed_memory`).

`densehybrid-bench cameras`: multi-camera serving, batched vs one-by-one (see `cameras_throughput`).
`densehybrid-bench train`: training steps/s, defaults vs each speed-up (`densehybrid_training.bench_train`).
`densehybrid-bench soak --minutes N`: the node over DDS at camera rate for N minutes: RSS over time, frames answered,
dropped and errors (`densehybrid_ros.tools.bench_soak`).

Every size on these command lines is WxH, width first (`densehybrid_ros.cli_args.parse_size`), and so are the results'
"size" labels; "size_hxw" (cameras) is the same size height first.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from densehybrid_ros.cli_args import parse_size
from densehybrid_ros.config import load_yaml
from densehybrid_ros.cpu_memory import retain_freed_memory
from densehybrid_ros.models import DenseHybrid, ModelConfig, build_model
from densehybrid_ros.tools import bench_soak
from densehybrid_ros.paths import model_config_path
from densehybrid_ros.scores import open_set_fusion


def closed_set_step(model: DenseHybrid, x: torch.Tensor) -> torch.Tensor:
    return model.closed_set(x)


def hybrid_step(model: DenseHybrid, x: torch.Tensor) -> torch.Tensor:
    out = model.dense_outputs(x, ("hybrid",))
    return open_set_fusion(out.class_ids, out.scores["hybrid"], 0.0, model.num_classes)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _conv_flops(fn, model, x) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn(model, x)
    return int(counter.get_total_flops())


@torch.inference_mode()
def overhead(config: ModelConfig, sizes: list[tuple[int, int]], repeats: int, warmup: int, device: str, fp16: bool) -> dict:
    """Closed-set vs hybrid step at each size (width, height), interleaved (see the module doc)."""
    dev = torch.device(device)
    allocator_tuned = retain_freed_memory() if dev.type == "cpu" else False  # as the Predictor does
    torch.manual_seed(0)
    model = build_model(config).eval().to(dev).to(memory_format=torch.channels_last)
    steps = {"closed": closed_set_step, "hybrid": hybrid_step}
    results = []
    for width, height in sizes:
        x = torch.randn(1, 3, height, width, device=dev).contiguous(memory_format=torch.channels_last)
        flops = {name: _conv_flops(fn, model, x) for name, fn in steps.items()}
        times: dict[str, list[float]] = {name: [] for name in steps}
        autocast = torch.autocast("cuda", dtype=torch.float16, enabled=fp16)
        for repeat in range(warmup + repeats):
            order = list(steps) if repeat % 2 == 0 else list(reversed(steps))
            for name in order:
                _sync(dev)
                start = time.perf_counter()
                with autocast:
                    steps[name](model, x)
                _sync(dev)
                if repeat >= warmup:
                    times[name].append((time.perf_counter() - start) * 1e3)
        closed_ms, hybrid_ms = statistics.median(times["closed"]), statistics.median(times["hybrid"])
        paired = [h / c for h, c in zip(times["hybrid"], times["closed"])]
        results.append(
            {
                "size": f"{width}x{height}",  # WxH, as --sizes
                "closed_ms": round(closed_ms, 2),
                "hybrid_ms": round(hybrid_ms, 2),
                "closed_ms_all": [round(t, 2) for t in times["closed"]],
                "hybrid_ms_all": [round(t, 2) for t in times["hybrid"]],
                "overhead_ms": round(hybrid_ms - closed_ms, 2),
                "overhead_ratio": round(hybrid_ms / closed_ms, 4),
                "overhead_ratio_of_minimums": round(min(times["hybrid"]) / min(times["closed"]), 4),
                "paired_ratio_median": round(statistics.median(paired), 4),
                "conv_matmul_gflop": {k: round(v / 1e9, 3) for k, v in flops.items()},
                "conv_matmul_flop_ratio": round(flops["hybrid"] / flops["closed"], 5),
            }
        )
    return {
        "benchmark": "overhead",
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "fp16": fp16,
        "cpu_allocator_tuned": allocator_tuned,
        "architecture": config.__dict__,
        "repeats": repeats,
        "warmup": warmup,
        "sizes": results,
        "goal": "overhead_ratio <= 1.01 (paper, Tab. 7: 1.046 on an RTX 3090 at 2 MP)",
    }


def parse_stride_size(text: str) -> tuple[int, int]:
    """`overhead --sizes`: WxH (`cli_args.parse_size`) with both sides multiples of 32 (the model's output stride:
    the benchmark feeds the tensor to the model as it is, unpadded) -> (width, height)."""
    w, h = parse_size(text)
    if w % 32 or h % 32:
        raise argparse.ArgumentTypeError(f"size {w}x{h}: both sides must be multiples of 32 (the output stride), "
                                         f"got {text!r}")
    return w, h


def sim_throughput(frames: int, size: tuple[int, int], workers: list[int], seed: int = 0) -> dict:
    """`densehybrid-sim render` frames/s for each worker count, side by side on the same frames."""
    import dataclasses
    import tempfile

    from densehybrid_ros.sim.dataset import render_dataset
    from densehybrid_ros.sim.world import SimConfig

    config = dataclasses.replace(SimConfig(), width=size[0], height=size[1])
    rows = []
    for n in workers:
        with tempfile.TemporaryDirectory(prefix="densehybrid_bench_sim_") as tmp:
            start = time.perf_counter()
            render_dataset(Path(tmp), "test", frames, seed, config, workers=n, progress=False)
            elapsed = time.perf_counter() - start
        rows.append({"workers": n, "frames": frames, "seconds": round(elapsed, 3), "frames_per_s": round(frames / elapsed, 2)})
    return {"benchmark": "sim_render", "size": f"{size[0]}x{size[1]}", "cpu_count": os.cpu_count(),
            "frames_per_scene": config.frames_per_scene, "runs": rows}


def cameras_throughput(weights: str | Path | None = None, counts: tuple[int, ...] = (1, 2, 4), cycles: int = 20,
                       size: tuple[int, int] = (512, 256), device: str = "cpu", backend: str = "torch",
                       model: str = "swiftnet_r18_cpu", threads: int | None = None) -> dict:
    """Throughput and latency of N cameras, batched vs one-by-one, on the same sim frames (size = (width, height)).

    Measured: `Perception.predict`, the call the perception node's worker makes once per cycle with the newest
    frame of every camera (`Predictor.predict_many`: preprocessing, one forward per network grid size, postprocessing
    with the open-set map, results as numpy arrays). Not measured: message decoding, colours/overlay/obstacles and
    publishing (per camera and identical in both modes) and DDS. Per cycle camera c gets sim frame t + c.
      batched:    one call with the N frames;
      one_by_one: N calls with one frame each (what N single-camera nodes on one device would run, minus their
                  contention).
    fps = frames / time; cycle_ms = time until all N results of a cycle (median); frame_latency_ms = mean time from
    the cycle start to each frame's result. The two modes alternate order every cycle (machine drift hits both);
    one untimed warm-up cycle per mode and N. Runs in a worker thread like the node's."""
    import tempfile
    import threading

    if cycles < 1 or not counts or min(counts) < 1 or (threads is not None and threads < 1):
        raise ValueError(f"need cycles >= 1, camera counts >= 1 and threads >= 1, got {cycles}, {counts}, {threads}")
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    result: list = []
    errors: list = []

    def work() -> None:
        try:
            with tempfile.TemporaryDirectory(prefix="densehybrid_bench_cameras_") as tmp:
                result.append(_cameras(weights, counts, cycles, size, device, backend, model, Path(tmp)))
        except BaseException as error:  # noqa: BLE001  re-raised below
            errors.append(error)

    try:
        thread = threading.Thread(target=work, name="densehybrid_bench_cameras")
        thread.start()
        thread.join()
    finally:
        torch.set_num_threads(saved_threads)
    if errors:
        raise errors[0]
    return result[0]


def _cameras(weights, counts, cycles, size, device, backend, model, tmp: Path) -> dict:
    from densehybrid_ros.tools.bench_node import random_weights, render_frames
    from densehybrid_ros.perception.settings import Settings
    from densehybrid_ros.perception.pipeline import Perception
    from densehybrid_ros.predictor import Predictor, PredictorConfig

    if weights is None:
        weights = random_weights(tmp / f"{model}_random.safetensors", model)
    config = PredictorConfig(device=device, backend=backend)
    if backend == "onnxruntime":
        from densehybrid_ros.models.resnet import ResNet
        from densehybrid_ros.onnx_export import export_onnx
        from densehybrid_ros.weights import load_weights

        net, metadata = load_weights(weights)
        stride = ResNet.output_stride
        width, height = metadata.input_size or (-(-size[0] // stride) * stride, -(-size[1] // stride) * stride)
        predictor = Predictor.from_onnx(export_onnx(net, metadata, tmp / "model.onnx", height, width), config)
    else:
        predictor = Predictor.from_weights(weights, config)
    perception = Perception(predictor)
    settings = Settings.from_values({})
    started = time.perf_counter()
    frames = [rgb for rgb, _ in render_frames(cycles + max(counts) - 1, size)]
    render_s = time.perf_counter() - started
    dev = predictor.device

    def batched(images: list) -> list[float]:
        start = time.perf_counter()
        perception.predict(images, settings)
        _sync(dev)
        return [time.perf_counter() - start] * len(images)

    def one_by_one(images: list) -> list[float]:
        start, done = time.perf_counter(), []
        for image in images:
            perception.predict([image], settings)
            _sync(dev)
            done.append(time.perf_counter() - start)
        return done

    modes = {"batched": batched, "one_by_one": one_by_one}
    rows, speedups = [], {}
    for n in counts:
        for run in modes.values():  # warm-up (allocator, kernels at this batch size)
            run(frames[:n])
        latencies: dict[str, list[list[float]]] = {name: [] for name in modes}
        for t in range(cycles):
            images = frames[t:t + n]
            for name in (list(modes) if t % 2 == 0 else list(reversed(modes))):
                latencies[name].append(modes[name](images))
        fps = {}
        for name, per_cycle in latencies.items():
            seconds = sum(max(c) for c in per_cycle)
            fps[name] = n * cycles / seconds
            rows.append({"cameras": n, "mode": name, "frames": n * cycles, "seconds": seconds,
                         "fps": round(fps[name], 3),
                         "cycle_ms": round(statistics.median(max(c) for c in per_cycle) * 1e3, 2),
                         "frame_latency_ms": round(statistics.fmean(x for c in per_cycle for x in c) * 1e3, 2)})
        speedups[str(n)] = round(fps["batched"] / fps["one_by_one"], 3)
    return {
        "benchmark": "cameras",
        "measured": "Perception.predict per cycle (the node's batched inference call: Predictor.predict_many = "
                    "preprocess, one forward per grid size, postprocess incl. open-set map); excludes decode, "
                    "presentation, publishing and DDS",
        "weights": str(weights),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine(),
        "backend": backend + (f" [{', '.join(predictor.model.providers)}]" if backend == "onnxruntime" else ""),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "size": f"{size[0]}x{size[1]}",  # WxH, as --size
        "size_hxw": f"{size[1]}x{size[0]}",
        "network_grid": "input_size " + "x".join(map(str, predictor.metadata.input_size))
                        if predictor.metadata.input_size else "image size (all cameras share it: one forward)",
        "cycles": cycles,
        "render_seconds": round(render_s, 3),
        "runs": rows,
        "speedup_batched_over_one_by_one": speedups,
    }


def _cameras_table(result: dict) -> None:
    print(f"cameras {result['size']} (WxH), {result['backend']} on {result['device']} ({result['torch_threads']} threads), "
          f"{result['cycles']} cycles; measured: {result['measured']}")
    print(f"{'cameras':>7} {'mode':>10} {'fps':>8} {'cycle ms':>9} {'frame ms':>9}")
    for r in result["runs"]:
        print(f"{r['cameras']:>7} {r['mode']:>10} {r['fps']:>8.2f} {r['cycle_ms']:>9.1f} {r['frame_latency_ms']:>9.1f}")
    print("speedup batched / one-by-one: " + ", ".join(f"{n} cameras {v:.2f}x"
                                                       for n, v in result["speedup_batched_over_one_by_one"].items()))


def _emit(result: dict, args, table) -> None:
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.json:
        print(text)
    else:
        table(result)


def _overhead_table(result: dict) -> None:
    print(f"{'size':>10} {'closed ms':>10} {'hybrid ms':>10} {'ratio':>7}")
    for row in result["sizes"]:
        print(f"{row['size']:>10} {row['closed_ms']:>10.1f} {row['hybrid_ms']:>10.1f} {row['overhead_ratio']:>7.4f}")


def _sim_table(result: dict) -> None:
    print(f"sim render {result['size']}: " + ", ".join(f"{r['workers']} worker(s) {r['frames_per_s']:.1f} frames/s"
                                                       for r in result["runs"]))


def train_throughput(argv: list[str]) -> int:
    """`densehybrid-bench train ...`: the training module's benchmark (densehybrid_training.bench_train), run as its own
    command because the runtime never imports the training module."""
    import subprocess

    return subprocess.call([sys.executable, "-m", "densehybrid_training.bench_train", *argv])


def build_parser() -> argparse.ArgumentParser:
    """The `densehybrid-bench` command line (`train` is passed on to densehybrid_training.bench_train before parsing)."""
    parser = argparse.ArgumentParser(prog="densehybrid-bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="print the result as JSON")
    output.add_argument("--out", type=Path, help="also write the JSON here")
    p = sub.add_parser("overhead", parents=[output], help="closed-set forward vs forward + DenseHybrid outputs")
    p.add_argument("--model", default="swiftnet_r18", help="model preset name or YAML path")
    p.add_argument("--sizes", type=parse_stride_size, nargs="+", default=[(1024, 512), (2048, 1024)], metavar="WxH",
                   help="input sizes, width x height, multiples of 32 (default 1024x512 2048x1024)")
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--fp16", action="store_true", help="autocast float16 (CUDA only)")
    s = sub.add_parser("sim", parents=[output], help="sim-world render throughput, 1 vs N worker processes")
    s.add_argument("--frames", type=int, default=128)
    s.add_argument("--size", type=parse_size, default=(512, 256), metavar="WxH", help="frame size (default 512x256)")
    s.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    n = sub.add_parser("node", parents=[output], help="perception node end to end over DDS vs the bare Predictor")
    n.add_argument("--weights", type=Path, default=None, help="node weights (default: random weights of --model)")
    n.add_argument("--model", default="swiftnet_r18_cpu")
    n.add_argument("--frames", type=int, default=30)
    n.add_argument("--size", type=parse_size, default=(512, 256), metavar="WxH", help="frame size (default 512x256)")
    n.add_argument("--device", default="cpu")
    n.add_argument("--threads", type=int, default=None)
    sub.add_parser("train", help="training steps/s: defaults vs each speed-up (densehybrid_training.bench_train; --help there)")
    c = sub.add_parser("cameras", parents=[output], help="multi-camera inference: batched vs one-by-one, 1/2/4 cameras")
    c.add_argument("--weights", type=Path, default=None, help="weights (default: random weights of --model)")
    c.add_argument("--model", default="swiftnet_r18_cpu")
    c.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4], help="camera counts")
    c.add_argument("--cycles", type=int, default=20, help="timed cycles per camera count and mode")
    c.add_argument("--size", type=parse_size, default=(512, 256), metavar="WxH",
                   help="camera frame size (default 512x256)")
    c.add_argument("--device", default="cpu")
    c.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch")
    c.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    k = sub.add_parser("soak", parents=[output], help="the node at camera rate for N minutes: RSS, answered, dropped")
    bench_soak.add_arguments(k)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:
        return train_throughput(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "soak":
        return bench_soak.main(args, lambda result, table: _emit(result, args, table))
    if args.command == "cameras":
        if args.cycles < 1 or min(args.counts) < 1:
            parser.error("--cycles and --counts must be >= 1")
        _emit(cameras_throughput(args.weights, tuple(args.counts), args.cycles, args.size, args.device, args.backend,
                                 args.model, args.threads), args, _cameras_table)
        return 0
    if args.command == "node":
        from densehybrid_ros.tools.bench_node import bench_node, table

        _emit(bench_node(args.weights, args.frames, args.size, args.device, model=args.model, threads=args.threads),
              args, lambda r: print(table(r)))
        return 0
    if args.command == "sim":
        if args.frames < 1 or min(args.workers) < 1:
            parser.error("--frames and --workers must be >= 1")
        _emit(sim_throughput(args.frames, args.size, args.workers), args, _sim_table)
        return 0
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.fp16 and not args.device.startswith("cuda"):
        parser.error("--fp16 needs a CUDA --device")
    config = load_yaml(ModelConfig, model_config_path(args.model))
    _emit(overhead(config, args.sizes, args.repeats, args.warmup, args.device, args.fp16), args, _overhead_table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
