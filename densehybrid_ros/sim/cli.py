"""`densehybrid-sim`: render datasets, write driving bags, draw a gallery.

    densehybrid-sim render  --out DIR --split train|val|test --frames N --seed S --size 512x256 [--workers W]
                            [--frames-per-scene F]   (one scene = one street; fewer frames each = more streets)
    densehybrid-sim bag     --out BAG --split test --frames N --rate 10 --speed 8 --seed S --size WxH [--storage mcap]
    densehybrid-sim gallery --out PNG [--rows 4] [--seed S] [--size WxH]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from densehybrid_ros.cli_args import parse_size
from densehybrid_ros.sim.world import CAMERA_CLEARANCES, SimConfig


def _config(args) -> SimConfig:
    w, h = args.size
    per = getattr(args, "frames_per_scene", None)
    extra = {} if per is None else {"frames_per_scene": per}
    clearance = getattr(args, "camera_clearance", None)
    if clearance is not None:
        extra["camera_clearance"] = clearance
    return dataclasses.replace(SimConfig(), width=w, height=h, **extra)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="densehybrid-sim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--size", type=parse_size, default=(512, 256), metavar="WxH",
                        help="frame size, width x height (default 512x256)")
    r = sub.add_parser("render", parents=[common], help="a dataset on disk")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--split", choices=("train", "val", "test"), required=True)
    r.add_argument("--frames", type=int, required=True)
    r.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    r.add_argument("--frames-per-scene", type=int, default=None,
                   help=f"frames per street (default {SimConfig.frames_per_scene}); evaluation splits use fewer "
                        "so that they cover many streets")
    r.add_argument("--camera-clearance", choices=CAMERA_CLEARANCES, default=SimConfig.camera_clearance,
                   help="vehicles each frame's camera keeps clear of for 25 m ahead: 'lane' (default) every one in "
                        "the ego lane, kerb-parked ones included; 'path' only those its path would touch, so that "
                        "frames show vehicles parked just ahead, as driving sequences do")
    b = sub.add_parser("bag", parents=[common], help="a driving sequence as a ROS 2 bag")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--split", choices=("train", "val", "test"), default="test")
    b.add_argument("--frames", type=int, default=100)
    b.add_argument("--rate", type=float, default=10.0, help="frames per second of sim time")
    b.add_argument("--speed", type=float, default=8.0, help="camera speed in m/s")
    b.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3")
    g = sub.add_parser("gallery", parents=[common], help="PNG grid: RGB / labels / depth / anomalies")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--rows", type=int, default=4)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = _config(args)
        config.validate()
        start = time.perf_counter()
        if args.command == "render":
            from densehybrid_ros.sim.dataset import render_dataset

            m = render_dataset(args.out, args.split, args.frames, args.seed, config, args.workers)
            dt = time.perf_counter() - start
            print(f"{m['frames']} frames ({m['frames_with_anomalies']} with visible anomalies) in {args.out} "
                  f"in {dt:.1f} s ({m['frames'] / dt:.1f} frames/s)")
        elif args.command == "bag":
            from tqdm import tqdm

            from densehybrid_ros.sim.bag import write_bag
            from densehybrid_ros.sim.frames import driving_sequence
            from densehybrid_ros.sim.world import SimWorld

            with SimWorld(config) as world:
                frames = tqdm(driving_sequence(world, args.seed, args.split, args.frames, args.rate, args.speed),
                              total=args.frames, desc="sim bag", unit="frame")
                n = write_bag(args.out, frames, args.rate, args.storage)
            print(f"{n} frames at {args.rate:g} Hz written to {args.out} ({args.storage})")
        else:
            from densehybrid_ros.sim.gallery import write_gallery

            print(f"gallery written to {write_gallery(args.out, args.rows, args.seed, config=config)}")
    except (ValueError, FileExistsError, OSError) as exc:
        print(f"densehybrid-sim: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
