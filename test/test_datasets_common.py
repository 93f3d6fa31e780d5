"""Shared dataset-loader plumbing: readers, disparity -> depth, the registry, and the Cityscapes label table.

Also holds the fixture writers the other ``test_datasets_*`` files import.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from densehybrid_ros import classes as project_classes
from densehybrid_ros.datasets import DatasetError, iterate, kinds, open_dataset
from densehybrid_ros.datasets import _common, cityscapes_labels as csl


# --- fixture writers (used by the other test_datasets_* files) --------------------------------------------

def write_rgb(path: Path, rgb: np.ndarray, params=()) -> Path:
    """Write an RGB uint8 array with OpenCV (which expects BGR)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]), list(params)), path
    return path


def write_gray(path: Path, array: np.ndarray) -> Path:
    assert array.ndim == 2 and array.dtype in (np.uint8, np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array), path
    return path


def write_camera(path: Path, baseline: float, fx: float, fy: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"extrinsic": {"baseline": baseline, "pitch": 0.0, "x": 1.7},
                                "intrinsic": {"fx": fx, "fy": fy, "u0": 16.0, "v0": 8.0}}))
    return path


def noise_rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def blocks_rgb(h: int, w: int, colors) -> np.ndarray:
    """Vertical bands of flat colours (survive JPEG at quality 100 within a few levels)."""
    img = np.zeros((h, w, 3), np.uint8)
    band = w // len(colors)
    for i, color in enumerate(colors):
        img[:, i * band:(i + 1) * band] = color
    return img


# --- readers ---------------------------------------------------------------------------------------------

def test_read_rgb_returns_rgb_order_and_drops_alpha(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 77  # R, G, B, A
    # OpenCV writes BGRA: swap R and B before writing.
    assert cv2.imwrite(str(tmp_path / "a.png"), rgba[..., [2, 1, 0, 3]])
    out = _common.read_rgb("k", tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (4, 6, 3)
    assert (out[..., 0] == 10).all() and (out[..., 1] == 20).all() and (out[..., 2] == 30).all()


def test_read_rgb_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match=r"image file .*missing\.png does not exist"):
        _common.read_rgb("k", tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot decode image file .*junk\.png"):
        _common.read_rgb("k", tmp_path / "junk.png")


def test_read_label_palette_png_gives_indices_not_colours(tmp_path):
    from PIL import Image
    idx = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    img = Image.fromarray(idx, mode="P")
    img.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10] + [0] * (256 * 3 - 9))
    img.save(tmp_path / "p.png")
    np.testing.assert_array_equal(_common.read_label("k", tmp_path / "p.png"), idx)


def test_read_label_accepts_grey_rgb_and_rejects_colour(tmp_path):
    grey = np.array([[1, 2], [3, 4]], np.uint8)
    assert cv2.imwrite(str(tmp_path / "g.png"), np.dstack([grey] * 3))
    np.testing.assert_array_equal(_common.read_label("k", tmp_path / "g.png"), grey)
    colour = np.dstack([grey, grey, grey + 1])
    assert cv2.imwrite(str(tmp_path / "c.png"), colour)
    with pytest.raises(DatasetError, match="single-channel"):
        _common.read_label("k", tmp_path / "c.png")


def test_read_label_checks_dtype(tmp_path):
    write_gray(tmp_path / "d.png", np.full((2, 2), 300, np.uint16))
    with pytest.raises(DatasetError, match="dtype uint16, expected uint8"):
        _common.read_label("k", tmp_path / "d.png")


def test_disparity_to_depth_matches_the_formula_by_hand():
    raw = np.array([[0, 1, 257, 2561], [513, 65535, 129, 0]], np.uint16)
    baseline, fx = 0.21, 2268.36
    depth = _common.disparity_to_depth(raw, baseline, fx)
    assert depth.dtype == np.float32
    # d = (p - 1) / 256: 257 -> 1 px, 2561 -> 10 px, 513 -> 2 px, 65535 -> 255.9921875 px, 129 -> 0.5 px
    expected = np.array([[np.nan, np.nan, 0.21 * 2268.36 / 1.0, 0.21 * 2268.36 / 10.0],
                         [0.21 * 2268.36 / 2.0, 0.21 * 2268.36 / 255.9921875, 0.21 * 2268.36 / 0.5, np.nan]])
    np.testing.assert_allclose(depth, expected, rtol=1e-6, equal_nan=True)


def test_read_camera_names_missing_or_bad_keys(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"extrinsic": {}, "intrinsic": {"fx": 2000.0}}))
    with pytest.raises(DatasetError, match=r"extrinsic\.baseline"):
        _common.read_camera("k", path)
    path.write_text(json.dumps({"extrinsic": {"baseline": 0.2}, "intrinsic": {"fx": -5}}))
    with pytest.raises(DatasetError, match=r"intrinsic\.fx = -5"):
        _common.read_camera("k", path)
    path.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        _common.read_camera("k", path)


# --- registry --------------------------------------------------------------------------------------------

def test_all_kinds_are_registered():
    assert set(kinds()) >= {
        "streethazards", "cityscapes", "cityscapes-void", "fishyscapes-laf", "fishyscapes-static",
        "smiyc-anomaly", "smiyc-obstacle", "smiyc-laf-noknown", "road-anomaly", "lostandfound",
    }


@pytest.mark.parametrize("kind", ["streethazards", "cityscapes", "cityscapes-void", "fishyscapes-laf",
                                  "fishyscapes-static", "smiyc-anomaly", "smiyc-obstacle", "smiyc-laf-noknown",
                                  "road-anomaly", "lostandfound"])
def test_every_kind_refuses_an_empty_root_with_a_dataset_error(tmp_path, kind):
    with pytest.raises(DatasetError, match=kind):
        open_dataset(f"{kind}:{tmp_path}")
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(f"{kind}:{tmp_path / 'nowhere'}")


def test_spec_errors():
    with pytest.raises(DatasetError, match="not KIND:PATH"):
        open_dataset("cityscapes")
    with pytest.raises(DatasetError, match="unknown dataset kind 'nope'"):
        open_dataset("nope:/tmp")


def test_iterate_and_index_errors(tmp_path):
    write_rgb(tmp_path / "frames" / "a.png", noise_rgb(4, 4, 0))
    write_gray(tmp_path / "frames" / "a.labels" / "labels_semantic.png", np.zeros((4, 4), np.uint8))
    ds = open_dataset(f"road-anomaly:{tmp_path}")
    assert [s.name for s in iterate(ds)] == ["a"]
    assert ds[-1].name == "a"
    with pytest.raises(IndexError):
        ds[1]


# --- Cityscapes label table ------------------------------------------------------------------------------

def test_cityscapes_table_agrees_with_the_project_class_list():
    # densehybrid_ros/classes.py is an independently typed list of the 19 classes with colours.
    assert csl.TRAIN_CLASS_NAMES == tuple(name for name, _ in project_classes.CITYSCAPES_CLASSES)
    assert csl.TRAIN_CLASS_COLORS == tuple(color for _, color in project_classes.CITYSCAPES_CLASSES)


def test_cityscapes_table_facts():
    assert len(csl.LABELS) == 35 and csl.LABEL_IDS == tuple(range(34))
    assert sorted(lb.train_id for lb in csl.LABELS if 0 <= lb.train_id < 255) == list(range(19))
    ignored = [lb.name for lb in csl.LABELS if lb.ignore_in_eval]
    assert len(ignored) == 16  # the 16 "void" classes OpenGAN enumerates as its open set
    assert all(lb.train_id in (255, -1) for lb in csl.LABELS if lb.ignore_in_eval)
    # spot checks from the official table
    assert csl.BY_NAME["car"].id == 26 and csl.BY_NAME["car"].train_id == 13
    assert csl.BY_NAME["guard rail"].id == 14 and csl.BY_NAME["guard rail"].category == "construction"
    assert csl.BY_NAME["license plate"].id == -1 and csl.BY_NAME["license plate"].category == "vehicle"
    assert csl.BY_NAME["terrain"].color == (152, 251, 152)
    # thesis 5.1.3: void classes minus unlabeled, ego vehicle, rectification border, out of roi, license plate
    assert set(csl.VOID_AS_UNKNOWN_NAMES) == {"static", "dynamic", "ground", "parking", "rail track", "guard rail",
                                              "bridge", "tunnel", "polegroup", "caravan", "trailer"}
    assert csl.VOID_AS_UNKNOWN_IDS == (4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30)


def test_label_ids_to_train_ids_by_hand():
    ids = np.array([[0, 7, 8, 11, 33], [26, 29, 24, 23, 255]], np.uint8)
    expected = np.array([[255, 0, 1, 2, 18], [13, 255, 11, 10, 255]], np.uint8)
    np.testing.assert_array_equal(csl.label_ids_to_train_ids(ids), expected)
    with pytest.raises(ValueError):
        csl.label_ids_to_train_ids(ids.astype(np.int32))
