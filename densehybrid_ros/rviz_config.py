"""RViz 2 layouts for the perception node's outputs, for any namespace and camera set (ROS-free).

`rviz_config(namespace, cameras)` builds the layout as a mapping, `write_rviz_config` writes it as the YAML
file `rviz2 -d` reads. Every output topic of a camera gets a display: the images `overlay`, `semantic_color`,
`open_set`, `anomaly_score` and `semantic` (raw class ids, off by default), the obstacle markers `obstacles`
(MarkerArray), the anomalous points `obstacle_points` (PointCloud2, coloured by their `score` field) and the
ground grid `obstacle_grid` (OccupancyGrid, as a costmap). With several cameras each camera's displays form
one group, and only its overlay image is on by default (the node computes a visual output only while someone
subscribes to it); every display subscribes Best Effort + Volatile, which matches any publisher's QoS.

`densehybrid-rviz` (`main`) writes the layout for the namespace and cameras it is given (or the cameras of a
parameters file) and replaces itself with rviz2, found through the ament index; the launch files start RViz
through it. `--rviz auto` starts rviz2 only when it is installed and a display is available, and otherwise
exits 0 saying why; `--rviz true` exits 1 when it cannot start rviz2; `--rviz false` only says so.

    densehybrid-rviz --namespace front --cameras front,left,right   # write the layout, then exec rviz2
    densehybrid-rviz --params-file config/perception_3cam.yaml --write-only --out 3cam.rviz
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

NODE_NAME = "densehybrid_perception"  # the perception node's default name (node/perception_node.py)
DEFAULT_FIXED_FRAME = "camera_optical_frame"
IMAGE_OUTPUTS = ("overlay", "semantic_color", "open_set", "anomaly_score", "semantic")  # node's Image outputs
IMAGE_TITLES = {"overlay": "Overlay", "semantic_color": "Semantic (colour)", "open_set": "Open set (K = unknown)",
                "anomaly_score": "Anomaly score", "semantic": "Semantic (class ids)"}
SINGLE_CAMERA_IMAGES_ON = ("overlay", "semantic_color", "open_set", "anomaly_score")
MULTI_CAMERA_IMAGES_ON = ("overlay",)
OBSTACLE_OUTPUTS = ("obstacles", "obstacle_points", "obstacle_grid")  # MarkerArray, PointCloud2, OccupancyGrid
RVIZ_MODES = ("auto", "true", "false")
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")  # one ROS name token


def check_token(name: str, what: str) -> str:
    """`name` if it is a valid ROS name token (letters, digits, underscores; not starting with a digit)."""
    if not isinstance(name, str) or not _TOKEN.match(name):
        raise ValueError(f"{what} {name!r} is not a valid ROS name token (letters, digits and '_', "
                         f"not starting with a digit)")
    return name


def normalize_namespace(namespace: str) -> str:
    """'' -> '/', 'front' or '/front/' -> '/front', 'a/b' -> '/a/b'; a bad token raises ValueError naming it."""
    inner = namespace.strip().strip("/")
    tokens = inner.split("/") if inner else []
    for token in tokens:
        check_token(token, f"namespace {namespace!r}: token")
    return "/" + "/".join(tokens)


def parse_cameras(text: str | Sequence[str]) -> tuple[str, ...]:
    """'front, left' or ['front', 'left'] -> ('front', 'left'); names are checked, duplicates rejected."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    for name in names:
        check_token(name, "camera name")
    if len(set(names)) != len(names):
        raise ValueError(f"camera names must be unique, got {names}")
    return tuple(names)


def output_topics(namespace: str = "", camera: str = "", node_name: str = NODE_NAME) -> dict[str, str]:
    """Fully qualified output topics of one camera of the node (camera '' = the single-camera topics)."""
    base = normalize_namespace(namespace).rstrip("/") + "/" + check_token(node_name, "node name")
    if camera:
        base += "/" + check_token(camera, "camera name")
    return {name: f"{base}/{name}" for name in (*IMAGE_OUTPUTS, *OBSTACLE_OUTPUTS)}


def _topic(value: str, depth: int) -> dict[str, Any]:
    return {"Depth": depth, "Durability Policy": "Volatile", "History Policy": "Keep Last",
            "Reliability Policy": "Best Effort", "Value": value}


def _image_display(name: str, topic: str, enabled: bool) -> dict[str, Any]:
    return {"Class": "rviz_default_plugins/Image", "Name": name, "Enabled": enabled, "Max Value": 1,
            "Median window": 5, "Min Value": 0, "Normalize Range": True, "Topic": _topic(topic, 1), "Value": enabled}


def _markers_display(name: str, topic: str) -> dict[str, Any]:
    return {"Class": "rviz_default_plugins/MarkerArray", "Name": name, "Enabled": True, "Namespaces": {},
            "Topic": _topic(topic, 5), "Value": True}


def _points_display(name: str, topic: str) -> dict[str, Any]:
    return {"Class": "rviz_default_plugins/PointCloud2", "Name": name, "Enabled": True, "Alpha": 1,
            "Autocompute Intensity Bounds": True, "Channel Name": "score", "Color Transformer": "Intensity",
            "Decay Time": 0, "Invert Rainbow": False, "Position Transformer": "XYZ", "Selectable": True,
            "Size (Pixels)": 3, "Size (m)": 0.1, "Style": "Flat Squares", "Topic": _topic(topic, 5),
            "Use Fixed Frame": True, "Use rainbow": True, "Value": True}


def _grid_display(name: str, topic: str) -> dict[str, Any]:
    return {"Class": "rviz_default_plugins/Map", "Name": name, "Enabled": True, "Alpha": 0.7,
            "Binary representation": False, "Binary threshold": 100, "Color Scheme": "costmap",
            "Draw Behind": False, "Topic": _topic(topic, 1), "Update Topic": _topic(topic + "_updates", 5),
            "Use Timestamp": False, "Value": True}


def camera_displays(topics: dict[str, str], label: str, images_on: Iterable[str]) -> list[dict[str, Any]]:
    """The displays of one camera's outputs; `label` ends their names, e.g. 'Overlay (front)' ('' = none)."""
    suffix = f" ({label})" if label else ""
    images_on = set(images_on)
    return [
        _markers_display(f"Obstacles{suffix}", topics["obstacles"]),
        _points_display(f"Obstacle points{suffix}", topics["obstacle_points"]),
        _grid_display(f"Obstacle grid{suffix}", topics["obstacle_grid"]),
        *(_image_display(f"{IMAGE_TITLES[name]}{suffix}", topics[name], name in images_on) for name in IMAGE_OUTPUTS),
    ]


def _frame_displays(optical: bool) -> list[dict[str, Any]]:
    """A ground grid (an optical frame looks along z with y down: ground plane XZ, 1.5 m below) and axes."""
    grid = {"Class": "rviz_default_plugins/Grid", "Name": "Grid", "Enabled": True, "Reference Frame": "<Fixed Frame>",
            "Plane": "XZ" if optical else "XY", "Plane Cell Count": 40, "Cell Size": 1,
            "Offset": {"X": 0, "Y": 1.5, "Z": 20} if optical else {"X": 20, "Y": 0, "Z": 0},
            "Color": "160; 160; 164", "Alpha": 0.5, "Line Style": {"Line Width": 0.03, "Value": "Lines"},
            "Normal Cell Count": 0, "Value": True}
    axes = {"Class": "rviz_default_plugins/Axes", "Name": "Fixed frame", "Enabled": True, "Length": 0.5,
            "Radius": 0.05, "Reference Frame": "<Fixed Frame>", "Value": True}
    return [grid, axes]


def _view(optical: bool) -> dict[str, Any]:
    """A view from behind and above the camera, looking along its viewing direction."""
    focal = {"X": 0, "Y": 0, "Z": 6} if optical else {"X": 6, "Y": 0, "Z": 0}
    return {"Current": {"Class": "rviz_default_plugins/ThirdPersonFollower", "Name": "Current View",
                        "Target Frame": "<Fixed Frame>", "Distance": 12, "Focal Point": focal,
                        "Pitch": -0.6 if optical else 0.6, "Yaw": -math.pi / 2 if optical else math.pi,
                        "Near Clip Distance": 0.01, "Value": "ThirdPersonFollower (rviz_default_plugins)"},
            "Saved": None}


def layout_displays(namespace: str, cameras: Sequence[str], node_name: str, optical: bool,
                    extra_marker_topics: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Grid and axes, then the node's outputs: flat for one camera, one group per camera otherwise."""
    displays = _frame_displays(optical)
    if not cameras:
        displays += camera_displays(output_topics(namespace, "", node_name), "", SINGLE_CAMERA_IMAGES_ON)
    for camera in cameras:
        group = camera_displays(output_topics(namespace, camera, node_name), camera, MULTI_CAMERA_IMAGES_ON)
        displays.append({"Class": "rviz_common/Group", "Name": camera, "Enabled": True, "Displays": group,
                         "Value": True})
    return displays + [_markers_display(f"Markers {topic}", topic) for topic in extra_marker_topics]


def rviz_config(namespace: str = "", cameras: Sequence[str] = (), node_name: str = NODE_NAME,
                fixed_frame: str = DEFAULT_FIXED_FRAME, extra_marker_topics: Sequence[str] = ()) -> dict[str, Any]:
    """The RViz 2 layout (a mapping to dump as YAML) for the node `node_name` in `namespace` with `cameras`
    (empty: the single-camera topics). `extra_marker_topics` adds MarkerArray displays (e.g. a simulator's
    ground truth). An optical `fixed_frame` (REP 103: z forward, y down) gets a ground grid in its XZ plane."""
    cameras = parse_cameras(cameras)
    check_token(node_name, "node name")
    if not fixed_frame or not fixed_frame.strip("/"):
        raise ValueError("fixed_frame must be a frame name, got an empty string")
    optical = fixed_frame.endswith("optical_frame")
    displays = layout_displays(namespace, cameras, node_name, optical, extra_marker_topics)
    shown_images = [d["Name"] for top in displays for d in top.get("Displays", [top])
                    if d["Class"] == "rviz_default_plugins/Image" and d["Enabled"]]
    return {
        "Panels": [{"Class": "rviz_common/Displays", "Name": "Displays", "Help Height": 78,
                    "Property Tree Widget": {"Expanded": ["/Global Options1"], "Splitter Ratio": 0.5}},
                   {"Class": "rviz_common/Views", "Name": "Views", "Splitter Ratio": 0.5}],
        "Visualization Manager": {
            "Class": "", "Displays": displays, "Enabled": True,
            "Global Options": {"Background Color": "48; 48; 48", "Fixed Frame": fixed_frame, "Frame Rate": 30},
            "Name": "root",
            "Tools": [{"Class": "rviz_default_plugins/Interact", "Hide Inactive Objects": True},
                      {"Class": "rviz_default_plugins/MoveCamera"}, {"Class": "rviz_default_plugins/Select"},
                      {"Class": "rviz_default_plugins/FocusCamera"},
                      {"Class": "rviz_default_plugins/Measure", "Line color": "128; 128; 0"}],
            "Transformation": {"Current": {"Class": "rviz_default_plugins/TF"}},
            "Value": True,
            "Views": _view(optical),
        },
        "Window Geometry": {"Displays": {"collapsed": False}, "Height": 1000, "Width": 1600, "Hide Left Dock": False,
                            "Hide Right Dock": True, "Views": {"collapsed": True},
                            **{name: {"collapsed": False} for name in shown_images}},
    }


def write_rviz_config(path: str | Path, **kwargs: Any) -> Path:
    """Write `rviz_config(**kwargs)` to `path` (parent folders created) and return the path."""
    path = Path(path)
    text = yaml.safe_dump(rviz_config(**kwargs), sort_keys=False, default_flow_style=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# RViz 2 layout written by densehybrid_ros.rviz_config\n{text}")
    return path


def _node_pattern(key: str) -> re.Pattern:
    """Regex of a parameters-file node key: '/**' spans any tokens, '*' one token; no leading '/' = root."""
    parts = []
    for token in key.strip("/").split("/"):
        parts.append("(/[^/]+)*" if token == "**" else "/" + re.escape(token).replace(r"\*", "[^/]+"))
    return re.compile("".join(parts) + "$")


def cameras_from_params_file(path: str | Path, namespace: str = "", node_name: str = NODE_NAME) -> tuple[str, ...]:
    """The `cameras` parameter that a ROS parameters file gives the node `<namespace>/<node_name>` (entries
    applied in file order, as rcl does); () when the file sets none for it."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read parameters file {path}: {error}") from error
    full_name = normalize_namespace(namespace).rstrip("/") + "/" + check_token(node_name, "node name")
    cameras: Sequence[str] = ()
    for key, body in (data or {}).items() if isinstance(data, dict) else ():
        params = body.get("ros__parameters") if isinstance(body, dict) else None
        if isinstance(params, dict) and "cameras" in params and _node_pattern(str(key)).match(full_name):
            if not isinstance(params["cameras"], list):
                raise ValueError(f"{path}: {key}.cameras must be a list of names, got {params['cameras']!r}")
            cameras = params["cameras"]
    return parse_cameras([str(c) for c in cameras])


def default_output_path(namespace: str, cameras: Sequence[str]) -> Path:
    """`$ROS_HOME/densehybrid_ros/rviz/<namespace>__<cameras>.rviz` (ROS_HOME defaults to ~/.ros)."""
    ros_home = Path(os.environ.get("ROS_HOME") or Path.home() / ".ros")
    ns = normalize_namespace(namespace).strip("/").replace("/", "_") or "root"
    return ros_home / "densehybrid_ros" / "rviz" / f"{ns}__{'_'.join(cameras) or 'single'}.rviz"


def find_rviz2() -> Path | None:
    """The rviz2 executable of the installed rviz2 package (ament index), or None when it is not installed."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    except ImportError:
        return None
    try:
        executable = Path(get_package_prefix("rviz2")) / "lib" / "rviz2" / "rviz2"
    except PackageNotFoundError:
        return None
    return executable if os.access(executable, os.X_OK) else None


def has_display(environ: dict[str, str] | None = None) -> bool:
    """Whether a graphical session is reachable (X11 DISPLAY or WAYLAND_DISPLAY set)."""
    environ = os.environ if environ is None else environ
    return bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))


def rviz_decision(mode: str, rviz2: Path | None, display: bool) -> tuple[bool, str]:
    """(start rviz2?, reason) for rviz:=auto|true|false; true raises RuntimeError when rviz2 cannot start."""
    if mode not in RVIZ_MODES:
        raise ValueError(f"rviz must be one of {', '.join(RVIZ_MODES)}, got {mode!r}")
    if mode == "false":
        return False, "rviz:=false: RViz not started"
    missing = ("package 'rviz2' is not installed (ament index; e.g. apt install ros-$ROS_DISTRO-rviz2)"
               if rviz2 is None else "" if display else "no display (DISPLAY / WAYLAND_DISPLAY unset)")
    if not missing:
        return True, f"starting {rviz2}"
    if mode == "true":
        raise RuntimeError(f"rviz:=true but {missing}; use rviz:=auto or rviz:=false")
    return False, f"rviz:=auto: {missing}: RViz not started"


def build_parser() -> argparse.ArgumentParser:
    """The densehybrid-rviz command line (the launch files pass their arguments as --name=value)."""
    parser = argparse.ArgumentParser(prog="densehybrid-rviz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--namespace", default="", help="namespace of the perception node ('' = root)")
    parser.add_argument("--cameras", default="", help="comma-separated camera names ('' = --params-file's, else one)")
    parser.add_argument("--params-file", default="", help="the node's parameters file, read for `cameras`")
    parser.add_argument("--node-name", default=NODE_NAME, help=f"perception node name (default {NODE_NAME})")
    parser.add_argument("--fixed-frame", default=DEFAULT_FIXED_FRAME, help="RViz fixed frame")
    parser.add_argument("--markers", action="append", default=[], metavar="TOPIC", help="extra MarkerArray topic")
    parser.add_argument("--rviz", default="true", help="auto | true | false (see the module doc)")
    parser.add_argument("--out", type=Path, default=None, help="layout file (default under $ROS_HOME)")
    parser.add_argument("--write-only", action="store_true", help="write the layout and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Write the layout, then exec rviz2 with it; arguments from `--ros-args` on are passed to rviz2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--ros-args") if "--ros-args" in argv else len(argv)
    args, rviz_args = build_parser().parse_args(argv[:cut]), argv[cut:]
    try:
        cameras = parse_cameras(args.cameras) or (
            cameras_from_params_file(args.params_file, args.namespace, args.node_name) if args.params_file else ())
        path = write_rviz_config(args.out or default_output_path(args.namespace, cameras), namespace=args.namespace,
                                 cameras=cameras, node_name=args.node_name, fixed_frame=args.fixed_frame,
                                 extra_marker_topics=args.markers)
        print(f"[densehybrid-rviz] layout {path} (namespace {normalize_namespace(args.namespace)}, "
              f"cameras {', '.join(cameras) or '(single)'})", flush=True)
        if args.write_only:
            return 0
        rviz2 = find_rviz2()
        start, reason = rviz_decision(args.rviz, rviz2, has_display())
    except (ValueError, RuntimeError) as error:
        print(f"[densehybrid-rviz] error: {error}", file=sys.stderr, flush=True)
        return 1
    print(f"[densehybrid-rviz] {reason}", flush=True)
    if start:
        os.execv(str(rviz2), [str(rviz2), "-d", str(path), *rviz_args])
    return 0


if __name__ == "__main__":
    sys.exit(main())
