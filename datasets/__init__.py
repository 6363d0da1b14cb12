"""Data for unveil: sources (folders, CSV manifests), decoding, clip sampling, augmentation, synthetic
datasets in real formats, and the LightningDataModules that recipes build.

Samples are dicts of tensors: images ``{"image": [3, H, W], "label", "key"}``, videos
``{"video": [3, T, H, W], "label", "key"}``, normalised with the ImageNet mean and std.

The names below are imported on first use, so ``unveil.datasets.synth`` runs without importing torch or
Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "IMAGENET_DEFAULT_MEAN": "common",
    "IMAGENET_DEFAULT_STD": "common",
    "ImageDataModule": "datamodules",
    "VideoDataModule": "datamodules",
    "ImageFolderDataset": "image",
    "image_eval_transform": "image",
    "mae_image_transform": "image",
    "make_image_folder": "synth",
    "make_video_folder": "synth",
    "VideoDataset": "video",
    "clip_indices": "video",
    "mae_video_transform": "video",
    "read_video_csv": "video",
    "repeated_collate": "video",
    "video_eval_transform": "video",
}

__all__ = [
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "ImageDataModule",
    "ImageFolderDataset",
    "VideoDataModule",
    "VideoDataset",
    "clip_indices",
    "image_eval_transform",
    "mae_image_transform",
    "mae_video_transform",
    "make_image_folder",
    "make_video_folder",
    "read_video_csv",
    "repeated_collate",
    "video_eval_transform",
]

if TYPE_CHECKING:
    from unveil.datasets.common import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from unveil.datasets.datamodules import ImageDataModule, VideoDataModule
    from unveil.datasets.image import ImageFolderDataset, image_eval_transform, mae_image_transform
    from unveil.datasets.synth import make_image_folder, make_video_folder
    from unveil.datasets.video import (
        VideoDataset,
        clip_indices,
        mae_video_transform,
        read_video_csv,
        repeated_collate,
        video_eval_transform,
    )


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
