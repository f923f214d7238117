"""Several processes or GPUs: DistributedDataParallel launched with ``torchrun``.

``torchrun --nproc_per_node 2 -m medistill train ...`` (or ``medistill`` as the script) sets RANK / WORLD_SIZE /
LOCAL_RANK; we initialise the process group (NCCL on CUDA, gloo on CPU), shard the training data with a
DistributedSampler, and let rank 0 alone write files and evaluate.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


@contextmanager
def process_group(device: torch.device) -> Iterator[bool]:
    """Initialise the process group when launched by torchrun; yields whether training is distributed."""
    if world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        yield dist.is_available() and dist.is_initialized()
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    try:
        yield True
    except BaseException:
        # no barrier: the other ranks may be waiting in another collective, and would wait for this one forever;
        # leaving lets torchrun see the failure and stop them, and this rank's error reaches its stderr
        dist.destroy_process_group()
        raise
    dist.barrier()
    dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: float, device: torch.device) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's decision (early stop, NaN) for every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())
