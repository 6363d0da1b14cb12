"""MAE pretraining of Hiera, for images and video: the training logic around ``MaskedAutoencoderHiera``.

The model (``unveil.models``) holds the math: masking, encoder, decoder, loss and the reconstruction pictures.
This module holds what training adds: the optimiser (AdamW, the linear lr scaling rule, no weight decay on
norms, biases and position embeddings), a per-step warmup + cosine schedule, logging, and pictures of
reconstructions of a fixed set of samples with a fixed mask, so that pictures from different steps compare.
Training masks and drop path are drawn from seeds of (run seed, epoch, batch), never from the global RNG state,
so a resumed run repeats the uninterrupted one, and DDP ranks mask as one process with their joint batch would
(``unveil.pretrain.resume``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import lightning.pytorch as pl
import torch
from unveil.common.checkpoints import record_architecture
from unveil.common.distributed import rank_and_world_size
from unveil.common.schedule import OptimizerConfig
from unveil.common.seeding import derive_seed, seeded_rng
from unveil.models import MaskedAutoencoderHiera
from unveil.models.hiera import unit_indices
from unveil.pretrain.compiled import CompiledTraining
from unveil.pretrain.optim import WarmupCosineAdamW
from unveil.pretrain.resume import global_batch_mask, restore_train_loader_position, step_rng, step_seed
from unveil.pretrain.throughput import SamplesPerSecond
from unveil.pretrain.visualize import (
    PictureOptions,
    ReconstructionPictures,
    reconstruction_grid,
    save_grid,
    send_to_loggers,
    validation_samples,
)

INPUT_KEYS: tuple[str, ...] = ("video", "image")
"""Batch keys the module reads its input from, in order of preference, when ``input_key`` is not set."""

MAE_OPTIMIZER = OptimizerConfig(base_lr=8e-4, weight_decay=0.05, betas=(0.9, 0.95), warmup_epochs=40.0)
"""The module's optimiser defaults (AdamW, betas (0.9, 0.95) as MAE's, 40 warmup epochs); each recipe sets its
paper's values."""


class MAEPretrainModule(ReconstructionPictures, CompiledTraining, WarmupCosineAdamW, pl.LightningModule):
    """Masked-autoencoder pretraining of a ``MaskedAutoencoderHiera`` on image or video batches.

    Args:
        model: the masked autoencoder (a recipe builds it with ``class_path``/``init_args``).
        optimizer: AdamW and its warmup + cosine schedule (:class:`~unveil.common.schedule.OptimizerConfig`;
            the learning rate is ``base_lr * effective_batch / base_batch_size`` unless ``lr`` is set, where
            ``effective_batch = batch_size * repeated_sampling * devices * num_nodes * accumulate_grad_batches``,
            clips for video). Defaults: ``MAE_OPTIMIZER``, MAE's (base_lr 8e-4 per 256, weight decay 0.05,
            betas (0.9, 0.95), 40 warmup epochs).
        input_key: batch key of the input (``"image"`` or ``"video"``); detected from the batch when None.
        pictures: the reconstruction pictures (:class:`~unveil.pretrain.visualize.PictureOptions`:
            ``every_n_steps``, ``num_samples``, ``frames``, ``display_mean``, ``display_std``).
        vis_seed: seed of the fixed picture mask and of validation masks.
        compile: run the training forward through ``torch.compile`` (static shapes, one graph; see
            ``unveil.pretrain.compiled``). The first step pays the compilation (minutes for Hiera-B on a CPU).
    """

    def __init__(
        self,
        model: MaskedAutoencoderHiera,
        optimizer: OptimizerConfig = MAE_OPTIMIZER,
        input_key: str | None = None,
        pictures: PictureOptions = PictureOptions(),  # noqa: B008 - never mutated
        vis_seed: int = 0,
        compile: bool = False,
    ):
        super().__init__()
        if input_key is not None and input_key not in INPUT_KEYS:
            raise ValueError(f"input_key must be one of {INPUT_KEYS} or None, got {input_key!r}")
        self.save_hyperparameters(ignore=["model"])
        self._init_picture_options(pictures)
        self._init_optimizer(model, optimizer, MAE_OPTIMIZER)
        self.input_key = input_key
        self.vis_seed = vis_seed
        self._init_compile(compile)

        # Filled in at fit time.
        self.samples_per_sec = SamplesPerSecond()
        self._vis_dir: Path | None = None
        self._vis_input: torch.Tensor | None = None
        self._vis_mask: torch.Tensor | None = None
        self._last_vis_step: int | None = None

    # ------------------------------------------------------------------------------------------- steps

    def forward(self, x: torch.Tensor, mask_ratio: float | None = None, mask: torch.Tensor | None = None):
        return self.model(x, mask_ratio=mask_ratio, mask=mask)

    def get_input(self, batch: Mapping[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """The model input of ``batch``: ``batch[input_key]``, or the first of ``INPUT_KEYS`` it has."""
        if isinstance(batch, torch.Tensor):
            return batch
        if self.input_key is not None:
            return batch[self.input_key]
        for key in INPUT_KEYS:
            if key in batch:
                return batch[key]
        raise KeyError(f"batch has none of the input keys {INPUT_KEYS}; its keys: {sorted(batch)}")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = self.get_input(batch)
        if self.skips_batch(x.shape[0]):  # compile: a partial batch would recompile
            return None
        if self._pictures_enabled() and self._vis_input is None:
            self._init_pictures(x)
        # Masks and drop path depend on (run seed, epoch, batch) only: a resumed run draws what the
        # uninterrupted one drew, and the masks of R ranks with batch b are those of 1 process with R * b.
        with step_rng(self, batch_idx, x.device):
            # kept-unit indices, taken outside the (possibly compiled) forward: its shapes stay static
            mask = unit_indices(self.training_mask(x, batch_idx))
            out = self.train_model(x, mask=mask)
        # rank-local per step (no all-reduce on the step's critical path); the epoch mean is reduced once
        self.log("train/loss", out.loss, prog_bar=True, batch_size=x.shape[0])
        self.log("train/loss_epoch", out.loss.detach(), on_step=False, on_epoch=True, sync_dist=True,
                 batch_size=x.shape[0])
        self.log("train/lr", self._current_lr(), prog_bar=False, batch_size=x.shape[0])
        self.samples_per_sec.log(self, x.shape[0])
        return out.loss

    def training_mask(self, x: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """[B, #mask units] keep mask of this rank's training batch ``x``: its rows of a mask drawn for the
        global batch from a seed of (run seed, epoch, ``batch_idx``), see ``global_batch_mask``."""
        rank, world_size = rank_and_world_size(self._trainer)
        seed = step_seed(self, batch_idx, "mask", per_rank=False)
        return global_batch_mask(self.model, x, seed, rank, world_size)

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, batch_idx, "test")

    def _eval_step(self, batch, batch_idx: int, stage: str) -> torch.Tensor:
        x = self.get_input(batch)
        # The same masks at every evaluation, so that the loss curve compares like with like.
        with seeded_rng(derive_seed(self.vis_seed, "eval", batch_idx), x.device):
            loss = self.model(x).loss
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True, batch_size=x.shape[0])
        return loss

    def _current_lr(self) -> float:
        optimizer = self.optimizers()
        return float(optimizer.param_groups[0]["lr"])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The model's class and constructor arguments, so that `unveil export` can rebuild it from the file alone.
        record_architecture(checkpoint, self.model)

    # ----------------------------------------------------------------------------------------- pictures

    def on_train_start(self) -> None:
        restore_train_loader_position(self.trainer)  # before the first batch (Lightning issue #20550)
        self._set_picture_dir()
        self.samples_per_sec.reset()

    def _vis_samples_from_val(self) -> torch.Tensor | None:
        """``num_vis_samples`` validation inputs (from any source, see ``validation_samples``), or None if there
        is no validation data."""
        samples = validation_samples(getattr(self.trainer, "datamodule", None), self.num_vis_samples,
                                     lambda batch: {"input": self.get_input(batch)})
        return None if samples is None else samples["input"]

    def _init_pictures(self, train_input: torch.Tensor) -> None:
        """Fix the picture samples and mask, and draw the picture of the untrained model (step 0)."""
        samples = self._vis_samples_from_val() if self.trainer.is_global_zero else None
        if samples is None:
            samples = train_input[: self.num_vis_samples]
        self._vis_input = samples.detach().to(self.device)
        if self.global_step == 0:
            self.log_reconstructions()

    def _has_vis_samples(self) -> bool:
        return self._vis_input is not None

    @torch.no_grad()
    def reconstruction_picture(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction grid [3, H, W] in [0, 1] of ``x`` under the fixed picture mask."""
        was_training = self.model.training
        self.model.eval()
        try:
            if self._vis_mask is None:
                with seeded_rng(self.vis_seed, x.device):
                    out = self.model(x)
                self._vis_mask = out.mask
            else:
                out = self.model(x, mask=self._vis_mask)
            images = self.model.reconstruction_images(x, out)
        finally:
            self.model.train(was_training)
        mean, std = self._display_stats()
        return reconstruction_grid(images, mean, std, max_frames=self.vis_frames)

    def log_reconstructions(self) -> Path | None:
        """Draw the fixed samples' reconstructions; save ``reconstructions/step_XXXXXX.png`` and log them.

        Every rank runs the forward pass (with FSDP each holds a shard of the weights, and all must take part);
        only global rank 0 saves; returns the PNG's path there (None elsewhere, or if already drawn).
        """
        step = self.global_step
        if self._vis_input is None or step == self._last_vis_step:
            return None
        self._last_vis_step = step
        grid = self.reconstruction_picture(self._vis_input.to(self.device))
        if not self.trainer.is_global_zero:
            return None
        vis_dir = self._vis_dir or Path(self.trainer.default_root_dir) / "reconstructions"
        path = save_grid(grid, vis_dir / f"step_{step:06d}.png")
        send_to_loggers(self.trainer.loggers, "reconstructions", grid, step)
        return path
