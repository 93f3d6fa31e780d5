"""launch/sim_demo.launch.py without the `launch` package: static checks of the source, then the file executed against
recording stand-ins of the (long-stable) launch / launch_ros classes it uses, to check what it would start."""
from __future__ import annotations

import ast
import runpy
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "sim_demo.launch.py"
STABLE_API = {  # module -> names, all present since Foxy and unchanged through Humble, Jazzy and Kilted
    "launch": {"LaunchDescription"},
    "launch.actions": {"DeclareLaunchArgument"},
    "launch.conditions": {"IfCondition"},
    "launch.substitutions": {"LaunchConfiguration"},
    "launch_ros.actions": {"Node"},
    "ament_index_python.packages": {"get_package_share_directory"},
}


def console_scripts() -> set[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    return {n.value.split("=")[0].strip() for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and " = " in n.value}


def test_launch_file_imports_only_stable_launch_apis():
    tree = ast.parse(LAUNCH.read_text())
    assert "generate_launch_description" in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    imports = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imports.setdefault(node.module, set()).update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            imports.update({a.name: set() for a in node.names})
    assert set(imports) <= set(STABLE_API) | {"os"}
    for module, names in imports.items():
        assert names <= STABLE_API.get(module, set()), module


class Recorder:
    """A stand-in class that keeps its constructor arguments."""

    made: list = []

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        Recorder.made.append(self)


def stub_modules(monkeypatch, share: Path) -> None:
    def cls(name):
        return type(name, (Recorder,), {})

    classes = {"LaunchDescription": cls("LaunchDescription"), "DeclareLaunchArgument": cls("DeclareLaunchArgument"),
               "IfCondition": cls("IfCondition"), "Node": cls("Node")}

    class LaunchConfiguration(Recorder):
        def __repr__(self):
            return f"$({self.args[0]})"

    classes["LaunchConfiguration"] = LaunchConfiguration
    modules: dict[str, types.ModuleType] = {}
    for module, names in STABLE_API.items():
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            modules.setdefault(name, types.ModuleType(name))
        for name in names:
            setattr(modules[module], name, classes.get(name))
    modules["ament_index_python.packages"].get_package_share_directory = lambda package: str(share / package)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


def test_launch_description_starts_the_sim_camera_the_node_and_rviz(monkeypatch, tmp_path):
    stub_modules(monkeypatch, tmp_path)
    Recorder.made = []
    description = runpy.run_path(str(LAUNCH))["generate_launch_description"]()
    (entities,) = description.args
    kinds = [type(e).__name__ for e in entities]
    arguments = {e.args[0]: e.kwargs.get("default_value") for e in entities if type(e).__name__ == "DeclareLaunchArgument"}
    assert {"weights", "rate", "speed", "size", "seed", "split", "device", "rviz"} <= set(arguments)
    assert arguments["weights"] == "models/densehybrid_sim.safetensors"  # the bundled model (share-relative)
    nodes = {e.kwargs["executable"]: e.kwargs for e in entities if type(e).__name__ == "Node"}
    assert kinds.count("Node") == 3 and set(nodes) == {"densehybrid-sim-camera", "densehybrid_perception", "rviz2"}
    # our executables are console scripts of setup.py (ros2 launch runs them from lib/densehybrid_ros)
    scripts = console_scripts()
    for executable, kwargs in nodes.items():
        if kwargs["package"] == "densehybrid_ros":
            assert executable in scripts, f"setup.py console_scripts must install {executable}"
        else:
            assert (kwargs["package"], executable) == ("rviz2", "rviz2")
            assert "<exec_depend>rviz2</exec_depend>" in (ROOT / "package.xml").read_text()
    sim, perception, rviz = (nodes[e] for e in ("densehybrid-sim-camera", "densehybrid_perception", "rviz2"))
    sim_params = sim["parameters"][0]
    assert sim["name"] == "sim_camera" and sim_params["perception_node"] == "/" + perception["name"]
    assert sim_params["publish_ground_truth"] is True and sim_params["frame_id"] == "camera_optical_frame"
    assert {k: repr(v) for k, v in sim_params.items() if k in ("rate", "size", "seed")} == {
        "rate": "$(rate)", "size": "$(size)", "seed": "$(seed)"}
    # every sim camera parameter given is one the node declares
    from densehybrid_ros.node.sim_camera import DEFAULTS

    assert set(sim_params) <= set(DEFAULTS)
    # the perception node reads the sim camera's topics (private topics of the node named sim_camera)
    assert dict(perception["remappings"]) == {"image": "/sim_camera/image_raw", "camera_info": "/sim_camera/camera_info"}
    params_file, overrides = perception["parameters"]
    assert params_file == str(tmp_path / "densehybrid_ros" / "config" / "perception.yaml")
    assert set(overrides) == {"weights", "device"}
    # the files it names exist and setup.py installs them (config/*.yaml, config/*.rviz, launch/*.launch.py)
    setup = (ROOT / "setup.py").read_text()
    for pattern in ('glob("config/*.yaml")', 'glob("config/*.rviz")', 'glob("launch/*.launch.py")'):
        assert pattern in setup
    assert (ROOT / "config" / "perception.yaml").is_file() and (ROOT / "config" / "perception.rviz").is_file()
    assert rviz["arguments"] == ["-d", str(tmp_path / "densehybrid_ros" / "config" / "perception.rviz")]
    assert type(rviz["condition"]).__name__ == "IfCondition" and repr(rviz["condition"].args[0]) == "$(rviz)"
    # the RViz layout shows the perception node's outputs in the sim's frame
    rviz_text = (ROOT / "config" / "perception.rviz").read_text()
    assert "/densehybrid_perception/overlay" in rviz_text and "Fixed Frame: camera_optical_frame" in rviz_text


def test_sim_demo_is_documented_in_the_launch_file():
    doc = ast.get_docstring(ast.parse(LAUNCH.read_text()))
    assert "camera_height" in doc and "pitch > 0 = looking down" in doc and "ros2 launch densehybrid_ros sim_demo" in doc
