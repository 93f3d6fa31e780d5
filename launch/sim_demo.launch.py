"""Sim demo: the simulated road camera, the DenseHybrid perception node on its images, and RViz.

    ros2 launch densehybrid_ros sim_demo.launch.py [weights:=/path/model.safetensors (default: the bundled model)] \
        [rate:=5.0] [speed:=8.0] [size:=512x256] [seed:=0] [split:=test] [device:=cpu] [rviz:=true]

- `sim_camera` (executable densehybrid-sim-camera) renders a driving sequence of the sim world and publishes
  /sim_camera/image_raw, /sim_camera/camera_info and the ground truth (/sim_camera/labels, /sim_camera/depth,
  /sim_camera/anomalies: the true anomaly boxes, shown in RViz next to the detected ones when added as a
  MarkerArray display).
- `densehybrid_perception` (executable densehybrid_perception, config/perception.yaml) with image ->
  /sim_camera/image_raw and camera_info -> /sim_camera/camera_info; its outputs are /densehybrid_perception/*.
- `rviz2` with config/perception.rviz (fixed frame camera_optical_frame, the sim's frame_id).

Camera mount: the sim samples the camera's height, pitch and roll per seed, so they cannot be fixed here. The sim
camera sets the perception node's camera_height / camera_pitch / camera_roll itself (its `perception_node`
parameter names /densehybrid_perception; runtime parameters of the node, set through its set_parameters service
as soon as the service appears), converted to the node's convention (pitch > 0 = looking down). Ground-plane
obstacle distances are therefore right for any seed.

Only long-stable launch / launch_ros APIs are used (Humble, Jazzy, Kilted).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "densehybrid_ros"
SIM_EXECUTABLE = "densehybrid-sim-camera"
SIM_NODE = "sim_camera"
PERCEPTION_EXECUTABLE = "densehybrid_perception"
PERCEPTION_NODE = "densehybrid_perception"
PARAMS_FILE = "perception.yaml"
RVIZ_CONFIG = "perception.rviz"


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)
    sim_camera = Node(
        package=PACKAGE,
        executable=SIM_EXECUTABLE,
        name=SIM_NODE,
        parameters=[{
            "rate": LaunchConfiguration("rate"),
            "speed": LaunchConfiguration("speed"),
            "size": LaunchConfiguration("size"),
            "seed": LaunchConfiguration("seed"),
            "split": LaunchConfiguration("split"),
            "publish_ground_truth": True,
            "frame_id": "camera_optical_frame",
            "perception_node": "/" + PERCEPTION_NODE,
        }],
        output="screen",
        emulate_tty=True,
    )
    perception = Node(
        package=PACKAGE,
        executable=PERCEPTION_EXECUTABLE,
        name=PERCEPTION_NODE,
        parameters=[os.path.join(share, "config", PARAMS_FILE),
                    {"weights": LaunchConfiguration("weights"), "device": LaunchConfiguration("device")}],
        remappings=[
            ("image", "/" + SIM_NODE + "/image_raw"),
            ("camera_info", "/" + SIM_NODE + "/camera_info"),
        ],
        output="screen",
        emulate_tty=True,
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        arguments=["-d", os.path.join(share, "config", RVIZ_CONFIG)],
        condition=IfCondition(LaunchConfiguration("rviz")),
        output="screen",
    )
    return LaunchDescription([
        DeclareLaunchArgument("weights", default_value="models/densehybrid_sim.safetensors",
                              description="DenseHybrid weights file (.safetensors); default: the bundled sim model"),
        DeclareLaunchArgument("device", default_value="cpu", description="cpu, cuda or cuda:N"),
        DeclareLaunchArgument("rate", default_value="5.0", description="sim camera frame rate [Hz]"),
        DeclareLaunchArgument("speed", default_value="8.0", description="sim camera speed [m/s]"),
        DeclareLaunchArgument("size", default_value="512x256", description="sim image size WxH"),
        DeclareLaunchArgument("seed", default_value="0", description="sim world seed"),
        DeclareLaunchArgument("split", default_value="test", description="anomaly pool: test, val or train"),
        DeclareLaunchArgument("rviz", default_value="true", description="start rviz2 with config/perception.rviz"),
        sim_camera,
        perception,
        rviz,
    ])
