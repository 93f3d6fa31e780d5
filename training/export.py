"""Turn a training checkpoint into node weights (safetensors + metadata), optionally ONNX as well."""
from __future__ import annotations

from pathlib import Path

from densehybrid_ros.config import from_dict
from densehybrid_ros.models import ModelConfig, build_model
from densehybrid_ros.weights import ClassInfo, WeightsMetadata, save_weights
from densehybrid_training.checkpoint import load_checkpoint


def export(checkpoint: Path, out: Path, input_size: tuple[int, int] | None = None, onnx: Path | None = None):
    """Write node weights from `checkpoint`; `input_size` (W, H) is the grid the node resizes frames to."""
    state = load_checkpoint(checkpoint)
    extra = state["extra"]
    if "architecture" not in extra or "classes" not in extra:
        raise ValueError(f"{checkpoint}: checkpoint lacks the architecture/classes needed for export")
    arch = from_dict(ModelConfig, extra["architecture"])
    model = build_model(arch)
    model.load_state_dict(state["model"])
    model.eval()
    meta = WeightsMetadata(
        architecture=arch,
        classes=tuple(ClassInfo(c["name"], tuple(c["color"])) for c in extra["classes"]),
        input_size=input_size,
        provenance={"checkpoint": str(checkpoint), "step": state["step"], "code_version": state["code_version"],
                    "mode": state["config"]["mode"], "config": state["config"]},
    )
    path = save_weights(out, model, meta)
    if onnx is not None:
        from densehybrid_ros.onnx_export import export_onnx

        w, h = input_size if input_size is not None else (512, 256)
        export_onnx(model, meta, onnx, h, w)
    return path
