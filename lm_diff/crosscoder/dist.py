"""Data-parallel context: reductions over the torchrun group (no-ops in a single process), and its set-up."""

from __future__ import annotations

import os

import torch


class DistCtx:
    """Reductions over the data-parallel group; a plain instance is the single-process no-op."""

    def __init__(self, enabled: bool = False):
        self.enabled = enabled and torch.distributed.is_available() and torch.distributed.is_initialized()
        self.world = torch.distributed.get_world_size() if self.enabled else 1
        self.rank = torch.distributed.get_rank() if self.enabled else 0

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t

    def max_(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return t

    def cat(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate equally shaped 1-d tensors from every rank (rank order)."""
        if not self.enabled:
            return t
        out = [torch.empty_like(t) for _ in range(self.world)]
        torch.distributed.all_gather(out, t.contiguous())
        return torch.cat(out)


LOCAL = DistCtx(False)


def init_dist(device: str = "cpu") -> tuple[DistCtx, torch.device]:
    """Join the torchrun group when ``WORLD_SIZE`` > 1 and pick this rank's device.

    CUDA devices use NCCL with one GPU per rank (``cuda:LOCAL_RANK``; a configured ``cuda:N`` is ignored under torchrun,
    the launcher owns the placement); everything else uses gloo on the configured device. One process: the configured
    device as is.
    """
    dev = torch.device("cpu" if device in ("", "models") else device)   # "models": a config built without a run
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and torch.distributed.is_available():
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        return DistCtx(True), dev
    return DistCtx(False), dev


def barrier(dist: DistCtx) -> None:
    if dist.enabled:
        torch.distributed.barrier()
