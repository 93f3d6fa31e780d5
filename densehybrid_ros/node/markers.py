"""Obstacle messages: visualization_msgs/MarkerArray (boxes and labels), sensor_msgs/PointCloud2 (obstacle points)
and nav_msgs/OccupancyGrid (the ground grid), stamped like the image they come from."""
from __future__ import annotations

import array
from typing import Any, Iterable

from nav_msgs.msg import OccupancyGrid
from rclpy.duration import Duration
from sensor_msgs.msg import PointCloud2, PointField
from visualization_msgs.msg import Marker, MarkerArray

from densehybrid_ros.perception.obstacles import Obstacle
from densehybrid_ros.perception.planner_outputs import ObstaclePoints, encode_points
from densehybrid_ros.perception.pipeline import GroundGrid

NAMESPACES = ("obstacles", "obstacle_labels")  # box (CUBE) and label (TEXT_VIEW_FACING) of each obstacle


def obstacle_markers(header: Any, obstacles: list[Obstacle], lifetime: float, gone: Iterable[int] = ()) -> MarkerArray:
    """A CUBE ("obstacles") and a TEXT_VIEW_FACING ("obstacle_labels", "#id score distance") per obstacle, marker id =
    obstacle id, living `lifetime` s (0 = until deleted); then DELETE markers for the ids in `gone`."""
    out = MarkerArray()
    life = Duration(nanoseconds=round(lifetime * 1e9)).to_msg()
    for ob in obstacles:
        for ns in NAMESPACES:
            m = Marker()
            m.header.stamp, m.header.frame_id = header.stamp, header.frame_id
            m.ns, m.id, m.action = ns, ob.id, Marker.ADD
            m.lifetime = life
            if ns == "obstacles":
                m.type = Marker.CUBE
                m.pose.position.x, m.pose.position.y, m.pose.position.z = (float(v) for v in ob.center)
                (m.pose.orientation.x, m.pose.orientation.y, m.pose.orientation.z,
                 m.pose.orientation.w) = (float(v) for v in ob.orientation)
                m.scale.x, m.scale.y, m.scale.z = (float(v) for v in ob.size)
                m.color.r, m.color.g, m.color.b, m.color.a = 0.0, 1.0, 1.0, 0.5
            else:
                m.type = Marker.TEXT_VIEW_FACING
                top = ob.center + ob.up * (ob.size[1] / 2 + 0.3)
                m.pose.position.x, m.pose.position.y, m.pose.position.z = (float(v) for v in top)
                m.pose.orientation.w = 1.0
                m.scale.z = 0.4
                m.color.r = m.color.g = m.color.b = m.color.a = 1.0
                m.text = f"#{ob.id} score {ob.component.mean_score:.2f} | {ob.distance:.1f} m"
            out.markers.append(m)
    out.markers.extend(marker_deletes(gone).markers)
    return out


def marker_deletes(ids: Iterable[int]) -> MarkerArray:
    """DELETE markers of both namespaces for each id (ascending), never DELETEALL."""
    out = MarkerArray()
    for marker_id in sorted(ids):
        for ns in NAMESPACES:
            m = Marker()
            m.ns, m.id, m.action = ns, marker_id, Marker.DELETE
            out.markers.append(m)
    return out


def pointcloud_msg(header: Any, points: ObstaclePoints) -> PointCloud2:
    """sensor_msgs/PointCloud2 of the obstacle points (`planner_outputs.encode_points` layout), with `header`."""
    fields, step, data = encode_points(points)
    msg = PointCloud2(height=1, width=len(points), is_bigendian=False, point_step=step, row_step=step * len(points),
                      is_dense=True)
    msg.header.stamp, msg.header.frame_id = header.stamp, header.frame_id
    msg.fields = [PointField(name=name, offset=offset, datatype=datatype, count=1) for name, offset, datatype in fields]
    payload = array.array("B")
    payload.frombytes(data)
    msg.data = payload
    return msg


def grid_msg(header: Any, frame_id: str, grid: GroundGrid) -> OccupancyGrid:
    """nav_msgs/OccupancyGrid of a ground grid (row-major from cell (0, 0)) in `frame_id`, stamped like the image."""
    msg = OccupancyGrid()
    msg.header.stamp, msg.header.frame_id = header.stamp, frame_id
    msg.info.map_load_time = header.stamp
    msg.info.resolution = float(grid.spec.resolution)
    msg.info.height, msg.info.width = (int(n) for n in grid.cells.shape)
    msg.info.origin.position.x, msg.info.origin.position.y = (float(v) for v in grid.spec.origin)
    msg.info.origin.orientation.w = 1.0
    cells = array.array("b")
    cells.frombytes(grid.cells.astype("int8", copy=False).tobytes())
    msg.data = cells
    return msg
