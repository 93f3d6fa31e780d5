"""Launch the DenseHybrid open-set segmentation node (densehybrid_perception).

    ros2 launch densehybrid_ros perception.launch.py weights:=/path/model.safetensors \
        image:=/camera/image_raw camera_info:=/camera/camera_info [namespace:=front] [device:=cuda] \
        [params_file:=my_perception.yaml] [use_sim_time:=true] [rviz:=true]

Several cameras, one node, batched inference (outputs ~/<camera>/semantic, ...):

    ros2 launch densehybrid_ros perception.launch.py weights:=/path/model.safetensors cameras:=front,left,right \
        image:=/{camera}/image_raw camera_info:=/{camera}/camera_info \
        params_file:=$(ros2 pkg prefix densehybrid_ros)/share/densehybrid_ros/config/perception_3cam.yaml

`cameras` (comma-separated; empty = the params file's value) sets the `cameras` parameter. With several cameras,
`image` and `camera_info` are patterns: `{camera}` is replaced by each camera's name to remap its
`<camera>/image` and `<camera>/camera_info` (left at their defaults, the node reads `<namespace>/<camera>/image`).

The node is a lifecycle node; with the parameter `autostart` (default true in config/perception.yaml) it
configures and activates itself. Set autostart: false in a params file to drive it with a lifecycle manager.
`weights` and `device` override the params file only when given (empty = keep the file's value).

RViz: `rviz:=true` (or `auto`: only when rviz2 is installed and a display is set; default `false`) starts
`densehybrid-rviz`, which writes an RViz layout for this launch's namespace and cameras (the `cameras` argument, else
the params file's) with every output of the node, and runs rviz2 with it; `rviz_fixed_frame` sets its fixed frame
(with several cameras, a frame all of them have a TF to, e.g. base_link).

Failing cleanly: when the perception node exits (a failed start, a crash) the launch shuts down (Shutdown action on
its exit), RViz included; RViz failing (a non-zero exit: rviz:=true without rviz2, a crash) shuts it down too, while
closing the RViz window leaves the node running.
Only long-stable launch / launch_ros APIs are used (Humble, Jazzy, Kilted).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "densehybrid_ros"
EXECUTABLE = "densehybrid_perception"
NODE_NAME = "densehybrid_perception"
RVIZ_EXECUTABLE = "densehybrid-rviz"  # writes the RViz layout, then runs rviz2 (densehybrid_ros/rviz_config.py)
RVIZ_NODE = "densehybrid_rviz"


def _cameras(text):
    """'front, left' -> ['front', 'left'] (empty names dropped)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def _remappings(context, cameras):
    """One camera: image and camera_info as given. Several: `{camera}` in them is each camera's name."""
    topics = {name: LaunchConfiguration(name).perform(context) for name in ("image", "camera_info")}
    if not cameras:
        patterns = [f"{name}:={topic}" for name, topic in topics.items() if "{camera}" in topic]
        if patterns:
            raise RuntimeError(f"{', '.join(patterns)} name {{camera}}: pass the cameras too (cameras:=front,left)")
        return [("image", LaunchConfiguration("image")), ("camera_info", LaunchConfiguration("camera_info"))]
    remaps = []
    for name, pattern in topics.items():
        if pattern == name:  # the default: no remapping, <camera>/<name>
            continue
        if "{camera}" not in pattern:
            raise RuntimeError(f"with several cameras, {name}:={pattern} must contain {{camera}} "
                               f"(e.g. {name}:=/{{camera}}/{name}), else every camera would read one topic")
        remaps += [(f"{camera}/{name}", pattern.replace("{camera}", camera)) for camera in cameras]
    return remaps


def _node(context, *args, **kwargs):
    overrides = {"use_sim_time": LaunchConfiguration("use_sim_time").perform(context).lower() in ("true", "1")}
    for name in ("weights", "device"):
        value = LaunchConfiguration(name).perform(context)
        if value:
            overrides[name] = value
    cameras = _cameras(LaunchConfiguration("cameras").perform(context))
    if cameras:
        overrides["cameras"] = cameras
    return [
        Node(
            package=PACKAGE,
            executable=EXECUTABLE,
            name=NODE_NAME,
            namespace=LaunchConfiguration("namespace"),
            parameters=[LaunchConfiguration("params_file"), overrides],
            remappings=_remappings(context, cameras),
            arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
            output="screen",
            emulate_tty=True,
            on_exit=Shutdown(reason=f"{NODE_NAME} exited"),
        )
    ]


def _on_rviz_exit(event, context):
    """RViz failing (non-zero exit: rviz:=true without rviz2, a crash) ends the launch; closing its window does not."""
    if event.returncode != 0:
        return [Shutdown(reason=f"{RVIZ_NODE} exited with code {event.returncode}")]
    return None


def _rviz():
    """RViz through densehybrid-rviz: the layout for this launch's namespace, cameras and params file."""
    arguments = [["--rviz=", LaunchConfiguration("rviz")],
                 ["--namespace=", LaunchConfiguration("namespace")],
                 ["--cameras=", LaunchConfiguration("cameras")],
                 ["--params-file=", LaunchConfiguration("params_file")],
                 ["--fixed-frame=", LaunchConfiguration("rviz_fixed_frame")],
                 "--node-name=" + NODE_NAME]
    return Node(package=PACKAGE, executable=RVIZ_EXECUTABLE, name=RVIZ_NODE, arguments=arguments, output="screen",
                on_exit=_on_rviz_exit)


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory(PACKAGE), "config", "perception.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("weights", default_value="",
                              description="weights file (.safetensors); empty = the params file's value"),
        DeclareLaunchArgument("image", default_value="image",
                              description="input image topic (sensor_msgs/Image; <image>/compressed with use_compressed); "
                                          "with several cameras a pattern with {camera}, e.g. /{camera}/image_raw"),
        DeclareLaunchArgument("camera_info", default_value="camera_info",
                              description="sensor_msgs/CameraInfo topic of the camera; with several cameras a pattern "
                                          "with {camera}"),
        DeclareLaunchArgument("cameras", default_value="",
                              description="comma-separated camera names (front,left,right): one node, batched "
                                          "inference, outputs ~/<camera>/*; empty = the params file's value"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="ROS parameters file for the node"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay, simulator)"),
        DeclareLaunchArgument("device", default_value="",
                              description="cpu, cuda or cuda:N; empty = the params file's value"),
        DeclareLaunchArgument("log_level", default_value="info", description="node log level"),
        DeclareLaunchArgument("rviz", default_value="false",
                              description="true: RViz with a layout for this namespace and cameras (the launch shuts "
                                          "down without rviz2); auto: only when rviz2 and a display exist; false"),
        DeclareLaunchArgument("rviz_fixed_frame", default_value="camera_optical_frame",
                              description="RViz fixed frame (several cameras: a common frame such as base_link)"),
        OpaqueFunction(function=_node),
        _rviz(),
    ])
