"""Pictures of masked reconstructions: one grid per logging step, sent to the loggers and saved as a PNG.

The grid has one row per sample (for video: per sample and shown frame) and four columns:
input | masked input | reconstruction | target.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning.fabric.utilities.exceptions import MisconfigurationException
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, IterableDataset, Subset
from torchvision.utils import make_grid, save_image
from unveil.common.config import as_options, builtin_fields

PANELS: tuple[str, ...] = ("input", "masked", "reconstruction", "target")
"""The columns of a reconstruction grid, left to right (keys of ``reconstruction_images``)."""


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo per-channel normalisation of ``x`` [B, C, ...] and clamp to [0, 1] for display."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return (x * std_t + mean_t).clamp(0.0, 1.0)


def frame_indices(num_frames: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over ``num_frames`` (all of them if there are fewer)."""
    if num_frames <= count:
        return list(range(num_frames))
    return torch.linspace(0, num_frames - 1, count).round().long().tolist()


def reconstruction_grid(
    images: Mapping[str, torch.Tensor],
    mean: Sequence[float],
    std: Sequence[float],
    max_frames: int = 4,
    padding: int = 2,
) -> torch.Tensor:
    """A [3, H', W'] grid in [0, 1] from ``reconstruction_images`` output.

    ``images[k]`` is [B, 3, H, W] (image) or [B, 3, T, H, W] (video), in the normalised input space; for video
    ``max_frames`` frames per sample are shown, one row each.
    """
    panels = [denormalize(images[key].detach().float().cpu(), mean, std) for key in PANELS]
    if panels[0].dim() == 5:
        frames = frame_indices(panels[0].shape[2], max_frames)
        # [B, 3, T, H, W] -> [B * len(frames), 3, H, W]: rows are (sample, frame) pairs
        panels = [p[:, :, frames].permute(0, 2, 1, 3, 4).flatten(0, 1) for p in panels]
    tiles = torch.stack(panels, dim=1).flatten(0, 1)  # [rows * 4, 3, H, W], row-major
    return make_grid(tiles, nrow=len(PANELS), padding=padding, pad_value=1.0)


def grid_pixels(grid: torch.Tensor) -> torch.Tensor:
    """``grid`` [3, H, W] in [0, 1] as uint8 [3, H, W], rounded the way ``save_image`` rounds for the PNG.

    Every logger gets these pixels, so the picture in W&B or TensorBoard is the PNG in the run folder, bit for bit.
    """
    return grid.detach().float().cpu().mul(255).add(0.5).clamp(0, 255).to(torch.uint8)


def save_grid(grid: torch.Tensor, path: str | Path) -> Path:
    """Write ``grid`` [3, H, W] in [0, 1] as a PNG, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    return path


def send_to_loggers(loggers: Sequence, tag: str, grid: torch.Tensor, step: int) -> None:
    """Send ``grid`` [3, H, W] in [0, 1] to every logger that takes images, at training step ``step``.

    W&B: ``log_image`` (a media file in the run, plotted against ``trainer/global_step``, captioned with the
    panel names); TensorBoard: ``add_image``. Others (e.g. CSVLogger) are skipped: the PNG in the run folder is
    the record.
    """
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    pixels = grid_pixels(grid)  # [3, H, W] uint8
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[pixels.permute(1, 2, 0).numpy()], step=step,  # HWC for wandb.Image
                             caption=[" | ".join(PANELS)])
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, pixels, global_step=step)  # CHW uint8: no rescaling by TensorBoard


def validation_samples(
    datamodule, count: int, select: Callable[[object], Mapping[str, torch.Tensor]]
) -> dict[str, torch.Tensor] | None:
    """Up to ``count`` validation samples for the pictures, as one batch: ``select(batch)`` (a dict of tensors with
    a leading batch dimension) of the datamodule's validation batches, or None when there is no validation data.

    Any source works. A map-style dataset with a length (folders, CSV manifests) gives samples spread evenly over
    it, so the pictures show different classes; any other (WebDataset shards, iterable datasets) gives its first
    ``count`` samples. Both are read in this process with the validation loader's own collate: no worker starts,
    and only the samples shown are decoded.
    """
    if datamodule is None or count < 1:
        return None
    try:
        loader = datamodule.val_dataloader()
    except (NotImplementedError, MisconfigurationException):  # the datamodule has no validation loader
        return None
    if isinstance(loader, (list, tuple)):  # no validation split ([]), or several loaders: the first
        if not loader:
            return None
        loader = loader[0]
    dataset = getattr(loader, "dataset", None)
    if dataset is None:
        return None
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        if loader.batch_size is None and hasattr(dataset, "batch_size"):
            dataset.batch_size = count  # the dataset makes its own batches (ShardDataset): decode only these
        loader.num_workers = 0  # a fresh loader of our own: read it here, without starting workers
        reader = loader
    else:
        size = len(dataset)
        if size == 0:
            return None
        indices = torch.linspace(0, size - 1, min(count, size)).round().long().tolist()
        reader = DataLoader(Subset(dataset, indices), batch_size=len(indices), collate_fn=loader.collate_fn)
    parts: list[Mapping[str, torch.Tensor]] = []
    taken = 0
    for batch in reader:
        part = select(batch)
        parts.append(part)
        taken += len(next(iter(part.values())))
        if taken >= count:
            break
    if not parts:
        return None
    return {key: torch.cat([part[key] for part in parts])[:count] for key in parts[0]}


@dataclass
class PictureOptions:
    """The reconstruction pictures of a pretraining run (``model.init_args.pictures``).

    Args:
        every_n_steps: save and log a picture every this many optimiser steps (also before the first step
            and at the end of training); 0 turns pictures off.
        num_samples: samples (grid rows) in a picture; taken from the validation set if there is one,
            otherwise from the first training batch.
        frames: for video, frames shown per sample (one row each).
        display_mean, display_std: the input normalisation to undo for display; default: the datamodule's
            ``mean`` / ``std``, else ImageNet's.
    """

    every_n_steps: NonNegativeInt = 500
    num_samples: PositiveInt = 4
    frames: PositiveInt = 4
    display_mean: tuple[float, float, float] | None = None
    display_std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        builtin_fields(self)
        for name in ("every_n_steps", "num_samples", "frames"):
            low = 0 if name == "every_n_steps" else 1
            if getattr(self, name) < low:
                raise ValueError(f"PictureOptions.{name} must be >= {low}, got {getattr(self, name)!r}")


class ReconstructionPictures:
    """When a LightningModule draws its reconstruction pictures: before the first step (the module
    draws that one when it picks its samples), every ``pictures.every_n_steps`` steps, and at the end
    of training.

    The module calls ``_init_picture_options(pictures)`` in its constructor (after ``save_hyperparameters``), and
    implements ``log_reconstructions()`` and ``_has_vis_samples()``. List this class before ``LightningModule``.
    """

    def _init_picture_options(self, pictures) -> None:
        pictures = as_options(type(self).__name__, "pictures", pictures, PictureOptions, PictureOptions())
        self.log_images_every_n_steps, self.num_vis_samples = pictures.every_n_steps, pictures.num_samples
        self.vis_frames = pictures.frames
        self.display_mean, self.display_std = pictures.display_mean, pictures.display_std

    def _pictures_enabled(self) -> bool:
        return self.log_images_every_n_steps > 0 and self._trainer is not None

    def _set_picture_dir(self) -> None:
        if self.log_images_every_n_steps:
            # trainer.log_dir broadcasts, so every rank asks for it; only rank 0 draws.
            self._vis_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "reconstructions"

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        step = self.global_step
        if self._pictures_enabled() and step > 0 and step % self.log_images_every_n_steps == 0:
            self.log_reconstructions()

    def on_train_end(self) -> None:
        if self._pictures_enabled() and self._has_vis_samples():
            self.log_reconstructions()

    def _display_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Mean and std that undo the input normalisation for display (recipe, data module, or ImageNet)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        mean = self.display_mean or getattr(datamodule, "mean", None) or IMAGENET_DEFAULT_MEAN
        std = self.display_std or getattr(datamodule, "std", None) or IMAGENET_DEFAULT_STD
        return tuple(mean), tuple(std)
