"""rclpy message helpers: numpy arrays -> sensor_msgs/Image, rosbags messages -> rclpy messages, type lookup.

`to_rclpy` converts by field iteration over the rclpy class's `get_fields_and_field_types()`, taking each
field by name from the rosbags object (fields the bag's definition lacks keep their defaults), so bags of
other distros (or ROS 1 bags read through rosbags' AnyReader) replay as long as the field names agree.
Numeric arrays are copied as one block (array.array / numpy), never element by element.
"""
from __future__ import annotations

import array
import importlib
import re
from typing import Any

import numpy as np

from rclpy.type_support import check_is_valid_msg_type

from densehybrid_ros.perception.image_codec import image_fields

NUMERIC = {
    "float": ("f", np.float32), "double": ("d", np.float64), "long double": ("d", np.float64),
    "int8": ("b", np.int8), "uint8": ("B", np.uint8), "int16": ("h", np.int16), "uint16": ("H", np.uint16),
    "int32": ("i", np.int32), "uint32": ("I", np.uint32), "int64": ("q", np.int64), "uint64": ("Q", np.uint64),
}
_ARRAY_RE = re.compile(r"^(?P<base>.+)\[(?P<size>\d+)\]$")
_SEQUENCE_RE = re.compile(r"^sequence<(?P<base>[^,>]+)(?:,\s*\d+)?>$")
_STRING_RE = re.compile(r"^w?string(<=?\d+>)?$")


def message_class(msgtype: str) -> type:
    """The rclpy class of 'pkg/msg/Name' (or 'pkg/Name'), e.g. sensor_msgs.msg.Image."""
    parts = msgtype.split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"not a message type name: {msgtype!r} (expected pkg/msg/Name)")
    package, kind, name = parts
    try:
        cls = getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError):
        raise ValueError(f"message type {msgtype} is not available to rclpy here (is the {package} package "
                         "installed?)") from None
    try:
        check_is_valid_msg_type(cls)  # a message with its type support: one rclpy can publish and subscribe
    except Exception as error:  # noqa: BLE001  (AttributeError, NoTypeSupportImportedException, RuntimeError)
        raise ValueError(f"{msgtype} is not a ROS 2 message type rclpy can use: {error}") from None
    return cls


def msgtype_name(cls: type) -> str:
    """'pkg/msg/Name' of an rclpy message class."""
    module = cls.__module__.split(".")
    return f"{module[0]}/{module[1]}/{cls.__name__}"


def set_header(msg: Any, header: Any) -> None:
    msg.header.stamp.sec = header.stamp.sec
    msg.header.stamp.nanosec = header.stamp.nanosec
    msg.header.frame_id = header.frame_id


def image_msg(image_cls: type, header: Any, array_: np.ndarray, encoding: str) -> Any:
    """A sensor_msgs/Image (class `image_cls`) carrying `array_` with the input `header`."""
    msg = image_cls()
    set_header(msg, header)
    fields = image_fields(array_, encoding)
    data = array.array("B")
    data.frombytes(fields.pop("data"))
    for key, value in fields.items():
        setattr(msg, key, value)
    msg.data = data
    return msg


def _convert(value: Any, type_name: str) -> Any:
    match = _ARRAY_RE.match(type_name) or _SEQUENCE_RE.match(type_name)
    if match:
        base, fixed = match.group("base").strip(), type_name.endswith("]")
        if base in NUMERIC:
            typecode, dtype = NUMERIC[base]
            values = np.ascontiguousarray(np.asarray(value, dtype=dtype).reshape(-1))
            if fixed:
                return values.copy()
            out = array.array(typecode)
            out.frombytes(values.tobytes())
            return out
        return [_convert(item, base) for item in value]
    if type_name in NUMERIC:
        return float(value) if type_name in ("float", "double", "long double") else int(value)
    if type_name == "boolean":
        return bool(value)
    if type_name in ("octet", "byte"):
        return bytes([int(value) & 0xFF]) if not isinstance(value, (bytes, bytearray)) else bytes(value)
    if type_name == "char":
        return value if isinstance(value, str) else chr(int(value))
    if _STRING_RE.match(type_name):
        return str(value)
    return to_rclpy(value, message_class(type_name))


def to_rclpy(source: Any, cls: type) -> Any:
    """An rclpy `cls` message with the fields of `source` (a rosbags message, or any object with those
    attribute names)."""
    msg = cls()
    for name, type_name in cls.get_fields_and_field_types().items():
        if not hasattr(source, name):
            continue
        setattr(msg, name, _convert(getattr(source, name), type_name))
    return msg
