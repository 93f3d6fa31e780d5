"""The demo's printed obstacle rows, on hand-built obstacle results."""
from __future__ import annotations

from densehybrid_ros.tools.demo import near_detection


def _bins(*rows):
    return {"detection_by_distance": [{"lower": lo, "upper": hi, "eligible": e, "detected": d}
                                      for lo, hi, e, d in rows]}


def test_near_detection_pools_the_bins_within_30_m():
    obstacles = _bins((0, 10, 13, 12), (10, 20, 27, 20), (20, 30, 14, 7), (30, 50, 13, 1), (50, None, 2, 0))
    assert near_detection(obstacles) == f"{39 / 54:.3f} (39/54)"
    assert near_detection(obstacles, within=10) == f"{12 / 13:.3f} (12/13)"


def test_near_detection_without_eligible_boxes_is_a_dash():
    assert near_detection(_bins((0, 10, 0, 0), (30, 50, 5, 1))) == "-"
    assert near_detection({}) == "-"
