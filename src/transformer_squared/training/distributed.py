"""torch.distributed for ``torchrun``: which process this is, barriers and gradient sums.

Under ``torchrun`` (``WORLD_SIZE`` > 1) each process takes its share of the B prompts, gradients
are all-reduced (summed; each process's loss is already divided by the global N), rank 0
evaluates and writes files. A single process is rank 0 of 1 and every call here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..errors import T2Error


@dataclass
class DistInfo:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def setup_distributed(device: str) -> tuple[DistInfo, str]:
    """Join the torchrun process group if ``WORLD_SIZE`` > 1 (gloo on CPU, nccl on CUDA)."""
    import datetime

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, False), device
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    if not dist.is_available():
        raise T2Error("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if str(device).startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
        backend = "nccl"
    else:
        backend = "gloo"
    # Rank 0 evaluates while the others wait at a barrier: allow long evaluations.
    dist.init_process_group(backend, timeout=datetime.timedelta(hours=3))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, True), device


def all_reduce_grads(dist_info: DistInfo, params: list[torch.nn.Parameter]) -> None:
    """Sum the gradients of ``params`` over the processes, in one flat all-reduce (a missing gradient counts as 0)."""
    if not dist_info.enabled:
        return
    grads: list[torch.Tensor] = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist_info.all_reduce_sum(flat)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = p.numel()
        g.copy_(flat[offset : offset + n].view_as(p))
        offset += n


__all__ = ["DistInfo", "all_reduce_grads", "setup_distributed"]
