"""Shared fixtures: small models and weights files written through the project's own format; the test process's
own ROS 2 domain.

Isolation: every test process (each pytest-xdist worker too) talks DDS in a domain of its own, derived from its pid,
with discovery limited to this host; it is set in the environment here, before any test runs, so that every child
process a test starts (nodes, recorders, the demo) inherits it. Topics carry a per-process namespace as well
(test_node_support.NAMESPACE).
"""
from __future__ import annotations

import os

import pytest
import torch

from densehybrid_ros.models import ModelConfig, build_model
from densehybrid_ros.weights import default_metadata, save_weights

TINY = ModelConfig(num_classes=5, backbone_width=8, decoder_width=16, spp_grids=(4, 2, 1))


def process_domain_id(pid: int | None = None) -> int:
    """ROS_DOMAIN_ID of a test process: 1..100 from its pid (Fast DDS domains above 101 reach the ephemeral ports)."""
    return 1 + (os.getpid() if pid is None else pid) % 100


ROS_DOMAIN_ID = process_domain_id()
os.environ["ROS_DOMAIN_ID"] = str(ROS_DOMAIN_ID)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give BN layers non-trivial statistics/affines so that eval-mode outputs are not degenerate."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return model


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return randomize_batchnorm(build_model(TINY)).eval()


@pytest.fixture
def tiny_weights(tmp_path, tiny_model):
    return save_weights(tmp_path / "tiny.safetensors", tiny_model, default_metadata(TINY))


@pytest.fixture
def one_torch_thread():
    """Tiny tensor ops run far faster single-threaded on this shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_sim_weights(path, threshold: float = 0.0):
    """Random TINY-sized weights with the sim world's 15 classes and a manual threshold."""
    import dataclasses

    from densehybrid_ros.sim.taxonomy import SIM_CLASSES
    from densehybrid_ros.weights import Calibration, ClassInfo

    arch = dataclasses.replace(TINY, num_classes=len(SIM_CLASSES))
    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(arch)).eval()
    meta = default_metadata(arch, classes=tuple(ClassInfo(n, c) for n, c in SIM_CLASSES),
                            calibration=Calibration(threshold=threshold, method="manual"))
    return save_weights(path, model, meta)


def render_small_sim(root, split: str, frames: int, seed: int, frames_per_scene: int):
    """A 128x64 sim split in which every frame gets anomalies (small and fast, for tests)."""
    import dataclasses

    from densehybrid_ros.sim.dataset import render_dataset
    from densehybrid_ros.sim.world import SimConfig

    cfg = dataclasses.replace(SimConfig(), width=128, height=64, frames_per_scene=frames_per_scene,
                              anomaly_frame_prob=1.0)
    render_dataset(root, split, frames, seed=seed, config=cfg, workers=1, progress=False)
    return root
