"""StreetHazards on tiny fixtures in the layout of streethazards_test.tar / streethazards_train.tar."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from densehybrid_ros.datasets import DatasetError, open_dataset

from test_datasets_common import noise_rgb, write_gray, write_rgb

H, W = 16, 32

# file value -> (semantic, ood), by hand from the class list
# 1 unlabeled, 2 building, 3 fence, 4 other, 5 pedestrian, 6 pole, 7 road line, 8 road, 9 sidewalk,
# 10 vegetation, 11 car, 12 wall, 13 traffic sign, 14 anomaly; "other" is ignored, K = 12.
BY_HAND = {
    0: (255, 255), 1: (0, 0), 2: (1, 0), 3: (2, 0), 4: (255, 255), 5: (3, 0), 6: (4, 0), 7: (5, 0), 8: (6, 0),
    9: (7, 0), 10: (8, 0), 11: (9, 0), 12: (10, 0), 13: (11, 0), 14: (12, 1),
}


def annotation():
    """A 16x32 map holding every file value 0..14 in its own pixels, the rest road (8)."""
    ann = np.full((H, W), 8, np.uint8)
    for v in range(15):
        ann[v, v] = v
    ann[10:14, 20:28] = 14  # an anomaly blob
    return ann


def make_test_set(base, frames):
    """frames: {(town, stem): seed}"""
    for (town, stem), seed in frames.items():
        write_rgb(base / "images" / "test" / town / f"{stem}.png", noise_rgb(H, W, seed))
        write_gray(base / "annotations" / "test" / town / f"{stem}.png", annotation())


def test_mapping_and_classes(tmp_path):
    make_test_set(tmp_path / "test", {("t5", "300"): 1})
    ds = open_dataset(f"streethazards:{tmp_path}", "t5")
    assert len(ds.classes) == 12 and ds.classes[0] == "unlabeled" and ds.classes[3] == "pedestrian"
    assert "other" not in ds.classes
    sample = ds[0]
    assert sample.name == "t5_300"
    np.testing.assert_array_equal(sample.image, noise_rgb(H, W, 1))
    ann = annotation()
    exp_sem = np.vectorize(lambda v: BY_HAND[v][0])(ann).astype(np.uint8)
    exp_ood = np.vectorize(lambda v: BY_HAND[v][1])(ann).astype(np.uint8)
    np.testing.assert_array_equal(sample.semantic, exp_sem)
    np.testing.assert_array_equal(sample.ood, exp_ood)
    assert (sample.ood == 1).sum() == 32 + 1  # the 4x8 blob plus the single 14 on the diagonal
    assert (sample.ood == 255).sum() == 2  # file values 0 and 4 (other) on the diagonal
    assert sample.depth is None


def test_splits_and_numeric_order(tmp_path):
    make_test_set(tmp_path / "test", {("t6", "5"): 0, ("t5", "10"): 1, ("t5", "9"): 2})
    assert [open_dataset(f"streethazards:{tmp_path}", "t5")[i].name for i in range(2)] == ["t5_9", "t5_10"]
    assert len(open_dataset(f"streethazards:{tmp_path}", "t6")) == 1
    both = open_dataset(f"streethazards:{tmp_path}")
    assert both.split == "all" and [both[i].name for i in range(3)] == ["t5_9", "t5_10", "t6_5"]
    # ROOT may be the unpacked "test" folder itself
    assert len(open_dataset(f"streethazards:{tmp_path / 'test'}", "all")) == 3
    with pytest.raises(DatasetError, match="unknown split 't7'"):
        open_dataset(f"streethazards:{tmp_path}", "t7")
    with pytest.raises(DatasetError, match=r"train/images/training does not exist"):
        open_dataset(f"streethazards:{tmp_path}", "training")


def test_training_layout_and_rgba_frames(tmp_path):
    rgb = noise_rgb(H, W, 3)
    rgba = np.dstack([rgb[..., ::-1], np.full((H, W), 255, np.uint8)])  # BGRA for OpenCV
    path = tmp_path / "train" / "images" / "training" / "t1" / "0.png"
    path.parent.mkdir(parents=True)
    assert cv2.imwrite(str(path), rgba)
    write_gray(tmp_path / "train" / "annotations" / "training" / "t1" / "0.png", annotation())
    write_rgb(tmp_path / "train" / "images" / "validation" / "t4" / "0.png", rgb)
    write_gray(tmp_path / "train" / "annotations" / "validation" / "t4" / "0.png", annotation())
    sample = open_dataset(f"streethazards:{tmp_path}", "training")[0]
    assert sample.name == "t1_0" and sample.image.shape == (H, W, 3)
    np.testing.assert_array_equal(sample.image, rgb)
    assert open_dataset(f"streethazards:{tmp_path}", "validation")[0].name == "t4_0"


def test_lazy_missing_annotation_and_bad_value(tmp_path):
    make_test_set(tmp_path / "test", {("t5", "1"): 0, ("t5", "2"): 1})
    ann = tmp_path / "test" / "annotations" / "test" / "t5" / "1.png"
    ann.unlink()
    ds = open_dataset(f"streethazards:{tmp_path}", "t5")
    with pytest.raises(DatasetError, match=r"annotations/test/t5/1\.png does not exist"):
        ds[0]
    assert ds[1].name == "t5_2"
    bad = annotation()
    bad[0, 5] = 15
    write_gray(ann, bad)
    with pytest.raises(DatasetError, match="value 15"):
        ds[0]
