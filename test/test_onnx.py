"""ONNX export: onnxruntime outputs equal PyTorch's (max abs diff <= 1e-4), metadata embedded."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import torch

from densehybrid_ros.onnx_export import OUTPUT_NAMES, export_onnx
from densehybrid_ros.weights import METADATA_KEY, default_metadata

from conftest import TINY


def test_onnxruntime_parity_and_metadata(tmp_path, tiny_model):
    metadata = default_metadata(TINY)
    path = export_onnx(tiny_model, metadata, tmp_path / "model.onnx", height=64, width=96)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(OUTPUT_NAMES)
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(3))  # batch 2 > export batch 1
    got = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        ref = tiny_model.dense_outputs(x, OUTPUT_NAMES[1:])
    expected = [ref.logits] + [ref.scores[n] for n in OUTPUT_NAMES[1:]]
    for name, a, b in zip(OUTPUT_NAMES, got, expected):
        assert a.shape == tuple(b.shape), name
        assert np.abs(a - b.numpy()).max() <= 1e-4, name
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props[METADATA_KEY])["architecture"]["num_classes"] == TINY.num_classes


def test_export_size_must_fit_the_stride(tmp_path, tiny_model):
    import pytest

    with pytest.raises(ValueError, match="multiples of 32"):
        export_onnx(tiny_model, default_metadata(TINY), tmp_path / "m.onnx", height=60, width=96)
