"""One slot per camera between the executor thread (posts frames) and the worker thread (takes the newest). ROS-free.

A frame posted while another of its camera is still pending replaces it (the replaced frame is stale: counted as
dropped by the caller). The worker therefore always processes the newest frames and never a queue of old ones; it
takes the pending frames of all cameras together (one batch per cycle).
"""
from __future__ import annotations

import math
import threading
import time
from typing import Generic, TypeVar

T = TypeVar("T")


class BatchMailbox(Generic[T]):
    """One slot per camera; the worker takes the newest frame of every camera at once (a batch).

    `take_batch` waits for a first frame, then at most `wait` s (counted from that frame's arrival, so a busy worker
    never waits: the frames queued meanwhile form the batch) for the other *live* cameras: those that posted within
    the last `live` s. A silent camera is therefore waited for only until it has been quiet for `live` s, and never
    longer than `wait` per cycle; a slow one costs the others at most `wait` per cycle."""

    def __init__(self, names: list[str] | tuple[str, ...], clock=time.monotonic) -> None:
        if not names or len(set(names)) != len(names):
            raise ValueError(f"need distinct slot names, got {names!r}")
        self.names = tuple(names)
        self._clock = clock
        self._cond = threading.Condition()
        self._items: dict[str, T | None] = dict.fromkeys(self.names)
        self._arrived: dict[str, float] = {}  # arrival of the pending item
        self._last_put: dict[str, float] = {}
        self._closed = False

    def put(self, name: str, item: T) -> bool:
        """Post `item` for camera `name`; True when it replaced a pending, never-taken item of that camera."""
        with self._cond:
            now = self._clock()
            replaced = self._items[name] is not None
            self._items[name] = item
            self._arrived[name] = now
            self._last_put[name] = now
            self._cond.notify_all()
            return replaced

    def take_batch(self, timeout: float | None = None, wait: float = 0.0, live: float = 1.0) -> dict[str, T]:
        """The pending items by camera (slots cleared), in camera order; {} on timeout or when closed."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._closed or self._pending(), timeout) or self._closed:
                return {}
            if wait > 0:
                first = min(self._arrived[n] for n in self._pending())

                def complete() -> bool:
                    now = self._clock()
                    missing = [n for n in self.names if self._items[n] is None
                               and now - self._last_put.get(n, -math.inf) <= live]
                    return self._closed or not missing or now >= first + wait

                while not complete():
                    self._cond.wait(max(first + wait - self._clock(), 0.0) + 1e-4)
            if self._closed:
                return {}
            batch = {n: self._items[n] for n in self._pending()}
            for n in batch:
                self._items[n] = None
            return batch

    def _pending(self) -> list[str]:
        return [n for n in self.names if self._items[n] is not None]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items = dict.fromkeys(self.names)
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
