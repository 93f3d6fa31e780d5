"""One size syntax for every command line: `--size WxH` (width first) -> (width, height), `cli_args.parse_size`."""
from __future__ import annotations

import argparse

import pytest

from densehybrid_ros.cli_args import MAX_SIDE, MIN_SIDE, parse_size


def test_parse_size_is_width_by_height():
    assert parse_size("512x256") == (512, 256)
    assert parse_size("128X64") == (128, 64)
    assert parse_size(f"{MIN_SIDE}x{MAX_SIDE}") == (MIN_SIDE, MAX_SIDE)
    for bad, message in (("512by256", "size must be WxH"), ("512", "size must be WxH"), ("1x2x3", "size must be WxH"),
                         (f"{MIN_SIDE - 1}x64", "each side in"), (f"64x{MAX_SIDE + 1}", "each side in")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse_size(bad)
        with pytest.raises(ValueError, match=message):  # the node parameter (densehybrid-sim-camera's size) catches it
            parse_size(bad)


def test_every_benchmark_and_sim_command_reads_size_as_width_by_height():
    """The same text gives the same (width, height) in densehybrid-bench (overhead, sim, node, cameras, soak),
    bench_node and densehybrid-sim (render, bag, gallery); the defaults are 512 wide, 256 high."""
    from densehybrid_ros.sim.cli import build_parser as sim_parser
    from densehybrid_ros.tools.bench import build_parser as bench_parser
    from densehybrid_ros.tools.bench_node import build_parser as bench_node_parser

    bench, sim = bench_parser(), sim_parser()
    required = {"soak": ["--minutes", "1"], "render": ["--out", "x", "--split", "test", "--frames", "1"],
                "bag": ["--out", "x"], "gallery": ["--out", "x"]}
    for parser, command in [(bench, c) for c in ("sim", "node", "cameras", "soak")] + \
                           [(sim, c) for c in ("render", "bag", "gallery")] + [(bench_node_parser(), None)]:
        prefix = ([command] if command else []) + required.get(command, [])
        assert parser.parse_args([*prefix, "--size", "128x64"]).size == (128, 64), command
        assert parser.parse_args(prefix).size == (512, 256), command
    overhead = bench.parse_args(["overhead", "--sizes", "128x64", "96x32"])
    assert overhead.sizes == [(128, 64), (96, 32)]
    assert bench.parse_args(["overhead"]).sizes == [(1024, 512), (2048, 1024)]  # width first, as before 512x1024 HxW


def test_overhead_sizes_must_fit_the_output_stride(capsys):
    from densehybrid_ros.tools.bench import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["overhead", "--sizes", "128x48"])
    assert exit_.value.code == 2 and "multiples of 32" in capsys.readouterr().err


def test_eval_bag_takes_the_nodes_obstacle_parameters_with_their_types():
    """densehybrid-eval-bag's node parameters parse as the node reads them: a boolean from true/false (not Python's
    bool('false') == True), floats, lists; left out, the node's default applies (None here)."""
    from densehybrid_ros.evaluation.bag_cli import build_parser, obstacle_options

    parser = build_parser()
    base = ["--bag", "b", "--out", "o", "--oracle"]
    for text, value in (("true", True), ("False", False), ("1", True), ("off", False)):
        assert parser.parse_args([*base, "--hold-missed-obstacles", text]).hold_missed_obstacles is value
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--hold-missed-obstacles", "maybe"])
    args = parser.parse_args([*base, "--track-match-relative", "0.3", "--drivable-classes", "road, terrain"])
    node = dict(obstacle_options(args).node)
    assert node == {"track_match_relative": 0.3, "drivable_classes": ("road", "terrain")}
    settings = obstacle_options(args).node_settings()
    assert settings.confirmation().match_relative == 0.3 and not settings.confirmation().hold_missed
    for text in ("", "tpr95"):  # a string parameter: "" (off) passes through as given
        args = parser.parse_args([*base, "--instant-confirm-point", text])
        assert obstacle_options(args).node_settings().instant_confirm_point == text
