"""Data for supervised fine-tuning: the MAE / DeiT training augmentation of images (RandomResizedCrop, flip,
RandAugment, random erasing) as a DataModule that is ``ImageDataModule`` with that training transform.

Validation is ``ImageDataModule``'s (resize to ``input_size / eval_crop_pct``, centre crop): the single
centre crop the Hiera and MAE papers evaluate ImageNet with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import InterpolationMode, v2
from unveil.datasets.common import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from unveil.datasets.datamodules import ImageDataModule
from unveil.datasets.image import ImageFolderDataset
from unveil.datasets.shards import ImageShardDecoder

__all__ = ["FineTuneImageDataModule", "finetune_image_transform"]


def finetune_image_transform(
    input_size: int = 224,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    hflip: float = 0.5,
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",
    random_erasing: float = 0.25,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> v2.Compose:
    """PIL image → float [3, S, S]: RandomResizedCrop (bicubic, area ``crop_scale``), horizontal flip, timm's
    RandAugment (``auto_augment``, a timm policy string: ``rand-m9-mstd0.5-inc1`` is magnitude 9, magnitude
    noise 0.5, as MAE's ``main_finetune.py`` and the Hiera fine-tuning recipe use), normalise, then random
    erasing with probability ``random_erasing`` (per-pixel normal noise: MAE's ``--reprob 0.25 --remode
    pixel``)."""
    steps: list = [
        v2.RandomResizedCrop(input_size, scale=crop_scale, interpolation=InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(hflip),
    ]
    if auto_augment:
        from timm.data.auto_augment import rand_augment_transform
        from timm.data.transforms import str_to_pil_interp

        hparams = dict(
            translate_const=int(input_size * 0.45),  # timm's create_transform defaults
            img_mean=tuple(round(255 * m) for m in mean),
            interpolation=str_to_pil_interp("bicubic"),
        )
        try:
            steps.append(rand_augment_transform(auto_augment, hparams))
        except (AssertionError, KeyError, ValueError) as error:
            raise ValueError(f"auto_augment {auto_augment!r} is not a timm RandAugment policy: {error}") from None
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if random_erasing > 0:
        steps.append(v2.RandomErasing(random_erasing, value="random"))
    return v2.Compose(steps)


class FineTuneImageDataModule(ImageDataModule):
    """``ImageDataModule`` with the fine-tuning augmentation (:func:`finetune_image_transform`) for training.

    Args (besides ``ImageDataModule``'s; ``crop_scale`` defaults to MAE fine-tuning's (0.08, 1.0)):
        auto_augment: timm RandAugment policy string, or null for none.
        random_erasing: probability of random erasing (0: off).
    """

    def __init__(
        self,
        *args,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        auto_augment: str | None = "rand-m9-mstd0.5-inc1",
        random_erasing: float = 0.25,
        **kwargs,
    ) -> None:
        super().__init__(*args, crop_scale=crop_scale, **kwargs)
        if not 0 <= random_erasing <= 1:
            raise ValueError(f"{type(self).__name__}: random_erasing must be in [0, 1], got {random_erasing}")
        self.auto_augment, self.random_erasing = auto_augment, random_erasing
        self.train_transform()  # a bad policy string fails here, before training

    def train_transform(self) -> v2.Compose:
        return finetune_image_transform(
            self.input_size, self.crop_scale, self.hflip, self.auto_augment, self.random_erasing
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and self.shards is None:
            self.train_set = ImageFolderDataset(self.root, self.train_split, self.train_transform())
            self._limit_skips(self.train_set)
        super().setup(stage)

    def _shard_decoder(self, train: bool) -> ImageShardDecoder:
        return ImageShardDecoder(self.train_transform()) if train else super()._shard_decoder(train)
