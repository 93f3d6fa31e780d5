"""Node throughput benchmark: the perception node end to end over real DDS vs the bare Predictor, on the same frames.

    densehybrid-bench node [--weights W] [--model swiftnet_r18_cpu] [--frames 30] [--size 512x256] [--device D]
                           [--threads N] [--json] [--out F]
    python -m densehybrid_ros.tools.bench_node ...   (the same, plus --warmup and --outputs)

1. N frames of a sim driving sequence are rendered (seed 0, test split) at the requested size (`--size` WxH).
2. The bare `Predictor` (the one the node runs) is timed in this process on those frames, in a worker thread like the
   node's: `predict()` per frame, and its three public stages separately (`Predictor.preprocess`, `forward`,
   `postprocess`: what `Predictor.predict_batch` runs, timed one by one). Timed twice, before and after the node run
   (machine drift shows up as the spread of the two).
3. The perception node runs as a subprocess (`python -m densehybrid_ros.node.perception_node`, reliable input QoS,
   depth 1, the same weights and device) in an isolated DDS domain (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST). This
   process publishes the frames as sensor_msgs/Image rgb8 (messages built beforehand) and subscribes to the outputs
   (default ~/semantic, ~/anomaly_score and, when the weights have a threshold, ~/open_set); a frame is answered when
   every subscribed output with its stamp has arrived.
   - steady state ("node fps"): two frames in flight: frame i+2 is sent when frame i is answered, so the node's
     one-slot mailbox holds the next frame whenever its worker finishes one (no idle gap, no drop); fps = N / (time
     from the first send to the last answer);
   - closed loop: one frame in flight (send, wait for the answer): adds the full DDS round trip to every frame.
   A frame replaced in the node's mailbox all the same (a late worker on a busy machine) is sent again (`resent`).
   Per-stage times come from the node's /diagnostics (decode, process = Predictor.predict + presentation, publish:
   running totals differenced over the measured frames).
4. ratio = node fps / predictor fps (goal >= 0.90), and the time per frame spent outside the node's worker stages.

The numbers are only comparable within one run (shared machines drift); `make bench` is the place for them, tests only
check that the benchmark runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from densehybrid_ros.cli_args import parse_size
from densehybrid_ros.tools.harness import Child, SpunNode, scoped_environ, wait_for

if TYPE_CHECKING:
    from densehybrid_ros.predictor import Predictor

GOAL_RATIO = 0.90
STAGE_KEYS = ("decode", "process", "publish")
DEFAULT_MODEL = "swiftnet_r18_cpu"


def render_frames(count: int, size: tuple[int, int], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rgb, K) of `count` frames of a sim driving sequence at size (width, height)."""
    import dataclasses

    from densehybrid_ros.sim.frames import driving_sequence
    from densehybrid_ros.sim.world import SimConfig, SimWorld

    with SimWorld(dataclasses.replace(SimConfig(), width=size[0], height=size[1])) as world:
        return [(f.rgb, f.camera.K()) for f in driving_sequence(world, seed, "test", count, 10.0, 8.0)]


def random_weights(path: Path, model: str = DEFAULT_MODEL) -> Path:
    """Random weights of a model preset with the sim's 15 classes and a (meaningless) threshold of 0, so that the
    open-set map is produced too: for timing only."""
    import dataclasses

    import torch

    from densehybrid_ros.config import load_yaml
    from densehybrid_ros.models import ModelConfig, build_model
    from densehybrid_ros.paths import model_config_path
    from densehybrid_ros.sim.taxonomy import SIM_CLASSES
    from densehybrid_ros.weights import Calibration, ClassInfo, default_metadata, save_weights

    config = dataclasses.replace(load_yaml(ModelConfig, model_config_path(model)), num_classes=len(SIM_CLASSES))
    torch.manual_seed(0)
    net = build_model(config).eval()
    metadata = default_metadata(config, classes=tuple(ClassInfo(n, c) for n, c in SIM_CLASSES),
                                calibration=Calibration(threshold=0.0, method="manual (benchmark, random weights)"))
    return save_weights(path, net, metadata)


def _summary(values_ms: list[float]) -> dict:
    if not values_ms:
        return {"mean": None, "median": None, "max": None}
    return {"mean": round(statistics.fmean(values_ms), 3), "median": round(statistics.median(values_ms), 3),
            "max": round(max(values_ms), 3)}


def time_predictor(predictor: Predictor, images: list[np.ndarray]) -> dict:
    """predict() per image, then the stages of predict_batch one by one (preprocess, forward, postprocess) [ms].

    Runs in a separate thread, as the node's worker does: OpenMP state is per thread, and on a busy 2-core machine
    2-thread OpenMP regions in the main thread were measured 40x slower than in a worker thread (876 vs 20 ms for
    the same 512x256 predict), which would compare the node with an artefact."""
    result: list = []
    errors: list = []

    def work() -> None:
        try:
            result.append(_time_predictor(predictor, images))
        except BaseException as error:  # noqa: BLE001  re-raised in the caller
            errors.append(error)

    thread = threading.Thread(target=work, name="densehybrid_bench_predictor")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def _time_predictor(predictor: Predictor, images: list[np.ndarray]) -> dict:
    """`time_predictor`'s work, in the calling thread: predict() per image, then the public stages of predict_batch
    (`Predictor.preprocess`, `forward`, `postprocess`, at the predictor's own threshold) timed one by one."""
    import torch

    cuda = predictor.device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(predictor.device)

    for image in images[:2]:  # warm-up (allocator, kernels)
        predictor.predict(image)
    totals = []
    for image in images:
        sync()
        start = time.perf_counter()
        predictor.predict(image)
        sync()
        totals.append((time.perf_counter() - start) * 1e3)
    stages: dict[str, list[float]] = {"preprocess": [], "forward": [], "postprocess": []}
    with torch.inference_mode():  # as predict_batch runs its stages
        for image in images:
            sync()
            t0 = time.perf_counter()
            batch = predictor.preprocess([image])
            sync()
            t1 = time.perf_counter()
            outputs = predictor.forward(batch)
            sync()
            t2 = time.perf_counter()
            predictor.postprocess(batch, outputs)
            t3 = time.perf_counter()
            for key, (a, b) in zip(stages, ((t0, t1), (t1, t2), (t2, t3))):
                stages[key].append((b - a) * 1e3)
    return {"predict_ms": totals, "stages_ms": {k: statistics.fmean(v) for k, v in stages.items()}}


Stamp = tuple[int, int]  # (sec, nanosec) of a message header's stamp


class Answers:
    """Arrival of a node's outputs per frame stamp, and its latest /diagnostics values. Thread-safe: the DDS callbacks
    (`output`, `diagnostic`) run in the spinning thread, the waits in the benchmark's. A stamp is answered when every
    wanted topic has delivered a message with it (bench_node and bench_soak count frames this way)."""

    def __init__(self, wanted: Iterable[str]):
        self.wanted: frozenset[str] = frozenset(wanted)
        self._seen: dict[Stamp, set[str]] = {}
        self._done: dict[Stamp, float] = {}  # stamp -> perf_counter time its last wanted output arrived
        self._cond = threading.Condition()
        self._diagnostics: dict[str, str] = {}
        self._diagnostics_count = 0

    def output(self, topic: str, msg: Any) -> None:
        """A message of `topic` arrived (a subscription callback); topics not wanted are ignored."""
        if topic not in self.wanted:
            return
        now = time.perf_counter()
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        with self._cond:
            topics = self._seen.setdefault(stamp, set())
            topics.add(topic)
            if topics >= self.wanted and stamp not in self._done:
                self._done[stamp] = now
                self._cond.notify_all()

    def answered(self, stamp: Stamp) -> bool:
        """Every wanted output of `stamp` has arrived."""
        with self._cond:
            return stamp in self._done

    def answered_since(self, stamp: Stamp) -> int:
        """How many stamps at or after `stamp` are answered."""
        with self._cond:
            return sum(1 for s in self._done if s >= stamp)

    def wait(self, stamp: Stamp, timeout: float) -> float | None:
        """Arrival time (perf_counter) of the last wanted output of `stamp`; None when it timed out or a later frame
        was answered first (`overtaken`)."""
        with self._cond:
            self._cond.wait_for(lambda: stamp in self._done or self.overtaken(stamp), timeout)
            return self._done.get(stamp)

    def overtaken(self, stamp: Stamp) -> bool:
        """A later frame was answered and `stamp` was not: the node answers in order, so this frame was dropped,
        replaced in its mailbox by a newer one."""
        with self._cond:
            return stamp not in self._done and bool(self._done) and max(self._done) > stamp

    def diagnostic(self, values: dict[str, str]) -> None:
        """A /diagnostics status of the node arrived (its key/value pairs)."""
        with self._cond:
            self._diagnostics = values
            self._diagnostics_count += 1
            self._cond.notify_all()

    @property
    def diagnostics_count(self) -> int:
        """How many /diagnostics statuses of the node arrived so far."""
        with self._cond:
            return self._diagnostics_count

    def latest_diagnostics(self) -> dict[str, str]:
        """A copy of the latest /diagnostics values ({} before the first)."""
        with self._cond:
            return dict(self._diagnostics)

    def wait_diagnostics(self, predicate: Callable[[dict[str, str]], bool], timeout: float) -> dict[str, str] | None:
        """A copy of the latest /diagnostics values once `predicate` holds for them; None after `timeout` s."""
        with self._cond:
            ok = self._cond.wait_for(lambda: self._diagnostics and predicate(self._diagnostics), timeout)
            return dict(self._diagnostics) if ok else None


def _stage_totals(values: dict[str, str]) -> tuple[int, dict[str, float]]:
    return int(values["stage frames (total)"]), {k: float(values[f"stage {k} total [ms]"]) for k in STAGE_KEYS}


def bench_node(weights: str | Path | None, frames: int = 30, size: tuple[int, int] = (512, 256), device: str = "cpu",
               outputs: tuple[str, ...] | None = None, warmup: int = 3, model: str = DEFAULT_MODEL,
               frame_timeout: float = 30.0, log: Path | None = None, threads: int | None = None) -> dict:
    """Node end-to-end throughput vs the bare Predictor on the same frames (see the module doc). `size` = (width,
    height); `weights` None = random weights of the `model` preset (timing only); `threads`: torch intra-op threads
    here and in the node (OMP_NUM_THREADS), default torch's (the core count)."""
    if frames < 2 or warmup < 0 or (threads is not None and threads < 1):
        raise ValueError(f"need frames >= 2, warmup >= 0 and threads >= 1, got {frames}, {warmup}, {threads}")
    import torch

    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _bench(weights, frames, size, device, outputs, warmup, model, frame_timeout, log, threads)
    finally:
        torch.set_num_threads(saved_threads)


def _bench(weights: str | Path | None, frames: int, size: tuple[int, int], device: str, outputs: tuple[str, ...] | None,
           warmup: int, model: str, frame_timeout: float, log: Path | None, threads: int | None) -> dict:
    import torch
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    from densehybrid_ros.node.messages import image_msg
    from densehybrid_ros.predictor import Predictor, PredictorConfig

    tmp = tempfile.TemporaryDirectory(prefix="densehybrid_bench_node_")
    if weights is None:
        weights = random_weights(Path(tmp.name) / f"{model}_random.safetensors", model)
    weights = Path(weights).resolve()
    predictor = Predictor.from_weights(weights, PredictorConfig(device=device))
    if outputs is None:
        outputs = ("semantic", "anomaly_score") + (("open_set",) if predictor.threshold is not None else ())
    from densehybrid_ros.node.dds import use_large_image_transport

    use_large_image_transport()  # here and, through the environment, in the node
    domain = int(os.environ.get("ROS_DOMAIN_ID", 1 + os.getpid() % 100))
    namespace = f"/dhbench{os.getpid()}"
    node_name = f"{namespace}/densehybrid_perception"
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE=os.environ.get(
        "ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST"), PYTHONUNBUFFERED="1")
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    log_path = Path(log) if log is not None else Path(tmp.name) / "node.log"
    node = Child(log_path.stem, [
        "densehybrid_ros.node.perception_node", "--ros-args", "-r", f"__ns:={namespace}", "-p", f"weights:={weights}",
        "-p", f"device:={device}", "-p", "qos_reliability:=reliable", "-p", "qos_depth:=1",
        "-p", "diagnostics_period:=0.2"], log_path.parent, env)
    with scoped_environ({"ROS_AUTOMATIC_DISCOVERY_RANGE": env["ROS_AUTOMATIC_DISCOVERY_RANGE"]}):
        spun = SpunNode(f"densehybrid_bench_{os.getpid()}", domain)
    harness = spun.node
    answers = Answers([f"{node_name}/{o}" for o in outputs])
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    for o in outputs:
        topic = f"{node_name}/{o}"
        harness.create_subscription(Image, topic, lambda m, t=topic: answers.output(t, m), reliable)

    def on_diagnostics(array_msg: Any) -> None:
        for status in array_msg.status:
            if status.name.startswith(node_name):
                answers.diagnostic({kv.key: kv.value for kv in status.values})

    harness.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    image_pub = harness.create_publisher(Image, f"{namespace}/image", QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    info_pub = harness.create_publisher(CameraInfo, f"{namespace}/camera_info", reliable)
    try:
        started = time.perf_counter()
        rendered = render_frames(frames, size)
        render_s = time.perf_counter() - started
        images = [rgb for rgb, _ in rendered]
        started_up = wait_for(lambda: image_pub.get_subscription_count() > 0 and all(
            harness.count_publishers(f"{node_name}/{o}") > 0 for o in outputs), 120,
            abort=lambda: None if node.alive() else node.died())
        if not started_up:
            raise RuntimeError(f"the node did not start within 120 s: {node.tail(40)}")
        before = time_predictor(predictor, images)
        # messages built beforehand (a camera driver's work, not the node's); stamps set per send
        counter = [0]

        def make(rgb: np.ndarray) -> Any:
            from std_msgs.msg import Header

            return image_msg(Image, Header(frame_id="camera_optical_frame"), rgb, "rgb8")

        messages = [make(rgb) for rgb in images]
        info = CameraInfo(width=size[0], height=size[1], distortion_model="plumb_bob")
        info.header.frame_id = "camera_optical_frame"
        info.k = [float(v) for v in np.asarray(rendered[0][1]).ravel()]
        info_pub.publish(info)

        def send(msg: Any) -> tuple[int, int]:
            counter[0] += 1
            stamp = (1000 + counter[0], 0)
            msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
            image_pub.publish(msg)
            return stamp

        # Two sends with no answer between them (the initial fill, or after a replaced frame) are spaced by `gap`: the
        # idle worker must take the first from its one-slot mailbox before the second arrives, or the second
        # replaces it. In steady state frame i+2 is sent on the answer to frame i, when i+1 has been taken already.
        # A frame replaced all the same (a busy machine: the worker was late) is seen as such (a later frame was
        # answered first), sent again, and the gap doubled: every frame is answered in the end, whatever the machine's
        # speed; `resent` counts the repeats (they cost the node no work: replaced frames are never processed).
        mean_s = statistics.fmean(before["predict_ms"]) / 1e3
        initial_gap = min(max(0.5 * mean_s, 0.005), 0.05)
        timeout = min(frame_timeout, max(10.0, 50 * mean_s))
        max_resends = 10 * frames

        def run(in_flight: int, batch: list) -> dict:
            to_send: deque = deque(batch)
            pending: deque = deque()
            latencies, lost, resent, last = [], 0, 0, None
            gap = initial_gap
            answered_since_send = True
            start = time.perf_counter()
            while to_send or pending:
                while to_send and len(pending) < in_flight:
                    if not answered_since_send:
                        time.sleep(gap)
                    msg = to_send.popleft()
                    sent_at = time.perf_counter()
                    pending.append((send(msg), sent_at, msg))
                    answered_since_send = False
                stamp, sent_at, msg = pending.popleft()
                done = answers.wait(stamp, timeout)
                answered_since_send = True
                if done is None:
                    if answers.overtaken(stamp) and resent < max_resends:  # replaced in the node's mailbox
                        resent += 1
                        gap = min(2 * gap, 1.0)
                        to_send.appendleft(msg)
                    else:  # no answer at all within the timeout
                        lost += 1
                    continue
                latencies.append((done - sent_at) * 1e3)
                last = done
            elapsed = (last - start) if last is not None else float("nan")
            answered = len(batch) - lost
            # fps: answered frames over the time from the first send to the last answer; with one frame in flight,
            # over the answered frames' round trips only (a lost answer's timeout is not the node's time)
            busy = elapsed if in_flight > 1 else sum(latencies) / 1e3
            return {"frames": len(batch), "answered": answered, "lost": lost, "resent": resent,
                    "seconds": round(elapsed, 4), "fps": round(answered / busy, 3) if answered else 0.0,
                    "latency_ms": _summary(latencies), "latencies_ms": [round(v, 3) for v in latencies]}

        run(1, messages[:max(warmup, 0)])  # warm-up: the node's first frames (allocator, lazy imports)
        snapshot = answers.wait_diagnostics(lambda v: "stage frames (total)" in v and
                                            int(v["stage frames (total)"]) >= min(warmup, len(messages)), 30)
        if snapshot is None:
            raise RuntimeError("no /diagnostics with per-stage times from the node")
        frames0, totals0 = _stage_totals(snapshot)
        steady = run(2, messages)
        answers.wait_diagnostics(lambda v: int(v["stage frames (total)"]) >= frames0 + steady["answered"], 30)
        seen = answers.diagnostics_count
        after = answers.wait_diagnostics(lambda v: answers.diagnostics_count > seen + 1, 10) or answers.latest_diagnostics()  # two more reports
        frames1, totals1 = _stage_totals(after)
        counted = frames1 - frames0  # frames the node processed, answers we missed included
        if counted > 0 and steady["seconds"] == steady["seconds"]:
            steady["node_processed"] = counted
            steady["fps"] = round(counted / steady["seconds"], 3)
        node_stages = {k: round((totals1[k] - totals0[k]) / counted, 3) for k in STAGE_KEYS} if counted else {}
        closed = run(1, messages)
        after_run = time_predictor(predictor, images)
        node_log = node.log.read_text(errors="replace")
    finally:
        spun.close()
        node.stop()
        tmp.cleanup()
    torch_threads = torch.get_num_threads()
    predict_ms = before["predict_ms"] + after_run["predict_ms"]
    predictor_mean = statistics.fmean(predict_ms)
    predictor_fps = 1e3 / predictor_mean
    stages = {k: round((before["stages_ms"][k] + after_run["stages_ms"][k]) / 2, 3) for k in before["stages_ms"]}
    ratio = steady["fps"] / predictor_fps if steady["fps"] else 0.0
    worker_ms = sum(node_stages.values()) if node_stages else None

    return {
        "benchmark": "node_throughput",
        "weights": str(weights),
        "size": f"{size[0]}x{size[1]}",
        "frames": frames,
        "device": device,
        "outputs": list(outputs),
        "torch_threads": torch_threads,
        "cpu_count": os.cpu_count(),
        "render_seconds": round(render_s, 3),
        "predictor": {
            "fps": round(predictor_fps, 3),
            "predict_ms": _summary(predict_ms),
            "predict_mean_ms_before_after": [round(statistics.fmean(before["predict_ms"]), 3),
                                             round(statistics.fmean(after_run["predict_ms"]), 3)],
            "stages_ms": stages,
        },
        "node": {
            "fps": steady["fps"],
            "steady_state": steady,
            "closed_loop": closed,
            "stages_ms": node_stages,
            "worker_ms": round(worker_ms, 3) if worker_ms is not None else None,
            "outside_worker_ms": round(1e3 / steady["fps"] - worker_ms, 3) if worker_ms is not None and steady["fps"] else None,
            "errors_in_log": node_log.count("[ERROR]"),
        },
        "ratio": round(ratio, 4),
        "goal_ratio": GOAL_RATIO,
        "meets_goal": ratio >= GOAL_RATIO,
    }


def table(result: dict) -> str:
    p, n = result["predictor"], result["node"]
    stages = ", ".join(f"{k} {v:.1f}" for k, v in p["stages_ms"].items())
    node_stages = ", ".join(f"{k} {v:.1f}" for k, v in n["stages_ms"].items())
    return "\n".join([
        f"node throughput {result['size']}, {result['frames']} frames, {result['device']}, outputs {','.join(result['outputs'])}",
        f"  predictor: {p['fps']:.2f} frames/s (predict mean {p['predict_ms']['mean']:.1f} ms; {stages} ms)",
        f"  node:      {n['fps']:.2f} frames/s steady state, {n['closed_loop']['fps']:.2f} closed loop "
        f"(latency {n['closed_loop']['latency_ms']['median']} ms median); stages {node_stages} ms",
        f"  ratio {result['ratio']:.3f} (goal >= {result['goal_ratio']}): {'met' if result['meets_goal'] else 'NOT met'}",
    ])


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m densehybrid_ros.tools.bench_node`."""
    ap = argparse.ArgumentParser(prog="python -m densehybrid_ros.tools.bench_node", description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, default=None, help="weights (default: random weights of --model)")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="model preset for random weights")
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--size", type=parse_size, default=(512, 256), metavar="WxH",
                    help="frame size, width x height (default 512x256)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads here and in the node (default: torch's)")
    ap.add_argument("--outputs", nargs="+", default=None, help="node outputs to subscribe to")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = bench_node(args.weights, args.frames, args.size, args.device,
                            tuple(args.outputs) if args.outputs else None, args.warmup, args.model,
                            threads=args.threads)
    except (ValueError, RuntimeError, OSError) as error:
        print(f"bench_node: error: {error}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
