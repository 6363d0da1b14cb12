"""LightningDataModules for MAE and MAViL pretraining, built from YAML recipes through their typed arguments.

Every argument is checked in ``__init__`` (or, for the option groups ``LoaderOptions``, ``ShardOptions``,
``SkipPolicy`` and ``FbankOptions``, by jsonargparse while it parses), so a wrong path or value fails at once with one line that
names the argument, before any worker starts or any file is scanned.

Modules: ``options`` (the shared option groups), ``base`` (loaders, shard switching, skip policy),
``image``, ``video`` and ``audio`` (``AudioDataModule``, ``AudioVideoDataModule``). Every name is importable
from ``unveil.datasets.datamodules``.
"""

from unveil.datasets.datamodules.audio import AudioDataModule, AudioVideoDataModule
from unveil.datasets.datamodules.base import _check_crop, _LoadersMixin, _ShardsMixin
from unveil.datasets.datamodules.image import ImageDataModule
from unveil.datasets.datamodules.options import (
    FbankOptions,
    LoaderOptions,
    ShardOptions,
    SkipPolicy,
    _require,
    _require_path,
)
from unveil.datasets.datamodules.video import VideoDataModule

__all__ = [
    "AudioDataModule",
    "AudioVideoDataModule",
    "FbankOptions",
    "ImageDataModule",
    "LoaderOptions",
    "ShardOptions",
    "SkipPolicy",
    "VideoDataModule",
    "_LoadersMixin",
    "_ShardsMixin",
    "_check_crop",
    "_require",
    "_require_path",
]
