"""Small pieces of model math that several models share: random keep masks, per-patch normalisation and
stochastic-depth rates. Hiera (mask units), its MAE, and MAViL's ViT encoders (tokens) all use these."""

from __future__ import annotations

import torch

__all__ = [
    "drop_path_rates",
    "keep_count",
    "keep_indices",
    "keep_mask",
    "normalize_patches",
    "patch_mean_std",
    "random_keep_indices",
    "random_keep_mask",
]


# ---------------------------------------------------------------------------------------- keep masks


def keep_count(num_tokens: int, mask_ratio: float, min_keep: int = 0) -> int:
    """How many of ``num_tokens`` stay visible at ``mask_ratio``: ``floor(N * (1 - ratio))``, as the official
    Hiera and MAE code round, with an epsilon so that a product that is an integer on paper
    (40 * (1 - 0.8) = 7.99999... in floating point) is not rounded down; then at least ``min_keep``. With the
    default 0 it may be 0 (8 units at 0.9, as in the official Hiera); a model that pools the visible tokens
    asks for 1 (MAViL). ValueError outside [0, 1)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {mask_ratio}")
    return max(min_keep, int(num_tokens * (1.0 - mask_ratio) + 1e-6))


def random_keep_indices(
    batch_size: int, num_tokens: int, mask_ratio: float, device=None, min_keep: int = 0
) -> torch.Tensor:
    """[B, K] ascending indices of ``K = keep_count(N, mask_ratio, min_keep)`` random visible tokens (or mask
    units) per sample: the ``K`` of lowest uniform noise, one ``torch.rand(B, N)`` draw. Static shapes and no
    host sync, so it is graph-safe; ``keep_mask`` turns it into the bool mask of the same draw."""
    keep = keep_count(num_tokens, mask_ratio, min_keep)
    noise = torch.rand(batch_size, num_tokens, device=device)
    return noise.argsort(dim=1)[:, :keep].sort(dim=1).values


def random_keep_mask(
    batch_size: int, num_tokens: int, mask_ratio: float, device=None, min_keep: int = 0
) -> torch.Tensor:
    """[B, N] bool, True = visible: the draw of :func:`random_keep_indices` as a mask."""
    return keep_mask(random_keep_indices(batch_size, num_tokens, mask_ratio, device, min_keep), num_tokens)


def keep_indices(keep: torch.Tensor) -> torch.Tensor:
    """[B, N] bool (True = visible, the same count in every row) → [B, K] indices of the visible tokens in
    ascending order. An integer tensor is taken to be such indices already and returned unchanged.

    The bool path reads the count on the host (a sync, and a graph break under ``torch.compile``); graph-safe
    code passes indices drawn outside the compiled region (``random_keep_indices``)."""
    if keep.dtype != torch.bool:
        return keep
    counts = keep.sum(dim=1)
    if bool((counts != counts[0]).any()):
        raise ValueError(f"every sample must keep the same number of tokens, got counts {counts.tolist()}")
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # visible first, each group in order
    return order[:, : int(counts[0])]


def keep_mask(keep: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """[B, K] visible-token indices (or a [B, N] bool mask, returned unchanged) → [B, num_tokens] bool,
    True = visible. A scatter with static shapes: graph-safe."""
    if keep.dtype == torch.bool:
        return keep
    empty = torch.zeros(keep.shape[0], num_tokens, dtype=torch.bool, device=keep.device)
    return empty.scatter(1, keep, True)


# ---------------------------------------------------------------------------------------- per-patch targets


def patch_mean_std(patches: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and ``sqrt(unbiased variance + eps)`` of every patch over its values: [..., P] → two [..., 1]
    (the ``** 0.5`` of the official MAE code, so targets match it bit for bit)."""
    return patches.mean(dim=-1, keepdim=True), (patches.var(dim=-1, keepdim=True) + eps) ** 0.5


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Every patch [..., P] at zero mean and unit variance over its values (MAE's ``norm_pix_loss``); the
    inverse, for pictures, is ``normalized * std + mean`` with :func:`patch_mean_std` of the input."""
    mean, std = patch_mean_std(patches, eps)
    return (patches - mean) / std


# ---------------------------------------------------------------------------------------- stochastic depth


def drop_path_rates(drop_path_rate: float, depth: int) -> list[float]:
    """Per-block drop-path rates rising linearly from 0 to ``drop_path_rate`` over ``depth`` blocks (the rule
    of Hiera, SAM 2 and timm's ViT). Plain Python floats, so a model builds on the meta device too."""
    return [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
