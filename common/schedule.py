"""Learning-rate rules shared by pretraining and fine-tuning: MAE's linear scaling rule, a per-step linear
warmup + half-cosine schedule (timm's ``CosineLRScheduler`` driven per optimiser step with ``step_update``), and
``OptimizerConfig``, the settings group every module with that schedule takes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from timm.scheduler import CosineLRScheduler
from unveil.common.config import builtin_fields

__all__ = [
    "REFERENCE_BATCH_SIZE",
    "OptimizerConfig",
    "per_device_batch_size",
    "scaled_lr",
    "warmup_cosine_lr",
    "warmup_cosine_scheduler",
]

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


@dataclass
class OptimizerConfig:
    """The optimiser and schedule settings of every warmup-cosine LightningModule (MAE, MAViL, fine-tuning,
    linear probe); each module gives its own defaults (its paper's), and a recipe sets any of them as
    ``model.init_args.optimizer.<field>``.

    Args:
        lr: absolute peak learning rate; null: ``base_lr × effective batch / base_batch_size``.
        base_lr: the learning rate at ``base_batch_size`` samples per optimiser step (linear scaling rule).
        base_batch_size: the batch ``base_lr`` is given at (256 for MAE's per-256 ``blr``; a paper table's own
            global batch where it states an absolute rate there).
        weight_decay: decoupled weight decay (none on norms, biases and position embeddings).
        betas: AdamW's (beta1, beta2); the linear probe's LARS uses its own ``momentum`` instead.
        warmup_epochs: linear warmup from 0, in epochs of the training data (fractions allowed).
        warmup_steps: the warmup in optimiser steps instead (overrides ``warmup_epochs``).
        min_lr: where the half cosine ends, at the last step.
    """

    lr: NonNegativeFloat | None = None
    base_lr: PositiveFloat = 1e-3
    base_batch_size: PositiveInt = REFERENCE_BATCH_SIZE
    weight_decay: NonNegativeFloat = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: NonNegativeFloat = 0.0
    warmup_steps: NonNegativeInt | None = None
    min_lr: NonNegativeFloat = 0.0

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        builtin_fields(self)

        def require(field: str, ok: bool, expected: str) -> None:
            if not ok:
                raise ValueError(f"OptimizerConfig.{field} must be {expected}, got {getattr(self, field)!r}")

        require("lr", self.lr is None or self.lr >= 0, ">= 0 or null")
        require("base_lr", self.base_lr > 0, "> 0")
        require("base_batch_size", self.base_batch_size >= 1, ">= 1")
        require("weight_decay", self.weight_decay >= 0, ">= 0")
        require("betas", len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "two values in [0, 1)")
        require("warmup_epochs", self.warmup_epochs >= 0, ">= 0")
        require("warmup_steps", self.warmup_steps is None or self.warmup_steps >= 0, ">= 0 or null")
        require("min_lr", self.min_lr >= 0, ">= 0")

    def peak_lr(self, trainer, owner: str) -> tuple[float, int | None]:
        """``(lr, effective batch)`` for a run of ``trainer``: ``lr`` as given (effective batch None), or scaled
        from ``base_lr`` by the samples per optimiser step over all devices, nodes and accumulated batches."""
        if self.lr is not None:
            _info(f"{owner}: lr = {self.lr:.3g} (absolute, from optimizer.lr)")
            return self.lr, None
        effective = (
            per_device_batch_size(trainer)
            * trainer.num_devices
            * trainer.num_nodes
            * trainer.accumulate_grad_batches
        )
        lr = scaled_lr(self.base_lr, effective, self.base_batch_size)
        _info(
            f"{owner}: lr = base_lr {self.base_lr:.3g} x effective batch {effective} / "
            f"base_batch_size {self.base_batch_size} = {lr:.3g}"
        )
        return lr, effective

    def warmup(self, trainer) -> int:
        """Warmup in optimiser steps: ``warmup_steps``, else ``warmup_epochs`` of the training data (at most
        the whole run)."""
        if self.warmup_steps is not None:
            warmup = self.warmup_steps
        elif self.warmup_epochs:
            batches = trainer.num_training_batches
            if not math.isfinite(batches):
                raise ValueError(
                    "the training data has no length, so optimizer.warmup_epochs cannot be turned into steps; "
                    "set model.init_args.optimizer.warmup_steps"
                )
            warmup = round(self.warmup_epochs * math.ceil(batches / trainer.accumulate_grad_batches))
        else:
            warmup = 0
        total = trainer.estimated_stepping_batches
        return min(warmup, int(total)) if math.isfinite(total) else warmup

    def scheduled(self, optimizer: torch.optim.Optimizer, trainer, owner: str) -> dict:
        """What ``configure_optimizers`` returns: ``optimizer`` with the warmup + cosine schedule to
        ``min_lr`` over the run, stepped per optimiser step (see ``warmup_cosine_scheduler``)."""
        total, warmup = trainer.estimated_stepping_batches, self.warmup(trainer)
        scheduler = warmup_cosine_scheduler(optimizer, total, warmup, self.min_lr)
        _info(f"{owner}: {int(total)} optimiser steps, {warmup} of warmup")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def per_device_batch_size(trainer) -> int:
    """Samples per device per step: the DataModule's ``batch_size`` × its ``repeated_sampling`` (1 if it has
    none), else the training DataLoader's ``batch_size``.

    With repeated sampling this counts clips, the samples the model sees, as Hiera's Table 11 counts its batch
    of 512 (128 videos × 4). MAE-ST's ``main_pretrain.py`` counts videos instead (blr 1.6e-3 per 256 videos):
    the same rate, 8e-4 at 512 clips.
    """
    datamodule = getattr(trainer, "datamodule", None)
    size = getattr(datamodule, "batch_size", None)
    if size is None and datamodule is not None:
        size = getattr(datamodule, "hparams", {}).get("batch_size")
    if size is None:
        size = getattr(trainer.train_dataloader, "batch_size", None)
    if size is None:
        raise ValueError(
            "cannot find the per-device batch size (no datamodule.batch_size, no dataloader.batch_size); "
            "set model.init_args.optimizer.lr to an absolute learning rate"
        )
    return int(size) * int(getattr(datamodule, "repeated_sampling", 1) or 1)


def _info(message: str) -> None:
    from lightning.pytorch.utilities import rank_zero_info

    rank_zero_info(message)
