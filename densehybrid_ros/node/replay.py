"""densehybrid-replay BAG: publish a bag's messages over DDS at the recorded timing x rate (no rosbag2 needed).

Reads rosbag2 (sqlite3/mcap) and ROS 1 bags with rosbags' AnyReader, converts each message to its rclpy class
by field iteration (`densehybrid_ros.node.messages.to_rclpy`, so bags of other distros replay too), and
publishes it at  start + (t - t_first) / rate  (t = the bag's receive time). Header stamps are left as
recorded. Like `ros2 bag play` this is open-loop by default: a subscriber that falls behind, or gets several frames
at once (a stalled process, a reliable sample repaired only at the next heartbeat), drops frames; the perception
node keeps only the newest frame. For deterministic scoring read the bag directly (see docs/ros-notes), or close the
loop: with --answer-topic OUT --answer-for IN, after each message of bag topic IN the replay waits (at most
--answer-timeout s) until a message with the same header stamp arrives on OUT (the node's answer, e.g.
~/semantic) and is paused meanwhile (the recorded spacing resumes after the answer): one frame in flight at a time.

Damaged bags (a recording cut short, flipped bytes) are played as far as they can be read
(densehybrid_ros/bagio.py: the salvage reader goes through the storage file up to the damage); a message that
does not deserialize or convert is skipped and counted. The summary at the end says what was published per topic,
what was lost and, per topic, how many messages were skipped and why.

  densehybrid-replay BAG [--rate R] [--loop] [--clock [HZ]] [--remap OLD:=NEW ...] [--topics T ...]
                         [--delay S] [--wait-for-subscribers S [--min-subscribers N]]
                         [--reliability reliable|best_effort]
                         [--answer-topic OUT --answer-for IN [--answer-timeout S]]

--clock publishes rosgraph_msgs/Clock on /clock with the bag time (before every message and at HZ while
waiting), for nodes run with use_sim_time:=true.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
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


def header_stamp(msg: Any) -> tuple[int, int] | None:
    """(sec, nanosec) of a message's header stamp; None for a message without a header."""
    stamp = getattr(getattr(msg, "header", None), "stamp", None)
    return None if stamp is None else (int(stamp.sec), int(stamp.nanosec))


class Answers:
    """Closed loop (--answer-topic): per header stamp, the messages sent on the answered topic and the answers
    received (counted, so that a --loop pass waits for its own answers to the stamps of the previous pass)."""

    def __init__(self) -> None:
        self.sent: Counter = Counter()
        self.received: Counter = Counter()
        self.answered = self.unanswered = 0

    def receive(self, msg: Any) -> None:
        stamp = header_stamp(msg)
        if stamp is not None:
            self.received[stamp] += 1

    def send(self, stamp: tuple[int, int]) -> None:
        self.sent[stamp] += 1

    def done(self, stamp: tuple[int, int]) -> bool:
        """Every message sent with `stamp` has its answer."""
        return self.received[stamp] >= self.sent[stamp]

    def summary(self, topic: str, timeout: float) -> str:
        text = f"closed loop on {topic}: {self.answered} of {self.answered + self.unanswered} message(s) answered"
        return text + (f", {self.unanswered} not within {timeout} s" if self.unanswered else "")


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
    parser.add_argument("--answer-topic", default=None, metavar="OUT",
                        help="closed loop: after each message of --answer-for, wait until a message with its header "
                             "stamp arrives on OUT (e.g. the node's ~/semantic), paused meanwhile")
    parser.add_argument("--answer-for", default=None, metavar="IN",
                        help="the bag topic (or its --remap target) whose messages --answer-topic answers")
    parser.add_argument("--answer-timeout", type=float, default=10.0, metavar="S",
                        help="closed loop: go on after S s without an answer (counted as unanswered; default 10)")
    return parser


def topic_type(node: Any, topic: str, give_up: float, stop: Any) -> str | None:
    """The type of `topic` once it appears in the ROS graph (None if it has not by `give_up`, monotonic)."""
    while not stop.is_set():
        types = dict(node.get_topic_names_and_types()).get(topic)
        if types:
            return types[0]
        if time.monotonic() >= give_up:
            return None
        time.sleep(0.05)
    return None


def main(argv: list[str] | None = None) -> int:
    own, ros_argv = split_ros_args(list(sys.argv if argv is None else argv))
    args = build_parser().parse_args(own)
    try:
        remaps = parse_remaps(args.remap)
        if not args.rate > 0:
            raise ValueError(f"--rate must be > 0, got {args.rate}")
        if (args.answer_topic is None) != (args.answer_for is None):
            raise ValueError("--answer-topic and --answer-for go together")
        if not args.answer_timeout > 0:
            raise ValueError(f"--answer-timeout must be > 0, got {args.answer_timeout}")
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
    played = {t for t, _ in connections} | {remaps.get(t, t) for t, _ in connections}
    if args.answer_for is not None and args.answer_for not in played:
        log.error(f"--answer-for {args.answer_for}: not a played topic ({', '.join(sorted(played))})")
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
    answers, answer_sub, answer_topic = None, None, ""
    if args.answer_topic is not None:
        answer_topic = node.resolve_topic_name(args.answer_topic)
        msgtype = topic_type(node, answer_topic, time.monotonic() + max(args.wait_for_subscribers, args.answer_timeout),
                             stop)
        try:
            if msgtype is None:
                raise ValueError("it never appeared in the ROS graph")
            answer_cls = message_class(msgtype)
        except ValueError as error:
            if not stop.is_set():
                log.error(f"--answer-topic {answer_topic}: {error}")
            reader.close()
            node.destroy_node()
            rclpy.try_shutdown()
            return 0 if stop.is_set() else 2
        offered = node.get_publishers_info_by_topic(answer_topic)
        reliable = bool(offered) and all(p.qos_profile.reliability == ReliabilityPolicy.RELIABLE for p in offered)
        answers = Answers()
        answer_sub = node.create_subscription(
            answer_cls, answer_topic, answers.receive,
            QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, durability=DurabilityPolicy.VOLATILE,
                       reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT))
    if args.wait_for_subscribers > 0:
        waited = dict(publishers, **({"/clock": clock_pub} if clock_pub is not None else {}))
        give_up = time.monotonic() + args.wait_for_subscribers

        def ready() -> bool:  # every topic has its subscribers, and the answer topic's publisher is matched
            return (all(p.get_subscription_count() >= args.min_subscribers for p in waited.values())
                    and (answer_sub is None or answer_sub.get_publisher_count() >= 1))

        while not stop.is_set() and time.monotonic() < give_up and not ready():
            time.sleep(0.05)
        missing = [t for t, p in waited.items() if p.get_subscription_count() < args.min_subscribers]
        if missing:
            log.warning(f"playing without subscribers on {missing}")
        if answer_sub is not None and answer_sub.get_publisher_count() < 1:
            log.warning(f"playing without a publisher of the answer topic {answer_topic}")

    def await_answer(msg: Any) -> float:
        """Closed loop: spin until `msg` is answered (or --answer-timeout, or a stop); the seconds waited."""
        stamp = header_stamp(msg)
        if stamp is None:
            return 0.0
        answers.send(stamp)
        began = time.monotonic()
        give_up = began + args.answer_timeout
        while not stop.is_set() and not answers.done(stamp) and time.monotonic() < give_up:
            rclpy.spin_once(node, timeout_sec=0.02)
        if answers.done(stamp):
            answers.answered += 1
        elif not stop.is_set():
            answers.unanswered += 1
            log.warning(f"no answer on {answer_topic} to stamp {stamp[0]}.{stamp[1]:09d} within "
                        f"{args.answer_timeout} s; going on", throttle_duration_sec=5.0)
        return time.monotonic() - began
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
                if answers is not None and args.answer_for in (raw.topic, remaps.get(raw.topic)):
                    start += await_answer(msg)  # paused while waiting: the recorded spacing resumes after the answer
            loops += 1
            if not args.loop:
                break
    finally:
        log.info(f"published {published} message(s) in {loops} pass(es)"
                 + (": " + ", ".join(f"{t}: {n}" for t, n in sorted(per_topic.items())) if per_topic else ""))
        for line in summary_lines(reader):
            (log.warning if reader.report.damaged else log.info)(line)
        if answers is not None:
            (log.warning if answers.unanswered else log.info)(answers.summary(answer_topic, args.answer_timeout))
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
