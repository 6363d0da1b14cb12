"""Data for unveil: sources (folders, CSV manifests), decoding, clip sampling, augmentation, synthetic
datasets in real formats, and the LightningDataModules that recipes build.

Each data kind has one pipeline (``ImagePipeline``, ``VideoPipeline``, ``AudioPipeline``,
``AudioVideoPipeline``: ``load(path | bytes)`` then ``to_sample``) that the folder/CSV datasets
(``PipelineDataset``) and the shard reader (``ShardDecoder``) share.

Samples are dicts of tensors: images ``{"image": [3, H, W], "label", "key"}``, videos
``{"video": [3, T, H, W], "label", "key"}``, normalised with the ImageNet mean and std; audio
``{"fbank": [1, frames, 128], "label" (multi-hot), "key"}``, normalised AudioMAE-style; audio-video
``{"video", "fbank", "audio_missing", "key", "label"}`` with both from the same time window.

Every source also reads from WebDataset shards (``make_shards`` / ``unveil shards make``, ``ShardDataset``,
the DataModules' ``shards:``); skipped bad samples are counted per reason (``SkipCounterCallback``).

The names below are imported on first use, so ``unveil.datasets.synth`` runs without importing torch or
Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "AUDIOSET_MEAN": "audio",
    "AUDIOSET_STD": "audio",
    "AudioDataset": "audio",
    "AudioPipeline": "audio",
    "ClassIndex": "manifests",
    "FbankTransform": "audio",
    "decode_audio": "audio",
    "kaldi_fbank": "audio",
    "read_audio": "audio",
    "read_audio_manifest": "manifests",
    "read_class_index": "manifests",
    "AudioVideoDataset": "audio_video",
    "AudioVideoPipeline": "audio_video",
    "load_av_clip": "audio_video",
    "read_av_manifest": "manifests",
    "FrameFolder": "frames",
    "VideoFrames": "frames",
    "list_frames": "frames",
    "open_video": "frames",
    "IMAGENET_DEFAULT_MEAN": "common",
    "IMAGENET_DEFAULT_STD": "common",
    "PipelineDataset": "common",
    "AudioDataModule": "datamodules",
    "AudioVideoDataModule": "datamodules",
    "ImageDataModule": "datamodules",
    "VideoDataModule": "datamodules",
    "FbankOptions": "datamodules",
    "LoaderOptions": "datamodules",
    "ShardOptions": "datamodules",
    "SkipPolicy": "datamodules",
    "ImageFolderDataset": "image",
    "ImagePipeline": "image",
    "image_eval_transform": "image",
    "mae_image_transform": "image",
    "AudioShardDecoder": "shards",
    "AudioVideoShardDecoder": "shards",
    "EncodeOptions": "shards",
    "ImageShardDecoder": "shards",
    "ShardDataset": "shards",
    "ShardDecoder": "shards",
    "ShardLoader": "shards",
    "VideoShardDecoder": "shards",
    "make_shards": "shards",
    "read_index": "shards",
    "resolve_shards": "shards",
    "BadSample": "skips",
    "SkipCounter": "skips",
    "SkipCounterCallback": "skips",
    "SkipFractionExceeded": "skips",
    "make_audio_folder": "synth",
    "make_audio_video_folder": "synth",
    "make_image_folder": "synth",
    "make_video_folder": "synth",
    "FullWindowVideoDataset": "video",
    "VideoDataset": "video",
    "clip_indices": "video",
    "VideoPipeline": "video",
    "mae_video_transform": "video",
    "read_video_csv": "video",
    "repeated_collate": "video",
    "video_eval_transform": "video",
}

__all__ = [
    "AUDIOSET_MEAN",
    "AUDIOSET_STD",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "AudioDataModule",
    "AudioDataset",
    "AudioPipeline",
    "AudioShardDecoder",
    "AudioVideoDataModule",
    "AudioVideoDataset",
    "AudioVideoPipeline",
    "AudioVideoShardDecoder",
    "BadSample",
    "ClassIndex",
    "EncodeOptions",
    "FbankOptions",
    "FbankTransform",
    "FrameFolder",
    "FullWindowVideoDataset",
    "ImageDataModule",
    "ImageFolderDataset",
    "ImagePipeline",
    "ImageShardDecoder",
    "LoaderOptions",
    "PipelineDataset",
    "ShardDataset",
    "ShardDecoder",
    "ShardLoader",
    "ShardOptions",
    "SkipCounter",
    "SkipCounterCallback",
    "SkipFractionExceeded",
    "SkipPolicy",
    "VideoDataModule",
    "VideoDataset",
    "VideoFrames",
    "VideoPipeline",
    "VideoShardDecoder",
    "clip_indices",
    "decode_audio",
    "image_eval_transform",
    "kaldi_fbank",
    "list_frames",
    "load_av_clip",
    "mae_image_transform",
    "mae_video_transform",
    "make_audio_folder",
    "make_audio_video_folder",
    "make_image_folder",
    "make_shards",
    "make_video_folder",
    "open_video",
    "read_audio",
    "read_audio_manifest",
    "read_av_manifest",
    "read_class_index",
    "read_index",
    "read_video_csv",
    "repeated_collate",
    "resolve_shards",
    "video_eval_transform",
]

if TYPE_CHECKING:
    from unveil.datasets.audio import (
        AUDIOSET_MEAN,
        AUDIOSET_STD,
        AudioDataset,
        AudioPipeline,
        ClassIndex,
        FbankTransform,
        decode_audio,
        kaldi_fbank,
        read_audio,
        read_audio_manifest,
        read_class_index,
    )
    from unveil.datasets.audio_video import (
        AudioVideoDataset,
        AudioVideoPipeline,
        load_av_clip,
        read_av_manifest,
    )
    from unveil.datasets.common import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PipelineDataset
    from unveil.datasets.datamodules import (
        AudioDataModule,
        AudioVideoDataModule,
        FbankOptions,
        ImageDataModule,
        LoaderOptions,
        ShardOptions,
        SkipPolicy,
        VideoDataModule,
    )
    from unveil.datasets.frames import FrameFolder, VideoFrames, list_frames, open_video
    from unveil.datasets.image import (
        ImageFolderDataset,
        ImagePipeline,
        image_eval_transform,
        mae_image_transform,
    )
    from unveil.datasets.shards import (
        AudioShardDecoder,
        AudioVideoShardDecoder,
        EncodeOptions,
        ImageShardDecoder,
        ShardDataset,
        ShardDecoder,
        ShardLoader,
        VideoShardDecoder,
        make_shards,
        read_index,
        resolve_shards,
    )
    from unveil.datasets.skips import BadSample, SkipCounter, SkipCounterCallback, SkipFractionExceeded
    from unveil.datasets.synth import (
        make_audio_folder,
        make_audio_video_folder,
        make_image_folder,
        make_video_folder,
    )
    from unveil.datasets.video import (
        FullWindowVideoDataset,
        VideoDataset,
        VideoPipeline,
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
