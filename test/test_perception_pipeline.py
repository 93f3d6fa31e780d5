"""densehybrid_ros.perception.pipeline.Perception: the threshold rule per call (numpy fusion as the reference), one
batched forward per cycle, a tracker per camera, and the planner outputs (hand-derived ground geometry)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import TINY
from densehybrid_ros.perception.camera import CameraModel, Mount, ground_point, level_from_camera
from densehybrid_ros.perception.pipeline import CameraFrame, Perception, Wanted
from densehybrid_ros.perception.settings import Settings
from densehybrid_ros.predictor import Predictor
from densehybrid_ros.weights import Calibration, OperatingPoint, default_metadata

RNG = np.random.default_rng(3)
H, W = 48, 80
CAM = CameraModel(fx=60.0, fy=60.0, cx=39.5, cy=23.5)
# every frame's candidates published at once (1 of 1 frames, no miss budget), of any size: one whole-image obstacle
ONE_FRAME = {"min_obstacle_area": 1, "confirm_hits": 1, "confirm_window": 1, "miss_budget": 0,
             "obstacle_max_width": 1000.0, "obstacle_max_height": 1000.0}


def image() -> np.ndarray:
    return RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.fixture
def predictor(tiny_model, one_torch_thread) -> Predictor:
    return Predictor(tiny_model, default_metadata(TINY))


def fused(prediction, threshold: float, unknown: int) -> np.ndarray:
    """The open-set map by the project's rule, in numpy: unknown where s_H >= threshold, else the class id."""
    return np.where(prediction.hybrid >= np.float32(threshold), unknown, prediction.class_ids).astype(np.uint8)


def test_predict_fuses_with_the_threshold_in_force_in_one_forward(tiny_model, one_torch_thread):
    images = [image(), image()]
    probe = Predictor(tiny_model, default_metadata(TINY)).predict(images[0])
    t_fpr, t_tpr, t_param = (float(np.quantile(probe.hybrid, q)) for q in (0.9, 0.5, 0.7))
    calibration = Calibration(threshold=t_tpr, method="tpr95", default="fpr1", operating_points={
        "fpr1": OperatingPoint(t_fpr, "at most 1% of inlier pixels"), "tpr95": OperatingPoint(t_tpr, "95% of anomaly")})
    predictor = Predictor(tiny_model, default_metadata(TINY, calibration=calibration))
    perception = Perception(predictor)
    forwards = []
    real = predictor.model.dense_outputs
    predictor.model.dense_outputs = lambda x, names, **kw: forwards.append(x.shape[0]) or real(x, names, **kw)
    for values, expected, source in (({}, t_fpr, "weights default"), ({"operating_point": "tpr95"}, t_tpr, "tpr95"),
                                     ({"threshold": t_param, "operating_point": "tpr95"}, t_param, "parameter")):
        settings = Settings.from_values(values)
        choice = perception.threshold_choice(settings)
        assert choice.value == pytest.approx(expected) and source in choice.source
        forwards.clear()
        predictions = perception.predict(images, settings)
        assert forwards == [2]  # both cameras in one forward
        for prediction in predictions:
            clear = np.abs(prediction.hybrid - expected) > 1e-6  # away from ties at the threshold
            np.testing.assert_array_equal(prediction.open_set[clear],
                                          fused(prediction, expected, predictor.num_classes)[clear])
    assert predictor.threshold == pytest.approx(t_fpr)  # the predictor's own threshold is never changed
    with pytest.raises(ValueError, match="fpr5"):
        perception.threshold_choice(Settings.from_values({"operating_point": "fpr5"}))


def test_each_camera_confirms_with_its_own_tracker_and_reset_forgets_tracks(predictor):
    perception = Perception(predictor, ("front", "left"))
    assert perception.cameras == ("front", "left")
    settings = Settings.from_values({**ONE_FRAME, "threshold": -1e6, "confirm_hits": 2, "confirm_window": 3})
    wanted = Wanted(obstacles=True)
    front = CameraFrame(image(), wanted, "front", CAM, Mount(1.5, 0.2, 0.0))
    left = CameraFrame(image(), wanted, "left", CAM, Mount(1.2, 0.3, 0.0))

    def ids(frames):
        return [[ob.id for ob in result.obstacles] for result in perception.run(frames, settings)]

    assert ids([front, left]) == [[], []]  # seen once: not yet confirmed (2 of 3 frames)
    assert ids([front]) == [[0]]
    assert ids([left]) == [[0]]  # its own tracker, its own ids
    perception.reset()
    assert ids([front, left]) == [[], []]  # a new stream: confirmed again from scratch...
    assert ids([front, left]) == [[1], [1]]  # ...under new ids (never reused)
    with pytest.raises(ValueError, match="unknown camera 'rear'"):
        perception.run([CameraFrame(image(), wanted, "rear", CAM)], settings)
    with pytest.raises(ValueError, match="distinct"):
        Perception(predictor, ("a", "a"))


def test_planner_outputs_are_the_placed_obstacles_on_the_ground(predictor):
    perception = Perception(predictor)
    mount = Mount(1.5, 0.2, 0.05)
    settings = Settings.from_values({**ONE_FRAME, "threshold": -1e6, "grid_resolution": 0.5, "grid_length": 30.0,
                                     "grid_width": 20.0})
    rgb = image()
    (result,) = perception.run([CameraFrame(rgb, Wanted(obstacle_points=True), intrinsics=CAM, mount=mount)], settings)
    (ob,) = result.obstacles
    assert result.located and result.grid is None and len(result.points) == H * W  # every pixel of the obstacle
    # the front face: every point at the forward (level frame) distance of the ground contact, on its pixel's ray
    contact = ground_point(ob.component.bottom_u, ob.component.bottom_v, CAM, mount)
    rotation = level_from_camera(mount.pitch, mount.roll)
    level = result.points.xyz @ rotation.T
    np.testing.assert_allclose(level[:, 2], (rotation @ contact)[2], rtol=1e-9)
    u = CAM.fx * result.points.xyz[:, 0] / result.points.xyz[:, 2] + CAM.cx
    v = CAM.fy * result.points.xyz[:, 1] / result.points.xyz[:, 2] + CAM.cy
    assert sorted(zip(np.round(v).astype(int), np.round(u).astype(int))) == [(r, c) for r in range(H) for c in range(W)]
    np.testing.assert_array_equal(np.sort(result.points.score), np.sort(result.prediction.hybrid.ravel()))
    assert (result.points.obstacle_id == ob.id).all()

    (result,) = perception.run([CameraFrame(rgb, Wanted(obstacle_grid=True), intrinsics=CAM, mount=mount)], settings)
    spec, cells = result.grid.spec, result.grid.cells
    assert spec.resolution == 0.5 and cells.shape == (40, 60) and cells.dtype == np.int8
    # occupied: the cells under the points' ground positions (ground frame x forward, y left, origin under the camera)
    level = result.points.xyz @ rotation.T
    x, y = level[:, 2], -level[:, 0]
    col, row = np.floor(x / 0.5).astype(int), np.floor((y + 10.0) / 0.5).astype(int)
    inside = (col >= 0) & (col < 60) & (row >= 0) & (row < 40)
    occupied = np.zeros_like(cells, bool)
    occupied[row[inside], col[inside]] = True
    assert occupied.any()
    np.testing.assert_array_equal(cells == 100, occupied)
    assert not (cells == 0).any()  # every pixel anomalous: no ground is seen, the rest is unknown

    # no anomaly: placed, nothing in the way: no points, and free ground where the view reaches it
    (result,) = perception.run([CameraFrame(rgb, Wanted(obstacle_points=True, obstacle_grid=True), intrinsics=CAM,
                                            mount=mount)], settings.replace(threshold=1e6))
    assert result.located and result.obstacles == [] and len(result.points) == 0
    assert (result.grid.cells == 0).any() and not (result.grid.cells == 100).any()


def test_without_intrinsics_or_threshold_no_planner_outputs(predictor):
    perception = Perception(predictor)
    settings = Settings.from_values({**ONE_FRAME, "threshold": -1e6})
    everything = Wanted(True, True, True, True, True, True, True, True)
    assert everything.any_obstacles and not Wanted(overlay=True).any_obstacles
    (result,) = perception.run([CameraFrame(image(), everything)], settings)
    (ob,) = result.obstacles  # a 2-D box for the overlay: no 3D, no id, not confirmed
    assert ob.id == -1 and ob.source == "image" and math.isnan(ob.distance)
    assert not result.located and result.points is None and result.grid is None and result.overlay is not None
    # no threshold (uncalibrated weights, no parameter): no open-set map, no obstacles, nothing for a planner
    (result,) = perception.run([CameraFrame(image(), everything, intrinsics=CAM)], Settings.from_values(ONE_FRAME))
    assert result.prediction.open_set is None and result.obstacles == [] and not result.located
    assert result.points is None and result.grid is None
