"""Learning-rate rules shared by pretraining and fine-tuning: MAE's linear scaling rule and a per-step linear
warmup + half-cosine schedule (timm's ``CosineLRScheduler`` driven per optimiser step with ``step_update``)."""

from __future__ import annotations

import math

import torch
from timm.scheduler import CosineLRScheduler

__all__ = ["REFERENCE_BATCH_SIZE", "scaled_lr", "warmup_cosine_lr", "warmup_cosine_scheduler"]

REFERENCE_BATCH_SIZE = 256
"""The default ``base_batch_size``: MAE's linear scaling rule, ``lr = base_lr * effective_batch_size / 256``
(He et al. 2022)."""


def scaled_lr(base_lr: float, effective_batch_size: int, reference: int = REFERENCE_BATCH_SIZE) -> float:
    """The absolute learning rate for ``effective_batch_size`` samples per optimiser step."""
    if effective_batch_size <= 0:
        raise ValueError(f"effective batch size must be positive, got {effective_batch_size}")
    return base_lr * effective_batch_size / reference


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_lr: float = 0.0
) -> CosineLRScheduler:
    """Linear warmup from 0 over ``warmup_steps``, then a half cosine from the optimiser's lr down to ``min_lr``
    at ``total_steps``; updated per optimiser step with ``scheduler.step_update(num_updates=step)``.

    At step ``t`` this is ``lr * t / warmup_steps`` during warmup, then
    ``min_lr + (lr - min_lr) * (1 + cos(pi * (t - warmup_steps) / (total_steps - warmup_steps))) / 2``.
    """
    if not math.isfinite(total_steps) or total_steps <= 0:
        raise ValueError(
            f"the schedule needs a finite number of training steps, got {total_steps}; "
            "set trainer.max_epochs or trainer.max_steps"
        )
    total_steps, warmup_steps = int(total_steps), int(warmup_steps)
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup steps ({warmup_steps}) must be in [0, total steps = {total_steps}]")
    return CosineLRScheduler(
        optimizer,
        t_initial=max(total_steps - warmup_steps, 1),
        lr_min=min_lr,
        warmup_t=warmup_steps,
        warmup_lr_init=0.0,
        warmup_prefix=True,  # the cosine starts where the warmup ends, as in MAE
        cycle_limit=1,
        t_in_epochs=False,
    )


def warmup_cosine_lr(step: int, lr: float, total_steps: int, warmup_steps: int, min_lr: float = 0.0) -> float:
    """Closed form of ``warmup_cosine_scheduler`` at ``step`` (for tests and plots)."""
    if step < warmup_steps:
        return lr * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
