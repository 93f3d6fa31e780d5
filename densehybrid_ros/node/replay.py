"""densehybrid-replay BAG: publish a bag's messages over DDS at the recorded timing x rate (no rosbag2 needed).

Reads rosbag2 (sqlite3/mcap) and ROS 1 bags with rosbags' AnyReader, converts each message to its rclpy class
by field iteration (`densehybrid_ros.node.messages.to_rclpy`, so bags of other distros replay too), and
publishes it at  start + (t - t_first) / rate  (t = the bag's receive time). Header stamps are left as
recorded. Like `ros2 bag play` this is open-loop: a slow subscriber drops frames; for deterministic scoring
read the bag directly (see docs/ros-notes).

Damaged bags (a recording cut short, flipped bytes) are played as far as they can be read
(densehybrid_ros/bagio.py: the salvage reader goes through the storage file up to the damage); a message that
does not deserialize or convert is skipped and counted. The summary at the end says what was published per topic,
what was lost and, per topic, how many messages were skipped and why.

  densehybrid-replay BAG [--rate R] [--loop] [--clock [HZ]] [--remap OLD:=NEW ...] [--topics T ...]
                         [--delay S] [--wait-for-subscribers S [--min-subscribers N]]
                         [--reliability reliable|best_effort]

--clock publishes rosgraph_msgs/Clock on /clock with the bag time (before every message and at HZ while
waiting), for nodes run with use_sim_time:=true.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import rclpy
from rclpy.duration import Duration
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock

from densehybrid_ros.bagio import BagReader, RawMessage
from densehybrid_ros.node.dds import init_ros_process
from densehybrid_ros.node.messages import message_class, to_rclpy


ACK_TIMEOUT_S = 10.0  # at the end: how long to wait for the subscribers to acknowledge the last reliable samples


def parse_remaps(remaps: Iterable[str]) -> dict[str, str]:
    """'OLD:=NEW' strings -> {OLD: NEW}; ValueError naming the bad one."""
    out = {}
    for remap in remaps:
        old, sep, new = remap.partition(":=")
        if not sep or not old or not new:
            raise ValueError(f"--remap expects OLD:=NEW, got {remap!r}")
        out[old] = new
    return out


def split_ros_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(our arguments, argv for rclpy.init): everything from the first --ros-args on goes to rclpy only, so
    that our OLD:=NEW values are not taken for (deprecated-syntax) ROS remaps."""
    if "--ros-args" in argv:
        i = argv.index("--ros-args")
        return argv[1:i], [argv[0], *argv[i:]]
    return argv[1:], argv[:1]


def play_offset(t_ns: int, first_ns: int, rate: float) -> float:
    """Seconds after the start of a pass at which the message recorded at `t_ns` is published."""
    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    return (t_ns - first_ns) / 1e9 / rate


def convert(reader: BagReader, raw: RawMessage, cls: type) -> Any | None:
    """The rclpy message of a bag message, or None (counted under its topic) when it does not deserialize or
    convert."""
    msg = reader.decode(raw)
    if msg is None:
        return None
    try:
        return to_rclpy(msg, cls)
    except Exception as error:  # noqa: BLE001  (a damaged message: skipped and counted, never fatal)
        reader.reject(raw.topic, f"cannot convert to {raw.msgtype}: {type(error).__name__}: {error}")
        return None


def summary_lines(reader: BagReader) -> list[str]:
    """How the bag was read and, per topic, the messages read and skipped in the last pass."""
    lines = reader.report.lines()
    skipped = sum(t.skipped for t in reader.report.topics.values())
    lines.append(f"skipped {skipped} damaged message(s) in the last pass" if skipped else "no message skipped")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="densehybrid-replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("bag", type=Path, help="rosbag2 directory (sqlite3 or mcap) or ROS 1 .bag")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1)")
    parser.add_argument("--loop", action="store_true", help="play again from the start at the end")
    parser.add_argument("--clock", type=float, nargs="?", const=100.0, default=None, metavar="HZ",
                        help="publish /clock (rosgraph_msgs/Clock) with the bag time, at HZ while waiting (default 100)")
    parser.add_argument("--remap", action="append", default=[], metavar="OLD:=NEW", help="publish topic OLD as NEW")
    parser.add_argument("--topics", nargs="+", default=None, help="play only these bag topics")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before playing (discovery)")
    parser.add_argument("--wait-for-subscribers", type=float, default=0.0, metavar="S",
                        help="wait up to S seconds until every topic (and /clock) has --min-subscribers subscribers")
    parser.add_argument("--min-subscribers", type=int, default=1, metavar="N",
                        help="subscribers per topic that --wait-for-subscribers waits for (default 1)")
    parser.add_argument("--reliability", choices=("reliable", "best_effort"), default="reliable",
                        help="publisher reliability (reliable serves both kinds of subscribers)")
    parser.add_argument("--depth", type=int, default=10, help="publisher history depth")
    return parser


def main(argv: list[str] | None = None) -> int:
    own, ros_argv = split_ros_args(list(sys.argv if argv is None else argv))
    args = build_parser().parse_args(own)
    try:
        remaps = parse_remaps(args.remap)
        if not args.rate > 0:
            raise ValueError(f"--rate must be > 0, got {args.rate}")
        reader = BagReader(args.bag)
    except Exception as error:  # noqa: BLE001  (BagError names the bag and why; OSError)
        print(f"densehybrid-replay: {error}", file=sys.stderr)
        return 2
    stop = init_ros_process(ros_argv)
    node = rclpy.create_node("densehybrid_replay")
    log = node.get_logger()
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=args.depth, durability=DurabilityPolicy.VOLATILE,
                     reliability=ReliabilityPolicy.RELIABLE if args.reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT)
    connections, publishers, classes = set(), {}, {}
    for bag_topic, msgtype in reader.connections:
        if args.topics is not None and bag_topic not in args.topics:
            continue
        try:
            classes[msgtype] = message_class(msgtype)
        except ValueError as error:
            log.warning(f"skipping {bag_topic}: {error}")
            continue
        topic = remaps.get(bag_topic, bag_topic)
        if topic not in publishers:
            publishers[topic] = node.create_publisher(classes[msgtype], topic, qos)
        connections.add((bag_topic, msgtype))
    if reader.report.damaged:
        for line in reader.report.lines()[:1] + [f"  damage: {d}" for d in reader.report.damage]:
            log.warning(line)
    if not connections:
        log.error(f"no playable topics in {args.bag}")
        reader.close()
        node.destroy_node()
        rclpy.try_shutdown()
        return 2
    clock_pub = None
    if args.clock is not None:
        clock_pub = node.create_publisher(Clock, "/clock", 10)

    def publish_clock(t_ns: int) -> None:
        if clock_pub is not None:
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = divmod(t_ns, 1_000_000_000)
            clock_pub.publish(msg)

    def wait_until(deadline: float, bag_time_at_deadline: int | None = None) -> None:
        """Sleep until `deadline` (monotonic) or a stop; with --clock, publish the bag time (advancing with the
        wall clock x rate towards `bag_time_at_deadline`) at HZ meanwhile."""
        period = 1.0 / args.clock if args.clock else 0.05
        while not stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                return
            if bag_time_at_deadline is not None:
                publish_clock(bag_time_at_deadline - int((deadline - now) * args.rate * 1e9))
            time.sleep(min(period, deadline - now))

    if args.delay > 0:
        wait_until(time.monotonic() + args.delay)
    if args.wait_for_subscribers > 0:
        waited = dict(publishers, **({"/clock": clock_pub} if clock_pub is not None else {}))
        give_up = time.monotonic() + args.wait_for_subscribers
        while not stop.is_set() and time.monotonic() < give_up and not all(
                p.get_subscription_count() >= args.min_subscribers for p in waited.values()):
            time.sleep(0.05)
        missing = [t for t, p in waited.items() if p.get_subscription_count() < args.min_subscribers]
        if missing:
            log.warning(f"playing without subscribers on {missing}")
    topics = sorted(publishers)
    log.info(f"playing {args.bag} ({len(connections)} topic(s): {', '.join(topics)}) at rate {args.rate}"
             + (" in a loop" if args.loop else ""))
    published, per_topic, loops = 0, {}, 0
    try:
        while not stop.is_set():
            start, first = time.monotonic(), None
            for raw in reader.messages({topic for topic, _ in connections}):
                if stop.is_set():
                    break
                if (raw.topic, raw.msgtype) not in connections:
                    continue
                t_ns = raw.receive_ns
                first = t_ns if first is None else first
                msg = convert(reader, raw, classes[raw.msgtype])
                if msg is None:
                    continue
                wait_until(start + play_offset(t_ns, first, args.rate), t_ns if first != t_ns else None)
                if stop.is_set():
                    break
                publish_clock(t_ns)
                publishers[remaps.get(raw.topic, raw.topic)].publish(msg)
                published += 1
                per_topic[raw.topic] = per_topic.get(raw.topic, 0) + 1
            loops += 1
            if not args.loop:
                break
    finally:
        log.info(f"published {published} message(s) in {loops} pass(es)"
                 + (": " + ", ".join(f"{t}: {n}" for t, n in sorted(per_topic.items())) if per_topic else ""))
        for line in summary_lines(reader):
            (log.warning if reader.report.damaged else log.info)(line)
        # let reliable writers deliver their last samples (acknowledged by every matched reader, ACK_TIMEOUT_S at
        # most) before the participant goes away; best-effort ones get half a second
        for publisher in [*publishers.values(), *([clock_pub] if clock_pub is not None else [])]:
            publisher.wait_for_all_acked(Duration(seconds=ACK_TIMEOUT_S))
        wait_until(time.monotonic() + 0.5)
        reader.close()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
