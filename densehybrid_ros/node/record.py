"""densehybrid-record --out BAG --topics T ...: record DDS topics into a rosbag2 bag with rosbags (no rosbag2 needed).

Each topic is subscribed as soon as it appears in the ROS graph (its type is taken from the graph), with
`raw=True`: the callback receives the serialized CDR bytes exactly as on the wire (what
`rclpy.serialization.serialize_message` would produce for the deserialized message, without the round trip),
and they are written unchanged with the receive time (node clock: sim time under use_sim_time). The
connection's message definition and type hash come from the rosbags typestore (ROS 2 Kilted by default), so
the bag reads back with rosbags (`AnyReader`) and with rosbag2.

QoS: reliable when every publisher of the topic offers reliable, best effort otherwise (a best-effort
subscription still receives from reliable publishers), volatile, depth --depth.
SIGINT/SIGTERM (or --duration) stop the recording; the bag is closed properly (metadata.yaml written).
--status-period S logs the per-topic counts ("recorded so far: /t: n, ...") every S s while they change, so that a
caller can wait until everything it expects has been written before it stops the recorder (`recorded_counts`).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import rclpy
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from densehybrid_ros.node.dds import init_ros_process
from densehybrid_ros.node.messages import message_class
from densehybrid_ros.node.replay import split_ros_args

TYPESTORES = {"humble": Stores.ROS2_HUMBLE, "jazzy": Stores.ROS2_JAZZY, "kilted": Stores.ROS2_KILTED}
STATUS_PREFIX = "recorded so far: "
_COUNT_RE = re.compile(r"(\S+): (\d+)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="densehybrid-record", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="bag directory to create (must not exist)")
    parser.add_argument("--topics", nargs="+", required=True, help="topics to record")
    parser.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3", help="storage plugin")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = until SIGINT)")
    parser.add_argument("--depth", type=int, default=100, help="subscription history depth")
    parser.add_argument("--distro", choices=sorted(TYPESTORES), default="kilted",
                        help="typestore for the message definitions stored in the bag")
    parser.add_argument("--status-period", type=float, default=0.0, metavar="S",
                        help="log the per-topic counts every S s while they change (0 = only at the end)")
    return parser


def format_counts(counts: dict[str, int]) -> str:
    """'/t: n, /u: m' (the form `recorded_counts` parses)."""
    return ", ".join(f"{t}: {n}" for t, n in counts.items())


def recorded_counts(log_text: str) -> dict[str, int]:
    """Topic -> messages written, from the last --status-period line of a densehybrid-record log ({} if none yet)."""
    lines = [line for line in log_text.splitlines() if STATUS_PREFIX in line]
    if not lines:
        return {}
    return {topic: int(n) for topic, n in _COUNT_RE.findall(lines[-1].split(STATUS_PREFIX, 1)[1])}


class Recorder:
    def __init__(self, node, writer: Writer, topics: list[str], typestore, depth: int):
        self.node, self.writer, self.typestore, self.depth = node, writer, typestore, depth
        self.pending = [node.resolve_topic_name(t) for t in topics]
        self.subscriptions, self.counts = {}, {}
        self.log = node.get_logger()

    def poll(self) -> None:
        """Subscribe to the pending topics that have appeared in the graph."""
        if not self.pending:
            return
        known = dict(self.node.get_topic_names_and_types())
        for topic in list(self.pending):
            types = known.get(topic)
            if not types:
                continue
            self.pending.remove(topic)
            msgtype = types[0]
            if len(types) > 1:
                self.log.warning(f"{topic} has several types {types}; recording {msgtype}")
            try:
                cls = message_class(msgtype)
                connection = self.writer.add_connection(topic, msgtype, typestore=self.typestore)
            except Exception as error:  # noqa: BLE001  (unknown type: skip that topic, keep the others)
                self.log.error(f"cannot record {topic} ({msgtype}): {error}")
                continue
            publishers = self.node.get_publishers_info_by_topic(topic)
            reliable = bool(publishers) and all(
                p.qos_profile.reliability == ReliabilityPolicy.RELIABLE for p in publishers)
            qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self.depth, durability=DurabilityPolicy.VOLATILE,
                             reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
            self.counts[topic] = 0
            self.subscriptions[topic] = self.node.create_subscription(
                cls, topic, lambda raw, c=connection, t=topic: self._write(c, t, raw), qos, raw=True)
            self.log.info(f"recording {topic} ({msgtype}, {'reliable' if reliable else 'best effort'})")

    def _write(self, connection, topic: str, raw: bytes) -> None:
        self.writer.write(connection, self.node.get_clock().now().nanoseconds, raw)
        self.counts[topic] += 1


def main(argv: list[str] | None = None) -> int:
    own, ros_argv = split_ros_args(list(sys.argv if argv is None else argv))
    args = build_parser().parse_args(own)
    if args.out.exists():
        print(f"densehybrid-record: {args.out} exists already; not overwriting", file=sys.stderr)
        return 2
    stop = init_ros_process(ros_argv)
    node = rclpy.create_node("densehybrid_record")
    storage = StoragePlugin.MCAP if args.storage == "mcap" else StoragePlugin.SQLITE3
    writer = Writer(args.out, version=Writer.VERSION_LATEST, storage_plugin=storage)
    writer.open()
    recorder = Recorder(node, writer, args.topics, get_typestore(TYPESTORES[args.distro]), args.depth)
    node.get_logger().info(f"writing {args.out} ({args.storage}); waiting for {', '.join(recorder.pending)}")
    end = time.monotonic() + args.duration if args.duration > 0 else float("inf")
    last_poll = last_status = 0.0
    reported: dict[str, int] | None = None
    try:
        while not stop.is_set() and time.monotonic() < end and rclpy.ok():
            now = time.monotonic()
            if now - last_poll > 0.1:
                recorder.poll()
                last_poll = now
            if args.status_period > 0 and now - last_status >= args.status_period and recorder.counts != reported:
                reported, last_status = dict(recorder.counts), now
                node.get_logger().info(STATUS_PREFIX + format_counts(reported))
            rclpy.spin_once(node, timeout_sec=0.05)
    finally:
        for sub in recorder.subscriptions.values():
            node.destroy_subscription(sub)
        writer.close()
        summary = format_counts(recorder.counts) or "nothing"
        node.get_logger().info(f"closed {args.out}: {summary}")
        if recorder.pending:
            node.get_logger().warning(f"never appeared: {', '.join(recorder.pending)}")
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
