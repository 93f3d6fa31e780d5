"""Evaluation dataset loaders: each yields :class:`EvalSample` in the unified label convention."""
from densehybrid_ros.datasets.base import (  # noqa: F401
    OOD_ANOMALY,
    OOD_INLIER,
    VOID,
    DatasetError,
    EvalDataset,
    EvalSample,
    iterate,
    kinds,
    open_dataset,
    register,
)
