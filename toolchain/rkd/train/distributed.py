"""Data-parallel training with ``torchrun`` and DistributedDataParallel (NCCL on GPU, gloo on CPU).

``torchrun --nproc_per_node=N -m rkd distill RECIPE.yaml …`` sets RANK, WORLD_SIZE and LOCAL_RANK; rkd then keeps
the recipe's batch size as the GLOBAL batch (each rank gets batch_size / N rows of every step), replicates the
teacher, and lets rank 0 alone write metrics and checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rkd.errors import UsageError


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op when not distributed)."""
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of ``t`` over ranks, in place (no-op when not distributed)."""
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


def init_distributed(device: str) -> tuple[DistContext, str]:
    """Join the process group that ``torchrun`` describes in the environment; return the context and the device.

    Without WORLD_SIZE > 1 this does nothing and returns ``device`` unchanged. On CUDA each rank takes
    ``cuda:LOCAL_RANK`` and NCCL; on CPU gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(), device
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        if local >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs are visible")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return DistContext(rank=rank, world_size=world, local_rank=local), device


def current_context() -> DistContext:
    """The context of an already initialised process group (rank 0 of 1 otherwise)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistContext()
