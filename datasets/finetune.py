"""Data for supervised fine-tuning.

- Images: the MAE / DeiT training augmentation (RandomResizedCrop, flip, RandAugment, random erasing) in
  ``FineTuneImageDataModule``, an ``ImageDataModule`` with that training transform. Validation is
  ``ImageDataModule``'s single centre crop, as the Hiera and MAE papers evaluate ImageNet.
- Video: ``FineTuneVideoDataModule``, a ``VideoDataModule`` whose training clips also get RandAugment (one
  draw per clip, applied to all its frames alike) and whose validation takes several views of each video:
  ``temporal`` clips evenly spaced over it × ``spatial`` crops along its long side (MAE-ST / SlowFast
  multi-view testing; Hiera evaluates K400 with 5 × 3). The views of one video are consecutive in a batch
  under its ``key``; ``FineTuneClassifier`` averages their scores per video.
- Audio: ``FineTuneAudioDataModule``, an ``AudioDataModule`` that can draw its training epochs with AudioMAE's
  class-balanced weights (``dataset/audioset/gen_weight.py``), as its AudioSet-2M fine-tuning does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageOps
from torch.utils.data import Sampler
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from unveil.datasets.common import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    derive_seed,
    plain_tensor,
    run_seed,
)
from unveil.datasets.datamodules import AudioDataModule, ImageDataModule, VideoDataModule
from unveil.datasets.image import ImagePipeline
from unveil.datasets.loading import CountingLoader
from unveil.datasets.video import VideoDataset, VideoPipeline, clip_indices

__all__ = [
    "ClassBalancedSampler",
    "FineTuneAudioDataModule",
    "FineTuneImageDataModule",
    "FineTuneVideoDataModule",
    "MultiViewVideoDataset",
    "class_balanced_weights",
    "finetune_image_transform",
    "finetune_video_transform",
]


def _posterize(image: Image.Image, bits: int, **_) -> Image.Image:
    """timm's posterize for any ``bits`` in 0-8. At magnitude 10 (reached by ``mstd`` noise) timm asks for 0 bits,
    which Pillow 13 refuses (a crash in a loader worker); keeping 0 bits gives a black image, as older Pillow did."""
    if bits >= 8:
        return image
    if bits <= 0:
        return Image.new(image.mode, image.size)
    return ImageOps.posterize(image, bits)


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
        v2.RandomResizedCrop(
            input_size, scale=crop_scale, interpolation=InterpolationMode.BICUBIC, antialias=True
        ),
        v2.RandomHorizontalFlip(hflip),
    ]
    if auto_augment:
        from timm.data.auto_augment import rand_augment_transform
        from timm.data.transforms import str_to_pil_interp

        hparams = {
            "translate_const": int(input_size * 0.45),  # timm's create_transform defaults
            "img_mean": tuple(round(255 * m) for m in mean),
            "interpolation": str_to_pil_interp("bicubic"),
        }
        try:
            policy = rand_augment_transform(auto_augment, hparams)
        except (AssertionError, KeyError, ValueError) as error:
            raise ValueError(
                f"auto_augment {auto_augment!r} is not a timm RandAugment policy: {error}"
            ) from None
        for op in policy.ops:
            if op.name.startswith("Posterize"):
                op.aug_fn = _posterize
        steps.append(policy)
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

    def pipeline(self, train: bool) -> ImagePipeline:
        return ImagePipeline(self.train_transform()) if train else super().pipeline(train)


# ---------------------------------------------------------------------------------------------------- video


def finetune_video_transform(
    input_size: int = 224,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    hflip: float = 0.5,
    rand_augment: tuple[int, int] | None = (2, 7),
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> v2.Compose:
    """``tv_tensors.Video`` uint8 [T, 3, H, W] → float [T, 3, S, S]: RandomResizedCrop, flip and torchvision's
    ``RandAugment(num_ops, magnitude)`` = ``rand_augment``, each drawn once per clip and applied to every frame
    (torchvision v2 treats a Video as one sample), then normalise. MAE-ST fine-tunes with timm's
    ``rand-m7-mstd0.5-inc1`` (2 ops, magnitude 7; torchvision has no magnitude noise)."""
    steps: list = [
        v2.RandomResizedCrop(
            input_size, scale=crop_scale, interpolation=InterpolationMode.BILINEAR, antialias=True
        ),
        v2.RandomHorizontalFlip(hflip),
    ]
    if rand_augment:
        num_ops, magnitude = rand_augment
        steps.append(v2.RandAugment(num_ops=num_ops, magnitude=magnitude))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)


def _spread(slack: int, count: int) -> list[int]:
    """``count`` offsets evenly spread over ``[0, slack]`` (the middle one for a single view)."""
    if count == 1:
        return [slack // 2]
    return [round(slack * i / (count - 1)) for i in range(count)]


class MultiViewVideoPipeline(VideoPipeline):
    """Evaluation clips of ``VideoPipeline``, several views per video: ``temporal`` windows with evenly spaced
    starts over the video (or its segment) × ``spatial`` square crops evenly spaced along the long side
    after resizing the short side to ``input_size``.

    ``to_sample`` gives ``{"video": float [V, 3, T, S, S]}`` with V = temporal × spatial (temporal major);
    ``repeated_collate`` makes the V views consecutive rows of a batch, each with the video's key.
    """

    def __init__(
        self,
        num_frames: int = 16,
        sampling_rate: int = 4,
        input_size: int = 224,
        temporal: int = 1,
        spatial: int = 1,
        frames_fps: float = 30.0,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ) -> None:
        if temporal < 1 or spatial < 1:
            raise ValueError(f"views must be >= 1, got temporal={temporal}, spatial={spatial}")
        super().__init__(
            None, num_frames, sampling_rate, train=False, frames_fps=frames_fps, input_size=input_size
        )
        self.temporal, self.spatial, self.input_size = temporal, spatial, input_size
        self.normalize = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])

    def windows(self, num_video_frames: int, start_frame: int, end_frame: int) -> torch.Tensor:
        """[temporal, T]: windows with evenly spread starts."""
        span = self.span
        return torch.stack(
            [
                clip_indices(
                    num_video_frames,
                    self.num_frames,
                    self.sampling_rate,
                    False,
                    start_frame + offset,
                    min(end_frame, start_frame + offset + span),  # a segment of exactly one window
                )
                for offset in _spread(max(end_frame - start_frame - span, 0), self.temporal)
            ]
        )

    def to_sample(self, clips: torch.Tensor) -> dict:
        size = self.input_size
        views = []
        for clip in clips:  # [T, H, W, 3]
            frames = v2.functional.resize(
                tv_tensors.Video(clip.permute(0, 3, 1, 2)),
                size,
                interpolation=InterpolationMode.BILINEAR,
                antialias=True,
            )  # [T, 3, h, w], short side = size
            height, width = frames.shape[-2:]
            for offset in _spread(max(height, width) - size, self.spatial):
                top, left = (
                    (offset, (width - size) // 2) if height > width else ((height - size) // 2, offset)
                )
                crop = frames[..., top : top + size, left : left + size]
                views.append(plain_tensor(self.normalize(crop)).permute(1, 0, 2, 3))  # [3, T, S, S]
        return {"video": torch.stack(views)}


class MultiViewVideoDataset(VideoDataset):
    """``VideoDataset`` read through a ``MultiViewVideoPipeline``: a sample is ``{"video": float [V, 3, T, S,
    S], "label", "key"}`` (``temporal`` × ``spatial`` views)."""

    def __init__(
        self,
        root: str | None = None,
        split: str = "val",
        csv: str | None = None,
        num_frames: int = 16,
        sampling_rate: int = 4,
        input_size: int = 224,
        temporal: int = 1,
        spatial: int = 1,
        frames_fps: float = 30.0,
    ) -> None:
        pipeline = MultiViewVideoPipeline(
            num_frames, sampling_rate, input_size, temporal, spatial, frames_fps
        )
        super().__init__(root, split, csv, pipeline=pipeline)


class FineTuneVideoDataModule(VideoDataModule):
    """``VideoDataModule`` for fine-tuning: RandAugment on the training clips (:func:`finetune_video_transform`)
    and multi-view validation (:class:`MultiViewVideoDataset`).

    Args (besides ``VideoDataModule``'s; ``crop_scale`` defaults to MAE-ST fine-tuning's (0.08, 1.0)):
        rand_augment: ``[num_ops, magnitude]`` of torchvision's RandAugment, or null for none.
        val_views: ``[temporal, spatial]`` views per validation video (Hiera's K400 protocol: [5, 3]);
            ``val_batch_size`` counts videos, so a batch holds ``val_batch_size × temporal × spatial`` clips.
    """

    def __init__(
        self,
        *args,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        rand_augment: tuple[int, int] | None = (2, 7),
        val_views: tuple[int, int] = (1, 1),
        **kwargs,
    ) -> None:
        super().__init__(*args, crop_scale=crop_scale, **kwargs)
        if len(val_views) != 2 or min(val_views) < 1:
            raise ValueError(
                f"{type(self).__name__}: val_views must be [temporal >= 1, spatial >= 1], got {val_views}"
            )
        self.rand_augment = tuple(rand_augment) if rand_augment else None
        self.val_views = tuple(val_views)

    def pipeline(self, train: bool) -> VideoPipeline:
        """Training: ``VideoDataModule``'s with RandAugment; validation: ``val_views`` views per video
        (``MultiViewVideoPipeline``), from folders, manifests and shards alike."""
        if train:
            return super().pipeline(train)
        temporal, spatial = self.val_views
        return MultiViewVideoPipeline(
            self.num_frames,
            self.sampling_rate,
            self.input_size,
            temporal,
            spatial,
            frames_fps=self.frames_fps,
        )

    def _dataset_transform(self, train: bool):
        if train:
            return finetune_video_transform(self.input_size, self.crop_scale, self.hflip, self.rand_augment)
        return super()._dataset_transform(train)


# ---------------------------------------------------------------------------------------------------- audio


def class_balanced_weights(targets: Sequence[Sequence[int]], num_classes: int) -> torch.Tensor:
    """AudioMAE's ``gen_weight.py``: each class weighs ``1000 / (its count of clips + 0.01)``, each clip the sum of
    the weights of its labels → float64 [len(targets)]."""
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for labels in targets:
        counts[list(labels)] += 1
    label_weight = 1000.0 / (counts + 0.01)
    return torch.tensor([float(label_weight[list(labels)].sum()) for labels in targets], dtype=torch.float64)


class ClassBalancedSampler(Sampler[int]):
    """``num_samples`` indices drawn with probability proportional to ``weights`` (``torch.multinomial``, with or
    without replacement), a new draw each epoch.

    Every pass reseeds from ``seed`` and the number of passes so far, so the processes of a DDP run draw the same
    list and Lightning's ``DistributedSamplerWrapper`` gives each its own share of it (AudioMAE:
    ``DistributedSamplerWrapper(WeightedRandomSampler(...))``).
    """

    def __init__(self, weights: torch.Tensor, num_samples: int, replacement: bool = False, seed: int = 0):
        if not replacement and num_samples > int((weights > 0).sum()):
            raise ValueError(
                f"cannot draw {num_samples} samples without replacement from {int((weights > 0).sum())}"
            )
        self.weights, self.num_samples, self.replacement, self.seed = weights, num_samples, replacement, seed
        self.passes = 0

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.passes)
        self.passes += 1
        return iter(
            torch.multinomial(self.weights, self.num_samples, self.replacement, generator=generator).tolist()
        )


class FineTuneAudioDataModule(AudioDataModule):
    """``AudioDataModule`` with AudioMAE's class-balanced training epochs.

    Args (besides ``AudioDataModule``'s):
        balanced_samples: when set, a training epoch is this many clips drawn with the weights of
            :func:`class_balanced_weights` (AudioMAE AS-2M: ``--weight_sampler --epoch_len 200000``); null: every
            clip once per epoch, shuffled.
        replacement: draw with replacement (AudioMAE AS-2M: ``--replacement False``).

    The balanced loader is a plain DataLoader: a run resumed mid-epoch starts that epoch's draw again.
    """

    def __init__(
        self, *args, balanced_samples: int | None = None, replacement: bool = False, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        if balanced_samples is not None:
            if balanced_samples < 1:
                raise ValueError(
                    f"{type(self).__name__}: balanced_samples must be >= 1, got {balanced_samples}"
                )
            if self.shards is not None:
                raise ValueError(
                    f"{type(self).__name__}: balanced_samples needs a manifest or folder source, not shards"
                )
        self.balanced_samples, self.replacement = balanced_samples, replacement

    def train_dataloader(self):
        if self.balanced_samples is None:
            return super().train_dataloader()
        self.setup()
        weights = class_balanced_weights(self.train_set.targets, len(self.train_set.classes))
        seed = derive_seed(run_seed(), getattr(self, "shuffle_seed", 0))  # seed_everything and shuffle_seed
        sampler = ClassBalancedSampler(weights, self.balanced_samples, self.replacement, seed=seed)
        return CountingLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collate_fn,
        )
