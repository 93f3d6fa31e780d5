"""Negative sources (training/data/negatives.py) on tiny fixtures in each dataset's on-disk layout.

Masks are compared with hand-placed regions; expectations never call the code under test.
"""
import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from densehybrid_ros.datasets.base import DatasetError
from densehybrid_training.data import build_negative_dataset
from densehybrid_training.data.common import sample_rng
from densehybrid_training.data.negatives import (
    ADE20kFullNegatives, ADE20kNegatives, CocoNegatives, SimNegatives, decode_ade20k_seg,
)


def write_rgb(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 100] if path.suffix == ".jpg" else []
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)


def write_label(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), label)


def draws(ds, n: int = 40):
    """n negatives drawn with independent generators."""
    return [ds.sample(0 if len(ds) == 1 else i % len(ds), sample_rng(123, i)) for i in range(n)]


def boxes_of(mask_full: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(mask_full.any(1)), np.flatnonzero(mask_full.any(0))
    return mask_full[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


# --- ADE20K SceneParsing -------------------------------------------------------------------------------------

def make_ade(root: Path) -> tuple[np.ndarray, np.ndarray]:
    image = np.zeros((12, 16, 3), np.uint8)
    labels = np.zeros((12, 16), np.uint8)
    labels[:, :] = 1          # wall (excluded)
    labels[1:4, 1:5] = 20     # chair
    labels[6:10, 2:4] = 13    # person (excluded)
    labels[7:11, 9:15] = 42   # box
    labels[0:2, 12:16] = 21   # car (excluded)
    labels[10:12, 0:2] = 91   # airplane, 4 pixels only
    for value, color in {1: (90, 90, 90), 20: (200, 30, 30), 13: (30, 200, 30), 42: (30, 30, 200),
                         21: (200, 200, 30), 91: (250, 250, 250)}.items():
        image[labels == value] = color
    write_rgb(root / "images/training/ADE_train_00000001.jpg", image)
    write_label(root / "annotations/training/ADE_train_00000001.png", labels)
    return image, labels


def test_ade20k_class_union_excludes_inlier_classes(tmp_path):
    image, labels = make_ade(tmp_path)
    ds = ADE20kNegatives(tmp_path, mode="mask", classes_per_negative=2, min_pixels=5)
    assert len(ds) == 1
    # eligible: chair (20) and box (42); airplane has 4 < 5 pixels; wall/person/car are excluded
    union = (labels == 20) | (labels == 42)
    decoded = cv2.imread(str(tmp_path / "images/training/ADE_train_00000001.jpg"))[..., ::-1]
    for img, mask in draws(ds, 8):
        assert mask.dtype == bool
        np.testing.assert_array_equal(mask, boxes_of(union))
        np.testing.assert_array_equal(img, decoded[1:11, 1:15])  # bounding box rows 1..10, cols 1..14
    # one class per negative: each draw is exactly the chair or the box
    ds1 = ADE20kNegatives(tmp_path, classes_per_negative=1, min_pixels=5)
    seen = set()
    for _, mask in draws(ds1, 30):
        if mask.shape == (3, 4):
            np.testing.assert_array_equal(mask, np.ones((3, 4), bool)); seen.add(20)
        else:
            np.testing.assert_array_equal(mask, np.ones((4, 6), bool)); seen.add(42)
    assert seen == {20, 42}
    # min_pixels=1 lets the airplane in
    ds_all = ADE20kNegatives(tmp_path, classes_per_negative=3, min_pixels=1)
    np.testing.assert_array_equal(ds_all[0][1], boxes_of(union | (labels == 91)))


def test_ade20k_rectangle_modes_and_determinism(tmp_path):
    image, labels = make_ade(tmp_path)
    ds = ADE20kNegatives(tmp_path, mode="rectangle", min_rect_side=4)
    for img, mask in draws(ds, 20):
        h, w = mask.shape
        assert 4 <= h <= 12 and 4 <= w <= 16 and mask.all() and img.shape == (h, w, 3)
    a, b = ds[0], ds[0]
    np.testing.assert_array_equal(a[0], b[0])  # ds[j] is a pure function of (seed, j)
    ex = ADE20kNegatives(tmp_path, mode="rectangle", min_rect_side=12, exclude_in_rectangle=True)
    img, mask = ex.sample(0, sample_rng(0, 0))
    assert mask.shape == (12, 16)  # min side 12 -> full height; width 12..16
    excluded = np.isin(labels, [1, 13, 21])
    left = 16 - mask.shape[1]
    # the mask is false exactly on excluded pixels of the cropped window
    crops = [excluded[:, l:l + mask.shape[1]] for l in range(left + 1)]
    assert any(np.array_equal(mask, ~c) for c in crops)
    mixed = ADE20kNegatives(tmp_path, mode="mixed", rect_prob=0.5, classes_per_negative=2, min_pixels=5)
    kinds = {"mask" if m.shape == (10, 14) and not m.all() else "rect" for _, m in draws(mixed, 40)}
    assert kinds == {"mask", "rect"}


def test_ade20k_errors(tmp_path):
    make_ade(tmp_path)
    with pytest.raises(DatasetError, match="unknown negative mode 'box'"):
        ADE20kNegatives(tmp_path, mode="box")
    with pytest.raises(DatasetError, match="images/validation"):
        ADE20kNegatives(tmp_path, "validation")
    only_excluded = np.full((12, 16), 7, np.uint8)  # all road
    write_label(tmp_path / "annotations/training/ADE_train_00000001.png", only_excluded)
    with pytest.raises(DatasetError, match="no usable object mask in 3 tried"):
        ADE20kNegatives(tmp_path, max_tries=3)[0]
    write_label(tmp_path / "annotations/training/ADE_train_00000001.png", np.full((12, 16), 151, np.uint8))
    with pytest.raises(DatasetError, match="value 151"):
        ADE20kNegatives(tmp_path)[0]
    (tmp_path / "annotations/training/ADE_train_00000001.png").unlink()
    with pytest.raises(DatasetError, match="ADE_train_00000001.png"):
        ADE20kNegatives(tmp_path)


# --- full ADE20K ---------------------------------------------------------------------------------------------

def seg_rgb(class_value: int, b: int) -> tuple[int, int, int]:
    """Encode (class, instance byte) as the _seg.png RGB: R = class // 256 * 10, G = class % 256."""
    return (class_value // 256) * 10, class_value % 256, b


def test_decode_ade20k_seg_by_hand():
    seg = np.zeros((2, 3, 3), np.uint8)
    seg[0, 0] = (0, 0, 0)            # unlabelled
    seg[0, 1] = (110, 21, 5)         # 11 * 256 + 21 = 2837
    seg[0, 2] = (115, 21, 5)         # R // 10 = 11 as well
    seg[1, 0] = (70, 40, 9)          # 7 * 256 + 40 = 1832
    seg[1, 1] = (0, 65, 1)           # 65
    seg[1, 2] = (0, 65, 2)           # 65, another instance
    classes, instances = decode_ade20k_seg(seg)
    np.testing.assert_array_equal(classes, [[0, 2837, 2837], [1832, 65, 65]])
    # instances ordered by (class, B): (65,1)=1, (65,2)=2, (1832,9)=3, (2837,5)=4
    np.testing.assert_array_equal(instances, [[0, 4, 4], [3, 1, 2]])


def make_ade_full(root: Path) -> dict[str, np.ndarray]:
    d = root / "ADE20K_2021_17_01/images/ADE/training/urban/street"
    h, w = 12, 16
    seg = np.zeros((h, w, 3), np.uint8)
    regions = {
        "can_a": (slice(1, 4), slice(1, 5), seg_rgb(65, 1)),      # trash can (name_ndx 64), instance B=1
        "can_b": (slice(8, 11), slice(1, 3), seg_rgb(65, 2)),     # trash can, instance B=2
        "person": (slice(5, 10), slice(6, 8), seg_rgb(1832, 3)),  # person (name_ndx 1831): excluded
        "light": (slice(0, 3), slice(10, 12), seg_rgb(2837, 4)),  # traffic light (2836): excluded
        "bench": (slice(6, 12), slice(10, 16), seg_rgb(300, 5)),  # bench (299)
        "mystery": (slice(11, 12), slice(5, 9), seg_rgb(500, 6)),  # class not in the json: never drawn
    }
    masks = {}
    for name, (rs, cs, rgb) in regions.items():
        seg[rs, cs] = rgb
        m = np.zeros((h, w), bool); m[rs, cs] = True
        masks[name] = m
    image = np.full((h, w, 3), 128, np.uint8)
    write_rgb(d / "ADE_train_00016869.jpg", image)
    assert cv2.imwrite(str(d / "ADE_train_00016869_seg.png"), cv2.cvtColor(seg, cv2.COLOR_RGB2BGR))
    objects = [
        {"id": 0, "name": "ashcan, trash can, garbage can", "name_ndx": 64, "parts": {"part_level": 0}},
        {"id": 1, "name": "ashcan, trash can, garbage can", "name_ndx": 64, "parts": {"part_level": 0}},
        {"id": 2, "name": "person, individual, someone, somebody, mortal, soul", "name_ndx": 1831,
         "parts": {"part_level": 0}},
        {"id": 3, "name": "traffic light, traffic signal, stoplight", "name_ndx": 2836, "parts": {"part_level": 0}},
        {"id": 4, "name": "bench", "name_ndx": 299, "parts": {"part_level": 0}},
        {"id": 5, "name": "lid", "name_ndx": 499, "parts": {"part_level": 1, "ispartof": 0}},  # a part: ignored
    ]
    (d / "ADE_train_00016869.json").write_text(json.dumps({"annotation": {"object": objects}}))
    return masks


def test_ade20k_full_instances(tmp_path):
    masks = make_ade_full(tmp_path)
    ds = ADE20kFullNegatives(tmp_path / "ADE20K_2021_17_01", min_pixels=4)
    assert len(ds) == 1
    allowed = {name: boxes_of(masks[name]) for name in ("can_a", "can_b", "bench")}
    seen = set()
    for _, mask in draws(ds, 40):
        match = [n for n, m in allowed.items() if m.shape == mask.shape and np.array_equal(m, mask)]
        assert len(match) == 1, mask
        seen.add(match[0])
    assert seen == {"can_a", "can_b", "bench"}
    two = ADE20kFullNegatives(tmp_path / "ADE20K_2021_17_01", instances_per_negative=3, min_pixels=4)
    np.testing.assert_array_equal(two[0][1], boxes_of(masks["can_a"] | masks["can_b"] | masks["bench"]))
    big = ADE20kFullNegatives(tmp_path / "ADE20K_2021_17_01", instances_per_negative=1, min_pixels=10)
    for _, mask in draws(big, 10):  # the 6-pixel can_b is too small now
        assert mask.shape != (3, 2)


def test_ade20k_full_rectangle_exclusion_and_errors(tmp_path):
    masks = make_ade_full(tmp_path)
    root = tmp_path / "ADE20K_2021_17_01"
    rect = ADE20kFullNegatives(root, mode="rectangle", min_rect_side=12, exclude_in_rectangle=True)
    _, mask = rect.sample(0, sample_rng(0, 1))
    excluded = masks["person"] | masks["light"]
    w = mask.shape[1]
    assert any(np.array_equal(mask, ~excluded[:, l:l + w]) for l in range(16 - w + 1))
    json_path = root / "images/ADE/training/urban/street/ADE_train_00016869.json"
    json_path.write_text("{}")
    with pytest.raises(DatasetError, match="ADE_train_00016869.json"):
        ADE20kFullNegatives(root)[0]
    json_path.unlink()
    with pytest.raises(DatasetError, match="ADE_train_00016869.json"):
        ADE20kFullNegatives(root)


# --- COCO --------------------------------------------------------------------------------------------------

def make_coco(root: Path) -> dict[int, np.ndarray]:
    h, w = 8, 10
    write_rgb(root / "train2017/000000000009.jpg", np.full((h, w, 3), 100, np.uint8))
    write_rgb(root / "train2017/000000000025.jpg", np.full((h, w, 3), 50, np.uint8))
    write_rgb(root / "train2017/000000000030.jpg", np.full((h, w, 3), 20, np.uint8))
    dog = np.zeros((h, w), bool); dog[1:4, 1:5] = True          # polygon x 1..5, y 1..4
    umbrella = np.zeros((h, w), bool); umbrella[2:5, 5:9] = True; umbrella[6, 1] = True  # compressed RLE
    crowd = np.zeros((h, w), bool); crowd[0, 0] = crowd[1, 0] = True                     # uncompressed RLE
    person = np.zeros((h, w), bool); person[5:8, 6:9] = True
    annotations = [
        {"id": 1, "image_id": 9, "category_id": 18, "iscrowd": 0, "area": 12.0,
         "segmentation": [[1, 1, 5, 1, 5, 4, 1, 4]]},
        {"id": 2, "image_id": 9, "category_id": 28, "iscrowd": 0, "area": 13.0,
         "segmentation": {"size": [h, w], "counts": ">1k02ZO000006"}},  # pycocotools encoding of `umbrella`
        {"id": 3, "image_id": 9, "category_id": 1, "iscrowd": 0, "area": 9.0,
         "segmentation": [[6, 5, 9, 5, 9, 8, 6, 8]]},
        {"id": 4, "image_id": 25, "category_id": 18, "iscrowd": 1, "area": 2.0,
         "segmentation": {"size": [h, w], "counts": [0, 2, 78]}},
        {"id": 5, "image_id": 30, "category_id": 3, "iscrowd": 0, "area": 20.0,
         "segmentation": [[0, 0, 4, 0, 4, 5, 0, 5]]},
    ]
    data = {"images": [{"id": 9, "file_name": "000000000009.jpg", "height": h, "width": w},
                       {"id": 25, "file_name": "000000000025.jpg", "height": h, "width": w},
                       {"id": 30, "file_name": "000000000030.jpg", "height": h, "width": w}],
            "annotations": annotations,
            "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"},
                           {"id": 28, "name": "umbrella"}]}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations/instances_train2017.json").write_text(json.dumps(data))
    return {"dog": dog, "umbrella": umbrella, "crowd": crowd, "person": person}


def test_coco_instances_polygon_and_rle(tmp_path):
    masks = make_coco(tmp_path)
    ds = CocoNegatives(tmp_path, min_area=1)
    # image 25 has only a crowd annotation, image 30 only a car: neither is a negative
    assert len(ds) == 1
    seen = set()
    for img, mask in draws(ds, 30):
        if np.array_equal(mask, boxes_of(masks["dog"])):
            seen.add("dog")
        else:
            np.testing.assert_array_equal(mask, boxes_of(masks["umbrella"]))
            seen.add("umbrella")
        assert np.abs(img.astype(int) - 100).max() <= 2
    assert seen == {"dog", "umbrella"}
    both = CocoNegatives(tmp_path, instances_per_negative=2, min_area=1)
    np.testing.assert_array_equal(both[0][1], boxes_of(masks["dog"] | masks["umbrella"]))
    crowd = CocoNegatives(tmp_path, include_crowd=True, min_area=1)
    assert len(crowd) == 2
    np.testing.assert_array_equal(crowd[1][1], np.ones((2, 1), bool))  # crowd run: pixels (0,0), (1,0)
    # area filter: the dog (12) stays, the umbrella (13) stays, min_area 12.5 drops the dog
    only_umbrella = CocoNegatives(tmp_path, min_area=12.5)
    for _, mask in draws(only_umbrella, 5):
        np.testing.assert_array_equal(mask, boxes_of(masks["umbrella"]))


def test_coco_rectangle_exclusion_and_errors(tmp_path):
    masks = make_coco(tmp_path)
    rect = CocoNegatives(tmp_path, mode="rectangle", min_rect_side=8, exclude_in_rectangle=True, min_area=1)
    _, mask = rect.sample(0, sample_rng(0, 0))
    w = mask.shape[1]
    assert mask.shape[0] == 8
    assert any(np.array_equal(mask, ~masks["person"][:, l:l + w]) for l in range(10 - w + 1))
    with pytest.raises(DatasetError, match="'lorry' is not a category"):
        CocoNegatives(tmp_path, excluded_names=["lorry"])
    # excluding nothing makes the person usable (and image 30's car)
    assert len(CocoNegatives(tmp_path, excluded_names=[], min_area=1)) == 2
    with pytest.raises(DatasetError, match="val2017"):
        CocoNegatives(tmp_path, "val")
    write_rgb(tmp_path / "train2017/000000000009.jpg", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DatasetError, match="000000000009.jpg is 4x4"):
        CocoNegatives(tmp_path, min_area=1)[0]
    (tmp_path / "annotations/instances_train2017.json").write_text("[]")
    with pytest.raises(DatasetError, match="instances_train2017.json"):
        CocoNegatives(tmp_path)


# --- sim world -----------------------------------------------------------------------------------------------

def make_sim(root: Path) -> None:
    from test_train_data_inliers import make_sim_by_hand

    return make_sim_by_hand(root)


def test_sim_negatives_are_the_anomaly_instances(tmp_path):
    frames = make_sim(tmp_path)
    ds = SimNegatives(tmp_path, min_pixels=1)
    # instance 11 has no visible pixels -> not listed
    assert ds.objects == [("000000", 7), ("000000", 9)]
    image = frames["000000"][0]
    img, mask = ds[0]
    np.testing.assert_array_equal(mask, np.ones((2, 2), bool))
    np.testing.assert_array_equal(img, image[3:5, 1:3])
    img, mask = ds[1]
    expected = np.ones((4, 2), bool)
    expected[3, 1] = False  # pixel (5, 6) belongs to a car in front of the object
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(img, image[2:6, 5:7])
    rect = SimNegatives(tmp_path, mode="rectangle", min_pixels=1)
    img, mask = rect[1]
    assert mask.shape == (4, 2) and mask.all()
    assert len(SimNegatives(tmp_path, min_pixels=5)) == 1  # the 4-pixel object is dropped
    meta = json.loads((tmp_path / "meta/000000.json").read_text())
    meta["anomalies"][0]["instance_id"] = 8  # no pixel has instance 8
    (tmp_path / "meta/000000.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="instance 8"):
        SimNegatives(tmp_path, min_pixels=1)[0]
    (tmp_path / "meta/000000.json").write_text("{}")
    with pytest.raises(DatasetError, match="000000.json"):
        SimNegatives(tmp_path)


def test_sim_negatives_rendered_match_instance_masks(tmp_path):
    from densehybrid_ros.sim.dataset import render_dataset
    from densehybrid_ros.sim.world import SimConfig

    config = dataclasses.replace(SimConfig(), width=96, height=64, frames_per_scene=2, anomaly_frame_prob=1.0)
    render_dataset(tmp_path, "train", 2, seed=0, config=config, workers=1, progress=False)
    ds = build_negative_dataset("sim", tmp_path, min_pixels=1)
    assert len(ds) >= 1
    found = set()
    for frame in ("000000", "000001"):
        labels = cv2.imread(str(tmp_path / "labels" / f"{frame}.png"), cv2.IMREAD_UNCHANGED)
        instances = cv2.imread(str(tmp_path / "instances" / f"{frame}.png"), cv2.IMREAD_UNCHANGED)
        for iid in np.unique(instances[labels == 15]):
            found.add((frame, int(iid)))
    assert set(ds.objects) == found  # every visible anomaly object, nothing else
    for j, (frame, iid) in enumerate(ds.objects):
        labels = cv2.imread(str(tmp_path / "labels" / f"{frame}.png"), cv2.IMREAD_UNCHANGED)
        instances = cv2.imread(str(tmp_path / "instances" / f"{frame}.png"), cv2.IMREAD_UNCHANGED)
        rgb = cv2.imread(str(tmp_path / "rgb" / f"{frame}.png"))[..., ::-1]
        full = (instances == iid) & (labels == 15)
        img, mask = ds[j]
        np.testing.assert_array_equal(mask, boxes_of(full))
        rows, cols = np.flatnonzero(full.any(1)), np.flatnonzero(full.any(0))
        np.testing.assert_array_equal(img, rgb[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])


def test_negative_factory(tmp_path):
    make_ade(tmp_path)
    ds = build_negative_dataset("ade20k", tmp_path, mode="rectangle", min_rect_side=4, seed=3)
    assert isinstance(ds, ADE20kNegatives) and ds.mode == "rectangle" and ds.seed == 3
    with pytest.raises(DatasetError, match="unknown negative dataset kind 'imagenet'"):
        build_negative_dataset("imagenet", tmp_path)
    with pytest.raises(DatasetError, match="unknown option 'instances_per_negative'"):
        build_negative_dataset("ade20k", tmp_path, instances_per_negative=2)
