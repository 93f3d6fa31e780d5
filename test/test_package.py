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


def test_runtime_never_imports_training():
    offenders = []
    for path in (ROOT / "densehybrid_ros").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n == "training" or n.startswith("training.")]
    assert offenders == []
    code = ("import importlib, pkgutil, sys, densehybrid_ros\n"
            "for m in pkgutil.walk_packages(densehybrid_ros.__path__, 'densehybrid_ros.'): importlib.import_module(m.name)\n"
            "print('training' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "test", capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_ci_runs_exactly_the_readme_test_command():
    lines = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert lines[-1] == "make test"
    assert "make test" in (ROOT / "README.md").read_text()


def test_rclpy_runs_with_the_installed_rmw():
    code = ("import rclpy\nrclpy.init()\nnode = rclpy.create_node('densehybrid_probe')\n"
            "print(node.get_name())\nnode.destroy_node()\nrclpy.shutdown()")
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID="77")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "densehybrid_probe"
