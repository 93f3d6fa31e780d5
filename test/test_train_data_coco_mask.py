"""COCO segmentation decoding (training/data/coco_mask.py) against hand-drawn masks.

The compressed RLE strings below were produced once by pycocotools 2.0.11 (``mask.encode`` of the hand-drawn
masks written next to them); they are fixed reference data, not output of the code under test.
"""
import numpy as np
import pytest

from densehybrid_training.data.coco_mask import decode_rle_counts, polygons_to_mask, rle_to_mask, segmentation_to_mask


def test_compressed_rle_small_mask():
    expected = np.zeros((8, 10), dtype=bool)
    expected[2:5, 5:9] = True
    expected[6, 1] = True
    mask = rle_to_mask({"size": [8, 10], "counts": ">1k02ZO000006"})
    assert mask.dtype == bool and mask.shape == (8, 10)
    np.testing.assert_array_equal(mask, expected)
    # bytes (as pycocotools returns them) decode the same
    np.testing.assert_array_equal(rle_to_mask({"size": [8, 10], "counts": b">1k02ZO000006"}), expected)


def test_compressed_rle_multichar_counts_and_negative_deltas():
    # a "plus": a vertical bar (rows 10..89, cols 20..24) and a horizontal one (rows 40..44, all columns);
    # runs > 31 need several 5-bit groups and the deltas between runs two apart are negative.
    expected = np.zeros((100, 120), dtype=bool)
    expected[10:90, 20:25] = True
    expected[40:45, :] = True
    counts = ("X15o20000000000000000000000000000000000000RO[2cN0000000n0eM]1" + "0" * 187 + "hN")
    np.testing.assert_array_equal(rle_to_mask({"size": [100, 120], "counts": counts}), expected)


def test_rle_string_first_runs_by_hand():
    # ">1" -> 14 zeros ('>' = 62 - 48 = 14), "1" -> 1 one: the first set pixel in column-major order is
    # (row 6, col 1) = index 1 * 8 + 6 = 14.
    assert decode_rle_counts(">1")[:2] == [14, 1]


def test_uncompressed_rle_column_major():
    # 3x4 mask, column-major runs: col0 = 0,1,1 ; col1 = 1,0,0 ; col2 = 0,0,0 ; col3 = 0,0,1
    # flat (col-major): 0 1 1 1 0 0 0 0 0 0 0 1 -> runs 1 zero, 3 ones, 7 zeros, 1 one
    expected = np.array([[0, 1, 0, 0],
                         [1, 0, 0, 0],
                         [1, 0, 0, 1]], dtype=bool)
    np.testing.assert_array_equal(rle_to_mask({"size": [3, 4], "counts": [1, 3, 7, 1]}), expected)


def test_rle_errors():
    with pytest.raises(ValueError, match="cover"):
        rle_to_mask({"size": [3, 4], "counts": [1, 3]})
    with pytest.raises(ValueError, match="size"):
        rle_to_mask({"counts": [1]})
    with pytest.raises(ValueError, match="truncated"):
        decode_rle_counts("o")  # 'o' = 63: "more groups follow", but the string ends
    with pytest.raises(ValueError, match="invalid character"):
        decode_rle_counts(" ")


def test_polygon_rectangle_is_its_area():
    # rectangle x 1..4, y 1..3: pixels whose centres lie inside -> columns 1..3, rows 1..2
    mask = polygons_to_mask([[1, 1, 4, 1, 4, 3, 1, 3]], 5, 6)
    expected = np.zeros((5, 6), dtype=bool)
    expected[1:3, 1:4] = True
    np.testing.assert_array_equal(mask, expected)


def test_polygon_triangle_by_hand():
    # triangle (0,0) (6,0) (0,5): row i keeps columns whose centre x + 0.5 < 6 * (1 - (i + 0.5) / 5)
    mask = polygons_to_mask([[0, 0, 6, 0, 0, 5]], 5, 6)
    widths = [5, 4, 3, 2, 1]  # 5.4, 4.2, 3.0, 1.8, 0.6 -> number of centres 0.5, 1.5, ... below
    expected = np.zeros((5, 6), dtype=bool)
    for i, w in enumerate(widths):
        expected[i, :w] = True
    np.testing.assert_array_equal(mask, expected)


def test_polygon_union_clipping_and_segmentation_dispatch():
    # two squares of one object (union) and a polygon reaching outside the image (clipped)
    segmentation = [[0, 0, 2, 0, 2, 2, 0, 2], [5, 3, 9, 3, 9, 7, 5, 7]]
    mask = segmentation_to_mask(segmentation, 6, 8)
    expected = np.zeros((6, 8), dtype=bool)
    expected[0:2, 0:2] = True
    expected[3:6, 5:8] = True
    np.testing.assert_array_equal(mask, expected)
    rle = {"size": [6, 8], "counts": [0, 48]}
    assert segmentation_to_mask(rle, 6, 8).all()
    with pytest.raises(ValueError, match="differs"):
        segmentation_to_mask(rle, 8, 6)
    with pytest.raises(ValueError, match="pairs"):
        polygons_to_mask([[0, 0, 1]], 4, 4)


def test_polygon_area_matches_shoelace():
    # independent check: a rotated square's pixel count equals its exact area to within its perimeter / 2
    rng = np.random.default_rng(3)
    for _ in range(10):
        cx, cy, r, a = rng.uniform(20, 40), rng.uniform(20, 40), rng.uniform(5, 15), rng.uniform(0, np.pi)
        ang = a + np.arange(4) * np.pi / 2
        xy = np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], 1)
        area = 2 * r * r
        count = polygons_to_mask([xy.ravel().tolist()], 64, 64).sum()
        assert abs(count - area) <= 4 * np.sqrt(2) * r / 2


def test_agrees_with_pycocotools_when_installed():
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(1, 40, 2)
        m = rng.random((h, w)) < 0.4
        rle = mask_api.encode(np.asfortranarray(m.astype(np.uint8)))
        np.testing.assert_array_equal(rle_to_mask(rle), m)
