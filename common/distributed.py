"""Rank, world size and gathers that work with and without a process group (one process: identity)."""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["gather_uneven", "rank", "world_size"]


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the default process group; 0 without one."""
    return dist.get_rank() if _initialized() else 0


def world_size() -> int:
    """The number of processes in the default process group; 1 without one."""
    return dist.get_world_size() if _initialized() else 1


@torch.no_grad()
def gather_uneven(x: torch.Tensor) -> torch.Tensor:
    """[B_r, ...] on rank r → [sum_r B_r, ...] on every rank, in rank order; ranks may hold different
    ``B_r`` (the last batch of an epoch). No gradient flows through it."""
    world = world_size()
    if world == 1:
        return x
    size = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    sizes = torch.zeros(world, dtype=torch.long, device=x.device)
    dist.all_gather_into_tensor(sizes, size)
    largest = int(sizes.max())
    padded = x.detach().contiguous()
    if x.shape[0] < largest:  # all_gather needs equal shapes: pad, then trim
        padded = torch.cat([padded, padded.new_zeros(largest - x.shape[0], *x.shape[1:])])
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(n)] for part, n in zip(parts, sizes.tolist())])
