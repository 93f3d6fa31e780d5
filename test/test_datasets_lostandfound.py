"""LostAndFound on a tiny fixture in its Cityscapes-style layout, with depth from disparity."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from densehybrid_ros.datasets import DatasetError, open_dataset

from test_datasets_common import noise_rgb, write_camera, write_gray, write_rgb

H, W = 16, 32
BASELINE, FX = 0.2097, 2268.36


def laf_label():
    """Bands of labelIds: 0 background, 1 free space, 2 and 43 obstacles, 255 (not a LAF id)."""
    lab = np.zeros((H, W), np.uint8)
    lab[:, 4:12] = 1
    lab[:, 12:16] = 2
    lab[:, 16:20] = 43
    lab[:, 20:24] = 255
    lab[8:, 24:] = 1
    return lab


def laf_ood_by_hand():
    ood = np.full((H, W), 255, np.uint8)
    ood[:, 4:12] = 0
    ood[:, 12:20] = 1
    ood[8:, 24:] = 0
    return ood


def disparity():
    disp = np.zeros((H, W), np.uint16)
    disp[:, :16] = 1 + 256 * 4     # d = 4 px
    disp[:, 16:24] = 1 + 64        # d = 0.25 px
    disp[2, 2] = 1                 # d = 0 -> NaN
    return disp


def make_laf(root, split, fids, depth=True, ext="png"):
    for k, fid in enumerate(fids):
        scene = fid.rsplit("_", 2)[0]
        write_rgb(root / "leftImg8bit" / split / scene / f"{fid}_leftImg8bit.{ext}", noise_rgb(H, W, k),
                  params=[cv2.IMWRITE_WEBP_QUALITY, 101] if ext == "webp" else [])
        write_gray(root / "gtCoarse" / split / scene / f"{fid}_gtCoarse_labelIds.png", laf_label())
        if depth:
            write_gray(root / "disparity" / split / scene / f"{fid}_disparity.png", disparity())
            write_camera(root / "camera" / split / scene / f"{fid}_camera.json", BASELINE, FX, fy=2000.0)


FIDS = ["04_Maurener_Weg_8_000000_000030", "01_Hanns_Klemm_Str_45_000011_000050",
        "01_Hanns_Klemm_Str_45_000000_000080"]


def test_labels_depth_and_order(tmp_path):
    make_laf(tmp_path, "test", FIDS)
    ds = open_dataset(f"lostandfound:{tmp_path}")
    assert ds.split == "test" and ds.classes is None
    assert ds.names == sorted(FIDS)
    sample = ds[2]
    assert sample.name == "04_Maurener_Weg_8_000000_000030" and sample.extras["scene"] == "04_Maurener_Weg_8"
    np.testing.assert_array_equal(sample.image, noise_rgb(H, W, 0))
    np.testing.assert_array_equal(sample.ood, laf_ood_by_hand())
    assert sample.semantic is None
    depth = sample.depth
    assert depth.dtype == np.float32 and depth.shape == (H, W)
    assert depth[0, 0] == pytest.approx(BASELINE * FX / 4.0, rel=1e-6)     # fx, not (fx + fy) / 2
    assert depth[5, 20] == pytest.approx(BASELINE * FX / 0.25, rel=1e-6)
    assert np.isnan(depth[2, 2]) and np.isnan(depth[:, 24:]).all()


def test_train_split_webp_and_no_depth(tmp_path):
    make_laf(tmp_path, "train", FIDS[:1], depth=False, ext="webp")
    ds = open_dataset(f"lostandfound:{tmp_path}", "train")
    sample = ds[0]
    np.testing.assert_array_equal(sample.image, noise_rgb(H, W, 0))  # lossless webp
    assert sample.depth is None
    with pytest.raises(DatasetError, match=r"leftImg8bit/test does not exist"):
        open_dataset(f"lostandfound:{tmp_path}")
    with pytest.raises(DatasetError, match="unknown split 'val'"):
        open_dataset(f"lostandfound:{tmp_path}", "val")


def test_lazy_errors_for_missing_or_bad_files(tmp_path):
    make_laf(tmp_path, "test", FIDS)
    scene = "01_Hanns_Klemm_Str_45"
    (tmp_path / "gtCoarse/test" / scene / f"{FIDS[2]}_gtCoarse_labelIds.png").unlink()
    (tmp_path / "disparity/test" / scene / f"{FIDS[1]}_disparity.png").unlink()
    ds = open_dataset(f"lostandfound:{tmp_path}")
    with pytest.raises(DatasetError, match=f"{FIDS[2]}_gtCoarse_labelIds.png does not exist"):
        ds[0]
    with pytest.raises(DatasetError, match=f"disparity file .*{FIDS[1]}_disparity.png does not exist"):
        ds[1]
    assert ds[2].depth is not None
    # 8-bit disparity and a camera file without a baseline
    fid = FIDS[0]
    write_gray(tmp_path / "disparity/test/04_Maurener_Weg_8" / f"{fid}_disparity.png", np.ones((H, W), np.uint8))
    with pytest.raises(DatasetError, match="dtype uint8, expected uint16"):
        ds[2]
    write_gray(tmp_path / "disparity/test/04_Maurener_Weg_8" / f"{fid}_disparity.png", disparity())
    (tmp_path / "camera/test/04_Maurener_Weg_8" / f"{fid}_camera.json").write_text(
        json.dumps({"extrinsic": {}, "intrinsic": {"fx": FX}}))
    with pytest.raises(DatasetError, match=r"extrinsic\.baseline"):
        ds[2]
