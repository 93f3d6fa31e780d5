"""densehybrid_ros: open-set semantic segmentation (DenseHybrid) for vehicle cameras.

The runtime package. It never imports `training/` (the offline module imports it instead).
"""

__version__ = "0.1.0"
