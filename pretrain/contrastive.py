"""Contrastive pieces: InfoNCE with negatives from every DDP rank, and retrieval recall.

Gathering: every rank all-gathers the embeddings of all ranks (``torch.distributed.all_gather``, no autograd)
and puts its own tensor back into its slice, so gradients flow to the local embeddings only. Every rank then
computes the same loss over the whole global batch. Its gradient with respect to the local embeddings is
exact; DDP then averages parameter gradients over ranks, which would divide the contrastive gradient by the
world size (each rank holds only its own share of it). :func:`symmetric_info_nce` therefore multiplies the
gradient, not the value, by the world size: training on N ranks follows the same gradient as one process on
the same global batch (tested in ``tests/test_mavil_ddp.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jsonargparse.typing import NonNegativeFloat, PositiveFloat
from unveil.common.config import builtin_fields
from unveil.common.distributed import gather_with_local_grad, world_size

__all__ = [
    "ContrastiveConfig",
    "retrieval_recall",
    "scale_gradient",
    "symmetric_info_nce",
]


@dataclass
class ContrastiveConfig:
    """MAViL's contrastive terms, as both stages take them (``model.init_args.contrastive``).

    Args:
        inter_weight, inter_temperature: audio↔video InfoNCE (weight 0 turns it off, and retrieval evaluation).
        intra_weight, intra_temperature: InfoNCE between two masked views of each modality (weight 0 turns it
            off and skips the second view).
        gather_negatives: negatives from every DDP rank (else only the local batch).
    """

    inter_weight: NonNegativeFloat = 0.1
    intra_weight: NonNegativeFloat = 0.1
    inter_temperature: PositiveFloat = 0.1
    intra_temperature: PositiveFloat = 0.1
    gather_negatives: bool = True

    def __post_init__(self) -> None:
        builtin_fields(self)
        for name in ("inter_weight", "intra_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"ContrastiveConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("inter_temperature", "intra_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ContrastiveConfig.{name} must be > 0, got {getattr(self, name)!r}")


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` unchanged in value, its gradient multiplied by ``factor``."""
    if factor == 1:
        return x
    return x * factor - x.detach() * (factor - 1)


def symmetric_info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: float,
    valid: torch.Tensor | None = None,
    gather: bool = True,
) -> torch.Tensor:
    """Symmetric InfoNCE between paired embeddings ``a`` [B, E] and ``b`` [B, E] (row i of each is a pair).

    Cosine similarities over ``temperature``; the loss is the mean of the a→b and b→a cross-entropies, each
    averaged over the global batch. With ``gather`` the negatives come from every DDP rank
    (``unveil.common.distributed.gather_with_local_grad``) and the result is the loss of the whole global batch, the same on every
    rank. ``valid`` [B] bool leaves pairs out as queries (e.g. clips without audio) while they stay in as
    negatives; with no valid pair the loss is 0 (still connected to the graph).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    world = world_size() if gather else 1
    if world > 1:
        a, b = gather_with_local_grad(a), gather_with_local_grad(b)
        if valid is not None:
            valid = gather_with_local_grad(valid.float()) > 0.5  # gloo gathers no bool tensors
    logits = a @ b.T / temperature  # [G, G]: row i = query a_i against every b
    targets = torch.arange(logits.shape[0], device=logits.device)
    per_pair = 0.5 * (
        F.cross_entropy(logits, targets, reduction="none") + F.cross_entropy(logits.T, targets, reduction="none")
    )
    if valid is None:
        loss = per_pair.mean()
    else:
        weight = valid.float()
        loss = (per_pair * weight).sum() / weight.sum().clamp_min(1.0)
    return scale_gradient(loss, world)


@torch.no_grad()
def retrieval_recall(
    query: torch.Tensor, keys: torch.Tensor, ks: Sequence[int] = (1, 5), chunk_size: int = 4096
) -> dict[int, float]:
    """Recall@k of retrieving ``keys[i]`` for ``query[i]`` by cosine similarity, over all N keys.

    The rank of the true key is the number of keys scoring strictly higher (ties count in its favour).
    """
    if query.shape[0] != keys.shape[0]:
        raise ValueError(f"need paired queries and keys, got {query.shape[0]} and {keys.shape[0]}")
    query, keys = F.normalize(query.float(), dim=-1), F.normalize(keys.float(), dim=-1)
    ranks = []
    for start in range(0, query.shape[0], chunk_size):  # [chunk, N] at a time: AudioSet's eval set has 20k clips
        sim = query[start : start + chunk_size] @ keys.T
        rows = torch.arange(sim.shape[0], device=sim.device)
        true = sim[rows, start + rows].unsqueeze(1)  # from the same product, so no rounding mismatch
        ranks.append((sim > true).sum(dim=1))  # 0 = first
    rank = torch.cat(ranks)
    return {k: float((rank < k).float().mean()) for k in ks}
