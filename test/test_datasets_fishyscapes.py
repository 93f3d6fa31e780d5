"""Fishyscapes LostAndFound val and Static val: the distributed masks/overlays plus base-dataset images."""
from __future__ import annotations

import numpy as np
import pytest

from densehybrid_ros.datasets import DatasetError, open_dataset

from test_datasets_common import noise_rgb, write_camera, write_gray, write_rgb

H, W = 16, 32


def fs_mask():
    m = np.zeros((H, W), np.uint8)
    m[:3, :] = 255       # void
    m[8:12, 4:10] = 1    # anomaly
    m[15, 0] = 2         # outside the encoding (benchmark: only <= 1 is valid) -> void
    return m


def fs_ood_by_hand():
    ood = np.zeros((H, W), np.uint8)
    ood[:3, :] = 255
    ood[8:12, 4:10] = 1
    ood[15, 0] = 255
    return ood


LAF = {  # fid -> (LostAndFound split, seed)
    "04_Maurener_Weg_8_000000_000030": ("test", 1),
    "13_Elly_Beinhorn_Str_000002_000090": ("train", 2),
}


def write_laf_images(root, depth=False):
    for fid, (split, seed) in LAF.items():
        scene = fid.rsplit("_", 2)[0]
        write_rgb(root / "leftImg8bit" / split / scene / f"{fid}_leftImg8bit.png", noise_rgb(H, W, seed))
        if depth:
            disp = np.full((H, W), 1 + 256 * 16, np.uint16)  # d = 16 px everywhere
            write_gray(root / "disparity" / split / scene / f"{fid}_disparity.png", disp)
            write_camera(root / "camera" / split / scene / f"{fid}_camera.json", baseline=0.2, fx=2000.0)


def test_fs_laf_distributed_masks(tmp_path):
    write_laf_images(tmp_path, depth=True)
    masks = tmp_path / "fishyscapes_lostandfound"
    write_gray(masks / "0001_13_Elly_Beinhorn_Str_000002_000090_labels.png", fs_mask())
    write_gray(masks / "0000_04_Maurener_Weg_8_000000_000030_labels.png", fs_mask())
    ds = open_dataset(f"fishyscapes-laf:{tmp_path}")
    assert ds.split == "val" and ds.names == ["0000_04_Maurener_Weg_8_000000_000030",
                                              "0001_13_Elly_Beinhorn_Str_000002_000090"]
    first, second = ds[0], ds[1]
    np.testing.assert_array_equal(first.image, noise_rgb(H, W, 1))   # found in leftImg8bit/test
    np.testing.assert_array_equal(second.image, noise_rgb(H, W, 2))  # found in leftImg8bit/train
    np.testing.assert_array_equal(first.ood, fs_ood_by_hand())
    assert first.extras == {"fid": "04_Maurener_Weg_8_000000_000030", "fs_id": "0000"}
    np.testing.assert_allclose(first.depth, np.full((H, W), 0.2 * 2000.0 / 16.0, np.float32), rtol=1e-6)


def test_fs_laf_masks_directly_in_root_and_smiyc_layout(tmp_path):
    write_laf_images(tmp_path)
    write_gray(tmp_path / "0007_04_Maurener_Weg_8_000000_000030_labels.png", fs_mask())
    assert open_dataset(f"fishyscapes-laf:{tmp_path}").names == ["0007_04_Maurener_Weg_8_000000_000030"]
    (tmp_path / "0007_04_Maurener_Weg_8_000000_000030_labels.png").unlink()
    write_gray(tmp_path / "labels" / "val" / "04_Maurener_Weg_8_000000_000030_fishy-labels.png", fs_mask())
    ds = open_dataset(f"fishyscapes-laf:{tmp_path}")
    assert ds.names == ["04_Maurener_Weg_8_000000_000030"]
    np.testing.assert_array_equal(ds[0].ood, fs_ood_by_hand())
    assert ds[0].depth is None


def test_fs_laf_lazy_missing_image(tmp_path):
    write_gray(tmp_path / "fishyscapes_lostandfound" / "0000_04_Maurener_Weg_8_000000_000030_labels.png", fs_mask())
    (tmp_path / "leftImg8bit").mkdir()
    ds = open_dataset(f"fishyscapes-laf:{tmp_path}")
    with pytest.raises(DatasetError, match="LostAndFound image for 04_Maurener_Weg_8_000000_000030 not found"):
        ds[0]
    with pytest.raises(DatasetError, match="unknown split 'test'"):
        open_dataset(f"fishyscapes-laf:{tmp_path}", "test")


CSID = "frankfurt_000001_034047"


def write_static(root, overlay):
    base = np.full((H, W, 3), 100, np.uint8)
    base[..., 1] = 50
    write_rgb(root / "leftImg8bit" / "val" / "frankfurt" / f"{CSID}_leftImg8bit.png", base)
    write_gray(root / "fs_static" / f"0003_{CSID}_labels.png", fs_mask())
    np.savez(root / "fs_static" / f"0003_{CSID}_rgb.npz", rgb=overlay)


def test_fs_static_overlay_added_and_clipped(tmp_path):
    overlay = np.zeros((H, W, 3), np.int16)
    overlay[8:12, 4:10] = (200, -150, 5)   # R: 100+200 -> 255 (clip), G: 50-150 -> 0 (clip), B: 100+5 -> 105
    write_static(tmp_path, overlay)
    ds = open_dataset(f"fishyscapes-static:{tmp_path}")
    sample = ds[0]
    assert sample.name == f"0003_{CSID}" and sample.extras["cityscapes_id"] == CSID
    expected = np.zeros((H, W, 3), np.uint8)
    expected[...] = (100, 50, 100)
    expected[8:12, 4:10] = (255, 0, 105)
    np.testing.assert_array_equal(sample.image, expected)
    np.testing.assert_array_equal(sample.ood, fs_ood_by_hand())


def test_fs_static_prerendered_image_needs_no_cityscapes(tmp_path):
    write_gray(tmp_path / f"0004_{CSID}_labels.png", fs_mask())
    write_rgb(tmp_path / f"0004_{CSID}_rgb.png", noise_rgb(H, W, 9))
    sample = open_dataset(f"fishyscapes-static:{tmp_path}")[0]
    np.testing.assert_array_equal(sample.image, noise_rgb(H, W, 9))


def test_fs_static_errors(tmp_path):
    write_static(tmp_path, np.zeros((H, W, 3), np.int16))
    ds = open_dataset(f"fishyscapes-static:{tmp_path}")
    # an overlay holding a pickled object is refused, never unpickled
    np.savez(tmp_path / "fs_static" / f"0003_{CSID}_rgb.npz", rgb=np.array([{"x": 1}], dtype=object))
    with pytest.raises(DatasetError, match="cannot read overlay"):
        ds[0]
    np.savez(tmp_path / "fs_static" / f"0003_{CSID}_rgb.npz", other=np.zeros((H, W, 3)))
    with pytest.raises(DatasetError, match="has no array 'rgb'"):
        ds[0]
    np.savez(tmp_path / "fs_static" / f"0003_{CSID}_rgb.npz", rgb=np.zeros((H, W - 1, 3)))
    with pytest.raises(DatasetError, match="expected a numeric array of the Cityscapes image's shape"):
        ds[0]
    (tmp_path / "fs_static" / f"0003_{CSID}_rgb.npz").unlink()
    with pytest.raises(DatasetError, match="neither overlay"):
        ds[0]
    np.savez(tmp_path / "fs_static" / f"0003_{CSID}_rgb.npz", rgb=np.zeros((H, W, 3), np.int16))
    (tmp_path / "leftImg8bit" / "val" / "frankfurt" / f"{CSID}_leftImg8bit.png").unlink()
    with pytest.raises(DatasetError, match=f"{CSID}_leftImg8bit.png does not exist"):
        ds[0]
