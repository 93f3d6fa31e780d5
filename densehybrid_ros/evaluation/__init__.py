"""Evaluation metrics (thesis 5.2): anomaly detection, closed/open-set segmentation, SMIYC components, the
SMIYC benchmark's binned pixel metrics, distance bins, the ensemble criterion (4.4) and the cross-fold
threshold protocol.

One protocol (evaluate.py): `evaluate(source, dataset, metrics)` with prediction sources (sources.py, recorded.py)
and metrics of one interface (metrics.py, obstacle_metric.py); the command lines densehybrid-eval (cli.py) and
densehybrid-eval-bag (bag_cli.py over bag_eval.py); `python -m densehybrid_ros.evaluation.compare A_DIR B_DIR`
(compare.py): two evaluations of the same frames (two models) with paired bootstrap intervals of their differences.

The accumulators are pure numpy/scipy; each accumulates in int64 counts or float64 sums and pools over the dataset.
Label conventions are those of ``densehybrid_ros.datasets``: ood 0 inlier / 1 anomaly / 255 void;
semantic 0..K-1 known / K anomaly / 255 void; scores HIGHER = MORE ANOMALOUS.
"""
from densehybrid_ros.evaluation.anomaly_metrics import (  # noqa: F401
    AnomalyMetrics,
    BinnedAnomalyMetrics,
    BinnedAnomalyResult,
    PerImageAnomalyMetrics,
    PerImageAnomalyResult,
    auroc,
    average_precision,
    binned_anomaly_metrics,
    compute_anomaly_metrics,
    fpr_at_95_tpr,
    per_image_anomaly_metrics,
)
from densehybrid_ros.evaluation.component_metrics import (  # noqa: F401
    ANOMALY_TRACK,
    NO_SIZE_FILTER,
    OBSTACLE_TRACK,
    ComponentMetrics,
    ComponentResult,
    ComponentSizeFilter,
)
from densehybrid_ros.evaluation.distance_bins import (  # noqa: F401
    DISTANCE_EDGES,
    DistanceBinnedAnomalyMetrics,
    DistanceBinResult,
    distance_binned_metrics,
)
from densehybrid_ros.evaluation.ensemble import EnsembleAccumulator, EnsembleAnalysis, ensemble_analysis  # noqa: F401
from densehybrid_ros.evaluation.segmentation_metrics import (  # noqa: F401
    OpenSetAccumulator,
    OpenSetResult,
    closed_set_confusion,
    iou_per_class,
    mean_f1,
    mean_iou,
    open_iou_per_class,
    open_mean_iou,
    open_set_confusion,
    open_set_prediction,
)
from densehybrid_ros.evaluation.smiyc_metrics import SmiycPixelMetrics, smiyc_pixel_metrics  # noqa: F401
from densehybrid_ros.evaluation.streaming import StreamingAnomalyMetrics  # noqa: F401
from densehybrid_ros.evaluation.thresholds import (  # noqa: F401
    CrossFoldResult,
    cross_fold_open_set,
    evaluate_open_set,
    fusion_threshold,
)
