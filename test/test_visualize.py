"""densehybrid_ros.perception.presentation against hand-built tables, a per-pixel blend formula, matplotlib's inferno
colour map and a hand-drawn overlay."""
from __future__ import annotations

import numpy as np
import pytest

from densehybrid_ros.classes import UNKNOWN_COLOR
from densehybrid_ros.perception.presentation import BOX_COLOR, colorize, heatmap, overlay, palette, render_overlay

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


def test_render_overlay_marks_unknown_pixels_and_boxes():
    from densehybrid_ros.perception.obstacles import Component, Obstacle

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    class_ids = rng.integers(0, 3, (30, 40)).astype(np.uint8)
    open_set = class_ids.copy()
    open_set[10:20, 5:15] = 3  # a 10x10 unknown block (K = 3)
    table = palette(COLOURS)
    expected = overlay(image, open_set, table, 0.5)  # the blend formula is checked above
    out = render_overlay(image, class_ids, open_set, [], table, 3, 0.5)
    ring = np.zeros((30, 40), bool)
    ring[10:20, 5:15] = True
    ring[11:19, 6:14] = False  # the block's outermost pixels: its contour
    assert (out[ring] == (255, 255, 255)).all()
    assert (out[11:19, 6:14] == UNKNOWN_COLOR).all()  # unknown at full strength, not blended
    outside = np.ones((30, 40), bool)
    outside[10:20, 5:15] = False
    assert (out[outside] == expected[outside]).all()
    # no open-set map: the class colours blended, nothing highlighted
    assert (render_overlay(image, class_ids, None, [], table, 3, 0.5) == overlay(image, class_ids, table, 0.5)).all()
    # a placed obstacle: a box in BOX_COLOR around its component, its label above
    component = Component(label=1, x0=20, y0=12, x1=30, y1=25, area=130, mean_score=1.0, max_score=2.0, bottom_u=25.0,
                          bottom_v=24.5, centroid=(25.0, 18.0))
    placed = Obstacle(component, np.zeros(3), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0, 1.0), np.zeros(3), 5.0, "ground", id=4)
    boxed = render_overlay(image, class_ids, None, [placed], table, 3, 0.5)
    edges = np.zeros((30, 40), bool)
    edges[12:25, 20:30] = True
    edges[14:23, 22:28] = False  # 2 pixels inward from the box's pixel extent (cv2 draws thickness 2 about x0..x1-1)
    assert (boxed[edges] == BOX_COLOR).all()
    base = overlay(image, class_ids, table, 0.5)
    assert (boxed[16:21, 24:26] == base[16:21, 24:26]).all()  # inside untouched
    assert (boxed[:11] != base[:11]).any() and (boxed[27:] == base[27:]).all()  # its label above the box only
