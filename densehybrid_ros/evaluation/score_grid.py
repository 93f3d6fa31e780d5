"""A fixed fine grid of score values for binned statistics (bootstrap replicates, per-size-bin AP).

The grid is set by the first values it sees: their range widened by `margin` ranges on each side, cut into
`num_bins` equal cells; later values outside it fall into the end cells (only the extreme tails, which barely
move AP or FPR95). Metrics from binned counts use the exact curve integrator with the cell centres as the
distinct scores, so they differ from the exact pooled metrics only by the binning.
"""
from __future__ import annotations

import numpy as np

from densehybrid_ros.evaluation.anomaly_metrics import AnomalyMetrics, ScoreCounts, metrics_from_counts


class ScoreGrid:
    def __init__(self, num_bins: int = 8192, margin: float = 1.0) -> None:
        if num_bins < 16:
            raise ValueError(f"num_bins must be >= 16, got {num_bins}")
        self.num_bins, self.margin = num_bins, margin
        self.lo: float | None = None
        self.step = 1.0

    def cells(self, values: np.ndarray) -> np.ndarray:
        """Cell index of each value (fixing the grid on the first non-empty call)."""
        values = np.asarray(values, np.float64)
        if self.lo is None:
            if values.size == 0:
                return np.zeros(0, np.int64)
            lo, hi = float(values.min()), float(values.max())
            width = max(hi - lo, 1e-6)
            self.lo = lo - self.margin * width
            self.step = width * (1 + 2 * self.margin) / self.num_bins
        return np.clip(((values - self.lo) / self.step).astype(np.int64), 0, self.num_bins - 1)

    def histogram(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.cells(values), minlength=self.num_bins).astype(np.int64)

    def metrics(self, positives: np.ndarray, negatives: np.ndarray) -> AnomalyMetrics | None:
        """Metrics of binned counts (None when a class is missing)."""
        if positives.sum() == 0 or negatives.sum() == 0 or self.lo is None:
            return None
        centres = self.lo + (np.arange(self.num_bins) + 0.5) * self.step
        keep = (positives + negatives) > 0
        return metrics_from_counts(ScoreCounts(centres[keep][::-1], positives[keep][::-1], negatives[keep][::-1]))
