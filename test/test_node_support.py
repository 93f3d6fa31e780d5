"""Shared harness of the node tests (no tests here): real DDS between processes, isolated per test run.

Isolation: the test process's own ROS_DOMAIN_ID (conftest.ROS_DOMAIN_ID, from the pid), ROS_AUTOMATIC_DISCOVERY_RANGE=
LOCALHOST, and a per-run namespace for every topic, so parallel runs on one host never see each other's traffic.

Waiting: tests wait for conditions (`wait_until`, `publish_until`) under generous deadlines, never for fixed times.
"""
from __future__ import annotations

import array
import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from conftest import ROS_DOMAIN_ID
from densehybrid_ros.node.dds import use_large_image_transport
from densehybrid_ros.tools.harness import Child, SpunNode

ROOT = Path(__file__).resolve().parents[1]
DOMAIN_ID = ROS_DOMAIN_ID
NAMESPACE = f"/dhtest{os.getpid()}"
NODE = f"{NAMESPACE}/densehybrid_perception"


def ros_env() -> dict[str, str]:
    return dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


RESEND_AFTER = 5.0  # [s] Harness.call: no reply in this time -> the request is sent again (where that is safe)


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05, message: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {message or predicate}")
        time.sleep(interval)


class Process(Child):
    """`python -m MODULE ...` (args start with "-m") from the checkout, with the tests' ROS environment and its
    output in `log`; stop() = SIGINT, then kill (the tools' child process, densehybrid_ros/tools/harness.py)."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None):
        if args[:1] != ["-m"]:
            raise ValueError(f"Process runs modules: args must start with '-m', got {args[:2]}")
        super().__init__(log.stem, args[1:], log.parent, {**ros_env(), **(env or {})}, cwd=ROOT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")


# node parameters that publish every frame's obstacles as they come, at any size (confirmation over 1 of 1 frames, no
# miss budget, no size, visible-area or enclosure limits): for tests of one frame's components and geometry, not of the obstacle rules
PER_FRAME_OBSTACLES = ("confirm_hits:=1", "confirm_window:=1", "miss_budget:=0", "obstacle_min_width:=0.0",
                       "obstacle_max_width:=1000.0", "obstacle_min_height:=0.0", "obstacle_max_height:=1000.0",
                       "obstacle_min_visible_area:=0.0", "max_enclosed_share:=1.0")


def eval_bag_options(*params: str) -> list[str]:
    """densehybrid-eval-bag's options for node parameters ("name:=value"): the same names, e.g. --confirm-hits 1."""
    return [arg for p in params for arg in ("--" + p.split(":=")[0].replace("_", "-"), p.split(":=")[1])]


def node_name(namespace: str = NAMESPACE) -> str:
    """Fully qualified name of the perception node started in `namespace`."""
    return f"{namespace}/densehybrid_perception"


def node_process(tmp: Path, *params: str, name: str = "node", params_file: Path | None = None,
                 namespace: str = NAMESPACE, env: dict[str, str] | None = None) -> Process:
    """The perception node in `namespace` (default: the test namespace) with `-p` overrides `params`
    ("name:=value"). A test that starts a node of its own beside a module-scoped one gives it another namespace, so
    that topics and services never reach the wrong node. `env`: extra environment variables."""
    args = ["-m", "densehybrid_ros.node.perception_node", "--ros-args", "-r", f"__ns:={namespace}"]
    if params_file is not None:
        args += ["--params-file", str(params_file)]
    for p in params:
        args += ["-p", p]
    return Process(args, tmp / f"{name}.log", env)


class Harness(SpunNode):
    """A test-side rclpy node spun in a background thread (the tools' `SpunNode`), with collectors, publishers and
    service calls; localhost discovery while it lives."""

    def __init__(self, name: str = "harness"):
        self._saved_env = os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE")
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        use_large_image_transport()  # as the project's processes do
        super().__init__(f"{name}_{os.getpid()}", DOMAIN_ID)

    def close(self) -> None:
        super().close()
        if self._saved_env is None:
            os.environ.pop("ROS_AUTOMATIC_DISCOVERY_RANGE", None)
        else:
            os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = self._saved_env

    def collector(self, msg_type: type, topic: str, reliable: bool = True) -> "Collector":
        return Collector(self.node, msg_type, topic, reliable)

    def publisher(self, msg_type: type, topic: str, reliable: bool = True, depth: int = 10):
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
        return self.node.create_publisher(msg_type, topic, qos)

    def call(self, srv_type: type, name: str, request: Any, timeout: float = 20.0,
             resend: Callable[[], bool] | None = lambda: True) -> Any:
        """Call a service and wait for its reply. `wait_for_service` sees the server's request reader, but the
        client's reply reader may not be matched yet, so the first reply after discovery can be lost (seen once in
        a fresh-clone CI run: no reply to get_state in 20 s). Without a reply within RESEND_AFTER seconds the
        request is sent again if `resend()` says so (default: yes, for idempotent services; None: never)."""
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise TimeoutError(f"service {name} not available")
            deadline = time.monotonic() + timeout
            while True:
                future = client.call_async(request)
                wait = min(RESEND_AFTER, deadline - time.monotonic()) if resend is not None else timeout
                try:
                    wait_until(future.done, max(wait, 0.0), message=f"reply of {name}")
                    return future.result()
                except TimeoutError:
                    client.remove_pending_request(future)
                    if resend is None or time.monotonic() >= deadline or not resend():
                        raise
        finally:
            self.node.destroy_client(client)

    # lifecycle and parameters through the standard services
    def change_state(self, transition: str, node: str = NODE) -> bool:
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request()
        request.transition.label = transition
        before = self.get_state(node)
        # a transition is not idempotent: resent only while the node is still in the state it started from
        try:
            return self.call(ChangeState, f"{node}/change_state", request,
                             resend=lambda: self.get_state(node) == before).success
        except TimeoutError:
            if self.get_state(node) != before:  # the transition was made, its reply lost
                return True
            raise

    def get_state(self, node: str = NODE) -> str:
        from lifecycle_msgs.srv import GetState

        return self.call(GetState, f"{node}/get_state", GetState.Request()).current_state.label

    def get_parameters(self, node: str = NODE, *names: str) -> dict[str, Any]:
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        request = GetParameters.Request(names=list(names))
        values = self.call(GetParameters, f"{node}/get_parameters", request).values
        return {name: parameter_value_to_python(value) for name, value in zip(names, values)}

    @contextlib.contextmanager
    def parameters(self, node: str = NODE, **values: Any) -> Iterator[None]:
        """Runtime parameters of `node` set for the duration of a `with` block, the previous values restored after
        it (also when the block fails), so that a test leaves a shared node as it found it."""
        saved = self.get_parameters(node, *values)
        results = self.set_parameters(node, **values)
        try:
            assert all(r.successful for r in results), [r.reason for r in results]
            yield
        finally:
            restored = self.set_parameters(node, **saved)
            assert all(r.successful for r in restored), [r.reason for r in restored]

    def set_parameters(self, node: str = NODE, **values: Any) -> list[Any]:
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        request = SetParameters.Request()
        request.parameters = [Parameter(name, value=value).to_parameter_msg() for name, value in values.items()]
        return self.call(SetParameters, f"{node}/set_parameters", request).results


class Collector:
    """Thread-safe store of the messages of one topic."""

    def __init__(self, node: Any, msg_type: type, topic: str, reliable: bool):
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        self.messages: list[Any] = []
        self._lock = threading.Lock()
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
        self.subscription = node.create_subscription(msg_type, topic, self._add, qos)
        self.topic = topic

    def _add(self, msg: Any) -> None:
        with self._lock:
            self.messages.append(msg)

    def matching(self, predicate: Callable[[Any], bool]) -> list[Any]:
        with self._lock:
            return [m for m in self.messages if predicate(m)]

    def with_stamp(self, sec: int, nanosec: int = 0) -> list[Any]:
        return self.matching(lambda m: m.header.stamp.sec == sec and m.header.stamp.nanosec == nanosec)

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()


def image_message(rgb: np.ndarray, sec: int, frame_id: str = "camera_optical_frame", encoding: str = "rgb8",
                  nanosec: int = 0, **overrides: Any):
    """sensor_msgs/Image of an (H, W, 3) uint8 RGB array (or any field overrides for malformed ones)."""
    from sensor_msgs.msg import Image

    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id = sec, nanosec, frame_id
    msg.height, msg.width = rgb.shape[:2]
    msg.encoding = encoding
    msg.step = rgb.shape[1] * (rgb.shape[2] if rgb.ndim == 3 else 1) * rgb.itemsize
    data = array.array("B")
    data.frombytes(np.ascontiguousarray(rgb).tobytes())
    msg.data = data
    for key, value in overrides.items():
        setattr(msg, key, value)
    return msg


def camera_info_message(width: int, height: int, f: float, sec: int = 0, frame_id: str = "camera_optical_frame"):
    from sensor_msgs.msg import CameraInfo

    msg = CameraInfo()
    msg.header.stamp.sec, msg.header.frame_id = sec, frame_id
    msg.width, msg.height = width, height
    msg.k = [f, 0.0, (width - 1) / 2, 0.0, f, (height - 1) / 2, 0.0, 0.0, 1.0]
    msg.p = [f, 0.0, (width - 1) / 2, 0.0, 0.0, f, (height - 1) / 2, 0.0, 0.0, 0.0, 1.0, 0.0]
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    return msg


def publish_until(publish: Callable[[], None], answered: Callable[[], Any], timeout: float, period: float = 0.3) -> Any:
    """Republish every `period` s until `answered()` is truthy (best-effort inputs may lose a frame)."""
    deadline = time.monotonic() + timeout
    while True:
        publish()
        end = min(time.monotonic() + period, deadline)
        while time.monotonic() < end:
            value = answered()
            if value:
                return value
            time.sleep(0.02)
        if time.monotonic() >= deadline:
            raise TimeoutError("no answer to the published message")


def status_values(diagnostics: Collector, node: str = NODE, camera: str | None = None) -> dict[str, str] | None:
    """Key -> value of the newest /diagnostics status of `node` (of its `camera` in a multi-camera node), None before
    the first one arrived."""
    for array in reversed(diagnostics.matching(lambda a: True)):
        for status in array.status:
            if status.name.startswith(f"{node}:") and (camera is None or status.name.endswith(f"({camera})")):
                return {v.key: v.value for v in status.values}
    return None


FRAME_COUNTERS = ("received", "processed", "dropped", "rejected", "errors", "idle, no subscribers")


def frame_totals(values: dict[str, str] | None) -> dict[str, int] | None:
    """The node's running frame counters ("<counter> (total)") from a status's values."""
    return None if values is None else {k: int(values[f"{k} (total)"]) for k in FRAME_COUNTERS}


def settled(totals: dict[str, int] | None) -> bool:
    """Every received frame has an outcome (processed, dropped, rejected, failed or idle): nothing is in flight."""
    return totals is not None and totals["received"] == sum(v for k, v in totals.items() if k != "received")


def wait_for_quiet(diagnostics: Collector, answers: dict[str | None, Collector], node: str = NODE,
                   timeout: float = 30.0) -> dict[str | None, dict[str, int]]:
    """The node's frame counters per camera (None: a single-camera node) once nothing is in flight: from a /diagnostics
    report at least two reports after now (a frame sent just before has arrived by then), with every received frame
    given an outcome (`settled`) and every processed frame's answer received here: `answers[camera]` collects one
    output of that camera and has listened since the node started, so the processed total equals its message count."""
    seen = len(diagnostics.messages)

    def quiet():
        if len(diagnostics.messages) <= seen + 1:
            return None
        totals = {camera: frame_totals(status_values(diagnostics, node, camera)) for camera in answers}
        ok = all(settled(t) and t["processed"] == len(answers[c].messages) for c, t in totals.items())
        return totals if ok else None
    return wait_until(quiet, timeout, message="quiet frame counters")
