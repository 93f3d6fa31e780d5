"""Road Anomaly (Lis et al. 2019) on a tiny fixture in its frames/<name>.labels/ layout."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from densehybrid_ros.datasets import DatasetError, open_dataset

from test_datasets_common import noise_rgb, write_gray, write_rgb

H, W = 16, 32


def labels():
    lab = np.zeros((H, W), np.uint8)  # 0 background
    lab[8:, :] = 1                    # 1 road
    lab[6:12, 10:20] = 2              # 2 anomaly
    lab[0, 0] = 3                     # >= 2 counts as anomaly in the authors' code
    return lab


def ood_by_hand():
    ood = np.zeros((H, W), np.uint8)
    ood[6:12, 10:20] = 1
    ood[0, 0] = 1
    return ood


def make_road_anomaly(root, names=("cow0001_b", "animals01_a"), frame_list=True):
    for k, name in enumerate(names):
        write_rgb(root / "frames" / f"{name}.png", noise_rgb(H, W, k))
        write_gray(root / "frames" / f"{name}.labels" / "labels_semantic.png", labels())
    if frame_list:
        (root / "frame_list.json").write_text(json.dumps([f"{n}.png" for n in names]))


def test_labels_and_sorted_names(tmp_path):
    make_road_anomaly(tmp_path)
    ds = open_dataset(f"road-anomaly:{tmp_path}")
    assert ds.split == "test" and ds.names == ["animals01_a", "cow0001_b"]
    sample = ds[1]
    np.testing.assert_array_equal(sample.image, noise_rgb(H, W, 0))
    np.testing.assert_array_equal(sample.ood, ood_by_hand())
    assert sample.semantic is None and sample.depth is None


def test_frame_list_is_optional_and_restricts(tmp_path):
    make_road_anomaly(tmp_path, frame_list=False)
    assert open_dataset(f"road-anomaly:{tmp_path}").names == ["animals01_a", "cow0001_b"]
    (tmp_path / "frame_list.json").write_text(json.dumps(["cow0001_b.png"]))
    assert open_dataset(f"road-anomaly:{tmp_path}").names == ["cow0001_b"]
    (tmp_path / "frame_list.json").write_text(json.dumps(["../escape.png"]))
    with pytest.raises(DatasetError, match="'../escape.png' is not an image file name"):
        open_dataset(f"road-anomaly:{tmp_path}")


def test_lazy_missing_label_and_missing_listed_image(tmp_path):
    make_road_anomaly(tmp_path)
    (tmp_path / "frames" / "animals01_a.labels" / "labels_semantic.png").unlink()
    (tmp_path / "frames" / "cow0001_b.png").unlink()
    ds = open_dataset(f"road-anomaly:{tmp_path}")
    with pytest.raises(DatasetError, match=r"animals01_a\.labels/labels_semantic\.png does not exist"):
        ds[0]
    with pytest.raises(DatasetError, match=r"image file .*cow0001_b\.png does not exist"):
        ds[1]
    with pytest.raises(DatasetError, match="unknown split 'val'"):
        open_dataset(f"road-anomaly:{tmp_path}", "val")


def test_jpg_frames(tmp_path):
    img = np.full((H, W, 3), (20, 120, 220), np.uint8)
    write_rgb(tmp_path / "frames" / "x.jpg", img, params=[cv2.IMWRITE_JPEG_QUALITY, 100])
    write_gray(tmp_path / "frames" / "x.labels" / "labels_semantic.png", labels())
    sample = open_dataset(f"road-anomaly:{tmp_path}")[0]
    assert np.abs(sample.image.astype(int) - img).max() <= 2
