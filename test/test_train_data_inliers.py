"""Inlier training datasets (training/data/inliers.py) on tiny fixtures in each dataset's on-disk layout.

Expected trainIds are written out by hand from the published tables (Cityscapes labels.py, the Vistas and
WildDash tables documented in training/data/labelmaps.py, StreetHazards' 1-based encoding), not computed
with the code under test.
"""
import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from densehybrid_ros.datasets.base import DatasetError
from densehybrid_training.data import build_inlier_dataset, concat_inliers
from densehybrid_training.data.inliers import CityscapesTrain, SimTrain, StreetHazardsTrain, VistasTrain, WildDashTrain
from densehybrid_training.data.labelmaps import VISTAS_V12_NAMES


def write_rgb(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def write_label(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), label)


def gradient_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --- Cityscapes -------------------------------------------------------------------------------------------

def make_cityscapes(root: Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    image = gradient_image(4, 6)
    ids = np.array([[7, 7, 26, 26, 0, 33],
                    [8, 8, 26, 26, 14, 33],
                    [11, 21, 23, 24, 25, 1],
                    [17, 19, 20, 22, 31, 32]], dtype=np.uint8)
    write_rgb(root / "leftImg8bit" / split / "aachen" / "aachen_000000_000019_leftImg8bit.png", image)
    write_label(root / "gtFine" / split / "aachen" / "aachen_000000_000019_gtFine_labelIds.png", ids)
    return image, ids


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    image, _ = make_cityscapes(tmp_path)
    ds = CityscapesTrain(tmp_path, "train")
    assert len(ds) == 1 and ds.names == ["aachen_000000_000019"]
    img, labels = ds[0]
    np.testing.assert_array_equal(img, image)
    # road 0, car 13, unlabeled void, bicycle 18 / sidewalk 1, guard rail void / building 2, vegetation 8, sky 10,
    # person 11, rider 12, ego vehicle void / pole 5, traffic light 6, traffic sign 7, terrain 9, train 16, motorcycle 17
    expected = np.array([[0, 0, 13, 13, 255, 18],
                         [1, 1, 13, 13, 255, 18],
                         [2, 8, 10, 11, 12, 255],
                         [5, 6, 7, 9, 16, 17]], dtype=np.uint8)
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.uint8
    assert ds.num_classes == 19
    assert ds.classes[0].name == "road" and ds.classes[0].color == (128, 64, 128)
    assert ds.classes[18].name == "bicycle" and ds.classes[18].color == (119, 11, 32)


def test_cityscapes_errors(tmp_path):
    make_cityscapes(tmp_path)
    with pytest.raises(DatasetError, match="leftImg8bit/val"):
        CityscapesTrain(tmp_path, "val")
    with pytest.raises(DatasetError, match="unknown split"):
        CityscapesTrain(tmp_path, "test")
    (tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(DatasetError, match="aachen_000000_000019_gtFine_labelIds.png"):
        CityscapesTrain(tmp_path, "train")
    write_label(tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png",
                np.full((4, 6), 40, np.uint8))
    with pytest.raises(DatasetError, match="value 40"):
        CityscapesTrain(tmp_path, "train")[0]


# --- Mapillary Vistas -------------------------------------------------------------------------------------

def write_palette_png(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(ids, mode="P")
    img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    img.save(path)


VISTAS_IDS = np.array([[13, 13, 10, 55],
                       [2, 15, 65, 55],
                       [19, 20, 48, 50]], dtype=np.uint8)
# road 0, road 0, parking void, car 13 / curb -> sidewalk 1, sidewalk 1, unlabeled void, car 13 /
# person 11, bicyclist -> rider 12, traffic light 6, traffic-sign front 7
VISTAS_EXPECTED = np.array([[0, 0, 255, 13],
                            [1, 1, 255, 13],
                            [11, 12, 6, 7]], dtype=np.uint8)


def make_vistas(root: Path, config: str | None = "config.json", label_subdir: str = "labels") -> None:
    write_rgb(root / "training" / "images" / "key1.jpg", gradient_image(3, 4))
    write_palette_png(root / "training" / label_subdir / "key1.png", VISTAS_IDS)
    if config:
        labels = [{"name": n, "readable": n, "color": [0, 0, 0], "instances": False, "evaluate": True}
                  for n in VISTAS_V12_NAMES]
        (root / config).write_text(json.dumps({"labels": labels}))


@pytest.mark.parametrize("config,label_subdir", [("config.json", "labels"), ("config_v1.2.json", "v1.2/labels"),
                                                 (None, "labels")])
def test_vistas_remap(tmp_path, config, label_subdir):
    make_vistas(tmp_path, config, label_subdir)
    ds = VistasTrain(tmp_path, "train")
    assert ds.split == "training" and ds.names == ["key1"]
    image, labels = ds[0]
    assert image.shape == (3, 4, 3)
    np.testing.assert_array_equal(labels, VISTAS_EXPECTED)
    assert ds.class_names[13] == "car"


def test_vistas_config_order_is_used(tmp_path):
    make_vistas(tmp_path)
    # swap the first two entries of the config: id 0 is now ground-animal, id 1 bird (both void) and the
    # road/car ids are unchanged -> same result; then put "construction--flat--road" at id 2 (was curb)
    names = list(VISTAS_V12_NAMES)
    names[2], names[13] = names[13], names[2]
    (tmp_path / "config.json").write_text(json.dumps({"labels": [{"name": n} for n in names]}))
    _, labels = VistasTrain(tmp_path)[0]
    assert labels[1, 0] == 0  # id 2 is road now
    assert labels[0, 0] == 1  # id 13 is curb -> sidewalk now


def test_vistas_errors(tmp_path):
    make_vistas(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"labels": [{"name": "construction--barrier--ambiguous"}]}))
    with pytest.raises(DatasetError, match="construction--barrier--ambiguous"):
        VistasTrain(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(DatasetError, match="config.json"):
        VistasTrain(tmp_path)
    (tmp_path / "config.json").unlink()
    write_palette_png(tmp_path / "training/labels/key1.png", np.full((3, 4), 66, np.uint8))
    with pytest.raises(DatasetError, match="value 66"):
        VistasTrain(tmp_path)[0]
    (tmp_path / "training/labels/key1.png").unlink()
    with pytest.raises(DatasetError, match="key1.png"):
        VistasTrain(tmp_path)
    with pytest.raises(DatasetError, match="validation"):
        VistasTrain(tmp_path, "val")


# --- WildDash ---------------------------------------------------------------------------------------------

def test_wilddash_ids_and_both_label_names(tmp_path):
    write_rgb(tmp_path / "images" / "cn0000.jpg", gradient_image(2, 4))
    write_label(tmp_path / "labels" / "cn0000_labelIds.png",
                np.array([[34, 35, 36, 37], [38, 24, 7, 1]], np.uint8))
    write_rgb(tmp_path / "images" / "de0001.jpg", gradient_image(2, 3))
    write_label(tmp_path / "labels" / "de0001.png", np.array([[26, 0, 33], [9, 10, 23]], np.uint8))
    ds = WildDashTrain(tmp_path)
    assert ds.names == ["cn0000", "de0001"]
    # pickup car 13, van car 13, billboard void, street-light void / road-marking road 0, person 11, road 0, ego void
    np.testing.assert_array_equal(ds[0][1], np.array([[13, 13, 255, 255], [0, 11, 0, 255]], np.uint8))
    # car 13, unlabeled void, bicycle 18 / parking void, rail track void, sky 10
    np.testing.assert_array_equal(ds[1][1], np.array([[13, 255, 18], [255, 255, 10]], np.uint8))
    listed = tmp_path / "val.txt"
    listed.write_text("de0001\n")
    assert WildDashTrain(tmp_path, list_file=listed).names == ["de0001"]


def test_wilddash_errors(tmp_path):
    write_rgb(tmp_path / "images" / "cn0000.jpg", gradient_image(2, 4))
    with pytest.raises(DatasetError, match="labels"):
        WildDashTrain(tmp_path)
    (tmp_path / "labels").mkdir()
    with pytest.raises(DatasetError, match="cn0000_labelIds.png"):
        WildDashTrain(tmp_path)
    write_label(tmp_path / "labels" / "cn0000_labelIds.png", np.full((2, 4), 39, np.uint8))
    with pytest.raises(DatasetError, match="value 39"):
        WildDashTrain(tmp_path)[0]
    (tmp_path / "list.txt").write_text("nope\n")
    with pytest.raises(DatasetError, match="'nope'"):
        WildDashTrain(tmp_path, list_file=tmp_path / "list.txt")


# --- StreetHazards ------------------------------------------------------------------------------------------

def test_streethazards_train(tmp_path):
    raw = np.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14, 0]], np.uint8)
    image = gradient_image(3, 5)
    write_rgb(tmp_path / "train/images/training/t1/10.png", image)
    write_label(tmp_path / "train/annotations/training/t1/10.png", raw)
    write_rgb(tmp_path / "train/images/training/t1/9.png", image)
    write_label(tmp_path / "train/annotations/training/t1/9.png", raw)
    write_rgb(tmp_path / "train/images/training/t2/1.png", image)
    write_label(tmp_path / "train/annotations/training/t2/1.png", raw)
    ds = StreetHazardsTrain(tmp_path)
    assert ds.names == ["t1_9", "t1_10", "t2_1"]  # numeric order within a town
    img, labels = ds[0]
    np.testing.assert_array_equal(img, image)
    # 1 unlabeled 0, 2 building 1, 3 fence 2, 4 other void, 5 pedestrian 3 / 6 pole 4, 7 road line 5, 8 road 6,
    # 9 sidewalk 7, 10 vegetation 8 / 11 car 9, 12 wall 10, 13 traffic sign 11, 14 anomaly void, 0 void
    expected = np.array([[0, 1, 2, 255, 3], [4, 5, 6, 7, 8], [9, 10, 11, 255, 255]], np.uint8)
    np.testing.assert_array_equal(labels, expected)
    assert ds.num_classes == 12 and ds.classes[3].name == "pedestrian" and ds.classes[6].color == (128, 64, 128)
    # ROOT may be the unpacked "train" folder itself
    assert len(StreetHazardsTrain(tmp_path / "train")) == 3
    write_label(tmp_path / "train/annotations/training/t2/1.png", np.full((3, 5), 15, np.uint8))
    with pytest.raises(DatasetError, match="value 15"):
        ds[2]
    with pytest.raises(DatasetError, match="validation"):
        StreetHazardsTrain(tmp_path, "validation")


# --- sim world ----------------------------------------------------------------------------------------------

def make_sim_by_hand(root: Path, split: str = "train") -> dict:
    """Two 6x8 frames in the densehybrid-sim layout (see densehybrid_ros/sim/dataset.py)."""
    for sub in ("rgb", "labels", "instances", "depth", "meta"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    frames = {}
    for k, name in enumerate(["000000", "000001"]):
        image = gradient_image(6, 8, seed=k)
        labels = np.zeros((6, 8), np.uint8)  # road
        labels[:2] = 9  # sky
        instances = np.zeros((6, 8), np.uint16)
        anomalies = []
        if k == 0:
            labels[3:5, 1:3] = 15  # anomaly object 7 (2x2)
            instances[3:5, 1:3] = 7
            labels[2:6, 5:7] = 15  # anomaly object 9 (4x2), one pixel occluded by a car of instance 3
            instances[2:6, 5:7] = 9
            labels[5, 6] = 12
            instances[5, 6] = 3
            labels[0, 0] = 255  # void
            anomalies = [{"instance_id": 7, "visible_pixels": 4}, {"instance_id": 9, "visible_pixels": 7},
                         {"instance_id": 11, "visible_pixels": 0}]
        write_rgb(root / "rgb" / f"{name}.png", image)
        write_label(root / "labels" / f"{name}.png", labels)
        assert cv2.imwrite(str(root / "instances" / f"{name}.png"), instances)
        np.save(root / "depth" / f"{name}.npy", np.ones((6, 8), np.float32))
        (root / "meta" / f"{name}.json").write_text(json.dumps({"id": name, "anomalies": anomalies}))
        frames[name] = (image, labels, instances)
    from densehybrid_ros.sim.taxonomy import SIM_CLASSES

    manifest = {"format": "densehybrid-sim", "version": 1, "split": split, "anomaly_id": 15, "void_id": 255,
                "classes": [{"id": i, "name": n, "color": list(c)} for i, (n, c) in enumerate(SIM_CLASSES)],
                "frame_ids": ["000000", "000001"]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return frames


def test_sim_train_anomaly_is_void(tmp_path):
    frames = make_sim_by_hand(tmp_path)
    ds = SimTrain(tmp_path)
    assert ds.names == ["000000", "000001"] and ds.num_classes == 15
    assert ds.classes[0].name == "road" and ds.classes[9].name == "sky"
    image, labels = ds[0]
    np.testing.assert_array_equal(image, frames["000000"][0])
    expected = frames["000000"][1].copy()
    expected[expected == 15] = 255
    np.testing.assert_array_equal(labels, expected)
    assert (labels[3:5, 1:3] == 255).all() and labels[5, 6] == 12 and labels[0, 0] == 255
    with pytest.raises(DatasetError, match="split 'train', not 'val'"):
        SimTrain(tmp_path, "val")
    write_label(tmp_path / "labels" / "000001.png", np.full((6, 8), 16, np.uint8))
    with pytest.raises(DatasetError, match="value 16"):
        ds[1]
    (tmp_path / "labels" / "000001.png").unlink()
    with pytest.raises(DatasetError, match="000001.png"):
        SimTrain(tmp_path)


def test_sim_train_rendered(tmp_path):
    from densehybrid_ros.sim.dataset import render_dataset
    from densehybrid_ros.sim.world import SimConfig

    config = dataclasses.replace(SimConfig(), width=96, height=64, frames_per_scene=2, anomaly_frame_prob=1.0)
    render_dataset(tmp_path, "train", 2, seed=0, config=config, workers=1, progress=False)
    ds = build_inlier_dataset("sim", tmp_path, "train")
    for i, name in enumerate(ds.names):
        raw = cv2.imread(str(tmp_path / "labels" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        image, labels = ds[i]
        assert image.shape == (64, 96, 3) and labels.shape == (64, 96)
        assert (raw == 15).any()
        np.testing.assert_array_equal(labels == 255, (raw == 15) | (raw == 255))
        np.testing.assert_array_equal(labels[raw < 15], raw[raw < 15])


# --- factory / concat ---------------------------------------------------------------------------------------

def test_factory_by_name_and_errors(tmp_path):
    make_cityscapes(tmp_path)
    ds = build_inlier_dataset("cityscapes", tmp_path)
    assert isinstance(ds, CityscapesTrain) and ds.split == "train"
    with pytest.raises(DatasetError, match="unknown inlier dataset kind 'kitti'"):
        build_inlier_dataset("kitti", tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        build_inlier_dataset("cityscapes", tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="unknown option 'crop'"):
        build_inlier_dataset("cityscapes", tmp_path, crop=3)
    make_vistas(tmp_path / "vistas")
    joined = concat_inliers([ds, build_inlier_dataset("vistas", tmp_path / "vistas")])
    assert len(joined) == 2 and joined.classes == ds.classes
    np.testing.assert_array_equal(joined[1][1], VISTAS_EXPECTED)
    make_sim_by_hand(tmp_path / "sim")
    with pytest.raises(DatasetError, match="classes"):
        concat_inliers([ds, build_inlier_dataset("sim", tmp_path / "sim")])
