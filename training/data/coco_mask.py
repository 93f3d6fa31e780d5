"""COCO segmentation decoding without pycocotools: polygons and run-length encodings (RLE) -> bool masks.

Formats (COCO API, ``cocodataset/cocoapi`` ``PythonAPI/pycocotools/mask.py`` and ``common/maskApi.c``):

- polygon: ``[[x0, y0, x1, y1, ...], ...]`` in pixel coordinates where pixel (row i, column j) covers
  ``[j, j+1) x [i, i+1)``; several polygons of one object are merged (union).
- uncompressed RLE: ``{"size": [h, w], "counts": [n0, n1, ...]}``, alternating runs of 0s and 1s (starting with
  0s) over the pixels in column-major (Fortran) order; used for ``iscrowd`` annotations.
- compressed RLE: the same runs with ``counts`` a string: each count is written as 5-bit groups, least
  significant first, each group + 48 as one ASCII character, bit 0x20 meaning "more groups follow", bit 0x10 of
  the last group the sign; from the third count on, the value stored is the difference to the count two
  places earlier.

Polygon rasterisation: a pixel belongs to the mask when its centre ``(j + 0.5, i + 0.5)`` is inside the
polygon (even-odd rule, edges half-open), i.e. the mask's area equals the polygon's area for axis-aligned
polygons. pycocotools rasterises an up-sampled outline instead; both agree on axis-aligned shapes and
differ only in pixels whose centre lies within about half a pixel of a slanted edge.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["decode_rle_counts", "rle_to_mask", "polygons_to_mask", "segmentation_to_mask"]


def decode_rle_counts(counts: str | bytes) -> list[int]:
    """The run lengths of a compressed COCO RLE string (``maskApi.c`` ``rleFrString``)."""
    data = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    out: list[int] = []
    p = 0
    n = len(data)
    while p < n:
        x = 0
        k = 0
        more = True
        while more:
            if p >= n:
                raise ValueError(f"truncated RLE string at byte {p}")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"invalid character {chr(data[p])!r} in RLE string at byte {p}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def rle_to_mask(rle: dict) -> np.ndarray:
    """A bool HxW mask from a COCO RLE dict (compressed string or uncompressed list ``counts``)."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"RLE must be a dict with 'size' [h, w] and 'counts', got {rle!r:.80}") from exc
    runs = decode_rle_counts(counts) if isinstance(counts, (str, bytes)) else [int(c) for c in counts]
    if any(r < 0 for r in runs):
        raise ValueError("RLE has a negative run length")
    total = sum(runs)
    if total != h * w:
        raise ValueError(f"RLE runs cover {total} pixels, but size {h}x{w} has {h * w}")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape((w, h)).T.copy()  # column-major order


def _polygon_mask(xy: np.ndarray, h: int, w: int) -> np.ndarray:
    """Even-odd pixel-centre rasterisation of one closed polygon (N x 2 float array of x, y)."""
    mask = np.zeros((h, w), dtype=bool)
    if len(xy) < 3:
        return mask
    x0, y0 = xy[:, 0], xy[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    top = max(0, int(np.floor(y0.min() - 0.5)))
    bottom = min(h, int(np.ceil(y0.max() + 0.5)) + 1)
    if top >= bottom:
        return mask
    yc = np.arange(top, bottom, dtype=np.float64)[:, None] + 0.5  # row centres
    # An edge crosses the row centre line when y0 <= yc < y1 or y1 <= yc < y0 (half-open: no double counts).
    crosses = (y0 <= yc) != (y1 <= yc)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (yc - y0) / (y1 - y0)
    xs = np.where(crosses, x0 + t * (x1 - x0), np.inf)
    xs.sort(axis=1)
    cols = np.arange(w, dtype=np.float64) + 0.5
    for r in range(bottom - top):
        row = xs[r]
        row = row[np.isfinite(row)]
        for a, b in zip(row[0::2], row[1::2]):  # even-odd spans [a, b)
            mask[top + r] ^= (cols >= a) & (cols < b)
    return mask


def polygons_to_mask(polygons: Sequence[Sequence[float]], h: int, w: int) -> np.ndarray:
    """Union of COCO polygons (each a flat ``[x0, y0, x1, y1, ...]`` list) as a bool HxW mask."""
    mask = np.zeros((h, w), dtype=bool)
    for poly in polygons:
        coords = np.asarray(poly, dtype=np.float64)
        if coords.ndim != 1 or coords.size % 2:
            raise ValueError(f"a polygon must be a flat list of x, y pairs, got {len(coords)} numbers")
        mask |= _polygon_mask(coords.reshape(-1, 2), h, w)
    return mask


def segmentation_to_mask(segmentation: Any, h: int, w: int) -> np.ndarray:
    """Any COCO ``segmentation`` (polygon list, uncompressed or compressed RLE) -> bool HxW mask."""
    if isinstance(segmentation, list):
        return polygons_to_mask(segmentation, h, w)
    if isinstance(segmentation, dict):
        mask = rle_to_mask(segmentation)
        if mask.shape != (h, w):
            raise ValueError(f"RLE size {mask.shape} differs from the image size {(h, w)}")
        return mask
    raise ValueError(f"unknown COCO segmentation type {type(segmentation).__name__}")
