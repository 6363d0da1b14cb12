"""Rank, world size and gathers that work with and without a process group (one process: identity)."""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["gather_uneven", "gather_with_local_grad", "rank", "rank_and_world_size", "world_size"]


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the default process group; 0 without one."""
    return dist.get_rank() if _initialized() else 0


def world_size() -> int:
    """The number of processes in the default process group; 1 without one."""
    return dist.get_world_size() if _initialized() else 1


def rank_and_world_size(trainer=None) -> tuple[int, int]:
    """``(rank, world size)``: a Lightning trainer's ``(global_rank, world_size)`` when one is given (it knows
    them before the process group exists), else the default process group's; ``(0, 1)`` without either."""
    if trainer is not None:
        return trainer.global_rank, trainer.world_size
    return rank(), world_size()


@torch.no_grad()
def _gather_parts(x: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``x`` [B_r, ...], in rank order; ranks may hold different ``B_r``."""
    world = world_size()
    size = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    sizes = torch.zeros(world, dtype=torch.long, device=x.device)
    dist.all_gather_into_tensor(sizes, size)
    largest = int(sizes.max())
    padded = x.detach().contiguous()
    if x.shape[0] < largest:  # all_gather needs equal shapes: pad, then trim
        padded = torch.cat([padded, padded.new_zeros(largest - x.shape[0], *x.shape[1:])])
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return [part[: int(n)] for part, n in zip(parts, sizes.tolist())]


def gather_uneven(x: torch.Tensor) -> torch.Tensor:
    """[B_r, ...] on rank r → [sum_r B_r, ...] on every rank, in rank order; ranks may hold different
    ``B_r`` (the last batch of an epoch). No gradient flows through it."""
    if world_size() == 1:
        return x
    return torch.cat(_gather_parts(x))


def gather_with_local_grad(x: torch.Tensor) -> torch.Tensor:
    """:func:`gather_uneven`, but the local slice is ``x`` itself, so gradients flow into it (the other ranks'
    slices are constants): [B_r, ...] on rank r → [sum_r B_r, ...], rank-ordered."""
    if world_size() == 1:
        return x
    parts = _gather_parts(x)
    parts[rank()] = x
    return torch.cat(parts)
