"""Package layout for ament_python/colcon, console scripts, runtime/training separation, CI entry."""
import ast
import configparser
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIRED_DEPENDS = {"rclpy", "sensor_msgs", "std_msgs", "geometry_msgs", "visualization_msgs", "diagnostic_msgs", "lifecycle_msgs"}


def test_package_xml_format3_ament_python():
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "densehybrid_ros"
    assert REQUIRED_DEPENDS <= {d.text for d in root.findall("depend")}
    assert root.find("export/build_type").text == "ament_python"
    assert (ROOT / "resource" / "densehybrid_ros").is_file()


def test_setup_data_files_and_scripts():
    from setuptools import distutils  # noqa: F401  (setuptools' vendored distutils)
    from distutils.core import run_setup

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        dist = run_setup("setup.py", stop_after="init")
    finally:
        os.chdir(cwd)
    data = dict(dist.data_files)
    assert data["share/ament_index/resource_index/packages"] == ["resource/densehybrid_ros"]
    assert data["share/densehybrid_ros"] == ["package.xml"]
    assert "share/densehybrid_ros/launch" in data and "share/densehybrid_ros/config" in data
    assert "config/model/swiftnet_r18_cpu.yaml" in data["share/densehybrid_ros/config/model"]
    scripts = dist.entry_points["console_scripts"]
    assert any(s.startswith("densehybrid-demo =") for s in scripts)
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["develop"]["script_dir"] == "$base/lib/densehybrid_ros"
    assert cfg["install"]["install_scripts"] == "$base/lib/densehybrid_ros"


TRAINING_MODULES = ("densehybrid_training", "training")  # the installed name of training/, and the folder's own


def test_runtime_never_imports_training():
    offenders = []
    for path in (ROOT / "densehybrid_ros").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in TRAINING_MODULES]
    assert offenders == []
    code = ("import importlib, pkgutil, sys, densehybrid_ros\n"
            "for m in pkgutil.walk_packages(densehybrid_ros.__path__, 'densehybrid_ros.'): importlib.import_module(m.name)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {TRAINING_MODULES!r}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "test", capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    # the training module is installed under its project-specific name only: no top-level `training` from here
    probe = ("import importlib.util as u\n"
             "print(u.find_spec('densehybrid_training').origin)\n"
             "t = u.find_spec('training')\nprint(t and t.origin)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT / "test", capture_output=True, text=True,
                            check=True)
    ours, other = result.stdout.split()
    assert Path(ours).parent.name in TRAINING_MODULES and not other.startswith(str(ROOT)), result.stdout


def imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, anywhere in it (relative imports resolved against its package)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = node.module or ""
            found.add(module if node.level == 0 else ".".join(p for p in (base, module) if p))
    return found


def has_code(path: Path) -> bool:
    """More than a docstring (a package marker holding only its description has no code to judge)."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def test_node_holds_only_rclpy_code_and_nothing_imports_upward():
    """Issue 15: every module of densehybrid_ros/node/ uses rclpy (ROS-free code lives in perception/ and the core);
    nothing in densehybrid_ros/ outside node/ and tools/ imports node/ or tools/."""
    package = ROOT / "densehybrid_ros"
    node_modules = sorted(p for p in (package / "node").rglob("*.py") if has_code(p))
    assert {p.stem for p in node_modules} >= {"perception_node", "parameters", "channel", "markers", "diagnostics"}
    without_rclpy = [p.name for p in node_modules if not any(m.split(".")[0] == "rclpy" for m in imported_modules(p))]
    assert without_rclpy == []
    upward = []
    for path in package.rglob("*.py"):
        if path.relative_to(package).parts[0] in ("node", "tools"):
            continue
        upward += [f"{path.relative_to(ROOT)}: {m}" for m in imported_modules(path)
                   if m.split(".")[:2] in (["densehybrid_ros", "node"], ["densehybrid_ros", "tools"])]
    assert upward == []


def test_ci_runs_exactly_the_readme_test_command():
    lines = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert lines[-1] == "make test"
    assert "make test" in (ROOT / "README.md").read_text()


def test_rclpy_runs_with_the_installed_rmw():
    code = ("import rclpy\nrclpy.init()\nnode = rclpy.create_node('densehybrid_probe')\n"
            "print(node.get_name())\nnode.destroy_node()\nrclpy.shutdown()")
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=os.environ["ROS_DOMAIN_ID"])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "densehybrid_probe"


# ---------------------------------------------------------------- dependencies on a ROS machine (issue 16)
ROSDEP_PYTHON_KEYS = {  # rosdistro rosdep/python.yaml keys of the Python libraries the package uses
    "python3-numpy", "python3-opencv", "python3-yaml", "python3-torch", "python3-rosbags-pip",
    "python3-onnxruntime-pip", "python3-pybullet-pip", "python3-skimage", "python3-scipy", "python3-tqdm",
    "python3-matplotlib", "python3-pil"}
ROS_PYTHONS = ("3.10", "3.12")  # Humble (Ubuntu 22.04); Jazzy and Kilted (Ubuntu 24.04)


def test_package_xml_as_rosdep_reads_it():
    """catkin_pkg (what rosdep and colcon use) parses and validates package.xml, and every key is an exec dependency."""
    from catkin_pkg.package import parse_package

    package = parse_package(str(ROOT / "package.xml"))
    package.validate()
    exec_depends = {d.name for d in package.exec_depends}
    assert ROSDEP_PYTHON_KEYS <= exec_depends, ROSDEP_PYTHON_KEYS - exec_depends
    assert REQUIRED_DEPENDS | {"rviz2", "launch", "launch_ros", "ament_index_python"} <= exec_depends
    names = [d.name for d in package.exec_depends]
    assert len(names) == len(set(names)), "a dependency is listed twice"


def ros_requirements(python_version: str) -> dict[str, str]:
    """requirements-ros.txt as pip on `python_version` reads it: canonical name -> the pinned version."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    env = {"python_version": python_version, "python_full_version": python_version + ".0"}
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements-ros.txt").read_text().splitlines():
        text = line.split("#")[0].strip()
        if not text:
            continue
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(env):
            continue
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{text}: pin exactly"
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{name} pinned twice for Python {python_version}"
        pins[name] = spec.version
    return pins


def third_party_distributions() -> set[str]:
    """Distributions (canonical names) of everything densehybrid_ros imports that is neither the standard library, the
    package itself, nor a ROS package of package.xml (on a ROS machine those come from the ROS installation)."""
    from importlib.metadata import packages_distributions

    from catkin_pkg.package import parse_package
    from packaging.utils import canonicalize_name

    modules = set()
    for path in (ROOT / "densehybrid_ros").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    ros_packages = {d.name for d in parse_package(str(ROOT / "package.xml")).exec_depends}
    modules -= set(sys.stdlib_module_names) | ros_packages | {"densehybrid_ros", "__future__"}
    owners = packages_distributions()
    unknown = sorted(m for m in modules if m not in owners)
    assert unknown == [], f"imports without an installed distribution: {unknown}"
    return {canonicalize_name(d) for m in modules for d in owners[m]}


def test_ros_requirements_cover_every_import_for_both_pythons():
    needed = third_party_distributions()
    assert {"torch", "safetensors", "rosbags-image", "onnx", "onnxruntime", "scipy", "pillow"} <= needed  # sanity
    for version in ROS_PYTHONS:
        pins = ros_requirements(version)
        missing = needed - set(pins) - ({"pybullet"} if version == "3.12" else set())  # no 3.12 wheel (README)
        assert missing == set(), f"Python {version}: requirements-ros.txt lacks {sorted(missing)}"
        # the apt ROS message packages are built against NumPy 1.x
        assert pins["numpy"].startswith("1."), version
        assert pins["torch"] == "2.13.0"  # DEVELOPERS.md: always this pin


def test_ros_machine_steps_are_documented_and_checked():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## On a ROS 2 machine"):]
    section = section[:section.index("\n## ", 3)]
    for text in ("--system-site-packages", "requirements-ros.txt", "rosdep install", "make check-ros-requirements",
                 "Humble", "Jazzy", "Kilted", "rviz:=auto"):
        assert text in section, text
    assert "grep -v '^ros-' densehybrid_ros/requirements.in" not in readme  # the step that failed on Python 3.10
    makefile = (ROOT / "Makefile").read_text()
    assert "check-ros-requirements:" in makefile and "--only-binary=:all:" in makefile
    assert "ROS_PYTHON_VERSIONS := 3.10 3.12" in makefile
