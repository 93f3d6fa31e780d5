"""Argument types shared by every command-line tool, so that an option means the same thing everywhere."""
from __future__ import annotations

import argparse

MIN_SIDE, MAX_SIDE = 16, 4096  # pixels per image side accepted by the tools


def parse_size(text: str) -> tuple[int, int]:
    """`--size WxH` (e.g. 512x256: width first, as camera resolutions are written) -> (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WxH, e.g. 512x256, got {text!r}") from None
    if not (MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE):
        raise argparse.ArgumentTypeError(f"size {w}x{h} out of range ({MIN_SIDE}..{MAX_SIDE} per side)")
    return w, h
