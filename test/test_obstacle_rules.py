"""Obstacle rules of the node, ROS-free, on hand-built masks and semantic maps: the drivable-surface contact, the
enclosure by a known object, the size and visible area of a real object at its distance (geometry worked by hand),
and the N-of-M confirmation (or at once at the instant score) with its miss budget and ids."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from densehybrid_ros.perception.obstacles import (Component, Confirmation, Obstacle, ObstacleRules, ObstacleTracker,
                                                  enclosed_share, extract_components, frame_obstacles,
                                                  stands_on_drivable, visible_area)
from densehybrid_ros.perception.camera import CameraModel, Mount
from densehybrid_ros.perception.settings import Settings, SettingsError
from densehybrid_ros.weights import Calibration, OperatingPoint

ROAD, SIDEWALK, BUILDING, CAR = 0, 1, 2, 12
H, W = 100, 160
# pinhole with f = 100 px, principal point at the image centre; mount 1.5 m high, level (pitch 0, roll 0):
# a contact at bottom edge v lies z = 1.5 * 100 / (v - 49.5) m ahead; a span of n pixels there is n * z / 100 m
CAMERA = CameraModel(fx=100.0, fy=100.0, cx=79.5, cy=49.5)
MOUNT = Mount(height=1.5, pitch=0.0, roll=0.0)


def rules(drivable=(ROAD, SIDEWALK), band=0.05, width=(0.1, 3.0), height=(0.1, 3.0), min_area=10,
          min_visible_area=0.0, objects=None, enclosed=1.0) -> ObstacleRules:
    return ObstacleRules(min_area=min_area, max_obstacles=32, max_distance=60.0, drivable_ids=drivable,
                         ground_band=band, width=width, height=height, min_visible_area=min_visible_area,
                         object_ids=objects, max_enclosed_share=enclosed)


def one_component(mask: np.ndarray):
    (component,), labels = extract_components(mask, None)
    return component, labels


# ---------------------------------------------------------------- drivable surface
def test_contact_on_road_or_sidewalk_counts_other_classes_do_not():
    mask = np.zeros((H, W), bool)
    mask[60:70, 40:50] = True  # bottom row 69: the contact pixels are rows 70..72 of columns 40..49
    component, labels = one_component(mask)
    for below, expected in ((ROAD, True), (SIDEWALK, True), (BUILDING, False), (CAR, False)):
        classes = np.full((H, W), BUILDING, np.uint8)
        classes[70:73, 40:50] = below
        assert stands_on_drivable(component, labels, classes, (ROAD, SIDEWALK), 0.05) is expected, below


def test_contact_is_read_per_column_just_below_the_bottom_edge_by_majority():
    # an L-shaped component: columns 40..44 end at row 79, columns 45..49 at row 69
    mask = np.zeros((H, W), bool)
    mask[60:70, 40:50] = True
    mask[70:80, 40:45] = True
    component, labels = one_component(mask)
    classes = np.full((H, W), ROAD, np.uint8)
    # under the long leg (rows 80..82, columns 40..44): building; under the short one (rows 70..72, 45..49): road
    classes[80:83, 40:45] = BUILDING
    assert stands_on_drivable(component, labels, classes, (ROAD,), 0.05)  # 15 of 30 contact pixels: half is enough
    classes[70, 45] = BUILDING  # 14 of 30
    assert not stands_on_drivable(component, labels, classes, (ROAD,), 0.05)
    # what lies elsewhere below (further down, or beside the contact) does not matter
    classes = np.full((H, W), BUILDING, np.uint8)
    classes[80:83, 40:45] = ROAD
    classes[70:73, 45:50] = ROAD
    assert stands_on_drivable(component, labels, classes, (ROAD,), 0.05)


def test_contact_in_the_bottom_band_counts_whatever_lies_below():
    classes = np.full((H, W), BUILDING, np.uint8)
    mask = np.zeros((H, W), bool)
    mask[85:95, 40:50] = True  # bottom edge v = 94.5 >= 100 * (1 - 0.06)
    component, labels = one_component(mask)
    assert stands_on_drivable(component, labels, classes, (ROAD,), 0.06)
    assert not stands_on_drivable(component, labels, classes, (ROAD,), 0.05)  # band ends at v = 95
    mask[:] = False
    mask[90:100, 40:50] = True  # touching the image's bottom: no pixel below it, in any band
    component, labels = one_component(mask)
    assert stands_on_drivable(component, labels, classes, (ROAD,), 0.05)
    assert not stands_on_drivable(component, labels, classes, (ROAD,), 0.0)


def test_anomalous_pixels_below_are_not_read_as_ground():
    mask = np.zeros((H, W), bool)
    mask[60:70, 40:50] = True
    mask[71:74, 40:50] = True  # another anomaly component one row below (not 8-connected: row 70 is free)
    classes = np.full((H, W), BUILDING, np.uint8)
    classes[70, 40:50] = ROAD  # the only free contact pixels
    components, labels = extract_components(mask, None)
    upper = min(components, key=lambda c: c.y0)
    assert stands_on_drivable(upper, labels, classes, (ROAD,), 0.05)  # 10 of 10 free contact pixels are road


# ---------------------------------------------------------------- size at the distance, and the whole frame
def box_mask(rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


def test_size_limits_by_hand_geometry():
    classes = np.full((H, W), ROAD, np.uint8)
    # bottom row 79 -> v = 79.5, z = 1.5 * 100 / 30 = 5 m; 20 px wide = 1.0 m; rows 60..79: top edge 59.5 -> 1.0 m tall
    (ob,) = frame_obstacles(box_mask((60, 80), (60, 80)), None, classes, CAMERA, MOUNT, rules())
    assert ob.anchor[2] == pytest.approx(5.0) and ob.size[0] == pytest.approx(1.0) and ob.size[1] == pytest.approx(1.0)
    # 70 px wide at 5 m = 3.5 m: wider than a real object
    assert frame_obstacles(box_mask((60, 80), (40, 110)), None, classes, CAMERA, MOUNT, rules()) == []
    wider = rules(width=(0.1, 3.6))
    assert len(frame_obstacles(box_mask((60, 80), (40, 110)), None, classes, CAMERA, MOUNT, wider)) == 1
    # 1 px tall at 5 m = 0.05 m (rows 79..79): too low; 4 px = 0.2 m: fits
    assert frame_obstacles(box_mask((79, 80), (60, 90)), None, classes, CAMERA, MOUNT, rules(min_area=1)) == []
    (low,) = frame_obstacles(box_mask((76, 80), (60, 90)), None, classes, CAMERA, MOUNT, rules(min_area=1))
    assert low.size[1] == pytest.approx(0.2)
    # 60 rows tall at bottom row 89 (z = 1.5 * 100 / 40 = 3.75 m): 60 * 3.75 / 100 = 2.25 m; limit 2.0 m drops it
    assert len(frame_obstacles(box_mask((30, 90), (60, 70)), None, classes, CAMERA, MOUNT, rules())) == 1
    assert frame_obstacles(box_mask((30, 90), (60, 70)), None, classes, CAMERA, MOUNT, rules(height=(0.1, 2.0))) == []


def test_frame_obstacles_keeps_what_stands_on_the_road_and_fits():
    classes = np.full((H, W), BUILDING, np.uint8)
    classes[80:, :] = ROAD
    mask = box_mask((60, 80), (20, 40)) | box_mask((60, 70), (100, 120))  # on the road / on the building
    obstacles = frame_obstacles(mask, None, classes, CAMERA, MOUNT, rules())
    assert [(ob.component.x0, ob.component.y1) for ob in obstacles] == [(20, 80)]
    everything = frame_obstacles(mask, None, classes, CAMERA, MOUNT, rules(drivable=None))  # surface not checked
    assert sorted(ob.component.x0 for ob in everything) == [20, 100]
    # without intrinsics: the surface check only, 2-D boxes for the overlay
    (flat,) = frame_obstacles(mask, None, classes, None, MOUNT, rules())
    assert flat.source == "image" and flat.component.x0 == 20


def test_visible_area_by_hand_geometry():
    classes = np.full((H, W), ROAD, np.uint8)
    # 20 x 20 px box with bottom row 79: z = 5 m, 1.0 m x 1.0 m, filled: 1.0 m^2
    (full,) = frame_obstacles(box_mask((60, 80), (60, 80)), None, classes, CAMERA, MOUNT, rules())
    assert visible_area(full) == pytest.approx(1.0)
    # an L: the bottom 10 rows full, the top 10 rows only the left 10 columns: 300 of the box's 400 px -> 0.75 m^2
    mask = box_mask((70, 80), (60, 80)) | box_mask((60, 70), (60, 70))
    (ell,) = frame_obstacles(mask, None, classes, CAMERA, MOUNT, rules())
    assert ell.size[:2] == pytest.approx((1.0, 1.0)) and visible_area(ell) == pytest.approx(0.75)
    assert frame_obstacles(mask, None, classes, CAMERA, MOUNT, rules(min_visible_area=0.8)) == []
    assert len(frame_obstacles(mask, None, classes, CAMERA, MOUNT, rules(min_visible_area=0.75))) == 1
    # the same 4 x 4 px patch: 0.2 m x 0.2 m = 0.04 m^2 at 5 m, 0.4 m x 0.4 m = 0.16 m^2 at 10 m (bottom row 64)
    near = frame_obstacles(box_mask((76, 80), (60, 64)), None, classes, CAMERA, MOUNT, rules(min_area=1))
    far = frame_obstacles(box_mask((61, 65), (60, 64)), None, classes, CAMERA, MOUNT, rules(min_area=1))
    assert visible_area(near[0]) == pytest.approx(0.04) and visible_area(far[0]) == pytest.approx(0.16)
    assert frame_obstacles(box_mask((76, 80), (60, 64)), None, classes, CAMERA, MOUNT,
                           rules(min_area=1, min_visible_area=0.05)) == []


def enclosed_scene():
    """A 10 x 10 px component (rows 60..69, columns 40..49) in a car whose lower edge is row 69, road below; a second
    anomaly component on row 58 (one free row above the first, so not connected to it)."""
    classes = np.full((H, W), CAR, np.uint8)
    classes[70:, :] = ROAD
    mask = box_mask((60, 70), (40, 50)) | box_mask((58, 59), (38, 52))
    return mask, classes


def test_enclosed_share_counts_the_ring_around_the_component_outside_other_anomalies():
    mask, classes = enclosed_scene()
    components, labels = extract_components(mask, None)
    first = next(c for c in components if c.y0 == 60)
    # ring: radius max(1, round(100 / 64)) = 2 px -> rows 58..71, columns 38..51 (196 px) minus the component (100):
    # 96 px, 14 of them (row 58) the other anomaly -> 82; road: rows 70..71 x 14 columns = 28; car: 54
    assert enclosed_share(first, labels, classes, (CAR,)) == pytest.approx(54 / 82)
    assert enclosed_share(first, labels, classes, (CAR, ROAD)) == pytest.approx(1.0)
    assert enclosed_share(first, labels, classes, (BUILDING,)) == 0.0
    # on open road nothing encloses it
    assert enclosed_share(first, labels, np.full((H, W), ROAD, np.uint8), (CAR,)) == 0.0


def test_a_component_mostly_surrounded_by_a_car_is_part_of_it():
    mask, classes = enclosed_scene()
    mask[58] = False  # the component alone: ring 96 px, 68 car (0.708), contact on road
    kept = lambda r: [(ob.component.x0, ob.component.y0) for ob in frame_obstacles(mask, None, classes, CAMERA,
                                                                                     MOUNT, r)]
    assert kept(rules(objects=(CAR,), enclosed=0.6)) == []
    assert kept(rules(objects=(CAR,), enclosed=0.75)) == [(40, 60)]
    assert kept(rules(objects=(CAR,), enclosed=1.0)) == [(40, 60)]  # 1.0: not checked
    assert kept(rules(objects=None, enclosed=0.6)) == [(40, 60)]  # no object class known: not checked
    # the same component in front of the car (road around it) stays
    classes[50:, 30:60] = ROAD
    assert kept(rules(objects=(CAR,), enclosed=0.6)) == [(40, 60)]
    # without intrinsics (2-D boxes for the overlay) the enclosure check applies too
    classes[50:70, 30:60] = CAR
    assert frame_obstacles(mask, None, classes, None, MOUNT, rules(objects=(CAR,), enclosed=0.6)) == []


def test_settings_map_class_names_to_drivable_ids_and_check_limits():
    names = ["road", "sidewalk", "building", "car"]
    settings = Settings.from_values({})
    assert settings.obstacle_rules(names).drivable_ids == (0, 1)
    assert settings.replace(drivable_classes=["sidewalk", "kerb"]).obstacle_rules(names).drivable_ids == (1,)
    assert settings.obstacle_rules(["class_0", "class_1"]).drivable_ids is None  # none known: no surface check
    assert settings.replace(ground_band=1.0).obstacle_rules(names).drivable_ids is None
    r = settings.obstacle_rules(names)
    assert (r.object_ids, r.max_enclosed_share, r.min_visible_area) == ((3,), 0.6, 0.02)
    assert settings.replace(object_classes=["truck"]).obstacle_rules(names).object_ids is None  # none known
    with pytest.raises(SettingsError, match="object_classes must be non-empty class names"):
        Settings.from_values({"object_classes": ["car", ""]})
    with pytest.raises(SettingsError, match="max_enclosed_share"):
        Settings.from_values({"max_enclosed_share": 1.5})
    c = settings.confirmation()
    assert (c.hits, c.window, c.miss_budget, c.hold_missed) == (2, 3, 2, False)
    assert (c.match_distance, c.match_relative) == (3.0, 0.2)
    assert settings.replace(hold_missed_obstacles=True).confirmation().hold_missed
    with pytest.raises(SettingsError, match="obstacle_min_width .* must not exceed obstacle_max_width"):
        Settings.from_values({"obstacle_min_width": 4.0})
    with pytest.raises(SettingsError, match="confirm_hits .* must not exceed confirm_window"):
        Settings.from_values({"confirm_hits": 4})


# ---------------------------------------------------------------- confirmation: N of M, miss budget, ids
def candidate(x: float, z: float) -> Obstacle:
    anchor = np.array([x, 1.5, z])
    return Obstacle(component=None, center=anchor + [0.0, -0.5, 0.5], size=(1.0, 1.0, 1.0), orientation=(0, 0, 0, 1),
                    anchor=anchor, distance=float(np.linalg.norm(anchor)), source="ground")


def run(tracker: ObstacleTracker, frames: list[list[Obstacle]], rule: Confirmation):
    return [tracker.update(frame, rule) for frame in frames]


TWO_OF_THREE = Confirmation(hits=2, window=3, miss_budget=2, match_distance=2.0)


def test_a_blip_is_never_published_a_persistent_obstacle_after_one_frame_with_a_stable_id():
    tracker = ObstacleTracker()
    frames = [[candidate(0, 10), candidate(6, 20)], [candidate(0.3, 9.5)], [candidate(0.5, 9.0)], [candidate(0.6, 8.6)]]
    steps = run(tracker, frames, TWO_OF_THREE)
    assert steps[0].published == []  # seen once: not yet (latency N - 1 = 1 frame)
    ids = [[ob.id for ob in s.published] for s in steps[1:]]
    assert ids == [[0], [0], [0]]  # the one at x ~ 0, id 0 from its confirmation on
    for step, frame in zip(steps[1:], frames[1:]):
        np.testing.assert_array_equal(step.published[0].anchor, frame[0].anchor)  # the current view
        assert step.published[0].missed == 0
    assert all(abs(ob.anchor[0] - 6) > 1 for s in steps for ob in s.published)  # the blip at x = 6: never
    assert all(not s.removed_ids for s in steps)  # an unconfirmed track leaves without a removal


def test_two_of_three_confirms_across_a_gap_but_not_across_two():
    gap = run(ObstacleTracker(), [[candidate(0, 10)], [], [candidate(0, 10)]], TWO_OF_THREE)
    assert [len(s.published) for s in gap] == [0, 0, 1]
    # two misses in a row: the first sighting can no longer count (window 3); the third sighting starts over
    seen = [candidate(0, 10)]
    long_gap = run(ObstacleTracker(), [seen, [], [], seen, seen], TWO_OF_THREE)
    assert [len(s.published) for s in long_gap] == [0, 0, 0, 0, 1]


def test_a_confirmed_obstacle_is_held_through_the_miss_budget_then_dropped():
    holding = Confirmation(hits=2, window=3, miss_budget=2, match_distance=2.0, hold_missed=True)
    tracker = ObstacleTracker()
    seen = [candidate(0, 10), candidate(0, 9.5)]
    steps = run(tracker, [[seen[0]], [seen[1]], [], [], []], holding)
    kept = [s.published for s in steps[2:4]]
    assert [[(ob.id, ob.missed) for ob in p] for p in kept] == [[(0, 1)], [(0, 2)]]
    for published in kept:
        np.testing.assert_array_equal(published[0].anchor, seen[1].anchor)  # its last view
    assert steps[4].published == [] and steps[4].removed_ids == {0}
    # seen again within the budget: the same id goes on
    frames = [[candidate(0, 10)], [candidate(0, 10)], [], [], [candidate(0.5, 9)]]
    steps = run(ObstacleTracker(), frames, holding)
    assert [(ob.id, ob.missed) for ob in steps[4].published] == [(0, 0)]
    # without holding (the default): nothing is published while it is missed, but the track and its id survive
    steps = run(ObstacleTracker(), frames, TWO_OF_THREE)
    assert [[ob.id for ob in s.published] for s in steps] == [[], [0], [], [], [0]]
    assert all(not s.removed_ids for s in steps)
    steps = run(ObstacleTracker(), frames[:2] + [[], [], []], TWO_OF_THREE)
    assert steps[4].published == [] and steps[4].removed_ids == {0}  # beyond the budget: dropped, as when held


def scored(x: float, z: float, max_score: float) -> Obstacle:
    """A candidate whose component's highest hybrid score is `max_score`."""
    component = Component(label=1, x0=0, y0=0, x1=1, y1=1, area=1, mean_score=max_score, max_score=max_score,
                          bottom_u=0.0, bottom_v=0.5, centroid=(0.0, 0.0))
    return replace(candidate(x, z), component=component)


def test_a_candidate_reaching_the_instant_score_is_published_at_once_weaker_ones_wait():
    instant = replace(TWO_OF_THREE, instant_score=4.5)
    steps = run(ObstacleTracker(), [[scored(0, 10, 4.5), scored(6, 20, 4.49)], [scored(0, 10, 1.0)]], instant)
    assert [[ob.anchor[0] for ob in s.published] for s in steps] == [[0], [0]]  # at once, then tracked; the weak: no
    assert steps[0].published[0].id == 0
    # a weak first sighting, then a strong one: confirmed at the strong one (3 of 3 would need a third frame)
    three = replace(instant, hits=3)
    steps = run(ObstacleTracker(), [[scored(0, 10, 2.0)], [scored(0, 10, 5.0)], [scored(0, 10, 2.0)]], three)
    assert [len(s.published) for s in steps] == [0, 1, 1]
    # only a track seen now: one missed after the rule is switched on is not confirmed by its last (strong) view
    tracker = ObstacleTracker()
    tracker.update([scored(0, 10, 9.0)], TWO_OF_THREE)
    assert tracker.update([], instant).published == [] and tracker.tracks[0].id == -1
    # off (None), or components without scores (NaN) or without a component: the N-of-M rule alone
    for rule, ob in ((TWO_OF_THREE, scored(0, 10, 9.0)), (instant, scored(0, 10, float("nan"))),
                     (instant, candidate(0, 10))):
        assert [len(s.published) for s in run(ObstacleTracker(), [[ob], [ob]], rule)] == [0, 1]


def test_the_instant_score_is_the_weights_named_operating_point():
    calibration = Calibration(threshold=-1.7, method="tpr95", default="fpr1", operating_points={
        "tpr95": OperatingPoint(-1.7, "t"), "fpr1": OperatingPoint(1.3, "f"), "f1": OperatingPoint(4.5, "b")})
    settings = Settings.from_values({})
    assert settings.instant_confirm_point == "f1"
    assert settings.confirmation(calibration).instant_score == 4.5
    assert settings.replace(instant_confirm_point="tpr95").confirmation(calibration).instant_score == -1.7
    assert settings.replace(instant_confirm_point="").confirmation(calibration).instant_score is None
    assert settings.confirmation().instant_score is None  # no calibration known
    legacy = Calibration(threshold=-1.7, method="tpr95")  # one threshold, no f1 point: off
    assert settings.confirmation(legacy).instant_score is None
    with pytest.raises(SettingsError, match="instant_confirm_point must be empty or an operating point name"):
        Settings.from_values({"instant_confirm_point": "f1 point"})


def test_ids_follow_the_nearest_anchor_and_are_never_reused():
    every_frame = Confirmation(hits=1, window=1, miss_budget=0, match_distance=2.0)
    tracker = ObstacleTracker()
    by_x = lambda step: {round(float(ob.anchor[0])): ob.id for ob in step.published}  # noqa: E731
    first = tracker.update([candidate(0, 10), candidate(5, 20)], every_frame)
    assert by_x(first) == {0: 0, 5: 1}
    second = tracker.update([candidate(5.3, 20.5), candidate(0.2, 9.8)], every_frame)  # listed the other way round
    assert by_x(second) == {5: 1, 0: 0}
    third = tracker.update([candidate(0.1, 9.9), candidate(-20, 30)], every_frame)  # id 1 vanished, a new one appears
    assert by_x(third) == {0: 0, -20: 2} and third.removed_ids == {1}
    # two candidates for one track: the nearer continues it, the other gets a fresh id
    fourth = tracker.update([candidate(1.5, 9.9), candidate(0.3, 9.9)], every_frame)
    assert {(round(float(ob.anchor[0]), 1), ob.id) for ob in fourth.published} == {(0.3, 0), (1.5, 3)}
    assert fourth.removed_ids == {2}
    assert tracker.update([], every_frame).removed_ids == {0, 3}
    assert {ob.id for ob in tracker.update([candidate(0, 10)], every_frame).published} == {4}


def test_the_track_gate_is_an_ellipse_along_the_line_of_sight():
    rule = Confirmation(hits=1, window=1, miss_budget=0, match_distance=2.0, match_relative=0.2)
    track = np.array([3.0, 0.0, 4.0])  # range 5: along-sight half-axis 2 + 0.2 x 5 = 3 m, across 2 m
    sight, side = np.array([0.6, 0.0, 0.8]), np.array([0.8, 0.0, -0.6])
    assert rule.match_cost(track, track + 2.0 * sight) == pytest.approx(2.0 / 3.0)
    assert rule.match_cost(track, track + 1.0 * side) == pytest.approx(0.5)
    assert rule.match_cost(track, track + 1.5 * sight + 1.0 * side) == pytest.approx(np.hypot(0.5, 0.5))
    assert rule.match_cost(track, track + 2.0 * sight, misses=1) == pytest.approx(2.0 / 5.0)  # 2 x 2 + 1
    assert rule.match_cost(np.zeros(3), np.array([0.0, 1.0, 0.0])) == pytest.approx(0.5)  # range 0: a 2 m circle


def test_the_track_gate_grows_with_the_range_of_the_track():
    relative = Confirmation(hits=1, window=1, miss_budget=0, match_distance=2.0, match_relative=0.2)
    fixed = Confirmation(hits=1, window=1, miss_budget=0, match_distance=2.0)
    # far: a track at ~20 m; the next contact 4.5 m nearer is within 2 + 0.2 x 20.06 = 6.0 m, not within 2 m
    far = [[candidate(0, 20)], [candidate(0, 15.5)]]
    assert [ob.id for ob in run(ObstacleTracker(), far, relative)[1].published] == [0]
    assert [ob.id for ob in run(ObstacleTracker(), far, fixed)[1].published] == [1]
    # near: a track at ~5.2 m (3.04 m along the line of sight); a contact 3.5 m nearer starts a new track
    near = [[candidate(0, 5)], [candidate(0, 1.5)]]
    assert [ob.id for ob in run(ObstacleTracker(), near, relative)[1].published] == [1]
    # each track has its own gate: near (4.3 m) and far (30 m, 8.0 m along the line of sight)
    tracker = ObstacleTracker()
    tracker.update([candidate(0, 4), candidate(0, 30)], relative)  # ids 0 (near), 1 (far)
    assert [ob.id for ob in tracker.update([candidate(0, 7.5)], relative).published] == [2]  # 3.5 m: a new track
    tracker = ObstacleTracker()
    tracker.update([candidate(0, 4), candidate(0, 30)], relative)
    assert [ob.id for ob in tracker.update([candidate(0, 25)], relative).published] == [1]  # 5 m from the far one


def test_a_far_track_does_not_take_over_a_blip_across_the_road():
    """The gate grows along the line of sight only: a one-frame blip 8 m to the side of a confirmed far obstacle that
    was just missed starts its own track (not published), instead of continuing the far one's id at once."""
    rule = Confirmation(hits=2, window=3, miss_budget=2, match_distance=3.0, match_relative=0.2)
    steps = run(ObstacleTracker(), [[candidate(0, 40)], [candidate(0, 40)], [], [candidate(8, 38)]], rule)
    assert [[ob.id for ob in s.published] for s in steps] == [[], [0], [], []]


def test_the_gate_along_the_line_of_sight_grows_with_missed_frames():
    """8 m/s at 4 Hz: a static obstacle comes 2 m nearer per frame; after two missed frames it is 6 m nearer, and
    keeps its id (one fixed part of the gate per frame since it was last seen)."""
    rule = Confirmation(hits=2, window=3, miss_budget=2, match_distance=3.0, match_relative=0.2)
    steps = run(ObstacleTracker(), [[candidate(0, 16)], [candidate(0, 14)], [], [], [candidate(0, 8)]], rule)
    assert [[ob.id for ob in s.published] for s in steps] == [[], [0], [], [], [0]]
    assert all(not s.removed_ids for s in steps)
