"""Node weights: safetensors tensors + a JSON metadata header, validated before any model is built.

File layout: a standard safetensors file whose tensors are the `DenseHybrid` state dict and whose
string metadata holds one key, `densehybrid_ros`, with the JSON of `WeightsMetadata`. Loading never
unpickles: pickle and torch.save (zip) files are recognised by their first bytes and refused.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from densehybrid_ros.classes import CITYSCAPES_CLASSES
from densehybrid_ros.config import ConfigError, from_dict, to_dict
from densehybrid_ros.models import DenseHybrid, ModelConfig, build_model
from densehybrid_ros.models.resnet import ResNet
from densehybrid_ros.paths import written_whole

FORMAT_VERSION = 1
METADATA_KEY = "densehybrid_ros"
FLOAT_DTYPES = {"F32", "F16", "BF16", "F64"}


class WeightsError(ValueError):
    """A weights file cannot be used; the message names the file and the offending field or tensor."""


@dataclass(frozen=True)
class ClassInfo:
    name: str
    color: tuple[int, int, int]

    def validate(self) -> None:
        if not self.name:
            raise ValueError("class name must not be empty")
        if any(not 0 <= c <= 255 for c in self.color):
            raise ValueError(f"colour of {self.name!r} must be 0..255 RGB, got {self.color}")


@dataclass(frozen=True)
class Normalization:
    """Per-channel normalisation of RGB scaled to [0, 1]: (x - mean) / std."""

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def validate(self) -> None:
        if any(not s > 0 for s in self.std):
            raise ValueError(f"std must be > 0, got {self.std}")


OPERATING_POINT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")  # names of operating points (also a node parameter)


@dataclass(frozen=True)
class OperatingPoint:
    """One calibrated threshold on the hybrid score and how it was chosen (a pixel is anomalous where score >=
    threshold, `densehybrid_ros.scores.is_anomalous`), with the rates it reached on the calibration data."""

    threshold: float
    method: str  # how it was chosen, in words (e.g. "lowest threshold flagging at most 1% of inlier pixels")
    tpr: float | None = None  # share of the calibration data's anomaly pixels flagged at it
    fpr: float | None = None  # share of its inlier pixels flagged at it

    def validate(self) -> None:
        if not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be finite, got {self.threshold}")
        if not self.method:
            raise ValueError("method must say how the threshold was chosen")
        for name in ("tpr", "fpr"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")


@dataclass(frozen=True)
class Calibration:
    """The open-set thresholds on the hybrid score and how they were chosen.

    `threshold` is the thesis protocol's point (TPR 95% on held-out anomalies, used for open-mIoU); files written
    before operating points existed have only it. `operating_points` holds every calibrated threshold by name (e.g.
    "tpr95", "fpr1"); `default` names the one the node applies unless told otherwise. The point named like `method`
    must have `threshold` as its value (the same fact, kept for older readers). Which threshold applies at run time:
    `resolve_threshold`."""

    threshold: float | None = None
    method: str = "uncalibrated"  # e.g. "tpr95": 95% of held-out anomaly pixels score above it
    target_tpr: float | None = None
    dataset: str | None = None  # held-out data it was chosen on
    operating_points: dict[str, OperatingPoint] = field(default_factory=dict)
    default: str | None = None  # the operating point the node uses; None = `threshold`

    def validate(self) -> None:
        if self.threshold is None and self.method != "uncalibrated":
            raise ValueError(f"method {self.method!r} needs a threshold; use method 'uncalibrated' without one")
        if self.threshold is not None and (self.method == "uncalibrated" or not math.isfinite(self.threshold)):
            raise ValueError("a threshold must be finite and name its calibration method")
        if self.target_tpr is not None and not 0 < self.target_tpr <= 1:
            raise ValueError(f"target_tpr must be in (0, 1], got {self.target_tpr}")
        for name, point in self.operating_points.items():
            try:
                point.validate()
            except ValueError as error:
                raise ValueError(f"operating point {name!r}: {error}") from None
        bad = [name for name in self.operating_points if not OPERATING_POINT_RE.match(name)]
        if bad:
            raise ValueError(f"operating point names {bad} must start with a letter and hold only letters, digits, "
                             "'_', '.' and '-'")
        if self.default is not None and self.default not in self.operating_points:
            raise ValueError(f"default {self.default!r} is not one of the operating points "
                             f"{sorted(self.operating_points)}")
        same = self.operating_points.get(self.method)
        if same is not None and self.threshold is not None and same.threshold != self.threshold:
            raise ValueError(f"operating point {self.method!r} has threshold {same.threshold}, but threshold (the "
                             f"{self.method} point) is {self.threshold}")

    def points(self) -> dict[str, OperatingPoint]:
        """The named thresholds: `operating_points`, or for a file without them its one `threshold` under its method's
        name (e.g. "tpr95"); empty when uncalibrated."""
        if self.operating_points or self.threshold is None:
            return dict(self.operating_points)
        return {self.method: OperatingPoint(self.threshold, self.method)}


@dataclass(frozen=True)
class ClassBias:
    """A per-class bias on the logits before the closed-set argmax (`scores.closed_set_decision`: post-hoc logit
    adjustment), and how it was chosen. The anomaly scores do not see it."""

    values: tuple[float, ...]  # b_k, one per class, in the order of `classes`
    method: str  # how it was chosen, in words (e.g. "b = -0.8 ln w_enet: best mIoU on sim:data/sim_val_big")

    def validate(self) -> None:
        if not all(math.isfinite(v) for v in self.values):
            raise ValueError(f"class bias values must be finite, got {list(self.values)}")
        if not self.method:
            raise ValueError("class bias method must say how the bias was chosen")


class ThresholdChoice(NamedTuple):
    """The threshold in force (None: none known, open-set outputs off) and where it comes from, in words."""

    value: float | None
    source: str


def resolve_threshold(calibration: Calibration, threshold: float | None = None,
                      operating_point: str | None = None) -> ThresholdChoice:
    """Which threshold applies, the one rule for the node, the Predictor and the tools: an explicit `threshold` >
    the named `operating_point` of the weights > the weights' default point > their legacy `threshold` > none.
    An `operating_point` the weights do not hold is a ValueError naming the ones they do ("" counts as None)."""
    if threshold is not None:
        return ThresholdChoice(float(threshold), "parameter")
    points = calibration.points()
    if operating_point:
        if operating_point not in points:
            raise ValueError(f"operating point {operating_point!r} is not in the weights; they hold "
                             f"{sorted(points) or 'none (uncalibrated)'}")
        return ThresholdChoice(points[operating_point].threshold, f"operating point {operating_point} (parameter)")
    if calibration.default is not None:
        return ThresholdChoice(points[calibration.default].threshold,
                               f"operating point {calibration.default} (weights default)")
    if calibration.threshold is not None:
        return ThresholdChoice(calibration.threshold, "weights calibration")
    return ThresholdChoice(None, "none")


@dataclass(frozen=True)
class WeightsMetadata:
    architecture: ModelConfig
    classes: tuple[ClassInfo, ...]
    normalization: Normalization = Normalization()
    input_size: tuple[int, int] | None = None  # network grid (width, height); None = native size, padded
    calibration: Calibration = Calibration()
    class_bias: ClassBias | None = None  # None: the plain argmax of the logits
    provenance: dict[str, Any] = field(default_factory=dict)  # how the weights were made (free-form)
    format_version: int = FORMAT_VERSION

    def validate(self) -> None:
        self.calibration.validate()
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"format_version {self.format_version} is not supported (this build reads {FORMAT_VERSION})")
        if len(self.classes) != self.architecture.num_classes:
            raise ValueError(
                f"classes lists {len(self.classes)} classes but architecture.num_classes is {self.architecture.num_classes}"
            )
        if self.class_bias is not None:
            self.class_bias.validate()
            if len(self.class_bias.values) != self.architecture.num_classes:
                raise ValueError(f"class_bias has {len(self.class_bias.values)} values but the model has "
                                 f"{self.architecture.num_classes} classes")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"classes: duplicate class names in {names}")
        if self.input_size is not None:
            stride = ResNet.output_stride
            if any(s < stride or s % stride for s in self.input_size):
                raise ValueError(f"input_size must be positive multiples of {stride}, got {self.input_size}")

    @property
    def num_classes(self) -> int:
        return self.architecture.num_classes

    @property
    def threshold(self) -> float | None:
        return self.calibration.threshold

    def to_json(self) -> str:
        return json.dumps(to_dict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "WeightsMetadata":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"metadata is not valid JSON: {error}") from None
        return from_dict(cls, data)


def default_metadata(architecture: ModelConfig, **changes: Any) -> WeightsMetadata:
    """Metadata with Cityscapes class names/colours when the class count is 19, generic ones otherwise."""
    if architecture.num_classes == len(CITYSCAPES_CLASSES):
        classes = tuple(ClassInfo(n, c) for n, c in CITYSCAPES_CLASSES)
    else:
        classes = tuple(ClassInfo(f"class_{i}", CITYSCAPES_CLASSES[i % 19][1]) for i in range(architecture.num_classes))
    return replace(WeightsMetadata(architecture=architecture, classes=classes), **changes)


def _expected_shapes(architecture: ModelConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = build_model(architecture)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _sniff_safetensors(path: Path) -> None:
    """Refuse anything but a safetensors file by its first bytes, before any parser sees it."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(9)
    header_len = int.from_bytes(head[:8], "little") if len(head) == 9 else 0
    if head[8:9] == b"{" and 2 <= header_len <= size - 8:
        return
    if head.startswith(b"PK\x03\x04"):
        raise WeightsError(
            f"{path}: is a zip archive (a torch.save checkpoint?); refused: densehybrid_ros loads only "
            "safetensors and never unpickles. Convert it in a trusted environment (see README, 'Weights')."
        )
    if head[:1] == b"\x80" or head[:1] in (b"(", b"]", b"}", b"c"):
        raise WeightsError(f"{path}: looks like a Python pickle; refused without unpickling (only safetensors is accepted)")
    if len(head) < 9:
        raise WeightsError(f"{path}: truncated or empty ({size} bytes); not a safetensors file")
    raise WeightsError(f"{path}: not a safetensors file (bad header: length {header_len}, file {size} bytes)")


def read_metadata(path: str | Path) -> WeightsMetadata:
    """Validated metadata of a weights file, and a check of every tensor's name, shape and dtype
    against the architecture it declares. Reads headers only: no tensor data, no model."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    _sniff_safetensors(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{path}: unreadable safetensors file: {error}") from None
    if METADATA_KEY not in header:
        raise WeightsError(f"{path}: no '{METADATA_KEY}' metadata; not a densehybrid_ros weights file")
    try:
        metadata = WeightsMetadata.from_json(header[METADATA_KEY])
    except ConfigError as error:
        raise WeightsError(f"{path}: invalid metadata: {error}") from None
    _check_tensors(path, metadata.architecture, shapes, dtypes)
    return metadata


def _check_tensors(path: Path, arch: ModelConfig, shapes: dict, dtypes: dict) -> None:
    expected = _expected_shapes(arch)
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing:
        raise WeightsError(f"{path}: {len(missing)} tensor(s) missing for the declared architecture, e.g. {missing[:3]}")
    if unexpected:
        raise WeightsError(f"{path}: {len(unexpected)} unexpected tensor(s) for the declared architecture, e.g. {unexpected[:3]}")
    for name, shape in expected.items():
        if shapes[name] != shape:
            raise WeightsError(
                f"{path}: tensor {name} has shape {shapes[name]}, but architecture {to_dict(arch)} needs {shape}"
            )
        is_counter = name.endswith("num_batches_tracked")
        if (dtypes[name] in FLOAT_DTYPES) == is_counter:
            raise WeightsError(f"{path}: tensor {name} has dtype {dtypes[name]}")


def save_weights(path: str | Path, model: DenseHybrid, metadata: WeightsMetadata) -> Path:
    """Write `model`'s state dict and `metadata` as a safetensors file (float32 tensors), whole or not at all."""
    metadata.validate()
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    expected = _expected_shapes(metadata.architecture)
    if {k: tuple(v.shape) for k, v in state.items()} != expected:
        raise WeightsError(f"model does not match metadata.architecture {to_dict(metadata.architecture)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_whole(path) as partial:
        save_file(state, str(partial), metadata={METADATA_KEY: metadata.to_json()})
    return path


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (weights records, caches, demo provenance)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> tuple[DenseHybrid, WeightsMetadata]:
    """Validate `path` fully, then build the model it describes and load its tensors (eval mode)."""
    metadata = read_metadata(path)
    tensors = load_file(str(path))
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise WeightsError(f"{path}: tensor(s) with NaN/Inf values, e.g. {bad[:3]}")
    model = build_model(metadata.architecture)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, strict=True)
    return model.to(device).eval(), metadata
