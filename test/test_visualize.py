"""densehybrid_ros.perception.presentation against hand-built tables, a per-pixel blend formula and matplotlib's inferno colour map."""
from __future__ import annotations

import numpy as np
import pytest

from densehybrid_ros.classes import UNKNOWN_COLOR
from densehybrid_ros.perception.presentation import colorize, heatmap, overlay, palette

COLOURS = [(128, 64, 128), (244, 35, 232), (70, 70, 70)]


def test_palette_holds_the_class_colours_then_unknown_then_black():
    table = palette(COLOURS)
    assert table.shape == (256, 3) and table.dtype == np.uint8
    assert [tuple(int(v) for v in row) for row in table[:3]] == COLOURS
    assert tuple(int(v) for v in table[3]) == UNKNOWN_COLOR == (0, 255, 255)
    assert not table[4:].any()
    assert tuple(int(v) for v in palette(COLOURS, unknown=(1, 2, 3))[3]) == (1, 2, 3)


def test_colorize_looks_every_pixel_up():
    ids = np.array([[0, 1, 2], [3, 2, 200]], np.uint8)
    rgb = colorize(ids, palette(COLOURS))
    expected = [[COLOURS[0], COLOURS[1], COLOURS[2]], [UNKNOWN_COLOR, COLOURS[2], (0, 0, 0)]]
    assert rgb.dtype == np.uint8 and rgb.tolist() == [[list(c) for c in row] for row in expected]


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_overlay_is_the_alpha_blend_rounded(alpha):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    ids = rng.integers(0, 4, (5, 7)).astype(np.uint8)
    out = overlay(image, ids, palette(COLOURS), alpha)
    table = np.array([*COLOURS, UNKNOWN_COLOR], np.float64)
    expected = (1 - alpha) * image.astype(np.float64) + alpha * table[ids]
    assert out.dtype == np.uint8 and np.abs(out - expected).max() <= 0.5 + 1e-9


def test_heatmap_is_inferno_over_the_clipped_range():
    from matplotlib import colormaps

    score = np.array([[-5.0, 0.0, 0.25], [0.5, 1.0, 9.0]], np.float32)
    rgb = heatmap(score, 0.0, 1.0)
    scaled = np.clip(score, 0.0, 1.0)
    reference = colormaps["inferno"]((scaled * 255).astype(np.uint8))[..., :3] * 255
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert np.abs(rgb - reference).max() <= 3  # OpenCV's 256-entry table of the same map
    assert (rgb[0, 0] == rgb[0, 1]).all() and (rgb[1, 1] == rgb[1, 2]).all()  # clipped at both ends
    assert rgb[1, 1].astype(int).sum() > rgb[0, 2].astype(int).sum() > rgb[0, 1].astype(int).sum()  # brighter = higher
    with pytest.raises(ValueError, match="low < high"):
        heatmap(score, 1.0, 1.0)
