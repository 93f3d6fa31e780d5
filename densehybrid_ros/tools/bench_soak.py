"""`densehybrid-bench soak`: the perception node under a long camera-rate load, its memory and its frame accounting.

    densehybrid-bench soak --minutes N [--weights W] [--bag BAG] [--rate HZ] [--frames MAX] [--sample-period S]
                           [--settle-minutes M] [--outputs O ...] [--logs DIR] [--json] [--out FILE]

1. bag      `--bag BAG`, else a sim driving bag written with `densehybrid-sim bag` in a temporary directory (test-pool
            anomalies, seed 7, `--bag-frames` frames at `--size`, at `--rate` Hz or 10). Its image messages (and the
            CameraInfo of each) are held in memory; the camera mount comes from its /tf when it has one.
2. node     the perception node as its own process (`densehybrid_ros.tools.harness.Child`, the demo's node parameters:
            reliable input QoS with depth 10, so that no frame is lost in transport) in namespace /soak of an
            isolated DDS domain, with the bundled model by default.
3. warm-up  frames are sent one at a time until one is answered (the node has matched this process's output
            subscriptions and run its warm-up forward), then the node's /diagnostics totals are taken as the baseline
            once every warm-up frame is settled. Nothing of the warm-up is counted below.
4. soak     the bag's frames are published in a loop at `--rate` Hz (default: the bag's rate) on an absolute schedule,
            each freshly stamped (unique stamps; the node's latency is meaningful), for `--minutes` (or `--frames`);
            the node's resident memory (VmRSS of /proc/PID/status) is sampled every `--sample-period` s.
5. drain    after the last frame, wait (at most `--drain-timeout` s) until the node has received every frame and
            processed, dropped, rejected or failed each, and its outputs have arrived here; then the final totals.

Counted (the node's counters are its /diagnostics totals minus the baseline):
  sent        frames published here;
  answered    frames whose every subscribed image output (semantic, anomaly_score, open_set, ...) arrived here with the
              frame's stamp;
  dropped     the node's newest-frame policy: a frame replaced in its one-slot mailbox before the worker took it;
  unaccounted sent - answered - dropped (0 when the node behaves: every frame answered or counted as dropped);
  errors      frames that failed in the node + frames it rejected (decode errors) + 1 if the node exited during the soak;
              reported with the /diagnostics ERROR reports and the node log's [ERROR] lines.
RSS: the time series, and its growth after the first `--settle-minutes` (default 5): max RSS after that minute vs
the RSS sampled at it, in percent, and the least-squares slope after it in MiB/min (both null when the run is
shorter; `--settle-minutes` moves that minute for short runs).
Acceptance (issue 16): a 60-minute soak with growth <= 5%, no errors, unaccounted 0. No timing is judged here.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NAMESPACE = "/soak"
NODE = f"{NAMESPACE}/densehybrid_perception"
DEFAULT_OUTPUTS = ("semantic", "semantic_color", "anomaly_score", "open_set", "overlay", "obstacles",
                   "obstacle_points", "obstacle_grid")  # everything the node computes: every code path soaks
DEFAULT_BAG_RATE = 10.0
DEFAULT_BAG_FRAMES = 100
BAG_SEED = 7
IMAGE_TOPIC = "/camera/image_raw"  # the sim bag's
INFO_TOPIC = "/camera/camera_info"
STARTUP_TIMEOUT_S = 180.0
WARMUP_TRY_S = 10.0
MAX_GROWTH_PCT = 5.0
COUNTERS = ("received", "processed", "dropped", "rejected", "errors", "idle")
SETTLING = ("processed", "dropped", "rejected", "errors", "idle")  # every received frame ends in one of these


class SoakError(RuntimeError):
    """The soak could not run (no bag frames, the node did not start or died); the text says why."""


@dataclass(frozen=True)
class SoakConfig:
    minutes: float
    weights: Path
    bag: Path | None = None  # None: a sim bag written in a temporary directory
    rate: float | None = None  # None: the bag's rate
    max_frames: int | None = None
    sample_period: float = 10.0
    settle_minutes: float = 5.0
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    bag_frames: int = DEFAULT_BAG_FRAMES
    size: tuple[int, int] = (512, 256)  # (width, height) of the sim bag
    image_topic: str = IMAGE_TOPIC
    info_topic: str = INFO_TOPIC
    drain_timeout: float = 60.0
    logs: Path | None = None  # None: a temporary directory (gone afterwards)

    def validate(self) -> None:
        if not self.minutes > 0 or not self.sample_period > 0 or self.settle_minutes < 0 or not self.drain_timeout > 0:
            raise ValueError("--minutes, --sample-period and --drain-timeout must be > 0, --settle-minutes >= 0")
        if self.rate is not None and not 0 < self.rate <= 1000:
            raise ValueError(f"--rate must be in (0, 1000] Hz, got {self.rate}")
        if (self.max_frames is not None and self.max_frames < 1) or self.bag_frames < 2:
            raise ValueError("--frames must be >= 1 and --bag-frames >= 2")


# ------------------------------------------------------------------ the bag
def write_sim_bag(path: Path, frames: int, rate: float, size: tuple[int, int]) -> Path:
    """`densehybrid-sim bag` (test pool, seed BAG_SEED) into `path`, as its own process (pybullet stays out of this
    one); its output is kept off stdout (which may carry the JSON) and shown when it fails."""
    argv = ["bag", "--out", str(path), "--frames", str(frames), "--rate", repr(rate), "--seed", str(BAG_SEED),
            "--size", f"{size[0]}x{size[1]}"]
    done = subprocess.run([sys.executable, "-m", "densehybrid_ros.sim", *argv], capture_output=True, text=True)
    if done.returncode != 0:
        raise SoakError(f"densehybrid-sim {' '.join(argv)} failed with status {done.returncode}:\n"
                        f"{(done.stdout + done.stderr)[-2000:]}")
    return path


@dataclass
class BagFrames:
    """The bag's camera frames as rclpy messages: images with the CameraInfo of the same stamp (else the latest)."""

    images: list[Any]
    infos: list[Any | None]
    rate: float  # frames per second of the recording
    skipped: int = 0  # messages that did not decode (bagio's count)


def load_frames(bag: Path, image_topic: str, info_topic: str) -> BagFrames:
    """Read `image_topic` and `info_topic` of `bag` (densehybrid-replay's reader and conversion)."""
    from densehybrid_ros.bagio import BagReader
    from densehybrid_ros.node.messages import message_class
    from densehybrid_ros.perception.image_codec import stamp_ns
    from densehybrid_ros.node.replay import convert

    with BagReader(bag) as reader:
        types = dict(reader.connections)
        if image_topic not in types:
            raise SoakError(f"{bag} has no topic {image_topic} (topics: {', '.join(sorted(types))})")
        wanted = {image_topic} | ({info_topic} if info_topic in types else set())
        images, times, infos_by_stamp, latest, infos = [], [], {}, None, []
        for raw in reader.messages(wanted):
            msg = convert(reader, raw, message_class(raw.msgtype))
            if msg is None:
                continue
            if raw.topic == info_topic:
                infos_by_stamp[stamp_ns(msg.header.stamp)] = latest = msg
            else:
                images.append(msg)
                times.append(raw.receive_ns)
                infos.append(latest)
        skipped = sum(t.skipped for t in reader.report.topics.values())
    if len(images) < 2:
        raise SoakError(f"{bag} has {len(images)} readable message(s) on {image_topic}: need at least 2")
    infos = [infos_by_stamp.get(stamp_ns(m.header.stamp), info) for m, info in zip(images, infos)]
    span_s = (times[-1] - times[0]) / 1e9
    rate = (len(images) - 1) / span_s if span_s > 0 else DEFAULT_BAG_RATE
    return BagFrames(images, infos, rate, skipped)


def bag_mount_or_none(bag: Path) -> dict | None:
    """The camera mount of the bag's /tf (the demo's reading), or None: the node then uses its default mount."""
    from densehybrid_ros.tools.demo import bag_mount

    try:
        return bag_mount(bag)
    except Exception:  # noqa: BLE001  (a bag without /tf or labels: not an error for a soak)
        return None


# ------------------------------------------------------------------ memory
def read_rss_mib(pid: int) -> float | None:
    """Resident set size of process `pid` (VmRSS of /proc/PID/status) in MiB; None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def _slope_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (t [s], rss [MiB]) in MiB per minute; None with fewer than two times."""
    if len({t for t, _ in points}) < 2:
        return None
    n = len(points)
    mt, mr = sum(t for t, _ in points) / n, sum(r for _, r in points) / n
    cov = sum((t - mt) * (r - mr) for t, r in points)
    var = sum((t - mt) ** 2 for t, _ in points)
    return 60.0 * cov / var


def rss_summary(samples: list[tuple[float, float]], settle_s: float) -> dict:
    """Growth figures of the RSS series `samples` [(t [s] since the soak started, rss [MiB])]:
    growth_pct = max vs the first sample (the first minutes hold the allocator's warm-up: read it with care);
    growth_after_settle_pct = max of the samples at t >= settle_s vs the first of them ("RSS at minute 5") and the
    least-squares slope over those samples, None when the run did not reach settle_s."""
    if not samples:
        return {"samples": 0, "first_mib": None, "last_mib": None, "max_mib": None, "growth_pct": None,
                "settle_s": settle_s, "at_settle_mib": None, "max_after_settle_mib": None,
                "growth_after_settle_pct": None, "slope_after_settle_mib_per_min": None}
    first, values = samples[0][1], [r for _, r in samples]
    after = [(t, r) for t, r in samples if t >= settle_s]
    at_settle = after[0][1] if after else None
    max_after = max(r for _, r in after) if after else None
    return {
        "samples": len(samples), "first_mib": round(first, 2), "last_mib": round(values[-1], 2),
        "max_mib": round(max(values), 2), "growth_pct": round(100.0 * (max(values) - first) / first, 3),
        "settle_s": settle_s, "at_settle_mib": None if at_settle is None else round(at_settle, 2),
        "max_after_settle_mib": None if max_after is None else round(max_after, 2),
        "growth_after_settle_pct": None if at_settle is None else round(100.0 * (max_after - at_settle) / at_settle, 3),
        "slope_after_settle_mib_per_min": _round(_slope_per_min(after), 4),
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


# ------------------------------------------------------------------ counters
def node_totals(values: dict[str, str]) -> dict[str, int]:
    """The node's running totals from one /diagnostics status (diagnostics.FrameStats.report's keys)."""
    keys = {name: f"{name} (total)" for name in COUNTERS} | {"idle": "idle, no subscribers (total)"}
    return {name: int(values.get(key, 0)) for name, key in keys.items()}


def delta(totals: dict[str, int], base: dict[str, int]) -> dict[str, int]:
    return {k: totals[k] - base[k] for k in COUNTERS}


def settled(counts: dict[str, int], sent: int) -> bool:
    """The node received all `sent` frames and each ended processed, dropped, rejected, failed or idle."""
    return counts["received"] >= sent and sum(counts[k] for k in SETTLING) >= counts["received"]


# ------------------------------------------------------------------ this process on DDS
class SoakLink:
    """Publishers of the node's inputs and subscribers of its outputs and /diagnostics, on the demo's `Watcher` node
    (a private rclpy context spun in a thread). Answers are tracked by stamp (`bench_node.Answers`)."""

    def __init__(self, watcher: Any, outputs: tuple[str, ...], answer_outputs: tuple[str, ...]):
        from diagnostic_msgs.msg import DiagnosticArray
        from nav_msgs.msg import OccupancyGrid
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2
        from visualization_msgs.msg import MarkerArray

        from densehybrid_ros.tools.bench_node import Answers

        node = self.node = watcher.node
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.image_pub = node.create_publisher(Image, f"{NAMESPACE}/image", reliable)
        self.info_pub = node.create_publisher(CameraInfo, f"{NAMESPACE}/camera_info", reliable)
        self.topics = {o: f"{NODE}/{o}" for o in outputs}
        self.answers = Answers([self.topics[o] for o in answer_outputs])
        self.messages = dict.fromkeys(self.topics.values(), 0)
        self.error_reports, self.last_error_message = 0, ""
        self._last_stamp_ns = 0
        kinds = {"obstacles": MarkerArray, "obstacle_points": PointCloud2, "obstacle_grid": OccupancyGrid}
        for o, topic in self.topics.items():
            node.create_subscription(kinds.get(o, Image), topic, lambda m, t=topic: self._output(t, m), reliable)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._diagnostics, 10)

    def _output(self, topic: str, msg: Any) -> None:
        self.messages[topic] += 1
        self.answers.output(topic, msg)  # counts toward an answer when it is one of answer_outputs

    def _diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if status.name.startswith(f"{NODE}:"):
                level = status.level[0] if isinstance(status.level, (bytes, bytearray)) else int(status.level)
                if level == 2:  # diagnostic_msgs ERROR
                    self.error_reports += 1
                    self.last_error_message = status.message
                self.answers.diagnostic({kv.key: kv.value for kv in status.values})

    def totals(self) -> dict[str, int] | None:
        values = self.answers.latest_diagnostics()
        return node_totals(values) if values else None

    def reports(self) -> int:
        return self.answers.diagnostics_count

    def answered_since(self, stamp: tuple[int, int]) -> int:
        """Frames answered with a stamp at or after `stamp` (the soak's first)."""
        return self.answers.answered_since(stamp)

    def ready(self) -> bool:
        """The node subscribes to the image and publishes every output this process listens to."""
        return self.image_pub.get_subscription_count() > 0 and all(
            self.node.count_publishers(t) > 0 for t in self.topics.values())

    def send(self, image: Any, info: Any | None) -> tuple[int, int]:
        """Publish `info` (if any) and `image` with a fresh stamp (strictly increasing); the stamp."""
        now = max(self.node.get_clock().now().nanoseconds, self._last_stamp_ns + 1)
        self._last_stamp_ns = now
        sec, nanosec = divmod(now, 1_000_000_000)
        for msg in (info, image):
            if msg is not None:
                msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
        if info is not None:
            self.info_pub.publish(info)
        self.image_pub.publish(image)
        return sec, nanosec


# ------------------------------------------------------------------ the run
@dataclass
class SoakRun:
    """What the soak loop measured."""

    sent: int = 0
    seconds: float = 0.0
    samples: list[dict] = field(default_factory=list)
    node_exit: int | None = None  # exit status when the node died during the soak
    drained: bool = False
    drain_seconds: float = 0.0


def run_soak(config: SoakConfig) -> dict:
    """The whole soak (see the module doc); the result dict (`table` prints it). SoakError when it cannot run."""
    from densehybrid_ros.tools.demo import check_weights

    config.validate()
    weights = config.weights.expanduser().resolve()
    metadata = check_weights(weights)
    with tempfile.TemporaryDirectory(prefix="densehybrid_soak_") as tmp:
        bag = config.bag
        if bag is None:
            bag = write_sim_bag(Path(tmp) / "bag", config.bag_frames, config.rate or DEFAULT_BAG_RATE, config.size)
        frames = load_frames(bag, config.image_topic, config.info_topic)
        rate = config.rate or frames.rate
        mount = bag_mount_or_none(bag)
        logs = config.logs or Path(tmp) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        image_outputs = _image_outputs(config.outputs, metadata.threshold is not None)
        outputs = tuple(o for o in config.outputs if o != "open_set" or metadata.threshold is not None)
        run, counts, link_info = _run_node(config, weights, frames, rate, mount, logs, outputs, image_outputs)
    first = frames.images[0]
    return _result(config, weights, bag, frames, first, rate, mount, outputs, image_outputs, run, counts, link_info)


def _image_outputs(outputs: tuple[str, ...], calibrated: bool) -> tuple[str, ...]:
    """The image outputs that define an answer (open_set only exists with a threshold)."""
    from densehybrid_ros.node.perception_node import IMAGE_OUTPUTS, OBSTACLE_OUTPUTS

    unknown = [o for o in outputs if o not in IMAGE_OUTPUTS and o not in OBSTACLE_OUTPUTS]
    if unknown:
        raise ValueError(f"unknown node output(s) {unknown}; choose from {[*IMAGE_OUTPUTS, *OBSTACLE_OUTPUTS]}")
    answer = tuple(o for o in outputs if o in IMAGE_OUTPUTS and (o != "open_set" or calibrated))
    if not answer:
        raise ValueError(f"--outputs needs at least one image output ({', '.join(IMAGE_OUTPUTS)}) to count answers")
    return answer


def _run_node(config: SoakConfig, weights: Path, frames: BagFrames, rate: float, mount: dict | None, logs: Path,
              outputs: tuple[str, ...], image_outputs: tuple[str, ...]) -> tuple[SoakRun, dict, dict]:
    """Node process + this process's link: warm-up, soak, drain. (the run, the counts, link figures)."""
    from densehybrid_ros.tools.demo import PROFILE_VARIABLES, node_arguments
    from densehybrid_ros.tools.harness import Child, Watcher, ros_environment, scoped_environ

    domain, env = ros_environment()
    with scoped_environ({k: env[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", *PROFILE_VARIABLES) if k in env}):
        watcher = Watcher(domain, NODE)
    node = Child("node", node_arguments(weights, mount, NAMESPACE), logs, env)
    try:
        link = SoakLink(watcher, outputs, image_outputs)
        base, warmup_sent = _warm_up(link, node, frames)
        first_stamp, run = _soak(config, link, node, frames, rate, base)
        counts = _drain(config, link, node, run, base, first_stamp)
        log_text = node.log.read_text(errors="replace")
        link_info = {"warmup_frames": warmup_sent, "messages_per_output": dict(link.messages),
                     "diagnostics_reports": link.reports(), "error_reports": link.error_reports,
                     "last_error_report": link.last_error_message, "log_error_lines": log_text.count("[ERROR]"),
                     "domain": domain, "log": str(node.log) if config.logs else None}
    finally:
        status = node.stop()
        watcher.close()
    link_info["node_stop_status"] = status
    return run, counts, link_info


def _node_problem(node: Any) -> str | None:
    if not node.alive():
        return node.died()
    if "configure failed" in node.log.read_text(errors="replace"):
        return f"the perception node could not configure (log {node.log}):\n{node.tail()}"
    return None


def _warm_up(link: SoakLink, node: Any, frames: BagFrames) -> tuple[dict[str, int], int]:
    """Send frames one by one until one is answered, then wait until every warm-up frame is settled: (baseline
    totals, warm-up frames sent)."""
    from densehybrid_ros.tools.harness import ToolError, wait_for

    def check() -> str | None:
        return _node_problem(node)

    try:
        if not wait_for(link.ready, STARTUP_TIMEOUT_S, check):
            raise SoakError(f"the node did not subscribe / advertise within {STARTUP_TIMEOUT_S:.0f} s:\n{node.tail()}")
        deadline, sent, answered = time.monotonic() + STARTUP_TIMEOUT_S, 0, False
        while not answered:
            if time.monotonic() > deadline:
                raise SoakError(f"no frame answered within {STARTUP_TIMEOUT_S:.0f} s of warm-up:\n{node.tail()}")
            stamp = link.send(frames.images[sent % len(frames.images)], frames.infos[sent % len(frames.infos)])
            sent += 1
            answered = wait_for(lambda: link.answers.answered(stamp), WARMUP_TRY_S, check)
        reports = link.reports()
        if not wait_for(lambda: link.reports() > reports and (t := link.totals()) is not None and settled(t, sent),
                        STARTUP_TIMEOUT_S, check):
            raise SoakError(f"the node's /diagnostics did not settle the {sent} warm-up frame(s): {link.totals()}")
    except ToolError as error:
        raise SoakError(str(error)) from None
    return link.totals(), sent


def _sample(run: SoakRun, link: SoakLink, node: Any, started: float, base: dict, first: tuple[int, int]) -> None:
    rss = read_rss_mib(node.proc.pid)
    if rss is None:
        return
    counts = delta(link.totals(), base)
    run.samples.append({"t_s": round(time.monotonic() - started, 2), "rss_mib": round(rss, 2), "sent": run.sent,
                        "answered": link.answered_since(first), "dropped": counts["dropped"],
                        "processed": counts["processed"]})


def _soak(config: SoakConfig, link: SoakLink, node: Any, frames: BagFrames, rate: float,
          base: dict) -> tuple[tuple[int, int], SoakRun]:
    """Frames at `rate` on an absolute schedule for config.minutes (or config.max_frames), RSS every sample_period."""
    run, n = SoakRun(), len(frames.images)
    duration = config.minutes * 60.0
    started = time.monotonic()
    first = (2**62, 0)  # replaced by the first frame's stamp
    next_sample = started
    while True:
        now = time.monotonic()
        if now - started >= duration or (config.max_frames is not None and run.sent >= config.max_frames):
            break
        if now >= next_sample:
            _sample(run, link, node, started, base, first)
            next_sample += config.sample_period
        if not node.alive():
            run.node_exit = node.proc.returncode
            break
        due = started + run.sent / rate
        if now < due:
            time.sleep(max(min(due, next_sample, started + duration) - now, 0.0))
            continue
        stamp = link.send(frames.images[run.sent % n], frames.infos[run.sent % n])
        first = min(first, stamp)
        run.sent += 1
    run.seconds = time.monotonic() - started
    _sample(run, link, node, started, base, first)
    return first, run


def _drain(config: SoakConfig, link: SoakLink, node: Any, run: SoakRun, base: dict,
           first: tuple[int, int]) -> dict:
    """Wait until every sent frame is settled in the node and each processed one answered here (at most
    config.drain_timeout), then read the counters from a /diagnostics report that came after."""
    from densehybrid_ros.tools.harness import wait_for

    start = time.monotonic()

    def done() -> bool:
        counts = delta(link.totals(), base)
        return settled(counts, run.sent) and link.answered_since(first) >= counts["processed"]

    if run.node_exit is None:
        run.drained = wait_for(lambda: done() or not node.alive(), config.drain_timeout) and node.alive()
        reports = link.reports()
        wait_for(lambda: link.reports() > reports or not node.alive(), 10.0)  # a report after the last change
        if not node.alive():
            run.node_exit = node.proc.returncode
    run.drain_seconds = time.monotonic() - start
    counts = delta(link.totals(), base)
    counts["answered"] = link.answered_since(first)
    return counts


def _mount_record(mount: Any) -> dict | None:
    """The mount as JSON: a dict as it is, a `perception.camera.Mount` (a dataclass) as its fields, None as None."""
    if mount is None or isinstance(mount, dict):
        return mount
    if dataclasses.is_dataclass(mount):
        return dataclasses.asdict(mount)
    raise TypeError(f"camera mount must be a dict or a Mount, got {type(mount).__name__}")


def _result(config: SoakConfig, weights: Path, bag: Path, frames: BagFrames, first_image: Any, rate: float,
            mount: dict | None, outputs: tuple[str, ...], image_outputs: tuple[str, ...], run: SoakRun, counts: dict,
            link: dict) -> dict:
    answered, dropped = counts["answered"], counts["dropped"]
    errors = {"frames_failed": counts["errors"], "frames_rejected": counts["rejected"],
              "node_exited": run.node_exit is not None, "node_exit_status": run.node_exit,
              "diagnostics_error_reports": link["error_reports"], "last_error_report": link["last_error_report"],
              "node_log_error_lines": link["log_error_lines"]}
    error_count = counts["errors"] + counts["rejected"] + (1 if run.node_exit is not None else 0)
    rss = rss_summary([(s["t_s"], s["rss_mib"]) for s in run.samples], config.settle_minutes * 60.0)
    growth = rss["growth_after_settle_pct"]
    return {
        "benchmark": "soak",
        "weights": str(weights),
        "bag": str(bag) if config.bag is not None else f"sim bag ({config.bag_frames} frames, seed {BAG_SEED}, "
                                                        f"test pool; temporary)",
        "bag_frames": len(frames.images), "bag_messages_skipped": frames.skipped,
        "size": f"{first_image.width}x{first_image.height}", "bag_rate_hz": round(frames.rate, 3),
        "rate_hz": round(rate, 3), "mount": _mount_record(mount), "outputs": list(outputs), "answer_outputs": list(image_outputs),
        "minutes": config.minutes, "max_frames": config.max_frames, "cpu_count": os.cpu_count(),
        "seconds": round(run.seconds, 2), "send_rate_hz": round(run.sent / run.seconds, 3) if run.seconds else None,
        "warmup_frames": link["warmup_frames"],
        "frames": {"sent": run.sent, "answered": answered, "dropped": dropped,
                   "unaccounted": run.sent - answered - dropped,
                   "node_received": counts["received"], "node_processed": counts["processed"],
                   "node_idle": counts["idle"], "lost_in_transport": run.sent - counts["received"],
                   "processed_not_answered": counts["processed"] - answered,
                   "answered_per_s": round(answered / run.seconds, 3) if run.seconds else None},
        "drained": run.drained, "drain_seconds": round(run.drain_seconds, 2),
        "errors": error_count, "error_detail": errors,
        "messages_per_output": link["messages_per_output"],
        "rss": rss, "rss_series": run.samples, "sample_period_s": config.sample_period,
        "node_stop_status": link["node_stop_status"], "node_log": link["log"],
        "acceptance": {"max_growth_pct": MAX_GROWTH_PCT,
                       "rss_growth_ok": None if growth is None else growth <= MAX_GROWTH_PCT,
                       "no_errors": error_count == 0, "all_accounted": run.sent - answered - dropped == 0},
    }


# ------------------------------------------------------------------ output and command line
def table(result: dict) -> str:
    """The soak's summary and RSS series as text."""
    f, r, e = result["frames"], result["rss"], result["error_detail"]

    def num(value: float | None, fmt: str = "{:.1f}") -> str:
        return "n/a" if value is None else fmt.format(value)

    lines = [
        f"soak {result['seconds'] / 60:.1f} min at {result['rate_hz']:g} Hz ({result['size']}, {result['bag_frames']} "
        f"bag frames looped; outputs {','.join(result['outputs'])}); weights {result['weights']}",
        f"  frames   sent {f['sent']}  answered {f['answered']}  dropped {f['dropped']}  unaccounted {f['unaccounted']}"
        f"   (node: received {f['node_received']}, processed {f['node_processed']}, idle {f['node_idle']}; "
        f"{num(f['answered_per_s'], '{:.2f}')} answered/s)",
        f"  errors   {result['errors']}  (failed {e['frames_failed']}, rejected {e['frames_rejected']}, node exited "
        f"{'yes, status ' + str(e['node_exit_status']) if e['node_exited'] else 'no'}; ERROR reports "
        f"{e['diagnostics_error_reports']}, [ERROR] log lines {e['node_log_error_lines']})",
        f"  RSS MiB  first {num(r['first_mib'])}  max {num(r['max_mib'])}  last {num(r['last_mib'])}  growth "
        f"{num(r['growth_pct'], '{:.2f}')}%;  at minute {r['settle_s'] / 60:g} {num(r['at_settle_mib'])}, max after "
        f"{num(r['max_after_settle_mib'])}, growth after {num(r['growth_after_settle_pct'], '{:.2f}')}%, slope after "
        f"{num(r['slope_after_settle_mib_per_min'], '{:.3f}')} MiB/min",
        f"  {'t [s]':>8} {'RSS [MiB]':>10} {'sent':>7} {'answered':>9} {'dropped':>8}",
    ]
    lines += [f"  {s['t_s']:>8.1f} {s['rss_mib']:>10.1f} {s['sent']:>7} {s['answered']:>9} {s['dropped']:>8}"
              for s in result["rss_series"]]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `densehybrid-bench soak` options (bench.py adds --json/--out)."""
    from densehybrid_ros.cli_args import parse_size

    parser.add_argument("--minutes", type=float, required=True, help="soak duration")
    parser.add_argument("--weights", type=Path, default=None, help="default: the bundled models/densehybrid_sim")
    parser.add_argument("--bag", type=Path, default=None, help="bag to loop (default: a sim bag written to a temp dir)")
    parser.add_argument("--rate", type=float, default=None, help="frames per second (default: the bag's rate)")
    parser.add_argument("--frames", type=int, default=None, help="stop after this many frames (before --minutes)")
    parser.add_argument("--sample-period", type=float, default=10.0, help="RSS sampling period [s] (default 10)")
    parser.add_argument("--settle-minutes", type=float, default=5.0,
                        help="RSS growth is measured after this minute (default 5)")
    parser.add_argument("--outputs", nargs="+", default=list(DEFAULT_OUTPUTS), help="node outputs to subscribe to")
    parser.add_argument("--bag-frames", type=int, default=DEFAULT_BAG_FRAMES, help="frames of the sim bag")
    parser.add_argument("--size", type=parse_size, default=(512, 256), metavar="WxH",
                        help="frame size of the sim bag, width x height (default 512x256)")
    parser.add_argument("--image-topic", default=IMAGE_TOPIC)
    parser.add_argument("--info-topic", default=INFO_TOPIC)
    parser.add_argument("--drain-timeout", type=float, default=60.0, help="wait for in-flight frames at most [s]")
    parser.add_argument("--logs", type=Path, default=None, help="keep the node's log here")


def config_from_args(args: argparse.Namespace) -> SoakConfig:
    """The SoakConfig of parsed `densehybrid-bench soak` arguments (default weights: the bundled model)."""
    from densehybrid_ros.tools.demo import default_weights

    return SoakConfig(minutes=args.minutes, weights=args.weights or default_weights(), bag=args.bag, rate=args.rate,
                      max_frames=args.frames, sample_period=args.sample_period, settle_minutes=args.settle_minutes,
                      outputs=tuple(args.outputs), bag_frames=args.bag_frames, size=args.size,
                      image_topic=args.image_topic, info_topic=args.info_topic, drain_timeout=args.drain_timeout,
                      logs=args.logs)


def main(args: argparse.Namespace, emit: Any) -> int:
    """`densehybrid-bench soak`: run it and `emit(result, table)`; 2 when it cannot run, 1 when the node died."""
    from densehybrid_ros.tools.harness import ToolError

    try:
        result = run_soak(config_from_args(args))
    except (SoakError, ToolError, ValueError, OSError) as error:
        print(f"densehybrid-bench soak: error: {error}", file=sys.stderr)
        return 2
    emit(result, lambda r: print(table(r)))
    return 1 if result["error_detail"]["node_exited"] else 0
