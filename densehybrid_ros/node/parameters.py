"""The node's ROS parameters: typed declarations with descriptors from the one table (perception/settings.py), the
per-camera mounting parameters, and the checks and state change of a runtime parameter set."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.node import Node
from rclpy.parameter import Parameter

from densehybrid_ros.perception.camera import Mount
from densehybrid_ros.perception.settings import (
    MOUNT_PARAMS,
    PARAMS,
    SPECS,
    ParamSpec,
    Settings,
    check_update,
    check_value,
    mount_param,
    mount_value,
    split_mount_param,
    with_mount_values,
)

PARAM_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
               float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
               list: ParameterType.PARAMETER_STRING_ARRAY}


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """The descriptor of a parameter: type, description, constraints and its integer or floating-point range."""
    d = ParameterDescriptor(name=spec.name, type=PARAM_TYPES[spec.type], description=spec.description,
                            additional_constraints=spec.constraints)
    if spec.low is not None and spec.type is int:
        d.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
    elif spec.low is not None:
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high), step=0.0)]
    return d


def declare_parameters(node: Node) -> None:
    """Declare every parameter of the table (overrides from the command line or a params file apply; a bad one
    raises)."""
    for spec in PARAMS:
        if spec.type is list:  # string array: typed explicitly ([] alone would infer a byte array)
            declared = node.declare_parameter(spec.name, Parameter.Type.STRING_ARRAY, descriptor(spec))
            if declared.type_ == Parameter.Type.NOT_SET:  # no override (a YAML [] also arrives unset)
                node.set_parameters([Parameter(spec.name, Parameter.Type.STRING_ARRAY, list(spec.default))])
        else:
            node.declare_parameter(spec.name, spec.default, descriptor(spec))


def settings_of(node: Node) -> Settings:
    """The validated values of the table's parameters (SettingsError naming every bad one)."""
    return Settings.from_values({spec.name: node.get_parameter(spec.name).value for spec in PARAMS})


def declare_mounts(node: Node, settings: Settings) -> dict[str, Mount]:
    """Declare <camera>.camera_height/pitch/roll for every camera (default: the global value now) and return each
    camera's mount. A rejected override (type, range) is a configure error naming it."""
    mounts: dict[str, Mount] = {}
    errors = []
    for camera in settings.cameras:
        values = {}
        for base in MOUNT_PARAMS:
            name, default = mount_param(camera, base), mount_value(settings.mount, base)
            if not node.has_parameter(name):
                spec = SPECS[base]
                desc = descriptor(spec)
                desc.name = name
                desc.description = f"camera {camera}: {spec.description} (default: the global {base} at configure)"
                try:
                    node.declare_parameter(name, default, desc)
                except Exception as error:  # noqa: BLE001  bad override: name it, declare the default instead
                    hint = " (doubles need a decimal point)" if "DOUBLE" in str(error) else ""
                    errors.append(f"{name}: {error}{hint}; declared with the default {default} instead")
                    node.declare_parameter(name, default, desc, ignore_override=True)
            values[base] = float(node.get_parameter(name).value)
        mounts[camera] = with_mount_values(settings.mount, values)
    if errors:
        raise ValueError("invalid per-camera parameters:\n  " + "\n  ".join(errors))
    return mounts


def rejection(params: Sequence[Parameter], configured: bool) -> tuple[Parameter, str] | None:
    """The first parameter of a set that must be rejected and why: a bad value, or a configure-time parameter while
    `configured` (the table's parameters first, then the per-camera mounting ones); None when all may be set."""
    for p in params:
        if p.name in SPECS and (reason := check_update(p.name, p.value, configured)) is not None:
            return p, reason
    for p in params:
        split = split_mount_param(p.name) if p.name not in SPECS else None
        if split is not None and (reason := check_value(split[1], p.value)) is not None:
            return p, f"{p.name}: {reason}"
    return None


@dataclass(frozen=True)
class Update:
    """A runtime parameter set, applied: the new settings and camera mounts, and the parameters it changed."""

    settings: Settings
    mounts: dict[str, Mount]
    changed: list[Parameter]


def apply_update(params: Sequence[Parameter], settings: Settings, mounts: Mapping[str, Mount],
                 check: Callable[[Settings], object]) -> Update | None:
    """The state after a set of already checked (`rejection`) parameters, or None when it touches none of the node's.
    `mounts`: the cameras' mounts by name ("" = the single camera, which follows the global mounting parameters).
    `check` vets the new settings (e.g. the operating point against the weights); it and a bad combination of values
    raise ValueError."""
    ours = [p for p in params if p.name in SPECS]
    per_camera = [(p, split) for p in params if p.name not in SPECS and (split := split_mount_param(p.name))]
    if not ours and not per_camera:
        return None
    new = settings.replace(**{p.name: p.value for p in ours}) if ours else settings
    check(new)
    changed: dict[str, dict[str, float]] = {}
    for p, (camera, base) in per_camera:
        if camera in mounts:
            changed.setdefault(camera, {})[base] = float(p.value)
    new_mounts = {name: new.mount if name == "" else with_mount_values(mount, changed.get(name, {}))
                  for name, mount in mounts.items()}
    return Update(new, new_mounts, [*ours, *(p for p, _ in per_camera)])
