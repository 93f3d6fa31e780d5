"""Where the package's data files (config/, launch/) live: a source checkout, a pip/venv install
(data_files under sys.prefix/share), or a colcon install (share/densehybrid_ros); and `written_whole`, how the
package writes the files that others wait for or test for."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator

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


@contextlib.contextmanager
def written_whole(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to, renamed onto `path` (os.replace, atomic) when the block ends without
    error, removed when it fails: a reader, or a resumed recipe that skips a step whose output exists, never sees half
    a file (weights, ONNX exports, metrics.json)."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
