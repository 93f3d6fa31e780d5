"""The ROS 2 shell around `densehybrid_ros.predictor.Predictor`.

ROS-free (importable and unit-tested without rclpy):
  params.py       parameter specification (defaults, ranges, which may change at runtime), validation, Settings
  image_codec.py  sensor_msgs Image / CompressedImage / depth payloads -> numpy, with named rejections
  obstacles.py    anomaly components, ground-plane / depth localisation, greedy id tracking
  processing.py   one frame: Predictor outputs -> the arrays and obstacles the node publishes
  diagnostics.py  frame counters, rates, timings and the OK/WARN/ERROR decision
  mailbox.py      the one-slot newest-frame mailbox between the executor and the worker thread

rclpy (thin):
  perception_node.py  the lifecycle node `densehybrid_perception` (console script densehybrid_perception)
  messages.py         rclpy <-> numpy / rosbags message conversion
  replay.py, record.py  densehybrid-replay / densehybrid-record (rosbags + DDS, no rosbag2 needed)
"""
