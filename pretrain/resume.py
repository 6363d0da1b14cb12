"""Exact resumption of pretraining, and checkpoints that a crash cannot corrupt.

A run killed at step k and resumed from its step-k checkpoint computes, bit for bit on the CPU, the same
losses and weights as the run that was never interrupted. Lightning restores the weights, the optimiser,
the learning-rate schedule, the loop counters and the mixed-precision scaler; the rest is here and in
``unveil.datasets.common``:

- **data**: the training loader's order and augmentations are functions of ``(seed, epoch, sample)``
  and its position is saved in checkpoints (``ResumableLoader``); ``restore_train_loader_position``
  makes sure Lightning actually applies that position (see its docstring).
- **model randomness**: each training step runs under a generator seeded from ``(run seed, epoch,
  batch index, rank)`` (``step_rng``), never from the global RNG state a resumed process does not have.
  MAE masks are drawn for the whole global batch and each rank takes its rows (``global_batch_mask``),
  so ``R`` ranks with batch ``b`` mask exactly as one process with batch ``R * b``.
- **checkpoint files**: ``AtomicCheckpointIO`` writes next to the target and renames, so ``last.ckpt``
  is always a complete checkpoint (it and ``PeriodicCheckpoint`` live in ``unveil.common.checkpoint_writers``;
  recipes name them here, which still resolves).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import lightning
import torch
from packaging.version import Version
from unveil.common.checkpoint_writers import AtomicCheckpointIO, PeriodicCheckpoint
from unveil.common.distributed import rank_and_world_size
from unveil.common.seeding import derive_seed, run_seed, seeded_rng

# AtomicCheckpointIO and PeriodicCheckpoint stay importable from here: recipes and the CLI name them by this
# module (class_path: unveil.pretrain.resume.PeriodicCheckpoint).
__all__ = [
    "LIGHTNING_FIXED_20550",
    "AtomicCheckpointIO",
    "PeriodicCheckpoint",
    "global_batch_mask",
    "lightning_has_issue_20550",
    "restore_train_loader_position",
    "seeded_rng",
    "step_rng",
    "step_seed",
]


# ------------------------------------------------------------------------------------------ randomness


def step_seed(module, batch_idx: int, purpose: str, per_rank: bool = True) -> int:
    """The seed of one kind of randomness (``purpose``) of one training batch: a function of the run seed
    (``seed_everything``), the epoch, the batch index in the epoch and, if ``per_rank``, the DDP rank.

    Epoch and batch index rather than ``global_step``: with gradient accumulation several batches share a
    step. Both are restored from a checkpoint, so a resumed run draws the same numbers.
    """
    parts: list[Any] = [run_seed(), purpose, module.current_epoch, batch_idx]
    if per_rank:
        parts.append(rank_and_world_size(getattr(module, "_trainer", None))[0])
    return derive_seed(*parts)


@contextmanager
def step_rng(module, batch_idx: int, device: torch.device, purpose: str = "forward"):
    """Run a training step's forward pass with the global RNGs seeded by ``step_seed`` (per rank), e.g. for
    drop path; activation checkpointing replays the same state when it recomputes."""
    with seeded_rng(step_seed(module, batch_idx, purpose), device):
        yield


def global_batch_mask(model, x: torch.Tensor, seed: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This rank's rows of a random MAE keep mask drawn for the whole global batch.

    ``model.get_random_mask`` draws [world_size * B, #mask units] (True = keep) from ``seed``; rank ``r``
    gets rows ``r * B`` to ``(r + 1) * B``, the rows its samples occupy in the global batch (the training
    loader gives each rank a contiguous share, see ``ResumableSampler``). The noise costs
    ``world_size * B * #units`` floats on ``x``'s device, which is small next to the activations.

    Args:
        model: a ``MaskedAutoencoderHiera`` (``get_random_mask``, ``mask_ratio``).
        x: this rank's input [B, C, (T,) H, W]; only its shape and device are used.
        seed, rank, world_size: the step's seed (the same on every rank), this rank, the number of ranks.
    """
    local = x.shape[0]
    everyone = x[:1].expand(local * world_size, *x.shape[1:])  # the global batch's shape, no copy
    with seeded_rng(seed, x.device):
        mask = model.get_random_mask(everyone, model.mask_ratio)
    return mask[rank * local : (rank + 1) * local]


# ------------------------------------------------------------------------------------------ data position


LIGHTNING_ISSUE_20550 = "https://github.com/Lightning-AI/pytorch-lightning/issues/20550"
LIGHTNING_FIXED_20550: str | None = None
"""The first Lightning release that loads saved loader states after ``estimated_stepping_batches`` has built
the loaders. None: no release does yet (the issue is open; its fixes are the open pull requests
https://github.com/Lightning-AI/pytorch-lightning/pull/21765 and /pull/21770). Set it when one is released, and
``restore_train_loader_position`` stops working around the bug from that version on."""


def lightning_has_issue_20550(version: str = lightning.__version__) -> bool:
    """Whether this Lightning version drops the loaders' saved states on resume (see
    ``LIGHTNING_ISSUE_20550``)."""
    return LIGHTNING_FIXED_20550 is None or Version(version) < Version(LIGHTNING_FIXED_20550)


def restore_train_loader_position(trainer) -> bool:
    """In a run resumed from a checkpoint, restart the training batches from the restored position; call it
    from ``on_train_start``. Returns whether it did (False in a run that did not resume).

    Lightning 2.6 builds the training loaders and their first iterator when ``configure_optimizers`` reads
    ``trainer.estimated_stepping_batches`` (every module here does: the schedule needs the step count), which
    is before it restores the checkpoint. The loaders' saved states are then never loaded (Lightning issue
    #20550), and the iterator, which may already have fetched batches, starts from epoch 0's beginning
    (a ``ShardLoader`` reads its epoch from the trainer when the iterator is made). Here, after the restore
    and before the first batch, pending loader states are loaded and the iterator is made again. Loaders
    that keep their resume position for the whole resumed epoch (``ResumableLoader``) give the same
    batches whether or not Lightning had already loaded their state.

    Only on Lightning versions with the bug (:func:`lightning_has_issue_20550`); it reads private attributes of
    Lightning's fit loop, so a missing one makes it do nothing rather than fail.
    """
    if trainer.ckpt_path is None or not lightning_has_issue_20550():
        return False
    fit_loop = trainer.fit_loop
    loaders = getattr(fit_loop, "_combined_loader", None)
    fetcher = getattr(fit_loop, "_data_fetcher", None)
    if loaders is None or fetcher is None:
        return False
    states = getattr(fit_loop, "_combined_loader_states_to_load", None)
    if states:
        loaders._load_state_dicts(states)
        fit_loop._combined_loader_states_to_load = []
    iter(fetcher)
    return True
