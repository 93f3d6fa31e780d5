"""Frame counters, rates and timings for /diagnostics, and the OK/WARN/ERROR decision. ROS-free, thread-safe.

The executor thread counts received and dropped frames; the worker thread counts rejected/processed frames,
errors, batches (`BatchStats`) and stage times (`StageTimes`); the diagnostics timer calls each `report()` once per
period, which summarises the window since the previous report (rates, mean/max times) next to the running totals.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

OK, WARN, ERROR, STALE = 0, 1, 2, 3  # diagnostic_msgs/DiagnosticStatus levels


@dataclass(frozen=True)
class Report:
    level: int
    message: str
    values: list[tuple[str, str]]


class FrameStats:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self.received = self.dropped = self.rejected = self.processed = self.errors = self.idle = 0
        self.last_rejection = ""
        self.last_error = ""
        self._window_start = self._created = clock()
        self._last_input = None
        self._window = self._empty_window()

    @staticmethod
    def _empty_window() -> dict:
        return {"received": 0, "processed": 0, "rejected": 0, "dropped": 0, "errors": 0,
                "processing_ms": [], "latency_ms": []}

    def frame_received(self, replaced_pending: bool) -> None:
        """A frame arrived; `replaced_pending`: it replaced an unprocessed one (counted as dropped)."""
        with self._lock:
            self.received += 1
            self._window["received"] += 1
            self._last_input = self._clock()
            if replaced_pending:
                self.dropped += 1
                self._window["dropped"] += 1

    def frame_idle(self) -> None:
        """A valid frame not run through the model because no output had a subscriber."""
        with self._lock:
            self.idle += 1

    def frame_rejected(self, reason: str) -> None:
        with self._lock:
            self.rejected += 1
            self._window["rejected"] += 1
            self.last_rejection = reason

    def frame_failed(self, error: str) -> None:
        with self._lock:
            self.errors += 1
            self._window["errors"] += 1
            self.last_error = error

    def frame_processed(self, processing_ms: float, latency_ms: float) -> None:
        with self._lock:
            self.processed += 1
            self._window["processed"] += 1
            self._window["processing_ms"].append(processing_ms)
            if latency_ms == latency_ms:  # not NaN (unstamped input)
                self._window["latency_ms"].append(latency_ms)

    def report(self, warnings: list[str] = (), latency_warn_ms: float = float("inf"),
               stale_after_s: float = float("inf"), info: list[tuple[str, str]] = ()) -> Report:
        """Summarise and reset the window. `warnings`: conditions the caller knows about (e.g. no camera_info);
        `stale_after_s`: WARN when no input arrived for this long."""
        with self._lock:
            now = self._clock()
            span = max(now - self._window_start, 1e-9)
            w, self._window, self._window_start = self._window, self._empty_window(), now
            totals = dict(received=self.received, processed=self.processed, dropped=self.dropped,
                          rejected=self.rejected, errors=self.errors, **{"idle, no subscribers": self.idle})
            last_rejection, last_error, last_input = self.last_rejection, self.last_error, self._last_input
        proc, lat = w["processing_ms"], w["latency_ms"]
        mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
        values = [
            ("input rate [Hz]", f"{w['received'] / span:.2f}"),
            ("output rate [Hz]", f"{w['processed'] / span:.2f}"),
            ("processing mean [ms]", f"{mean(proc):.1f}"),
            ("processing max [ms]", f"{max(proc) if proc else float('nan'):.1f}"),
            ("latency mean [ms]", f"{mean(lat):.1f}"),
            ("latency max [ms]", f"{max(lat) if lat else float('nan'):.1f}"),
            *((f"{k} (total)", str(v)) for k, v in totals.items()),
            ("dropped (window)", str(w["dropped"])),
            ("rejected (window)", str(w["rejected"])),
            ("last rejection", last_rejection),
            ("last error", last_error),
            *info,
        ]
        problems_error, problems_warn = [], list(warnings)
        if w["errors"]:
            problems_error.append(f"{w['errors']} frame(s) failed: {last_error}")
        if w["rejected"] and not w["processed"]:
            problems_error.append(f"all {w['rejected']} frame(s) rejected: {last_rejection}")
        elif w["rejected"]:
            problems_warn.append(f"{w['rejected']} frame(s) rejected: {last_rejection}")
        idle = now - (last_input if last_input is not None else self._created)
        if idle > stale_after_s:
            problems_warn.append(f"no input image for {idle:.1f} s")
        if lat and mean(lat) > latency_warn_ms:
            problems_warn.append(f"mean latency {mean(lat):.0f} ms over {latency_warn_ms:.0f} ms")
        if problems_error:
            return Report(ERROR, "; ".join(problems_error + problems_warn), values)
        if problems_warn:
            return Report(WARN, "; ".join(problems_warn), values)
        return Report(OK, "running", values)


class BatchStats:
    """Batched forwards of the multi-camera worker: batch sizes and forward times (window means and totals)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.batches = self.frames = 0
        self._window: list[tuple[int, float]] = []

    def add(self, size: int, forward_ms: float) -> None:
        with self._lock:
            self.batches += 1
            self.frames += size
            self._window.append((size, forward_ms))

    def report(self) -> list[tuple[str, str]]:
        with self._lock:
            window, self._window = self._window, []
            batches, frames = self.batches, self.frames
        mean = lambda xs: f"{sum(xs) / len(xs):.2f}" if xs else "nan"  # noqa: E731
        return [("batch size mean", mean([s for s, _ in window])),
                ("batched forward mean [ms]", mean([t for _, t in window])),
                ("batches (total)", str(batches)), ("batched frames (total)", str(frames))]


class StageTimes:
    """Wall time per stage of the processed frames: the mean over the diagnostics window and running totals since
    activation (densehybrid_ros/tools/bench_node.py differences two reports). decode = message -> RGB; process =
    the batched `Perception.predict` + this frame's `Perception.present` (colours, obstacles, overlay, planner
    outputs); publish = arrays -> messages -> publish."""

    STAGES = ("decode", "process", "publish")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.totals = dict.fromkeys(self.STAGES, 0.0)
        self.frames = 0
        self._window = dict.fromkeys(self.STAGES, 0.0)
        self._window_frames = 0

    def add(self, **ms: float) -> None:
        """One frame's time [ms] in every stage (keyword per stage)."""
        with self._lock:
            for stage in self.STAGES:
                self.totals[stage] += ms[stage]
                self._window[stage] += ms[stage]
            self.frames += 1
            self._window_frames += 1

    def report(self) -> list[tuple[str, str]]:
        with self._lock:
            window, n = self._window, self._window_frames
            self._window, self._window_frames = dict.fromkeys(self.STAGES, 0.0), 0
            totals, frames = dict(self.totals), self.frames
        means = [(f"stage {s} mean [ms]", f"{window[s] / n:.2f}" if n else "nan") for s in self.STAGES]
        return [*means, *((f"stage {s} total [ms]", f"{totals[s]:.3f}") for s in self.STAGES),
                ("stage frames (total)", str(frames))]
