"""Optimiser pieces shared by the pretraining modules: the linear learning-rate scaling rule, AdamW parameter
groups without weight decay on norms, biases and position embeddings, and a per-step warmup + cosine schedule.

The scaling rule is ``lr = base_lr × effective batch / base_batch_size``. ``base_batch_size`` is 256 for a
learning rate given per 256 samples (MAE's and AudioMAE's ``blr``); a paper table that states an absolute
learning rate at its own global batch (Hiera's Tables 11 and 14) is written as ``base_lr`` = that rate and
``base_batch_size`` = that batch, so the optimiser gets exactly the table's rate at the table's batch and a
linearly scaled one at any other.

The scaling rule and the schedule live in ``unveil.common.schedule`` (fine-tuning uses them too) and are
importable from here. The schedule is timm's ``CosineLRScheduler`` driven per optimiser step (``step_update``),
so a LightningModule using it overrides ``lr_scheduler_step`` (see ``MAEPretrainModule``).
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn
from unveil.common.config import as_options, plain_options
from unveil.common.schedule import (  # noqa: F401  (shared with fine-tuning; importable from here as before)
    REFERENCE_BATCH_SIZE,
    OptimizerConfig,
    scaled_lr,
    warmup_cosine_lr,
    warmup_cosine_scheduler,
)

WRAPPER_NAME_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
"""What FSDP, activation checkpointing and ``torch.compile`` insert into parameter names."""


def unwrapped_name(name: str) -> str:
    """A parameter name as the bare model spells it (wrapper segments removed)."""
    for part in WRAPPER_NAME_PARTS:
        name = name.replace(part, "")
    return name


def no_weight_decay_names(model: nn.Module, no_weight_decay: Collection[str] | None = None) -> frozenset[str]:
    """Names of the parameters that get no weight decay: timm's rule (``timm.optim.param_groups_weight_decay``):
    every 1-D parameter and bias (norms, biases), and every name matching a glob in ``no_weight_decay``
    (default: ``model.no_weight_decay()``, the position embeddings). Frozen parameters are left out.

    Call it on the bare model, before a strategy wraps it: FSDP flattens parameters into 1-D shards, so their
    shapes no longer tell a weight matrix from a bias; :func:`weight_decay_param_groups` then matches the
    wrapped model's parameters to these names.
    """
    from timm.optim import param_groups_weight_decay

    if no_weight_decay is None:
        no_weight_decay = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    # any weight decay > 0 makes timm sort the parameters; only the group without decay is read here
    groups = param_groups_weight_decay(model, weight_decay=1.0, no_weight_decay_list=tuple(no_weight_decay))
    without = {id(param) for group in groups if group["weight_decay"] == 0.0 for param in group["params"]}
    return frozenset(unwrapped_name(name) for name, param in model.named_parameters() if id(param) in without)


def weight_decay_param_groups(
    model: nn.Module,
    weight_decay: float,
    no_weight_decay: Collection[str] | None = None,
    no_decay_names: Collection[str] | None = None,
) -> list[dict]:
    """AdamW parameter groups: no weight decay for 1-D parameters (norms, biases) and for the names (or globs) in
    ``no_weight_decay`` (default: ``model.no_weight_decay()``, the position embeddings).

    ``no_decay_names``: the no-decay set worked out earlier on the bare model with :func:`no_weight_decay_names`.
    Give it when ``model`` may be wrapped by FSDP; names are compared without the wrappers' segments.
    """
    if no_decay_names is None:
        no_decay_names = no_weight_decay_names(model, no_weight_decay)
    no_decay_names = frozenset(no_decay_names)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if unwrapped_name(name) in no_decay_names else decay).append(param)
    groups = []
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    return groups


def adamw(params, **kwargs) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` with the fastest implementation torch has for the parameters' device.

    The fused kernel (one kernel for all parameters: CUDA, CPU, XPU, MPS, ... as torch supports) where torch
    accepts ``fused=True``, else the multi-tensor ``foreach`` one, else the per-parameter loop. All three compute
    the same update; ``implementation(optimizer)`` says which was chosen. ``kwargs`` are AdamW's (lr, betas, ...).
    """
    groups = list(params)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
        pass
    try:
        return torch.optim.AdamW(groups, foreach=True, **kwargs)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(groups, foreach=False, **kwargs)


def implementation(optimizer: torch.optim.Optimizer) -> str:
    """'fused', 'foreach' or 'for-loop': the implementation an optimiser from :func:`adamw` runs."""
    defaults = optimizer.defaults
    if defaults.get("fused"):
        return "fused"
    return "foreach" if defaults.get("foreach") else "for-loop"


class WarmupCosineAdamW:
    """The optimiser of a pretraining LightningModule (mixin): AdamW over ``self.model`` with the weight-decay
    groups of ``self.no_decay_names``, and the learning rate and warmup + cosine schedule of an
    :class:`~unveil.common.schedule.OptimizerConfig` (``lr``, or ``base_lr × effective batch /
    base_batch_size``; see the module docstring).

    The module's constructor calls ``_init_optimizer`` with the model and its ``optimizer`` argument. After
    ``configure_optimizers``, ``peak_lr`` and (when scaled) ``effective_batch_size`` say what was chosen.
    """

    def _init_optimizer(self, model: nn.Module, optimizer, default: OptimizerConfig) -> None:
        """Check and keep the settings (call from the module's constructor, after ``save_hyperparameters``);
        ``optimizer`` is an ``OptimizerConfig`` or a mapping of some of its fields (the rest from ``default``).
        Sets ``self.model``."""
        self.optimizer_config = as_options(type(self).__name__, "optimizer", optimizer, OptimizerConfig, default)
        plain_options(self.hparams)
        self.model = model
        # Decided on the bare model: a strategy such as FSDP may wrap it and flatten its parameters into 1-D
        # shards before configure_optimizers runs.
        self.no_decay_names = no_weight_decay_names(model)
        self.effective_batch_size: int | None = None  # set by configure_optimizers when lr is scaled
        self.peak_lr: float | None = None

    def configure_optimizers(self):
        from lightning.pytorch.utilities import rank_zero_info

        name, trainer, config = type(self).__name__, self.trainer, self.optimizer_config
        if trainer.train_dataloader is None:
            # With max_epochs=-1 Lightning has not loaded the data yet; batch sizes and epoch lengths need it.
            trainer.fit_loop.setup_data()
        self.peak_lr, self.effective_batch_size = config.peak_lr(trainer, name)
        # Only self.model: a frozen teacher (MAViL stage 2) is not a submodule and never reaches the optimiser.
        groups = weight_decay_param_groups(self.model, config.weight_decay, no_decay_names=self.no_decay_names)
        optimizer = adamw(groups, lr=self.peak_lr, betas=config.betas)
        rank_zero_info(f"{name}: AdamW, {implementation(optimizer)} implementation")
        return config.scheduled(optimizer, trainer, name)

    def lr_scheduler_step(self, scheduler, metric) -> None:
        # timm schedulers are driven by the number of optimiser steps taken so far.
        scheduler.step_update(num_updates=self.global_step)
