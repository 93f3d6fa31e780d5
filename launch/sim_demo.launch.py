"""Sim demo: the simulated road camera, the DenseHybrid perception node on its images, and RViz.

    ros2 launch densehybrid_ros sim_demo.launch.py [weights:=/path/model.safetensors (default: the bundled model)] \
        [rate:=5.0] [speed:=8.0] [size:=512x256] [seed:=0] [split:=test] [device:=cpu] [rviz:=auto|true|false]

- `sim_camera` (executable densehybrid-sim-camera) renders a driving sequence of the sim world and publishes
  /sim_camera/image_raw, /sim_camera/camera_info and the ground truth (/sim_camera/labels, /sim_camera/depth,
  /sim_camera/anomalies: the true anomaly boxes, shown in RViz next to the detected ones when added as a
  MarkerArray display).
- `densehybrid_perception` (executable densehybrid_perception, config/perception.yaml) with image ->
  /sim_camera/image_raw and camera_info -> /sim_camera/camera_info; its outputs are /densehybrid_perception/*.
- RViz (`rviz:=auto`, the default): `densehybrid-rviz` writes the layout for the node's outputs (its namespace and
  cameras, plus the sim's true anomalies /sim_camera/anomalies; fixed frame camera_optical_frame, the sim's frame_id)
  and runs rviz2 with it when rviz2 is installed (ament index) and a display is set, else it says why and the demo
  runs without RViz. `rviz:=true` requires RViz: without it the launch shuts down; `rviz:=false` never starts it.

Failing cleanly: when the sim camera or the perception node exits (a failed start, a crash, or a normal end) the
whole launch shuts down (Shutdown action on their exit), so no process is left running; so does RViz failing (a
non-zero exit), while closing the RViz window leaves the demo running.

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
from launch.actions import DeclareLaunchArgument, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "densehybrid_ros"
SIM_EXECUTABLE = "densehybrid-sim-camera"
SIM_NODE = "sim_camera"
PERCEPTION_EXECUTABLE = "densehybrid_perception"
PERCEPTION_NODE = "densehybrid_perception"
RVIZ_EXECUTABLE = "densehybrid-rviz"  # writes the RViz layout, then runs rviz2 (densehybrid_ros/rviz_config.py)
RVIZ_NODE = "densehybrid_rviz"
PARAMS_FILE = "perception.yaml"
FRAME_ID = "camera_optical_frame"


def _on_rviz_exit(event, context):
    """RViz failing (non-zero exit: rviz:=true without rviz2, a crash) ends the launch; closing its window does not."""
    if event.returncode != 0:
        return [Shutdown(reason=f"{RVIZ_NODE} exited with code {event.returncode}")]
    return None


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
            "frame_id": FRAME_ID,
            "perception_node": "/" + PERCEPTION_NODE,
        }],
        output="screen",
        emulate_tty=True,
        on_exit=Shutdown(reason=f"{SIM_NODE} exited"),
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
        on_exit=Shutdown(reason=f"{PERCEPTION_NODE} exited"),
    )
    rviz = Node(
        package=PACKAGE,
        executable=RVIZ_EXECUTABLE,
        name=RVIZ_NODE,
        arguments=[["--rviz=", LaunchConfiguration("rviz")], "--node-name=" + PERCEPTION_NODE,
                   "--fixed-frame=" + FRAME_ID, "--markers=/" + SIM_NODE + "/anomalies"],
        output="screen",
        on_exit=_on_rviz_exit,
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
        DeclareLaunchArgument("rviz", default_value="auto",
                              description="auto: RViz when rviz2 is installed and a display is set; true: required "
                                          "(the launch shuts down without it); false: never"),
        sim_camera,
        perception,
        rviz,
    ])
