"""Run by test_train_engine under torch.distributed.run: one DDP step of the real training code on this
rank's batch; rank 0 saves the averaged gradients."""
import os
import sys

import torch

from densehybrid_training.cli import build_model_and_dataset
from densehybrid_training.config import load_train_config
from densehybrid_training.engine import compute_loss, ClosedSetNet
from densehybrid_training.mixed import StepBatchSampler
from densehybrid_training import distributed


def main(config_overrides_file: str, out: str) -> None:
    overrides = open(config_overrides_file).read().split("\n")
    cfg = load_train_config(None, [o for o in overrides if o])
    info = distributed.setup("cpu")
    model, dataset, _ = build_model_and_dataset(cfg.mode, cfg)
    net = torch.nn.parallel.DistributedDataParallel(ClosedSetNet(model) if cfg.mode == "segmenter" else model)
    batch = StepBatchSampler(len(dataset), cfg.batch_size, 0, 1, cfg.seed, info.rank, info.world_size).batch(0)
    x, y, d = (torch.stack(t) for t in zip(*[dataset[k] for k in batch]))
    model.train()
    compute_loss(cfg, net, x, y, d)["total"].backward()
    if info.rank == 0:
        torch.save({n: p.grad for n, p in model.named_parameters() if p.grad is not None}, out)
    del net  # DDP's reducer holds the process group: release it before the group goes
    distributed.teardown()
    # Gloo's worker threads can abort the interpreter's final teardown ("terminate called without an active
    # exception", SIGABRT; seen once in a full test run): the work is done and saved, so leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
