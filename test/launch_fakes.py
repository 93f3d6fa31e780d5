"""Recording stand-ins of the long-stable `launch` / `launch_ros` / `ament_index_python` API the launch files use.

`launch` cannot be installed here (platform notes), so the launch files are executed against these stand-ins: every
class keeps its constructor arguments, `LaunchConfiguration.perform(context)` reads a dict context, and
`resolve(value, context)` turns a launch argument value (a string, a substitution or a list of them, concatenated
as launch does) into the string the process would get. The API names are the ones present, with these signatures,
in Humble, Jazzy and Kilted.
"""
from __future__ import annotations

import ast
import runpy
import sys
import types
from pathlib import Path
from typing import Any

STABLE_API = {  # module -> names
    "launch": {"LaunchDescription"},
    "launch.actions": {"DeclareLaunchArgument", "OpaqueFunction", "Shutdown"},
    "launch.substitutions": {"LaunchConfiguration"},
    "launch_ros.actions": {"Node"},
    "ament_index_python.packages": {"get_package_share_directory"},
}


class Made:
    """A stand-in that keeps its constructor arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs


class LaunchConfiguration(Made):
    def perform(self, context: dict[str, str]) -> str:
        return context[self.args[0]]

    def __repr__(self) -> str:
        return f"$({self.args[0]})"


def resolve(value: Any, context: dict[str, str]) -> str:
    """A launch value as the process sees it: substitutions performed, a list concatenated into one string."""
    if isinstance(value, (list, tuple)):
        return "".join(resolve(v, context) for v in value)
    return value.perform(context) if isinstance(value, LaunchConfiguration) else str(value)


def fake_modules(share: Path) -> dict[str, types.ModuleType]:
    """The stand-in modules; get_package_share_directory(p) is share/p."""
    classes = {name: type(name, (Made,), {}) for name in
               ("LaunchDescription", "DeclareLaunchArgument", "OpaqueFunction", "Shutdown", "Node")}
    classes["LaunchConfiguration"] = LaunchConfiguration
    modules: dict[str, types.ModuleType] = {}
    for module, names in STABLE_API.items():
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        for name in names:
            setattr(modules[module], name, classes.get(name))
    modules["ament_index_python.packages"].get_package_share_directory = lambda package: str(share / package)
    return modules


def load_launch(monkeypatch, path: Path, share: Path) -> dict[str, Any]:
    """Execute a launch file against the stand-ins; returns its globals (generate_launch_description, helpers)."""
    for name, module in fake_modules(share).items():
        monkeypatch.setitem(sys.modules, name, module)
    return runpy.run_path(str(path))


def kind(entity: Any) -> str:
    return type(entity).__name__


def declared_defaults(entities: list) -> dict[str, str]:
    """name -> default_value of the DeclareLaunchArgument entities."""
    return {e.args[0]: e.kwargs.get("default_value") for e in entities if kind(e) == "DeclareLaunchArgument"}


class ProcessExited:
    """The event an on_exit callable receives (launch.events.process.ProcessExited): the exit code."""

    def __init__(self, returncode: int) -> None:
        self.returncode = returncode


def imported_names(path: Path) -> dict[str, set[str]]:
    """module -> names a Python file imports (anywhere in it; `import m` gives m -> set())."""
    imports: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            imports.setdefault(node.module, set()).update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            imports.update({a.name: set() for a in node.names})
    return imports
