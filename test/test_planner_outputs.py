"""densehybrid_ros/perception/planner_outputs.py (ROS-free): obstacle points and the ground occupancy grid against projections
worked by hand (pinhole camera fx = fy = 100, 100 x 100 pixels, pixel centres at integers, principal point 49.5),
and the PointCloud2 payload read back through its own field list."""
from __future__ import annotations

import math

import numpy as np
import pytest

from densehybrid_ros.perception.obstacles import extract_components, place_obstacles
from densehybrid_ros.perception.camera import CameraModel, Mount
from densehybrid_ros.perception.planner_outputs import (
    FREE,
    OCCUPIED,
    UNKNOWN,
    GridSpec,
    camera_from_ground,
    encode_points,
    ground_from_camera,
    obstacle_points,
    occupancy_grid,
    pixel_rays,
)

F, C, SIZE = 100.0, 49.5, 100
CAMERA = CameraModel(F, F, C, C, SIZE, SIZE)
HEIGHT = 1.5
LEVEL = Mount(HEIGHT, 0.0, 0.0)  # a level camera HEIGHT above the road


def block(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[rows, cols] = True
    return mask


def placed(mask: np.ndarray, pitch: float, roll: float = 0.0, depth: np.ndarray | None = None):
    """The node's path to obstacles: components of the mask, placed (ground plane or depth), ids 7, 8, ..."""
    components, labels = extract_components(mask, None, 1)
    obstacles = place_obstacles(components, labels, CAMERA, Mount(HEIGHT, pitch, roll), depth=depth)
    for n, ob in enumerate(obstacles):
        ob.id = 7 + n
    return obstacles


def rows_of(points: np.ndarray) -> set[tuple]:
    return {tuple(np.round(p, 9)) for p in points}


def test_pixel_rays_and_the_ground_frame_by_hand():
    np.testing.assert_allclose(pixel_rays(CAMERA, np.array([49.5, 149.5]), np.array([69.5, 49.5])),
                               [[0.0, 0.2, 1.0], [1.0, 0.0, 1.0]])
    # level camera: a point 10 m ahead on the optical axis, 1.5 m down = on the ground 10 m ahead; right = -y
    np.testing.assert_allclose(ground_from_camera(np.array([[0.0, HEIGHT, 10.0], [2.0, 0.0, 5.0]]), LEVEL),
                               [[10.0, 0.0, 0.0], [5.0, -2.0, HEIGHT]], atol=1e-12)
    # pitched down by p: d metres along the optical axis = d cos p ahead, d sin p lower
    p = 0.3
    np.testing.assert_allclose(ground_from_camera(np.array([[0.0, 0.0, 4.0]]), Mount(HEIGHT, p, 0.0)),
                               [[4 * math.cos(p), 0.0, HEIGHT - 4 * math.sin(p)]], atol=1e-12)
    # rolled by r (clockwise seen from behind): the image x axis points right and down by r
    r = 0.2
    np.testing.assert_allclose(ground_from_camera(np.array([[1.0, 0.0, 0.0]]), Mount(HEIGHT, 0.0, r)),
                               [[0.0, -math.cos(r), HEIGHT - math.sin(r)]], atol=1e-12)
    points = np.random.default_rng(0).normal(size=(20, 3))
    tilted = Mount(HEIGHT, 0.25, -0.1)
    np.testing.assert_allclose(camera_from_ground(ground_from_camera(points, tilted), tilted), points, atol=1e-12)


def test_ground_points_are_the_front_face_at_the_contact_distance_level_camera():
    """Rows 60..69, columns 40..49: the bottom edge v = 69.5 looks 0.2 below the axis, so the contact is
    1.5 / 0.2 = 7.5 m ahead; every pixel (u, v) is at z = 7.5 on its ray: ((u - 49.5) 0.075, (v - 49.5) 0.075, 7.5)."""
    mask = block(slice(60, 70), slice(40, 50))
    score = np.arange(SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)
    points = obstacle_points(placed(mask, 0.0), mask, score, CAMERA, LEVEL)
    expected = [((u - C) * 0.075, (v - C) * 0.075, 7.5) for v in range(60, 70) for u in range(40, 50)]
    assert len(points) == 100 and rows_of(points.xyz) == rows_of(np.array(expected))
    # each point keeps its own pixel's score and the obstacle's id
    u = np.rint(points.xyz[:, 0] / 0.075 + C).astype(int)
    v = np.rint(points.xyz[:, 1] / 0.075 + C).astype(int)
    np.testing.assert_array_equal(points.score, score[v, u])
    assert (points.obstacle_id == 7).all() and points.obstacle_id.dtype == np.uint32
    # it stands on the ground: lowest points (pixel centres, row 69) 0.0375 m up, top edge 0.75 m above the bottom
    heights = ground_from_camera(points.xyz, LEVEL)[:, 2]
    assert heights.min() == pytest.approx(HEIGHT - 19.5 * 0.075)
    assert heights.max() == pytest.approx(HEIGHT - 10.5 * 0.075)


def test_ground_points_with_pitch_by_hand():
    """Pitch p down: a ray (a, b, 1) has level components y = b cos p + sin p (down), z = cos p - b sin p (ahead).
    The bottom edge (b = 0.2) meets the ground at t = h / y, ahead by f = t z; each pixel sits at forward f."""
    p = 0.2
    c, s = math.cos(p), math.sin(p)
    mask = block(slice(60, 70), slice(45, 55))
    points = obstacle_points(placed(mask, p), mask, np.zeros((SIZE, SIZE), np.float32), CAMERA, Mount(HEIGHT, p, 0.0))
    forward = HEIGHT * (c - 0.2 * s) / (0.2 * c + s)
    expected = []
    for v in range(60, 70):
        for u in range(45, 55):
            a, b = (u - C) / F, (v - C) / F
            expected.append(np.array([a, b, 1.0]) * forward / (c - b * s))
    assert rows_of(points.xyz) == rows_of(np.array(expected))
    np.testing.assert_allclose(ground_from_camera(points.xyz, Mount(HEIGHT, p, 0.0))[:, 0], forward)


def test_depth_points_are_the_rays_at_their_depth_and_skip_invalid_pixels():
    mask = block(slice(20, 30), slice(10, 16))
    depth = np.full((SIZE, SIZE), 4.0, np.float32)
    depth[25, 12] = np.nan
    depth[26, 13] = 0.0
    depth[21:30, 14] = 6.0
    obstacles = placed(mask, 0.0, depth=depth)
    assert obstacles[0].source == "depth"
    points = obstacle_points(obstacles, mask, np.zeros((SIZE, SIZE), np.float32), CAMERA, LEVEL, depth)
    expected = [np.array([(u - C) / F, (v - C) / F, 1.0]) * depth[v, u]
                for v in range(20, 30) for u in range(10, 16) if (v, u) not in ((25, 12), (26, 13))]
    assert len(points) == 58 and rows_of(points.xyz) == rows_of(np.array(expected))
    # a depth image of another size is resized (nearest) to the mask's, as the node's obstacle placement does
    half = obstacle_points(obstacles, mask, np.zeros((SIZE, SIZE), np.float32), CAMERA, LEVEL,
                           np.full((50, 50), 4.0, np.float32))
    np.testing.assert_allclose(half.xyz[:, 2], 4.0)


def test_only_placed_obstacles_give_points_and_a_foreign_mask_is_an_error():
    mask = block(slice(60, 70), slice(40, 50)) | block(slice(5, 10), slice(5, 10))  # the second: above the horizon
    obstacles = placed(mask, 0.0)
    assert len(obstacles) == 1
    points = obstacle_points(obstacles, mask, np.zeros((SIZE, SIZE), np.float32), CAMERA, LEVEL)
    assert len(points) == 100 and (points.xyz[:, 1] > 0).all()
    assert len(obstacle_points([], mask, np.zeros((SIZE, SIZE), np.float32), CAMERA, LEVEL)) == 0
    with pytest.raises(ValueError, match="not in this mask"):
        obstacle_points(obstacles, block(slice(60, 65), slice(40, 50)), np.zeros((SIZE, SIZE), np.float32), CAMERA,
                        LEVEL)


def test_encoded_points_read_back_through_their_field_list():
    mask = block(slice(60, 62), slice(40, 43))
    score = np.linspace(-3, 3, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)
    points = obstacle_points(placed(mask, 0.0), mask, score, CAMERA, LEVEL)
    fields, step, data = encode_points(points)
    assert fields == [("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("score", 12, 7), ("obstacle_id", 16, 6)]
    assert step == 20 and len(data) == 20 * len(points) == 120
    raw = np.frombuffer(data, np.uint8).reshape(len(points), step)
    for name, offset, datatype in fields:
        column = np.frombuffer(raw[:, offset:offset + 4].tobytes(), "<f4" if datatype == 7 else "<u4")
        expected = {"x": points.xyz[:, 0], "y": points.xyz[:, 1], "z": points.xyz[:, 2], "score": points.score,
                    "obstacle_id": points.obstacle_id}[name]
        np.testing.assert_array_equal(column, np.asarray(expected).astype(column.dtype))
    assert encode_points(type(points).empty())[2] == b""


def test_grid_spec_cells_and_origin():
    spec = GridSpec(0.5, 30.0, 10.0)
    assert spec.cells == (60, 20) and spec.origin == (0.0, -5.0)
    assert GridSpec(0.3, 1.0, 1.0).cells == (4, 4) and GridSpec(0.3, 1.0, 1.0).origin == (0.0, -0.6)
    centres = spec.cell_centres()
    assert centres.shape == (20, 60, 3)
    np.testing.assert_allclose(centres[0, 0], [0.25, -4.75, 0.0])
    np.testing.assert_allclose(centres[19, 59], [29.75, 4.75, 0.0])
    col, row, inside = spec.cell_of(np.array([[0.1, -4.9, 0.0], [29.9, 4.9, 1.0], [30.1, 0.0, 0.0], [-0.1, 0.0, 0.0]]))
    assert col[:2].tolist() == [0, 59] and row[:2].tolist() == [0, 19] and inside.tolist() == [True, True, False, False]


def hand_row(x: float, pitch: float) -> float:
    """Image row of a road point x metres ahead on the camera's heading (pitch p down): the point is atan(h / x)
    below the horizon, i.e. atan(h / x) - p below the optical axis."""
    return C + F * math.tan(math.atan(HEIGHT / x) - pitch)


def hand_half_width(x: float, pitch: float) -> float:
    """Half the visible width of the road x metres ahead: the image's side edges (u = -0.5, 99.5) are 0.5 rad-units
    off the axis at the point's optical depth x cos p + h sin p."""
    return 0.5 * (x * math.cos(pitch) + HEIGHT * math.sin(pitch))


def test_grid_by_hand_free_unknown_and_an_obstacle_with_the_ground_it_hides():
    """Camera 1.5 m up, pitched 0.2 down; 0.5 m cells, 30 m ahead, 10 m across (rows 9 and 10 straddle the heading).
    An obstacle covers rows 60..69, columns 40..59 (its contact is forward f, as in the pitch test)."""
    p = 0.2
    spec = GridSpec(0.5, 30.0, 10.0)
    mask = block(slice(60, 70), slice(40, 60))
    points = obstacle_points(placed(mask, p), mask, np.zeros((SIZE, SIZE), np.float32), CAMERA, Mount(HEIGHT, p, 0.0))
    grid = occupancy_grid(spec, CAMERA, Mount(HEIGHT, p, 0.0), mask, points.xyz)
    assert grid.dtype == np.int8 and grid.shape == (20, 60)
    c, s = math.cos(p), math.sin(p)
    forward = HEIGHT * (c - 0.2 * s) / (0.2 * c + s)
    # the obstacle's points lie < 0.4 m either side of the heading at `forward`: the cells over them are occupied
    assert set(map(tuple, np.argwhere(grid == OCCUPIED))) == {(9, int(forward // 0.5)), (10, int(forward // 0.5))}
    # along the heading (row 10: y = +0.25 m, i.e. left of the axis by 0.25 m at optical depth x cos p + h sin p)
    near = HEIGHT / math.tan(p + math.atan((SIZE - 0.5 - C) / F))  # the bottom edge of the image meets the road
    kinds = []
    for col in range(60):
        x = 0.25 + 0.5 * col
        row, column = hand_row(x, p), C - F * 0.25 / (x * c + HEIGHT * s)
        if col == int(forward // 0.5):
            continue
        if x < near:
            kinds.append("below the image")
            assert grid[10, col] == UNKNOWN, x
        elif 59.5 <= row < 69.5 and 39.5 <= column < 59.5:
            kinds.append("hidden")  # behind the obstacle: its pixels hide the road
            assert grid[10, col] == UNKNOWN, x
        else:
            kinds.append("seen")
            assert grid[10, col] == FREE, x
    assert kinds.count("below the image") == 4 and kinds.count("hidden") == 2 and kinds.count("seen") == 53
    # across: at x = 2.25 m the view is 2 x 1.25 m wide; at 20.25 m it spans the whole grid
    for row_index in range(20):
        y = -4.75 + 0.5 * row_index
        assert grid[row_index, 4] == (FREE if abs(y) < hand_half_width(2.25, p) else UNKNOWN), y
        assert grid[row_index, 40] == FREE, y


def test_grid_is_all_unknown_for_a_camera_looking_up_above_the_horizon():
    # pitch -0.6 (up): the bottom edge ray is 0.6 - atan(0.5) = 0.136 rad above the horizon: no road in view
    grid = occupancy_grid(GridSpec(0.5, 30.0, 10.0), CAMERA, Mount(HEIGHT, -0.6, 0.0), np.zeros((SIZE, SIZE), bool),
                          np.zeros((0, 3)))
    assert (grid == UNKNOWN).all()


def test_grid_parameters_are_validated_together():
    from densehybrid_ros.perception.settings import Settings, SettingsError

    settings = Settings.from_values({})
    assert settings.grid_spec() == GridSpec(0.2, 40.0, 20.0) and settings.grid_spec().cells == (200, 100)
    assert settings.grid_frame_for("front_optical") == "front_optical_ground"
    assert Settings.from_values({"grid_frame": "base_footprint"}).grid_frame_for("x") == "base_footprint"
    assert Settings.from_values({"grid_frame": "", "cameras": ["a", "b"]}).grid_frame == ""
    for values, reason in (({"grid_resolution": 0.01, "grid_length": 1000.0}, "cells"),  # 100000 x 2000 cells
                           ({"grid_frame": "/map"}, "leading slash"),
                           ({"grid_frame": "base_footprint", "cameras": ["a", "b"]}, "2 cameras")):
        with pytest.raises(SettingsError, match=reason):
            Settings.from_values(values)
    with pytest.raises(SettingsError, match="grid_resolution"):
        settings.replace(grid_resolution=0.0)
