"""Data-parallel decomposition with PyTorch's own process groups (``torchrun``).

Under ``torchrun --nproc_per_node N`` :func:`tl_vpd.decompose` runs unchanged:

* the process group comes from the torchrun environment (gloo on CPU, NCCL on GPU);
* every rank holds the same U, V and CI parameters (same seed) and their gradients are averaged
  with ``all_reduce`` after each step's backward passes, before clipping;
* the global batch of ``batch_size`` examples is split into equal per-rank shards (rank ``r``
  keeps rows ``r·b … (r+1)·b − 1``);
* random draws (stochastic sources, routing, adversary initialisation) are made at the global
  batch shape from a generator seeded identically on every rank, and each rank keeps its shard
  of the draw: ranks use different masks, and the run equals a single-process run with the same
  global batch;
* batch-global statistics are global: the frequency-minimality frequencies and logged metrics
  are averaged across ranks, and shared-across-batch adversarial sources get all-reduced
  gradients before each ascent step;
* only rank 0 shows progress, logs to wandb and writes checkpoints (each rank adds its own shard
  of per-token persistent sources to the checkpoint).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Shard", "setup"]


@dataclass(frozen=True)
class Shard:
    """This process's place in the data-parallel group (``world == 1``: not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def take(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """This rank's shard of a tensor drawn at the global batch size along ``dim``."""
        if not self.enabled:
            return x
        b = x.shape[dim] // self.world
        return x.narrow(dim, self.rank * b, b)

    def mean_(self, tensors) -> None:
        """Average tensors in place across ranks."""
        if not self.enabled:
            return
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t.div_(self.world)

    def sum_(self, tensors) -> None:
        if not self.enabled:
            return
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)

    def global_mean_value(self, local: torch.Tensor) -> torch.Tensor:
        """A tensor whose *value* is the mean of ``local`` across ranks and whose gradient is
        ``local``'s own: averaging per-rank gradients then gives the gradient of any function of
        the global value (used for the batch-level frequency statistics)."""
        if not self.enabled:
            return local
        glob = local.detach().clone()
        self.mean_([glob])
        return local + (glob - local.detach())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def setup() -> Shard:
    """Join the torchrun process group if there is one (idempotent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Shard()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return Shard(dist.get_rank(), dist.get_world_size())
