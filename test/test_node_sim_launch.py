"""launch/sim_demo.launch.py without the `launch` package: static checks of the source, then the file executed against
recording stand-ins of the (long-stable) launch / launch_ros classes it uses (test/launch_fakes.py), to check what it
would start, that every process's exit is wired to a Shutdown of the launch, and that RViz goes through
densehybrid-rviz (which starts rviz2 only when it is found: test_rviz_config.py runs it)."""
from __future__ import annotations

import ast
import shlex
from pathlib import Path

from launch_fakes import STABLE_API, ProcessExited, declared_defaults, imported_names, kind, load_launch, resolve

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "sim_demo.launch.py"


def console_scripts() -> set[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    return {n.value.split("=")[0].strip() for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and " = " in n.value}


def test_launch_file_imports_only_stable_launch_apis():
    tree = ast.parse(LAUNCH.read_text())
    assert "generate_launch_description" in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    imports = imported_names(LAUNCH)
    assert set(imports) <= set(STABLE_API) | {"os"}
    for module, names in imports.items():
        assert names <= STABLE_API.get(module, set()), module


def launch_entities(monkeypatch, share: Path) -> tuple[dict, list]:
    namespace = load_launch(monkeypatch, LAUNCH, share)
    (entities,) = namespace["generate_launch_description"]().args
    return namespace, list(entities)


def test_launch_description_starts_the_sim_camera_the_node_and_rviz(monkeypatch, tmp_path):
    _, entities = launch_entities(monkeypatch, tmp_path)
    arguments = declared_defaults(entities)
    assert {"weights", "rate", "speed", "size", "seed", "split", "device", "rviz"} <= set(arguments)
    assert arguments["weights"] == "models/densehybrid_sim.safetensors"  # the bundled model (share-relative)
    assert arguments["rviz"] == "auto"
    nodes = {e.kwargs["executable"]: e.kwargs for e in entities if kind(e) == "Node"}
    assert [kind(e) for e in entities].count("Node") == 3
    assert set(nodes) == {"densehybrid-sim-camera", "densehybrid_perception", "densehybrid-rviz"}
    # all three are console scripts of setup.py (ros2 launch runs them from lib/densehybrid_ros)
    scripts = console_scripts()
    for executable, kwargs in nodes.items():
        assert kwargs["package"] == "densehybrid_ros" and executable in scripts, executable
    sim, perception = nodes["densehybrid-sim-camera"], nodes["densehybrid_perception"]
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
    # the files it names exist and setup.py installs them (config/*.yaml, launch/*.launch.py)
    setup = (ROOT / "setup.py").read_text()
    for pattern in ('glob("config/*.yaml")', 'glob("launch/*.launch.py")'):
        assert pattern in setup
    assert (ROOT / "config" / "perception.yaml").is_file()


def test_every_process_exit_shuts_the_launch_down(monkeypatch, tmp_path):
    """The sim camera and the node: any exit -> Shutdown (no orphan keeps running when one of them dies at start-up).
    RViz: a failed exit -> Shutdown, a clean one (window closed, rviz:=auto without rviz2) -> nothing."""
    namespace, entities = launch_entities(monkeypatch, tmp_path)
    nodes = {e.kwargs["executable"]: e.kwargs for e in entities if kind(e) == "Node"}
    for executable in ("densehybrid-sim-camera", "densehybrid_perception"):
        action = nodes[executable]["on_exit"]
        assert kind(action) == "Shutdown" and nodes[executable]["name"] in action.kwargs["reason"], executable
    on_rviz_exit = nodes["densehybrid-rviz"]["on_exit"]
    assert on_rviz_exit is namespace["_on_rviz_exit"]
    for code in (1, 2, -6, -11):  # rviz:=true without rviz2 (1), bad arguments (2), aborted/crashed rviz2
        (action,) = on_rviz_exit(ProcessExited(code), context=None)
        assert kind(action) == "Shutdown" and str(code) in action.kwargs["reason"]
    assert on_rviz_exit(ProcessExited(0), context=None) is None


def test_rviz_arguments_are_valid_for_densehybrid_rviz(monkeypatch, tmp_path):
    """The launch's arguments to densehybrid-rviz, resolved with the declared defaults, parse with its own parser and
    ask for the node's outputs in the sim's frame plus the sim's true anomalies."""
    from densehybrid_ros.rviz_config import build_parser

    _, entities = launch_entities(monkeypatch, tmp_path)
    (rviz,) = [e.kwargs for e in entities if kind(e) == "Node" and e.kwargs["executable"] == "densehybrid-rviz"]
    defaults = declared_defaults(entities)
    for mode in ("auto", "true", "false"):
        argv = [resolve(a, {**defaults, "rviz": mode}) for a in rviz["arguments"]]
        args = build_parser().parse_args(argv)
        assert (args.rviz, args.namespace, args.cameras) == (mode, "", "")
        assert args.node_name == "densehybrid_perception" and args.fixed_frame == "camera_optical_frame"
        assert args.markers == ["/sim_camera/anomalies"], shlex.join(argv)


def test_sim_demo_is_documented_in_the_launch_file():
    doc = ast.get_docstring(ast.parse(LAUNCH.read_text()))
    assert "camera_height" in doc and "pitch > 0 = looking down" in doc and "ros2 launch densehybrid_ros sim_demo" in doc
    assert "rviz:=auto" in doc and "shuts down" in doc
