"""Exact AP / AUROC / FPR95 over any number of images in bounded memory (external merge sort).

`StreamingAnomalyMetrics.update` keeps the non-void pixels of each image in an in-RAM buffer. When the
buffer holds ``max_buffer_pixels`` pixels it is compacted into a sorted RUN -- one row per distinct score:
(score float64, positives, negatives), scores strictly descending -- and spilled to a private temporary
directory as three raw binary files. `compute` k-way merges the runs, reading bounded windows of each,
adds up the counts of equal scores coming from different runs (so a tie spanning runs is one operating
point, as in the in-memory computation), and feeds the merged distinct-score sequence into the same
`CurveIntegrator` as `compute_anomaly_metrics`. The integer counts per distinct score are identical to the
in-memory ones and the float sums run over the same fixed blocks, so the results are bit-identical.

Memory is proportional to ``max_buffer_pixels`` (default 2**22): the buffer holds 9 bytes per pixel
(float64 score + bool label; plus the image being added), and sorting it into a run briefly needs about 5x more
(np.unique and the per-distinct-score arrays: float64 score + two int64 counts). At `compute` the merge
windows hold at most ``max_buffer_pixels / 4`` rows of 24 bytes in total, plus the sort of one merged piece.
When more than ``max_runs`` runs exist they are first merged into one run on disk, which keeps the
window per run reasonably large. Disk: 24 bytes per distinct score per run (at most 24 bytes per pixel).
The temporary directory is removed by `close` (also on garbage collection / context-manager exit).
"""
from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Iterator

import numpy as np

from densehybrid_ros.evaluation._checks import valid_pixels
from densehybrid_ros.evaluation.anomaly_metrics import (
    AnomalyMetrics,
    CurveIntegrator,
    ScoreCounts,
    check_both_classes,
    distinct_score_counts,
)

_COLUMNS = (("values", np.float64), ("positives", np.int64), ("negatives", np.int64))


class _Run:
    """One spilled sorted run: three raw files of equal length, read window by window.

    Plain positioned reads (not np.memmap): mapped pages of a run would count towards the process's
    resident memory until the run is closed, while read windows are freed as soon as they are merged.
    """

    def __init__(self, paths: tuple[Path, ...], length: int) -> None:
        self.paths, self.length = paths, length
        self._files: list | None = None

    def read(self, start: int, stop: int) -> ScoreCounts:
        if self._files is None:
            self._files = [open(path, "rb") for path in self.paths]
        columns = []
        for handle, (_, dtype) in zip(self._files, _COLUMNS):
            handle.seek(start * np.dtype(dtype).itemsize)
            columns.append(np.fromfile(handle, dtype=dtype, count=stop - start))
        return ScoreCounts(*columns)

    def delete(self) -> None:
        for handle in self._files or ():
            handle.close()
        self._files = None
        for path in self.paths:
            path.unlink(missing_ok=True)


class _RunWriter:
    """Appends ScoreCounts pieces (descending, continuing each other) to a new run's files."""

    def __init__(self, directory: Path, index: int) -> None:
        self.paths = tuple(directory / f"run{index:06d}.{name}.bin" for name, _ in _COLUMNS)
        self._files = [open(path, "wb") for path in self.paths]
        self.length = 0

    def write(self, counts: ScoreCounts) -> None:
        for handle, column, (_, dtype) in zip(self._files, (counts.values, counts.positives, counts.negatives),
                                              _COLUMNS):
            handle.write(np.ascontiguousarray(column, dtype=dtype).tobytes())
        self.length += counts.values.size

    def close(self) -> _Run:
        for handle in self._files:
            handle.close()
        return _Run(self.paths, self.length)


def combine_equal_scores(values: np.ndarray, positives: np.ndarray, negatives: np.ndarray) -> ScoreCounts:
    """Sort rows by descending score and add up the counts of equal scores."""
    order = np.argsort(-values, kind="stable")
    values, positives, negatives = values[order], positives[order], negatives[order]
    starts = np.concatenate(([0], np.flatnonzero(values[1:] != values[:-1]) + 1))
    return ScoreCounts(values[starts], np.add.reduceat(positives, starts), np.add.reduceat(negatives, starts))


class _RunCursor:
    """A run being merged: the rows loaded in RAM (``window``) and the read position in the files."""

    def __init__(self, run: _Run, window: int) -> None:
        self.run, self.window, self.next_row = run, window, 0
        self.rows = ScoreCounts(np.empty(0), np.empty(0, np.int64), np.empty(0, np.int64))

    @property
    def on_disk(self) -> bool:
        return self.next_row < self.run.length

    def refill(self) -> None:
        if self.rows.values.size >= self.window // 2 or not self.on_disk:
            return
        stop = min(self.run.length, self.next_row + self.window - self.rows.values.size)
        fresh = self.run.read(self.next_row, stop)
        self.next_row = stop
        self.rows = ScoreCounts(*(np.concatenate((a, b)) for a, b in zip(
            (self.rows.values, self.rows.positives, self.rows.negatives),
            (fresh.values, fresh.positives, fresh.negatives))))

    def pop_above(self, cut: float | None) -> ScoreCounts:
        """Remove and return the loaded rows with score > cut (all rows when cut is None)."""
        values = self.rows.values
        n = values.size if cut is None else int(np.searchsorted(-values, -cut, side="left"))
        head = ScoreCounts(values[:n], self.rows.positives[:n], self.rows.negatives[:n])
        self.rows = ScoreCounts(values[n:], self.rows.positives[n:], self.rows.negatives[n:])
        return head


def merge_runs(runs: list[_Run], window: int) -> Iterator[ScoreCounts]:
    """K-way merge of descending runs into one descending distinct-score sequence, in pieces.

    Each step emits every row with score > cut, where cut is the largest last-loaded score among the runs
    that still have rows on disk: all rows above cut are then in RAM, so equal scores are never split
    between pieces. The run defining cut emits all but one loaded row, so every step progresses.
    """
    cursors = [_RunCursor(run, max(4, window)) for run in runs]
    while True:
        for cursor in cursors:
            cursor.refill()
        cursors = [c for c in cursors if c.rows.values.size or c.on_disk]
        if not cursors:
            return
        limits = [c.rows.values[-1] for c in cursors if c.on_disk]
        cut = max(limits) if limits else None
        pieces = [c.pop_above(cut) for c in cursors]
        yield combine_equal_scores(*(np.concatenate(column) for column in zip(
            *((p.values, p.positives, p.negatives) for p in pieces))))


def _remove_directory(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class StreamingAnomalyMetrics:
    """Exact pooled AP / AUROC / FPR95 over many images with bounded memory (see the module docstring).

    ``update(scores, ood_labels)`` per image (uint8 0/1/255, void dropped), then ``compute()``; it gives the
    same `AnomalyMetrics` as `compute_anomaly_metrics` on all images concatenated. ``compute`` may be called again
    after further updates. Use ``close()`` (or ``with``) to delete the temporary directory early.
    """

    def __init__(self, max_buffer_pixels: int = 1 << 22, tmp_dir: str | Path | None = None,
                 max_runs: int = 64) -> None:
        if max_buffer_pixels < 1:
            raise ValueError(f"max_buffer_pixels must be >= 1, got {max_buffer_pixels}")
        if max_runs < 2:
            raise ValueError(f"max_runs must be >= 2, got {max_runs}")
        self.max_buffer_pixels, self.max_runs = int(max_buffer_pixels), int(max_runs)
        self._tmp_parent = tmp_dir
        self._directory: Path | None = None
        self._finalizer: weakref.finalize | None = None
        self._buffer_values: list[np.ndarray] = []
        self._buffer_anomaly: list[np.ndarray] = []
        self._buffered = 0
        self._runs: list[_Run] = []
        self._next_run = 0
        self.num_positives = 0
        self.num_negatives = 0
        self.num_images = 0
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("this StreamingAnomalyMetrics was closed; create a new one")

    # -- accumulation ---------------------------------------------------------------------------------
    def update(self, scores: np.ndarray, ood_labels: np.ndarray) -> None:
        """Add one image (or any batch) of scores (higher = more anomalous) and ood labels."""
        self._check_open()
        values, is_anomaly = valid_pixels(scores, ood_labels)
        positives = int(is_anomaly.sum())
        self.num_positives += positives
        self.num_negatives += values.size - positives
        self.num_images += 1
        self._buffer_values.append(values)
        self._buffer_anomaly.append(is_anomaly)
        self._buffered += values.size
        if self._buffered >= self.max_buffer_pixels:
            self._spill()

    def _consolidated_buffer(self) -> tuple[np.ndarray, np.ndarray]:
        """The buffered pixels as one array pair (the per-image pieces are released)."""
        if len(self._buffer_values) != 1:
            values = np.concatenate(self._buffer_values) if self._buffer_values else np.empty(0)
            self._buffer_values = [values]
            anomaly = np.concatenate(self._buffer_anomaly) if self._buffer_anomaly else np.empty(0, bool)
            self._buffer_anomaly = [anomaly]
        return self._buffer_values[0], self._buffer_anomaly[0]

    def _spill(self) -> None:
        if not self._buffered:
            return
        counts = distinct_score_counts(*self._consolidated_buffer())
        self._buffer_values, self._buffer_anomaly, self._buffered = [], [], 0
        writer = self._new_writer()
        writer.write(counts)
        del counts
        self._runs.append(writer.close())
        if len(self._runs) > self.max_runs:
            self._compact_runs()

    def _compact_runs(self) -> None:
        writer = self._new_writer()
        for piece in merge_runs(self._runs, self._window()):
            writer.write(piece)
        for run in self._runs:
            run.delete()
        self._runs = [writer.close()]

    def _window(self) -> int:
        """Rows loaded per run while merging: a quarter of the buffer budget shared by all runs."""
        return max(4, self.max_buffer_pixels // (4 * max(1, len(self._runs))))

    def _new_writer(self) -> _RunWriter:
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="densehybrid_stream_", dir=self._tmp_parent))
            self._finalizer = weakref.finalize(self, _remove_directory, self._directory)
        self._next_run += 1
        return _RunWriter(self._directory, self._next_run)

    # -- results --------------------------------------------------------------------------------------
    def compute(self) -> AnomalyMetrics:
        """Exact metrics over everything added so far (raises ValueError if a class is missing)."""
        self._check_open()
        check_both_classes(self.num_positives, self.num_negatives, "the pixels added so far")
        integrator = CurveIntegrator(self.num_positives, self.num_negatives)
        if not self._runs:
            counts = distinct_score_counts(*self._consolidated_buffer())
            integrator.feed(counts.values, counts.positives, counts.negatives)
            return integrator.result()
        self._spill()
        for piece in merge_runs(self._runs, self._window()):
            integrator.feed(piece.values, piece.positives, piece.negatives)
        return integrator.result()

    @property
    def num_runs(self) -> int:
        """Sorted runs currently on disk."""
        return len(self._runs)

    @property
    def temp_directory(self) -> Path | None:
        """The private temporary directory (None until the first spill)."""
        return self._directory

    def close(self) -> None:
        """Delete the spilled runs and the temporary directory; the buffered pixels are dropped too."""
        self._runs, self._buffer_values, self._buffer_anomaly, self._buffered = [], [], [], 0
        self._closed = True
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> "StreamingAnomalyMetrics":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["StreamingAnomalyMetrics", "merge_runs", "combine_equal_scores"]
