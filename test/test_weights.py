"""Node weights: round trip, validation naming the field, and refusal of pickles without executing them."""
import json
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from densehybrid_ros.models import ModelConfig, build_model
from densehybrid_ros.weights import (
    METADATA_KEY, Calibration, WeightsError, default_metadata, load_weights, read_metadata, save_weights,
)

from conftest import TINY


def rewrite(path, tensors=None, metadata_edit=None, out=None):
    """Copy a weights file with edited tensors and/or metadata JSON (what a tamperer would do)."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
    tensors = load_file(str(path)) if tensors is None else tensors
    if metadata_edit:
        metadata_edit(meta)
    out = out or path.with_name("edited.safetensors")
    save_file(tensors, str(out), metadata={METADATA_KEY: json.dumps(meta)})
    return out


def test_round_trip_is_exact(tmp_path, tiny_model):
    metadata = replace(
        default_metadata(TINY),
        input_size=(128, 64),
        calibration=Calibration(threshold=-1.25, method="tpr95", target_tpr=0.95, dataset="sim:val"),
        provenance={"command": "densehybrid-train finetune", "steps": 10},
    )
    path = save_weights(tmp_path / "w.safetensors", tiny_model, metadata)
    model, loaded = load_weights(path)
    assert loaded == metadata
    for name, tensor in tiny_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x).logits, tiny_model(x).logits)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["architecture"].update(num_classes=4), "classes lists 5 classes but architecture.num_classes is 4"),
        (lambda m: m.update(format_version=99), "format_version 99 is not supported"),
        (lambda m: m["classes"][3].update(color=[0, 300, 0]), "classes\\[3\\].*0..255"),
        (lambda m: m["normalization"].update(std=[0.2, 0.0, 0.2]), "std must be > 0"),
        (lambda m: m.update(input_size=[100, 64]), "input_size must be positive multiples of 32"),
        (lambda m: m["calibration"].update(threshold=1.0), "threshold must be finite and name its calibration method"),
        (lambda m: m["architecture"].update(decoder_width="128"), "architecture.decoder_width: expected an integer"),
        (lambda m: m.update(colour_map="jet"), "unknown field.*colour_map"),
        (lambda m: m.pop("classes"), "classes: required field is missing"),
    ],
)
def test_tampered_metadata_is_named(tiny_weights, edit, message):
    with pytest.raises(WeightsError, match=message):
        read_metadata(rewrite(tiny_weights, metadata_edit=edit))


def test_missing_and_misshapen_tensors(tiny_weights):
    tensors = load_file(str(tiny_weights))
    missing = dict(tensors)
    del missing["inlier_head.conv.weight"]
    with pytest.raises(WeightsError, match="missing.*inlier_head.conv.weight"):
        load_weights(rewrite(tiny_weights, tensors=missing))
    misshapen = dict(tensors, **{"segmenter.up4.blend.conv.weight": torch.zeros(16, 16, 1, 1)})
    with pytest.raises(WeightsError, match=r"segmenter.up4.blend.conv.weight has shape \(16, 16, 1, 1\)"):
        load_weights(rewrite(tiny_weights, tensors=misshapen))
    extra = dict(tensors, **{"projector.weight": torch.zeros(3)})
    with pytest.raises(WeightsError, match="unexpected.*projector.weight"):
        load_weights(rewrite(tiny_weights, tensors=extra))
    nan = dict(tensors, **{"inlier_head.conv.bias": torch.tensor([float("nan")])})
    with pytest.raises(WeightsError, match="NaN/Inf.*inlier_head.conv.bias"):
        load_weights(rewrite(tiny_weights, tensors=nan))


def test_wrong_class_count_tensors(tmp_path):
    """Metadata consistent with itself (19 classes) over tensors of a 5-class model."""
    five = build_model(TINY)
    path = save_weights(tmp_path / "five.safetensors", five, default_metadata(TINY))
    edited = rewrite(path, metadata_edit=lambda m: m.update(
        architecture=dict(m["architecture"], num_classes=19),
        classes=[{"name": f"c{i}", "color": [i, i, i]} for i in range(19)]))
    with pytest.raises(WeightsError, match=r"segmenter.classifier.conv.weight has shape \(5, 16, 1, 1\).*needs \(19, 16, 1, 1\)"):
        load_weights(edited)


def test_save_refuses_model_that_does_not_match_metadata(tmp_path, tiny_model):
    other = ModelConfig(num_classes=5, backbone_width=16, decoder_width=16, spp_grids=(4, 2, 1))
    with pytest.raises(WeightsError, match="does not match metadata.architecture"):
        save_weights(tmp_path / "x.safetensors", tiny_model, default_metadata(other))


class Exploit:
    """Unpickling this creates a file: proof that the loader executed pickle code."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_pickle_is_refused_without_being_executed(tmp_path, protocol):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"state_dict": Exploit(sentinel)}, protocol=protocol))
    with pytest.raises(WeightsError, match="pickle"):
        load_weights(path)
    assert not sentinel.exists()


def test_torch_save_zip_is_refused_without_being_executed(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save({"payload": Exploit(sentinel)}, path)
    assert not sentinel.exists()
    with pytest.raises(WeightsError, match="zip archive.*never unpickles"):
        load_weights(path)
    assert not sentinel.exists()


def test_garbage_truncated_and_missing_files(tmp_path, tiny_weights):
    with pytest.raises(WeightsError, match="not found"):
        load_weights(tmp_path / "nope.safetensors")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="truncated or empty"):
        load_weights(empty)
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes().replace(b"\x80", b"\x81"))
    with pytest.raises(WeightsError, match="not a safetensors file"):
        load_weights(noise)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(tiny_weights.read_bytes()[:-100])
    with pytest.raises(WeightsError, match="unreadable safetensors"):
        load_weights(truncated)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(WeightsError, match="not a densehybrid_ros weights file"):
        load_weights(foreign)


def test_an_interrupted_save_leaves_no_file_and_a_finished_one_replaces_it_whole(tmp_path, tiny_model, monkeypatch):
    """Recipes skip a step whose output exists: a save that fails midway must leave no file (nor a partial beside it),
    and an earlier complete file stays as it was."""
    import densehybrid_ros.weights as weights_module
    from densehybrid_ros.paths import written_whole

    path = tmp_path / "w.safetensors"
    metadata = default_metadata(TINY)

    def crash_midway(state, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\0" * 100)  # half a file, then the process is interrupted
        raise KeyboardInterrupt

    monkeypatch.setattr(weights_module, "save_file", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        save_weights(path, tiny_model, metadata)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    save_weights(path, tiny_model, metadata)
    before = path.read_bytes()
    monkeypatch.setattr(weights_module, "save_file", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        save_weights(path, tiny_model, replace(metadata, provenance={"run": "second"}))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]
    # the context manager itself: the target appears only once the block has finished
    target = tmp_path / "metrics.json"
    with written_whole(target) as partial:
        partial.write_text("{}")
        assert not target.exists()
    assert target.read_text() == "{}"
