"""Raw shard samples into sample dicts through the pipeline of their data kind: the same ``load`` and
``to_sample`` the folder/CSV datasets run (``unveil.datasets.common.PipelineDataset``), so a sample decodes
the same way from either source. ``ShardDecoder`` is the one decoder; the classes below only say which
tar members hold the media, which ``load`` options the json entry gives, and how the sample is labelled.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision import tv_tensors
from unveil.datasets.shards.samples import (
    AUDIO_FIELDS,
    IMAGE_FIELDS,
    VIDEO_FIELDS,
    _media,
    _video_file,
    sample_key,
    sample_label,
    sample_meta,
    sample_target,
)
from unveil.datasets.skips import BadSample


class ShardDecoder:
    """Raw shard sample -> sample dict, through ``pipeline``.

    ``decode(raw)`` finds the media member (one of ``fields``), and calls ``pipeline.load`` on its bytes
    (through a temporary file when the pipeline ``reads_files``) with ``load_options(raw)``; failures skip the
    sample. ``to_sample(decoded, raw)`` is ``pipeline.to_sample`` plus ``label`` and ``key``.

    Args:
        pipeline: the data kind's pipeline (``ImagePipeline``, ``VideoPipeline``, ...).
        num_classes: None: ``label`` is the class index (int64 scalar, -1 without one); 0: no ``label``;
            N: ``label`` is multi-hot float [N].
    """

    fields: tuple[str, ...] = ()
    what = "media"

    def __init__(self, pipeline, num_classes: int | None = None) -> None:
        self.pipeline, self.num_classes = pipeline, num_classes

    def load_options(self, sample: dict) -> dict:
        """Keyword arguments of ``pipeline.load`` beside the media (from the json entry or other members)."""
        return {}

    def decode(self, sample: dict):
        name, data = _media(sample, self.fields, self.what)
        options = self.load_options(sample)
        if getattr(self.pipeline, "reads_files", False):
            with _video_file(data, "." + name) as path:
                return self.pipeline.load(path, **options)
        return self.pipeline.load(data, **options)

    def to_sample(self, decoded, sample: dict) -> dict:
        out = self.pipeline.to_sample(decoded)
        if self.num_classes is None:
            out["label"] = torch.tensor(sample_label(sample), dtype=torch.int64)
        elif self.num_classes:
            out["label"] = sample_target(sample, self.num_classes)
        out["key"] = sample_key(sample)
        return out


class ImageShardDecoder(ShardDecoder):
    """Image shard samples (``jpg``/``png``/... + ``cls``/``json``) -> ``{"image", "label", "key"}``.

    Args:
        transform: PIL RGB image -> tensor [3, H, W] (``mae_image_transform`` or ``image_eval_transform``);
            or give the ``pipeline`` (an ``ImagePipeline``).
    """

    fields, what = IMAGE_FIELDS, "image"

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor] | None = None, pipeline=None) -> None:
        from unveil.datasets.image import ImagePipeline

        super().__init__(pipeline if pipeline is not None else ImagePipeline(transform))


class VideoShardDecoder(ShardDecoder):
    """Video shard samples (``mp4``/... + ``json``/``cls``) -> ``{"video", "label", "key"}``, through the
    ``VideoPipeline`` of ``VideoDataset`` (``pipeline``, else ``VideoPipeline(transform, **clip)``, e.g.
    ``num_frames``, ``sampling_rate``, ``train``); the json's ``start``/``end`` segment is honoured. ``video`` is [3, T, S, S], or [R, 3, T, S, S] with ``repeated_sampling`` R > 1
    (batch those with ``repeated_collate``)."""

    fields, what = VIDEO_FIELDS, "video"

    def __init__(
        self,
        transform: Callable[[tv_tensors.Video], torch.Tensor] | None = None,
        pipeline=None,
        **clip,
    ) -> None:
        from unveil.datasets.video import VideoPipeline

        super().__init__(pipeline if pipeline is not None else VideoPipeline(transform, **clip))

    def load_options(self, sample: dict) -> dict:
        meta = sample_meta(sample)
        return {"start": meta.get("start"), "end": meta.get("end")}


class AudioShardDecoder(ShardDecoder):
    """Audio shard samples (``wav``/``flac``/... + ``json``) -> ``{"fbank", "label", "key"}``, through the
    ``AudioPipeline`` of ``AudioDataset`` (``transform``: an ``FbankTransform``); ``label`` is multi-hot
    float [num_classes]."""

    fields, what = AUDIO_FIELDS, "audio"

    def __init__(
        self,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        num_classes: int = 0,
        sample_rate: int = 16000,
        pipeline=None,
    ) -> None:
        from unveil.datasets.audio import AudioPipeline

        super().__init__(
            pipeline if pipeline is not None else AudioPipeline(transform, sample_rate), num_classes
        )


class AudioVideoShardDecoder(ShardDecoder):
    """Audio-video shard samples (``mp4`` [+ ``wav``/``flac``] + ``json``) -> ``{"video", "fbank",
    "audio_missing", "key"[, "label"]}``, through the same ``AudioVideoPipeline`` as ``AudioVideoDataset``.

    Args:
        pipeline: window sampling, augmentation and the missing-audio policy.
        num_classes: length of the multi-hot ``label``; None (or 0) for data without labels.
        audio_from: ``"auto"`` (the separate audio file when the sample has one, else the mp4's track),
            ``"track"`` or ``"file"`` (a sample without a separate file is skipped as ``missing``).
    """

    fields, what = VIDEO_FIELDS, "video"

    def __init__(self, pipeline, num_classes: int | None = None, audio_from: str = "auto") -> None:
        if audio_from not in ("auto", "track", "file"):
            raise ValueError(f"audio_from must be 'auto', 'track' or 'file', got {audio_from!r}")
        super().__init__(pipeline, num_classes or 0)
        self.audio_from = audio_from

    def load_options(self, sample: dict) -> dict:
        if self.audio_from == "track":
            return {"audio": None}
        audio = next((sample[f] for f in AUDIO_FIELDS if sample.get(f) is not None), None)
        if audio is None and self.audio_from == "file":
            raise BadSample("missing", "the sample has no separate audio entry (audio_from='file')")
        return {"audio": audio}
