"""Cityscapes and the void-as-unknown variant on a tiny fixture in the real on-disk layout."""
from __future__ import annotations

import numpy as np
import pytest

from densehybrid_ros.datasets import DatasetError, open_dataset

from test_datasets_common import noise_rgb, write_camera, write_gray, write_rgb

H, W = 16, 32

# (labelId, trainId, void-as-unknown ood, open-set semantic) for eight 4-pixel-wide bands, derived by hand
# from the official table and thesis 5.1.3.
BANDS = [
    (7, 0, 0, 0),        # road
    (26, 13, 0, 13),     # car
    (0, 255, 255, 255),  # unlabeled: void
    (4, 255, 1, 19),     # static: unknown
    (29, 255, 1, 19),    # caravan: unknown
    (3, 255, 255, 255),  # out of roi: void
    (33, 18, 0, 18),     # bicycle
    (14, 255, 1, 19),    # guard rail: unknown
]


def band_label(column_values):
    out = np.zeros((H, W), np.uint8)
    for i, value in enumerate(column_values):
        out[:, 4 * i:4 * (i + 1)] = value
    return out


FRAMES = ["bochum_000000_000313", "aachen_000001_000019", "aachen_000000_000019"]  # written out of order


def make_cityscapes(root, split="val", with_depth=False):
    images = {}
    for k, name in enumerate(FRAMES):
        city = name.split("_")[0]
        images[name] = write_rgb(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", noise_rgb(H, W, k))
        write_gray(root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png", band_label([b[0] for b in BANDS]))
        if with_depth:
            disp = np.zeros((H, W), np.uint16)
            disp[:, :8] = 257    # d = 1 px
            disp[:, 8:16] = 2049  # d = 8 px
            disp[0, 0] = 1       # d = 0 -> NaN
            write_gray(root / "disparity" / split / city / f"{name}_disparity.png", disp)
            write_camera(root / "camera" / split / city / f"{name}_camera.json", baseline=0.222, fx=2262.5, fy=2265.3)
    return images


def test_cityscapes_names_sorted_and_trainids(tmp_path):
    make_cityscapes(tmp_path)
    ds = open_dataset(f"cityscapes:{tmp_path}")
    assert ds.kind == "cityscapes" and ds.split == "val" and len(ds.classes) == 19 and ds.classes[13] == "car"
    assert [ds[i].name for i in range(len(ds))] == ["aachen_000000_000019", "aachen_000001_000019",
                                                   "bochum_000000_000313"]
    sample = ds[2]
    expected_rgb = noise_rgb(H, W, 0)  # bochum was written first (seed 0)
    np.testing.assert_array_equal(sample.image, expected_rgb)
    assert sample.image.dtype == np.uint8 and sample.image.shape == (H, W, 3)
    np.testing.assert_array_equal(sample.semantic, band_label([b[1] for b in BANDS]))
    assert sample.ood is None and sample.depth is None and sample.extras["city"] == "bochum"


def test_cityscapes_void_as_unknown(tmp_path):
    make_cityscapes(tmp_path)
    sample = open_dataset(f"cityscapes-void:{tmp_path}", "val")[0]
    np.testing.assert_array_equal(sample.ood, band_label([b[2] for b in BANDS]))
    np.testing.assert_array_equal(sample.semantic, band_label([b[3] for b in BANDS]))
    assert sample.ood.dtype == np.uint8 and sample.semantic.dtype == np.uint8


def test_cityscapes_depth_from_disparity(tmp_path):
    make_cityscapes(tmp_path, with_depth=True)
    depth = open_dataset(f"cityscapes:{tmp_path}")[0].depth
    assert depth.dtype == np.float32 and depth.shape == (H, W)
    assert np.isnan(depth[0, 0])
    assert depth[5, 3] == pytest.approx(0.222 * 2262.5 / 1.0, rel=1e-6)
    assert depth[5, 12] == pytest.approx(0.222 * 2262.5 / 8.0, rel=1e-6)
    assert np.isnan(depth[:, 16:]).all()  # p = 0: invalid


def test_cityscapes_train_split_and_bad_split(tmp_path):
    make_cityscapes(tmp_path, split="train")
    assert len(open_dataset(f"cityscapes:{tmp_path}", "train")) == 3
    with pytest.raises(DatasetError, match=r"leftImg8bit/val does not exist"):
        open_dataset(f"cityscapes:{tmp_path}")
    with pytest.raises(DatasetError, match="unknown split 'test'"):
        open_dataset(f"cityscapes:{tmp_path}", "test")


def test_cityscapes_lazy_errors(tmp_path):
    make_cityscapes(tmp_path)
    label = tmp_path / "gtFine/val/aachen/aachen_000000_000019_gtFine_labelIds.png"
    label.unlink()
    ds = open_dataset(f"cityscapes:{tmp_path}")  # the constructor reads nothing
    assert len(ds) == 3
    with pytest.raises(DatasetError, match="aachen_000000_000019_gtFine_labelIds.png does not exist"):
        ds[0]
    assert ds[1].name == "aachen_000001_000019"
    # a label of the wrong size, and a value outside labelIds 0..33
    write_gray(label, np.zeros((H, W - 2), np.uint8))
    with pytest.raises(DatasetError, match="is 30x16"):
        ds[0]
    bad = band_label([b[0] for b in BANDS])
    bad[3, 3] = 40
    write_gray(label, bad)
    with pytest.raises(DatasetError, match="value 40"):
        ds[0]
