"""sensor_msgs image payloads <-> numpy, ROS-free: every bad message gets an `ImageRejected` naming the problem.

Raw images (`sensor_msgs/Image`) are decoded with rosbags-image's `image_to_cvimage`, the cv_bridge-equivalent
colour conversion (bgr8/rgb8/bgra8/rgba8, mono8/mono16, yuv422 = UYVY and yuv422_yuy2 = YUYV, bayer_*8/16,
16-bit colour). It duck-types its argument (reads only `encoding`, `width`, `height`, `is_bigendian`, `data`),
so an rclpy message would do, but it ignores `step` and does no size checks: row padding would be decoded as
pixels and truncated data ends in a bare numpy TypeError. So `decode_image` validates the header against the
payload first, strips row padding, and hands rosbags-image a compact `RawImage` adapter.

Compressed images are decoded directly with `cv2.imdecode(..., IMREAD_COLOR)`: rosbags-image's
`compressed_image_to_cvimage` asserts on undecodable data and fails on greyscale/16-bit PNGs, while
IMREAD_COLOR always yields 8-bit BGR.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from rosbags.image import ImageError, image_to_cvimage
from rosbags.image.image import ENCODINGMAP

# Colour encodings with a defined meaning (nv12/nv21 are left out: their payload is 1.5 rows per image row,
# which rosbags-image's shape logic does not describe).
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(e for e in ENCODINGMAP if e not in ("nv12", "nv21"))
DEPTH_ENCODINGS = ("32FC1", "16UC1", "mono16")  # metres (float) or millimetres (uint16)
NATIVE_BIG_ENDIAN = sys.byteorder == "big"


class ImageRejected(ValueError):
    """The message cannot be used as an image; the text says why (encoding, size, step, payload)."""


@dataclass(frozen=True)
class RawImage:
    """The fields rosbags-image reads, with a compact (unpadded) payload."""

    encoding: str
    width: int
    height: int
    is_bigendian: int
    data: np.ndarray  # uint8, height * width * bytes_per_pixel


def bytes_per_pixel(encoding: str) -> int:
    bits, _, _, channels = ENCODINGMAP[encoding]
    return bits // 8 * channels


def _payload(data: Any) -> np.ndarray:
    """Zero-copy uint8 view of a message's `data` (array.array, bytes, list or numpy array)."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, np.uint8)
    except TypeError:
        return np.asarray(data, np.uint8).reshape(-1)


def _rows(encoding: str, width: int, height: int, step: int, data: Any, pixel_bytes: int) -> np.ndarray:
    """Validate size/step/payload and return the (height, width * pixel_bytes) uint8 rows without padding."""
    if width <= 0 or height <= 0:
        raise ImageRejected(f"zero-size image: width {width}, height {height} ({encoding})")
    row = width * pixel_bytes
    if step < row:
        raise ImageRejected(
            f"step {step} is smaller than width {width} x {pixel_bytes} bytes per pixel = {row} ({encoding})")
    payload = _payload(data)
    expected = step * height
    if payload.size < expected:
        raise ImageRejected(
            f"truncated data: {payload.size} bytes, but step {step} x height {height} = {expected} ({encoding} "
            f"{width}x{height})")
    if payload.size > expected:
        raise ImageRejected(
            f"data has {payload.size} bytes, but step {step} x height {height} = {expected}: width/height/step "
            f"do not describe the payload ({encoding} {width}x{height})")
    rows = payload.reshape(height, step)
    return rows[:, :row] if step != row else rows


def decode_image(encoding: str, width: int, height: int, step: int, is_bigendian: int, data: Any) -> np.ndarray:
    """A raw image payload as (H, W, 3) uint8 RGB (writeable, C-contiguous)."""
    if encoding not in SUPPORTED_ENCODINGS:
        raise ImageRejected(f"unsupported encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}")
    rows = _rows(encoding, width, height, step, data, bytes_per_pixel(encoding))
    if encoding in ("yuv422", "uyvy", "yuyv", "yuv422_yuy2") and width % 2:
        raise ImageRejected(f"{encoding} needs an even width (2 pixels share U and V), got {width}")
    adapter = RawImage(encoding, width, height, int(bool(is_bigendian)), np.ascontiguousarray(rows).reshape(-1))
    try:
        rgb = image_to_cvimage(adapter, "rgb8")
    except (ImageError, cv2.error, ValueError, TypeError) as error:
        raise ImageRejected(f"cannot convert {encoding} {width}x{height} to rgb8: {error}") from None
    if rgb.dtype != np.uint8 or rgb.shape != (height, width, 3):
        raise ImageRejected(f"{encoding} decoded to {rgb.dtype} {rgb.shape}, expected uint8 ({height}, {width}, 3)")
    if np.may_share_memory(rgb, adapter.data) or not rgb.flags.writeable or not rgb.flags.c_contiguous:
        rgb = rgb.copy()  # own the pixels: the message buffer may be reused
    return rgb


def decode_image_msg(msg: Any) -> np.ndarray:
    """`decode_image` on any object with sensor_msgs/Image fields (rclpy or rosbags message)."""
    return decode_image(msg.encoding, int(msg.width), int(msg.height), int(msg.step), int(msg.is_bigendian), msg.data)


def decode_compressed(format: str, data: Any) -> np.ndarray:
    """A sensor_msgs/CompressedImage payload (jpeg, png, any format OpenCV reads) as (H, W, 3) uint8 RGB."""
    if "compresseddepth" in format.lower().replace(" ", ""):
        raise ImageRejected(f"compressedDepth images are not colour images (format {format!r})")
    payload = _payload(data)
    if payload.size == 0:
        raise ImageRejected(f"empty compressed image (format {format!r})")
    bgr = cv2.imdecode(payload, cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise ImageRejected(f"cannot decode {payload.size} bytes of compressed image data (format {format!r})")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_compressed_msg(msg: Any) -> np.ndarray:
    return decode_compressed(msg.format, msg.data)


def decode_depth(encoding: str, width: int, height: int, step: int, is_bigendian: int, data: Any) -> np.ndarray:
    """A depth image as (H, W) float32 metres; invalid pixels (0, NaN, inf) are NaN.
    32FC1 is metres; 16UC1 (and mono16) is millimetres (the REP 118 conventions)."""
    if encoding not in DEPTH_ENCODINGS:
        raise ImageRejected(f"unsupported depth encoding {encoding!r}; supported: {', '.join(DEPTH_ENCODINGS)}")
    dtype = np.dtype(np.float32 if encoding == "32FC1" else np.uint16)
    rows = _rows(encoding, width, height, step, data, dtype.itemsize)
    order = ">" if is_bigendian else "<"
    depth = np.ascontiguousarray(rows).view(dtype.newbyteorder(order)).reshape(height, width)
    metres = depth.astype(np.float32) * (1.0 if encoding == "32FC1" else 0.001)
    metres[~np.isfinite(metres) | (metres <= 0)] = np.nan
    return metres


def decode_depth_msg(msg: Any) -> np.ndarray:
    return decode_depth(msg.encoding, int(msg.width), int(msg.height), int(msg.step), int(msg.is_bigendian), msg.data)


def decode_single_channel(msg: Any, dtype: type[np.generic] | np.dtype) -> np.ndarray:
    """A one-channel sensor_msgs/Image (e.g. mono8 labels, a 32FC1 score map) as an (H, W) array of `dtype`, native
    byte order, row padding removed, a copy; ImageRejected when width/height/step do not describe the payload. Which
    encodings are acceptable is the caller's check."""
    dtype = np.dtype(dtype)
    width, height = int(msg.width), int(msg.height)
    rows = _rows(msg.encoding, width, height, int(msg.step), msg.data, dtype.itemsize)
    stored = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    return np.ascontiguousarray(rows).view(stored).reshape(height, width).astype(dtype)


OUTPUT_ENCODINGS = {"mono8": (np.uint8, 1), "rgb8": (np.uint8, 3), "32FC1": (np.float32, 1)}


def image_fields(array: np.ndarray, encoding: str) -> dict[str, Any]:
    """sensor_msgs/Image fields (height, width, encoding, is_bigendian, step, data: bytes) of an output array."""
    dtype, channels = OUTPUT_ENCODINGS[encoding]
    if array.dtype != dtype or array.ndim != (2 if channels == 1 else 3) or (channels > 1 and array.shape[2] != channels):
        raise ValueError(f"{encoding} needs {np.dtype(dtype)} with {channels} channel(s), got {array.dtype} {array.shape}")
    array = np.ascontiguousarray(array)
    height, width = array.shape[:2]
    return {
        "height": height,
        "width": width,
        "encoding": encoding,
        "is_bigendian": int(NATIVE_BIG_ENDIAN and array.itemsize > 1),
        "step": width * channels * array.itemsize,
        "data": array.tobytes(),
    }


def stamp_ns(stamp: Any) -> int:
    """A builtin_interfaces/Time (rclpy or rosbags message) as integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
