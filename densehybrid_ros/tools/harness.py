"""Process harness of the tools and tests that run the node over DDS: child processes with logs (`Child`), an rclpy
node of one's own spun in a thread (`SpunNode`; `Watcher` reads the perception node's diagnostics), waiting for
conditions (`wait_for`), and the children's isolated DDS environment (`ros_environment`, `scoped_environ`).
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from densehybrid_ros.node.dds import use_large_image_transport


class ToolError(RuntimeError):
    """A failure a tool reports in one clear message (exit status `code`): also a child that died while waited for."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def ros_environment() -> tuple[int, dict[str, str]]:
    """(domain id, environment of the children): $ROS_DOMAIN_ID, else one derived from the pid, discovery limited to
    this host, and the project's large-image Fast DDS profile (`densehybrid_ros.node.dds`: without it, 28 of 60
    ~/anomaly_score messages reached the recorder here) unless the environment configures DDS already."""
    domain = int(os.environ.get("ROS_DOMAIN_ID", 1 + os.getpid() % 100))
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0")
    use_large_image_transport(env)
    return domain, env


@contextlib.contextmanager
def scoped_environ(values: dict[str, str]) -> Iterator[None]:
    """`values` in os.environ (for the rclpy context created in this process), restored afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Child:
    """`python -m MODULE ARGS` with its output in LOGS/NAME.log; stop() = SIGINT, then kill after a timeout."""

    def __init__(self, name: str, args: list[str], logs: Path, env: dict[str, str], cwd: Path | None = None):
        self.name, self.log = name, logs / f"{name}.log"
        self._file = self.log.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", *args], env=env, cwd=cwd, stdout=self._file,
                                     stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def died(self) -> str:
        """A message naming this process, its exit status and its log's last lines."""
        return f"the {self.name} process exited with status {self.proc.returncode} (log {self.log}):\n{self.tail()}"

    def stop(self, timeout: float = 15.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._file.close()
        return self.proc.returncode


def wait_for(predicate: Callable[[], bool], timeout: float, abort: Callable[[], str | None] = lambda: None) -> bool:
    """Poll until `predicate()` (True) or the timeout (False); ToolError with abort()'s message when it gives one."""
    deadline = time.monotonic() + timeout
    while not predicate():
        reason = abort()
        if reason:
            raise ToolError(reason)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class SpunNode:
    """An rclpy node `name` in a private context on ROS domain `domain`, spun in a daemon thread until `close()`."""

    def __init__(self, name: str, domain: int):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001  (context shut down while closing)
                if self._stop.is_set():
                    return
                raise

    def close(self) -> None:
        import rclpy

        self._stop.set()
        self._thread.join(5)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


class Watcher(SpunNode):
    """Graph queries and the perception node `node`'s running totals from its /diagnostics. It subscribes to none of
    the node's outputs: a second reader of a large output costs a recorder frames (the node's image publishers keep
    one sample)."""

    TOTALS = ("received", "processed", "dropped", "rejected", "errors")

    def __init__(self, domain: int, node: str):
        from diagnostic_msgs.msg import DiagnosticArray

        self.prefix, self.totals = f"{node}:", dict.fromkeys(self.TOTALS, 0)
        super().__init__(f"densehybrid_demo_{os.getpid()}", domain)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._diagnostics, 10)

    def _diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if status.name.startswith(self.prefix):
                values = {kv.key: kv.value for kv in status.values}
                self.totals = {k: int(values.get(f"{k} (total)", 0)) for k in self.TOTALS}

    def settled(self, frames: int) -> bool:
        """Every one of `frames` inputs has been received and processed, dropped or rejected."""
        t = self.totals
        return t["received"] >= frames and t["processed"] + t["dropped"] + t["rejected"] + t["errors"] >= t["received"]

    def subscribers(self, topic: str) -> int:
        return self.node.count_subscribers(topic)
