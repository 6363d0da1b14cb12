"""Data for SAM 2 training: SAM 2's clip augmentation, the clip batches, and a LightningDataModule.

Augmentation (:class:`SAM2Augment`), as the official SAM 2.1 fine-tuning recipe applies it
(sam2 ``configs/sam2.1_training/sam2.1_hiera_b+_MOSE_finetune.yaml``, ``vos.train_transforms``):

1. the same for every frame of the clip: horizontal flip (p 0.5); RandomAffine (rotation up to 25°, shear
   up to 20°, bilinear, the image filled with the ImageNet mean, masks with 0; skipped when it would empty
   an object's mask on the first frame, as the official transform does); resize to a square;
   ColorJitter (brightness 0.1, contrast 0.03, saturation 0.03); grayscale with probability 0.05;
2. per frame: ColorJitter (0.1, 0.05, 0.05);
3. ImageNet normalisation.

It runs on torchvision transforms v2: the clip is a ``tv_tensors.Video`` and the masks a ``tv_tensors.Mask``,
so one call draws one set of parameters for both.

Batches: clips differ in their object count, so :func:`collate_clips` keeps the frames of the B clips as
``frames`` [B, T, 3, S, S] and puts the objects of all clips side by side, as SAM 2's trainer does:
``masks`` [T, N, S, S] (N objects in all) and ``object_clip`` [N], the clip of each object.

Sources: :class:`SAM2DataModule` reads DAVIS/MOSE-layout folders (:class:`unveil.datasets.vos.VOSFolder`) by
default. Any other source of the same samples (``{"frames": [T, 3, S, S], "masks": [T, O, S, S], "key"}``,
T = 1 for images) plugs in through ``train_dataset``: a dataset built by the recipe (``class_path`` /
``init_args``), or a callable that takes the augmentation and returns the dataset; the DataModule hands it
``transform=SAM2Augment(...)`` when its constructor takes one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from unveil.datasets.common import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from unveil.datasets.loading import CountingLoader
from unveil.datasets.vos import VOSFolder

__all__ = ["SAM2Augment", "SAM2DataModule", "VOSFirstFrames", "VOSValVideos", "collate_clips"]

_FILL = tuple(round(255 * m) for m in IMAGENET_DEFAULT_MEAN)  # the official fill: the mean in 0..255


class SAM2Augment:
    """SAM 2's training augmentation of a clip (see the module docstring).

    Called with uint8 frames [T, 3, H, W] and bool masks [T, O, H, W]; returns ImageNet-normalised float
    frames [T, 3, S, S] and bool masks [T, O, S, S].

    Args:
        size: side S of the square output.
        train: the random transforms; else only the resize and normalisation (evaluation).
        hflip, degrees, shear, jitter, grayscale, frame_jitter: the official values by default.
    """

    def __init__(
        self,
        size: int = 1024,
        train: bool = True,
        hflip: float = 0.5,
        degrees: float = 25.0,
        shear: float = 20.0,
        jitter: Sequence[float] = (0.1, 0.03, 0.03),
        grayscale: float = 0.05,
        frame_jitter: Sequence[float] = (0.1, 0.05, 0.05),
    ) -> None:
        self.size = size
        self.train = train
        self.flip = v2.RandomHorizontalFlip(hflip)
        self.affine = v2.RandomAffine(
            degrees=degrees,
            shear=shear,
            interpolation=v2.InterpolationMode.BILINEAR,
            fill={tv_tensors.Video: _FILL, tv_tensors.Mask: 0},
        )
        self.resize = v2.Resize((size, size), interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
        brightness, contrast, saturation = jitter
        self.clip_colour = v2.Compose(
            [v2.ColorJitter(brightness, contrast, saturation), v2.RandomGrayscale(grayscale)]
        )
        brightness, contrast, saturation = frame_jitter
        self.frame_colour = v2.ColorJitter(brightness, contrast, saturation)
        self.normalize = v2.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)

    def __call__(self, frames: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(
                f"SAM2Augment: frames must be uint8 [T, 3, H, W], got {frames.dtype} {tuple(frames.shape)}"
            )
        if masks.dim() != 4 or masks.shape[0] != frames.shape[0] or masks.shape[-2:] != frames.shape[-2:]:
            raise ValueError(
                f"SAM2Augment: masks must be [T, O, H, W] with the frames' T, H, W, got {tuple(masks.shape)} "
                f"for frames {tuple(frames.shape)}"
            )
        video, mask = tv_tensors.Video(frames), tv_tensors.Mask(masks.to(torch.uint8))
        if self.train:
            video, mask = self.flip(video, mask)
            moved, moved_mask = self.affine(video, mask)
            # the official transform keeps the clip unrotated when an object would leave the first frame
            kept = moved_mask[0].flatten(1).any(1) | ~mask[0].flatten(1).any(1)
            if bool(kept.all()):
                video, mask = moved, moved_mask
        video, mask = self.resize(video, mask)
        if self.train:
            video = self.clip_colour(video)
            video = torch.stack([self.frame_colour(frame) for frame in video])
        video = self.normalize(
            v2.functional.to_dtype(video.as_subclass(torch.Tensor), torch.float32, scale=True)
        )
        return video, mask.as_subclass(torch.Tensor) > 0


def collate_clips(samples: list[dict]) -> dict:
    """Clips of equal length and size → ``{"frames": [B, T, 3, S, S], "masks": [T, N, S, S],
    "object_clip": [N] long, "key": [B]}`` (N: the objects of every clip, side by side)."""
    lengths = {tuple(s["frames"].shape) for s in samples}
    if len(lengths) != 1:
        raise ValueError(
            f"collate_clips: clips of a batch need one shape [T, 3, S, S], got {sorted(lengths)}"
        )
    return {
        "frames": torch.stack([s["frames"] for s in samples]),
        "masks": torch.cat([s["masks"] for s in samples], dim=1),
        "object_clip": torch.cat(
            [torch.full((s["masks"].shape[1],), i, dtype=torch.long) for i, s in enumerate(samples)]
        ),
        "key": [s.get("key", "") for s in samples],
    }


class VOSValVideos(Dataset):
    """Whole videos of a VOS folder for semi-supervised evaluation: ``{"folder", "stems", "ids", "masks"
    (bool [T, O, H, W] over the annotated frames), "key"}`` per video (``VOSFolder.video_annotations``)."""

    def __init__(self, folder: VOSFolder, max_videos: int | None = None) -> None:
        self.folder = folder
        self.count = len(folder) if max_videos is None else min(max_videos, len(folder))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        folder, stems, ids, masks = self.folder.video_annotations(index)
        return {
            "folder": str(folder),
            "stems": stems,
            "ids": ids,
            "masks": masks,
            "key": self.folder.videos[index],
        }


class VOSFirstFrames(Dataset):
    """The first annotated frame of each video of a VOS folder as a single image with its objects, for
    click evaluation when a dataset has no still images (generated data): ``{"frames": [1, 3, S, S],
    "masks": bool [1, O, S, S], "key"}`` as :func:`unveil.datasets.sav.clip_sample` makes them.

    Args:
        root: a DAVIS/MOSE-layout folder; ``split``: its image set; ``resolution``: DAVIS's resolution folder.
        size: resize to ``size`` × ``size`` (None keeps the frame's size); ``transform`` replaces resize and
            normalisation (called with uint8 frames [1, 3, H, W] and bool masks [1, O, H, W]).
        max_videos: the first this many videos only.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = "val",
        size: int | None = None,
        max_videos: int | None = None,
        resolution: str | None = "480p",
        transform: Callable | None = None,
    ) -> None:
        self.folder = VOSFolder(root, split=split, resolution=resolution, num_frames=1, train=False)
        self.count = len(self.folder) if max_videos is None else min(max_videos, len(self.folder))
        self.size, self.transform = size, transform

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        import numpy as np
        from PIL import Image
        from unveil.datasets.sav import clip_sample

        folder, stems, _, masks = self.folder.video_annotations(index)
        with Image.open(Path(folder) / f"{stems[0]}.jpg") as opened:
            image = np.array(opened.convert("RGB"), dtype=np.uint8)
        key = f"{self.folder.videos[index]}/{stems[0]}"
        return clip_sample(image[None], masks[:1].numpy(), key, self.size, self.transform)


def _first(samples: list[dict]) -> dict:
    return samples[0]


def _accepts(factory, name: str) -> bool:
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


class SAM2DataModule(L.LightningDataModule):
    """Training clips (and images) with SAM 2's augmentation; validation videos for J&F.

    Args:
        root: a DAVIS/MOSE-layout folder (``unveil synth vos`` writes one); its ``train`` split trains
            unless ``train_dataset`` is given, its ``val`` split validates.
        image_size: side of the square training frames (the model's input size).
        num_frames, max_objects: clip length and objects per clip (SAM 2: 8 and 3).
        batch_size: clips per step and device (SAM 2: 1).
        train_dataset: another training source (see the module docstring), or None for ``root``'s VOS folder.
        augment: SAM 2's augmentation on the training clips (False: resize and normalise only).
        val_split, val_videos: the validation videos (``val_videos`` None: all of them).
        val_images: single validation images for click evaluation (``val/miou@1``, ``val/miou@5``), a second
            validation loader: a dataset of one-frame samples at ``image_size`` (e.g. ``SA1BFolder`` with
            ``size`` and ``train: false``, or :class:`VOSFirstFrames`), or a callable that returns one.
        val_first_frames: without ``val_images``, the first annotated frame of each validation video serves
            as a single image (:class:`VOSFirstFrames`; generated data has no still images).
        resolution: DAVIS's resolution folder (used when present).
        num_workers: loader processes.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        image_size: int = 1024,
        num_frames: int = 8,
        max_objects: int = 3,
        batch_size: int = 1,
        train_dataset: Dataset | Callable[..., Dataset] | None = None,
        augment: bool = True,
        train_split: str | None = "train",
        val_split: str | None = "val",
        val_videos: int | None = None,
        val_images: Dataset | Callable[..., Dataset] | None = None,
        val_first_frames: bool = False,
        resolution: str | None = "480p",
        num_workers: int = 2,
    ) -> None:
        super().__init__()
        if root is None and train_dataset is None:
            raise ValueError("SAM2DataModule: give root (a DAVIS/MOSE-layout folder) or train_dataset")
        self.root = None if root is None else Path(root)
        self.image_size = image_size
        self.num_frames = num_frames
        self.max_objects = max_objects
        self.batch_size = batch_size
        self.train_source = train_dataset
        self.augment = augment
        self.train_split = train_split
        self.val_split = val_split
        self.val_videos = val_videos
        self.resolution = resolution
        self.num_workers = num_workers
        self.train_set: Dataset | None = None
        self.val_set: VOSValVideos | None = None
        self.val_images_source = val_images
        self.val_first_frames = val_first_frames
        self.val_image_set: Dataset | None = None

    def train_transform(self) -> SAM2Augment:
        return SAM2Augment(self.image_size, train=self.augment)

    def _train_dataset(self) -> Dataset:
        source = self.train_source
        if isinstance(source, Dataset):
            if getattr(source, "transform", "absent") is None:
                source.transform = self.train_transform()
            return source
        if callable(source):
            return source(transform=self.train_transform()) if _accepts(source, "transform") else source()
        return VOSFolder(
            self.root,
            split=self.train_split,
            resolution=self.resolution,
            num_frames=self.num_frames,
            max_objects=self.max_objects,
            train=True,
            transform=self.train_transform(),
        )

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._train_dataset()
        if stage in (None, "fit", "validate") and self.val_set is None and self.root is not None:
            folder = VOSFolder(
                self.root, split=self.val_split, resolution=self.resolution, num_frames=3, train=False
            )
            self.val_set = VOSValVideos(folder, self.val_videos)
        if stage in (None, "fit", "validate") and self.val_image_set is None:
            source = self.val_images_source
            if source is not None:
                self.val_image_set = source if isinstance(source, Dataset) else source()
            elif self.val_first_frames and self.root is not None:
                self.val_image_set = VOSFirstFrames(
                    self.root, self.val_split, self.image_size, self.val_videos, self.resolution
                )

    def train_dataloader(self) -> DataLoader:
        return CountingLoader(  # brings the workers' skip counts to this process (SkipCounterCallback)
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
            collate_fn=collate_clips,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader | list:
        loaders = []
        if self.val_set is not None:
            loaders.append(DataLoader(self.val_set, batch_size=1, num_workers=0, collate_fn=_first))
        if self.val_image_set is not None:
            # its own generator: starting its iterator draws a seed, which must not move the global stream
            # that training draws from (a run with click evaluation trains as one without)
            loaders.append(
                DataLoader(
                    self.val_image_set,
                    batch_size=1,
                    num_workers=0,
                    collate_fn=_first,
                    generator=torch.Generator().manual_seed(0),
                )
            )
        return loaders[0] if len(loaders) == 1 else loaders
