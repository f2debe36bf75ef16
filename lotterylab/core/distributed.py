"""One run on several processes under torchrun: the process group, rank queries, DDP wrapping and rank-0 broadcasts.

Outside torchrun (no WORLD_SIZE > 1 in the environment) every function is a no-op or answers as rank 0 of 1, so
single-process runs take exactly the code path they always took.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""The environment torchrun gives each process; init_process_group("env://") reads all but LOCAL_RANK."""


def launched() -> bool:
    """True in a process that torchrun (or srun with the same variables) started as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    """True once this process has joined a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes checkpoints, results and the config, and holds the run lock."""
    return rank() == 0


def local_rank() -> int:
    """This process's index on its node (its GPU): torchrun's LOCAL_RANK, 0 outside torchrun."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def init(device: torch.device) -> None:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU); a no-op outside torchrun or if joined."""
    if not launched() or dist.is_initialized():
        return
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise ValueError(f"environment: WORLD_SIZE is {os.environ['WORLD_SIZE']} but {missing[0]} is not set; "
                         "start multi-process runs with torchrun")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    atexit.register(destroy)


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def wrap(model: nn.Module, device: torch.device, sync_batchnorm: bool) -> nn.Module:
    """`model` itself in one process; else DistributedDataParallel over it, which averages gradients over ranks.

    SyncBatchNorm (CUDA only in PyTorch) replaces the BatchNorm layers of `model` in place, keeping their tensors.
    """
    if not is_distributed():
        return model
    if sync_batchnorm:
        if device.type != "cuda":
            raise ValueError(f"train.sync_batchnorm: PyTorch's SyncBatchNorm needs CUDA devices, not {device.type}")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def broadcast_object(value: Any) -> Any:
    """Rank 0's `value` on every rank (pickled: for small values such as flags and names)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_same(value: Any, what: str) -> None:
    """Raise on every rank whose `value` differs from rank 0's, naming `what` (e.g. the mask's layer names)."""
    expected = broadcast_object(value)
    if value != expected:
        raise RuntimeError(f"rank {rank()}: {what} differ from rank 0's ({value!r} != {expected!r})")


def broadcast_tensors(tensors: Iterable[Tensor]) -> None:
    """Overwrite each tensor in place with rank 0's, in order; every rank passes the same shapes and dtypes."""
    if is_distributed():
        for tensor in tensors:
            dist.broadcast(tensor, src=0)


def sum_over_ranks(tensor: Tensor) -> Tensor:
    """The tensor summed over all ranks, in place (unchanged in one process)."""
    if is_distributed():
        dist.all_reduce(tensor, dist.ReduceOp.SUM)
    return tensor


def min_over_ranks(tensor: Tensor) -> Tensor:
    """The elementwise minimum over all ranks, in place (unchanged in one process)."""
    if is_distributed():
        dist.all_reduce(tensor, dist.ReduceOp.MIN)
    return tensor
