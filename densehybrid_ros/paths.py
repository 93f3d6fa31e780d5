"""Where the package's data files (config/, launch/) live: a source checkout, a pip/venv install
(data_files under sys.prefix/share), or a colcon install (share/densehybrid_ros)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE = "densehybrid_ros"


def share_dir() -> Path:
    """The directory holding `config/` for this installation."""
    candidates = [Path(__file__).resolve().parents[1]]  # source checkout / editable install
    candidates.append(Path(sys.prefix) / "share" / PACKAGE)
    candidates += [Path(p) / "share" / PACKAGE for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    for candidate in candidates:
        if (candidate / "config" / "model").is_dir():
            return candidate
    raise FileNotFoundError(f"cannot find the {PACKAGE} config directory; looked in {[str(c) for c in candidates]}")


def model_config_path(name: str) -> Path:
    """Path of a model preset `config/model/<name>.yaml` (or `name` itself if it is a file)."""
    if Path(name).is_file():
        return Path(name)
    path = share_dir() / "config" / "model" / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in (share_dir() / "config" / "model").glob("*.yaml"))
        raise FileNotFoundError(f"no model preset {name!r}; available: {available}")
    return path
