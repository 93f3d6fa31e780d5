"""ROS-free perception: what the node, bag evaluation, the demo and the benchmarks share.

  pipeline.py        `Perception`: camera frames -> predictions (one batched Predictor call), obstacles, images and
                     planner outputs
  camera.py          CameraModel (pinhole intrinsics), Mount (height, pitch, roll, yaw), ground-plane geometry
  obstacles.py       anomaly components, placement, ObstacleRules, Confirmation, ObstacleTracker
  planner_outputs.py obstacle points and the ground occupancy grid
  presentation.py    palette, colorize, heatmap, overlay, render_overlay
  settings.py        the node's parameter table (the one specification) and validated Settings
  image_codec.py     Image / CompressedImage / depth payloads -> numpy, stamp_ns
  mailbox.py         BatchMailbox: the newest frame per camera between the executor and the worker thread
  stats.py           FrameStats, BatchStats, StageTimes: counters, rates and timings for /diagnostics
"""
