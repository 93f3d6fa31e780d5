"""The ROS 2 shell around the ROS-free perception pipeline (densehybrid_ros/perception/). Every module here uses rclpy;
nothing outside node/ and tools/ imports it (test/test_package.py checks both).

  perception_node.py  the lifecycle node `densehybrid_perception` (console script): lifecycle, inputs, worker loop
  parameters.py       perception/settings.py's parameters declared with descriptors, per-camera mounts, runtime sets
  channel.py          one camera: its subscriptions, publishers, QoS, mount, intrinsics, depth images, counters
  markers.py          MarkerArray, PointCloud2 and OccupancyGrid messages of the obstacles
  diagnostics.py      the /diagnostics DiagnosticArray from perception/stats.py's counters
  messages.py         numpy -> sensor_msgs/Image, rosbags -> rclpy messages, message type lookup
  dds.py              rclpy start-up of every process here, Fast DDS large-image transport
  replay.py, record.py  densehybrid-replay / densehybrid-record (rosbags + DDS, no rosbag2 needed)
  sim_camera.py       densehybrid-sim-camera: the sim world as a live camera
"""
