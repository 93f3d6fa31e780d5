"""Argument types shared by every command-line tool and node parameter, so that a size means the same thing
everywhere."""
from __future__ import annotations

import argparse

MIN_SIDE, MAX_SIDE = 16, 4096  # pixels per image side accepted by the tools


class SizeError(argparse.ArgumentTypeError, ValueError):
    """A size that is not WxH within MIN_SIDE..MAX_SIDE: argparse reports it as a usage error, other callers
    (node parameters) catch it as a ValueError."""


def parse_size(text: str) -> tuple[int, int]:
    """`--size WxH` (e.g. 512x256: width first, as camera resolutions are written) -> (width, height)."""
    try:
        w, h = (int(v) for v in str(text).strip().lower().split("x"))
    except ValueError:
        raise SizeError(f"size must be WxH, e.g. 512x256, got {text!r}") from None
    if not (MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE):
        raise SizeError(f"size must be WxH with each side in {MIN_SIDE}..{MAX_SIDE}, got {w}x{h}")
    return w, h
