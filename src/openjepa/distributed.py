"""torchrun / DDP set-up: a few guarded lines, not a framework.

``torchrun --nproc_per_node N -m openjepa.cli train CONFIG`` (or ``openjepa`` under torchrun)
sets RANK / WORLD_SIZE / LOCAL_RANK; we join the process group (NCCL on GPU, gloo on CPU).
``data.batch_size`` is per process: the global batch is batch_size x world size.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over processes (in place)."""
        if self.size > 1:
            dist.all_reduce(tensor)
            tensor /= self.size
        return tensor

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every process if ``flag`` is true on one of them."""
        if self.size == 1:
            return flag
        t = torch.tensor(int(flag), device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed() -> World:
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    owns = not dist.is_initialized()
    if owns:
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return World(rank, size, local_rank, owns)
