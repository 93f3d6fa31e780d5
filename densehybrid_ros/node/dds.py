"""Fast DDS transport defaults for camera-sized messages (see config/dds/fastdds_large_images.xml for the why and
the measurement). Call `use_large_image_transport()` before `rclpy.init` in every process that publishes images."""
from __future__ import annotations

import os
from pathlib import Path

PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_BUILTIN_TRANSPORTS")


def large_image_profile() -> Path:
    from densehybrid_ros.paths import share_dir

    return share_dir() / "config" / "dds" / "fastdds_large_images.xml"


def use_large_image_transport(environ: dict | None = None) -> Path | None:
    """Point Fast DDS at the project's large-image profile, unless the user configured DDS already (a profile
    file, a builtin-transport mode, or an RMW other than Fast DDS). Returns the profile set, or None."""
    env = os.environ if environ is None else environ
    if any(env.get(name) for name in PROFILE_VARIABLES):
        return None
    if env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") not in ("rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp"):
        return None
    try:
        profile = large_image_profile()
    except FileNotFoundError:
        return None
    if not profile.is_file():
        return None
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)
    return profile


def init_ros_process(args: list[str] | None) -> "threading.Event":
    """Start rclpy in a process of this project (node, replay, record, sim camera): the large-image DDS profile,
    `rclpy.init(args)` without rclpy's signal handlers, and SIGINT/SIGTERM setting the returned event, so that
    the caller's loop ends and it shuts down in order (closing bags, finishing the lifecycle)."""
    import signal
    import threading

    import rclpy
    from rclpy.signals import SignalHandlerOptions

    use_large_image_transport()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop
