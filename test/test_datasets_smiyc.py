"""SegmentMeIfYouCan AnomalyTrack / ObstacleTrack / LostAndFound-noKnown on tiny fixtures in the benchmark layout."""
from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest

from densehybrid_ros.datasets import DatasetError, open_dataset, smiyc

from test_datasets_common import blocks_rgb, noise_rgb, write_gray, write_rgb
from test_datasets_lostandfound import laf_ood_by_hand, make_laf

H, W = 16, 32
COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (240, 240, 10)]


def mask():
    m = np.zeros((H, W), np.uint8)
    m[4:10, 8:20] = 1
    m[:2, :] = 255
    m[15, 31] = 7  # not in the encoding: void, as in the benchmark
    return m


def mask_ood_by_hand():
    ood = np.zeros((H, W), np.uint8)
    ood[4:10, 8:20] = 1
    ood[:2, :] = 255
    ood[15, 31] = 255
    return ood


def make_anomaly_track(root):
    for fid in ["validation0001", "airplane0000", "validation0000"]:
        write_rgb(root / "images" / f"{fid}.jpg", blocks_rgb(H, W, COLORS), params=[cv2.IMWRITE_JPEG_QUALITY, 100])
    write_gray(root / "labels_masks" / "validation0000_labels_semantic.png", mask())


def test_anomaly_track_splits_and_missing_labels(tmp_path):
    make_anomaly_track(tmp_path)
    ds = open_dataset(f"smiyc-anomaly:{tmp_path}")
    assert ds.split == "all" and ds.names == ["airplane0000", "validation0000", "validation0001"]
    test_frame = ds[0]
    assert test_frame.ood is None  # public test frames come without labels
    for i, color in enumerate(COLORS):  # RGB order; JPEG (q100, chroma subsampled) is exact only inside bands
        interior = test_frame.image[:, 8 * i + 2:8 * i + 6].reshape(-1, 3).astype(int)
        assert np.abs(interior - np.array(color)).max() <= 6, (i, interior.mean(0))
    labelled = ds[1]
    np.testing.assert_array_equal(labelled.ood, mask_ood_by_hand())
    assert ds[2].ood is None
    val = open_dataset(f"smiyc-anomaly:{tmp_path}", "validation")
    assert val.names == ["validation0000", "validation0001"]
    with pytest.raises(DatasetError, match="validation0001_labels_semantic.png does not exist"):
        val[1]  # in the validation split a label is required
    assert open_dataset(f"smiyc-anomaly:{tmp_path}", "test").names == ["airplane0000"]


def test_anomaly_track_label_size_mismatch(tmp_path):
    make_anomaly_track(tmp_path)
    write_gray(tmp_path / "labels_masks" / "validation0000_labels_semantic.png", np.zeros((H + 1, W), np.uint8))
    with pytest.raises(DatasetError, match="is 32x17"):
        open_dataset(f"smiyc-anomaly:{tmp_path}", "validation")[0]


def test_obstacle_track_scene_splits(tmp_path):
    fids = ["gravel_axe_1", "validation_1", "validation_19", "validation_25", "validation_3", "driveway_2",
            "snowstorm1_00_00_51.868", "curvy-street_000"]
    for k, fid in enumerate(fids):
        write_rgb(tmp_path / "images" / f"{fid}.webp", noise_rgb(H, W, k), params=[cv2.IMWRITE_WEBP_QUALITY, 101])
    write_gray(tmp_path / "labels_masks" / "validation_1_labels_semantic.png", mask())
    write_gray(tmp_path / "labels_masks" / "validation_3_labels_semantic.png", mask())
    ds = open_dataset(f"smiyc-obstacle:{tmp_path}")
    assert ds.names == sorted(fids)
    assert open_dataset(f"smiyc-obstacle:{tmp_path}", "test").names == ["curvy-street_000", "gravel_axe_1"]
    val = open_dataset(f"smiyc-obstacle:{tmp_path}", "validation")
    assert val.names == ["validation_1", "validation_3"]  # validation_19 and _21.._29 are excluded
    sample = val[0]
    np.testing.assert_array_equal(sample.image, noise_rgb(H, W, 1))  # lossless webp
    np.testing.assert_array_equal(sample.ood, mask_ood_by_hand())
    assert open_dataset(f"smiyc-obstacle:{tmp_path}", "night").names == ["driveway_2"]
    assert open_dataset(f"smiyc-obstacle:{tmp_path}", "snowstorm").names == ["snowstorm1_00_00_51.868"]
    with pytest.raises(DatasetError, match="unknown split 'day'"):
        open_dataset(f"smiyc-obstacle:{tmp_path}", "day")


LAF_FIDS = [
    "01_Hanns_Klemm_Str_45_000005_000010",
    "01_Hanns_Klemm_Str_45_000006_000010",        # bicycle sequence: excluded
    "01_Hanns_Klemm_Str_45_000007_000040",        # bicycle sequence: excluded
    "10_Schlossberg_9_000004_000020",             # bicycle sequence: excluded
    "10_Schlossberg_9_000005_000020",
    "15_Rechbergstr_Deckenpfronn_000000_000010",  # children: excluded
    "02_Hanns_Klemm_Str_44_000001_000100",
]


def test_laf_noknown_excludes_known_objects_and_warns_on_partial_split(tmp_path):
    make_laf(tmp_path, "test", LAF_FIDS, depth=False)
    with pytest.warns(UserWarning, match="not the 1203"):
        ds = open_dataset(f"smiyc-laf-noknown:{tmp_path}")
    assert ds.names == ["01_Hanns_Klemm_Str_45_000005_000010", "02_Hanns_Klemm_Str_44_000001_000100",
                        "10_Schlossberg_9_000005_000020"]
    assert not ds.invalid_frames_removed
    np.testing.assert_array_equal(ds[0].ood, laf_ood_by_hand())
    with pytest.raises(DatasetError, match="unknown split 'train'"):
        open_dataset(f"smiyc-laf-noknown:{tmp_path}", "train")


def test_laf_noknown_removes_invalid_frames_by_sorted_index(tmp_path, monkeypatch):
    make_laf(tmp_path, "test", LAF_FIDS, depth=False)
    # Stand-ins for the full split: 7 frames, invalid indices 0 and 6 of the fid-sorted list.
    monkeypatch.setattr(smiyc, "LAF_TEST_FRAMES", len(LAF_FIDS))
    monkeypatch.setattr(smiyc, "LAF_TEST_INVALID_INDICES", (0, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = open_dataset(f"smiyc-laf-noknown:{tmp_path}")
    assert ds.invalid_frames_removed
    # sorted: 01_..005 (idx 0, dropped), 01_..006, 01_..007, 02_..., 10_..004, 10_..005, 15_... (idx 6, dropped)
    assert ds.names == ["02_Hanns_Klemm_Str_44_000001_000100", "10_Schlossberg_9_000005_000020"]


def test_official_exclusion_lists():
    assert len(smiyc.LAF_TEST_INVALID_INDICES) == 17 and smiyc.LAF_TEST_INVALID_INDICES[-1] == 793
    assert smiyc.OBSTACLE_VALIDATION_EXCLUDED_PREFIXES == (
        "validation_19", "validation_21", "validation_22", "validation_23", "validation_24", "validation_25",
        "validation_26", "validation_27", "validation_28", "validation_29")
