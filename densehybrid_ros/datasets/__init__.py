"""Evaluation dataset loaders: each yields :class:`EvalSample` in the unified label convention.

Importing this package registers every loader with :func:`register`, so ``open_dataset("KIND:PATH", split)``
works for the kinds below (each module's docstring gives the on-disk layout, the label encoding and its source):

=====================  ===============================================  =========================================
kind                   module                                           splits (default first)
=====================  ===============================================  =========================================
``streethazards``      :mod:`.streethazards`                            all, t5, t6, training, validation
``cityscapes``         :mod:`.cityscapes`                               val, train
``cityscapes-void``    :mod:`.cityscapes`                               val, train
``fishyscapes-laf``    :mod:`.fishyscapes`                              val
``fishyscapes-static`` :mod:`.fishyscapes`                              val
``smiyc-anomaly``      :mod:`.smiyc`                                    all, validation, test
``smiyc-obstacle``     :mod:`.smiyc`                                    all, test, validation, night, snowstorm
``smiyc-laf-noknown``  :mod:`.smiyc`                                    test
``road-anomaly``       :mod:`.road_anomaly`                             test
``lostandfound``       :mod:`.lostandfound`                             test, train
``sim``                :mod:`.sim`                                      the rendered split (manifest)
``bag``                :mod:`.rosbag`                                   a ROS 2 bag with image + label topics
=====================  ===============================================  =========================================

The Cityscapes label table (ids, trainIds, categories, colours, LUTs) lives in :mod:`.cityscapes_labels`.
"""
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

# Loader modules: importing them registers their kinds.
from densehybrid_ros.datasets import (  # noqa: F401,E402
    cityscapes,
    fishyscapes,
    lostandfound,
    road_anomaly,
    rosbag,
    sim,
    smiyc,
    streethazards,
)
