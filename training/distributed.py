"""torchrun / DDP plumbing: one process per device, gloo on CPU, nccl on CUDA."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(device: str = "auto", local: int = 0) -> torch.device:
    """The torch device of a config's `device` (auto | cpu | cuda | cuda:N) for local rank `local` (auto and cuda:
    cuda:<local> when CUDA is available), made current when CUDA; RuntimeError when CUDA is asked for but absent."""
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    dev = torch.device(f"cuda:{local}" if use_cuda and device in ("auto", "cuda") else (device if use_cuda else "cpu"))
    if use_cuda:
        torch.cuda.set_device(dev)
    return dev


def setup(device: str = "auto") -> DistInfo:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    use_cuda = dev.type == "cuda"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local, dev)


def teardown() -> None:
    """Leave the process group. All ranks meet at a barrier first: a rank that destroys its gloo group while a
    peer is still writing (rank 0 saving a checkpoint) can abort the peer ("terminate called without an active
    exception")."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
