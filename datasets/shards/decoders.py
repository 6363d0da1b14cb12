"""Decoders of raw shard samples into sample dicts, one per data kind."""

from __future__ import annotations

import io
from collections.abc import Callable

import torch
from PIL import Image
from torchvision import tv_tensors
from unveil.datasets.common import (
    plain_tensor,
)
from unveil.datasets.frames import open_video
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
from unveil.datasets.video import (
    decode_clips,
)


class ImageShardDecoder:
    """Image shard samples (``jpg``/``png``/... + ``cls``/``json``) -> ``{"image", "label", "key"}``.

    Args:
        transform: PIL RGB image -> tensor [3, H, W] (``mae_image_transform`` or ``image_eval_transform``).
    """

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.transform = transform

    def decode(self, sample: dict) -> Image.Image:
        _, data = _media(sample, IMAGE_FIELDS, "image")
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")  # forces the full decode, so truncation raises here

    def to_sample(self, image: Image.Image, sample: dict) -> dict:
        return {
            "image": plain_tensor(self.transform(image)),
            "label": torch.tensor(sample_label(sample), dtype=torch.int64),
            "key": sample_key(sample),
        }


class VideoShardDecoder:
    """Video shard samples (``mp4``/... + ``json``/``cls``) -> ``{"video", "label", "key"}``, sampled and
    augmented as ``VideoDataset`` does: ``video`` is [3, T, S, S], or [R, 3, T, S, S] with
    ``repeated_sampling`` R > 1 (batch those with ``repeated_collate``).

    Args:
        transform: ``tv_tensors.Video`` uint8 [T, 3, H, W] -> float [T, 3, S, S] (``mae_video_transform``
            or ``video_eval_transform``).
        require_full_window: skip (``short_clip``) videos shorter than the clip window instead of
            repeating their last frame.
    """

    def __init__(
        self,
        transform: Callable[[tv_tensors.Video], torch.Tensor],
        num_frames: int = 16,
        sampling_rate: int = 4,
        train: bool = True,
        repeated_sampling: int = 1,
        require_full_window: bool = False,
    ) -> None:
        self.transform = transform
        self.num_frames, self.sampling_rate, self.train = num_frames, sampling_rate, train
        self.repeated_sampling, self.require_full_window = repeated_sampling, require_full_window

    def decode(self, sample: dict) -> torch.Tensor:
        name, data = _media(sample, VIDEO_FIELDS, "video")
        meta = sample_meta(sample)
        with _video_file(data, "." + name) as path:
            return decode_clips(
                open_video(path),
                self.num_frames,
                self.sampling_rate,
                self.train,
                self.repeated_sampling,
                meta.get("start"),
                meta.get("end"),
                self.require_full_window,
            )

    def to_sample(self, clips: torch.Tensor, sample: dict) -> dict:
        videos = []
        for clip in clips:  # [T, H, W, 3]: each clip gets its own crop, shared by its frames
            video = self.transform(tv_tensors.Video(clip.permute(0, 3, 1, 2)))  # [T, 3, S, S]
            videos.append(plain_tensor(video).permute(1, 0, 2, 3))  # [3, T, S, S], Hiera's layout
        return {
            "video": videos[0] if self.repeated_sampling == 1 else torch.stack(videos),
            "label": torch.tensor(sample_label(sample), dtype=torch.int64),
            "key": sample_key(sample),
        }


class AudioShardDecoder:
    """Audio shard samples (``wav``/``flac``/... + ``json``) -> ``{"fbank", "label", "key"}``, as
    ``AudioDataset`` makes them: ``decode_audio`` (mono, resampled), then ``transform`` (an
    ``FbankTransform``: float [1, target_length, 128]); ``label`` is multi-hot float [num_classes]."""

    def __init__(
        self, transform: Callable[[torch.Tensor], torch.Tensor], num_classes: int, sample_rate: int = 16000
    ):
        self.transform, self.num_classes, self.sample_rate = transform, num_classes, sample_rate

    def decode(self, sample: dict) -> torch.Tensor:
        from unveil.datasets.audio import decode_audio

        _, data = _media(sample, AUDIO_FIELDS, "audio")
        return decode_audio(data, self.sample_rate)

    def to_sample(self, waveform: torch.Tensor, sample: dict) -> dict:
        return {
            "fbank": self.transform(waveform),
            "label": sample_target(sample, self.num_classes),
            "key": sample_key(sample),
        }


class AudioVideoShardDecoder:
    """Audio-video shard samples (``mp4`` [+ ``wav``/``flac``] + ``json``) -> ``{"video", "fbank",
    "audio_missing", "key"[, "label"]}``, through the same ``AudioVideoPipeline`` as
    ``AudioVideoDataset``.

    Args:
        pipeline: window sampling, augmentation and the missing-audio policy.
        num_classes: length of the multi-hot ``label``; None (or 0) for data without labels.
        audio_from: ``"auto"`` (the separate audio file when the sample has one, else the mp4's track),
            ``"track"`` or ``"file"`` (a sample without a separate file is skipped as ``missing``).
    """

    def __init__(self, pipeline, num_classes: int | None = None, audio_from: str = "auto") -> None:
        if audio_from not in ("auto", "track", "file"):
            raise ValueError(f"audio_from must be 'auto', 'track' or 'file', got {audio_from!r}")
        self.pipeline, self.num_classes, self.audio_from = pipeline, num_classes or None, audio_from

    def decode(self, sample: dict):
        name, video = _media(sample, VIDEO_FIELDS, "video")
        audio = None
        if self.audio_from != "track":
            audio = next((sample[f] for f in AUDIO_FIELDS if sample.get(f) is not None), None)
            if audio is None and self.audio_from == "file":
                raise BadSample("missing", "the sample has no separate audio entry (audio_from='file')")
        with _video_file(video, "." + name) as path:
            return self.pipeline.load(path, audio)

    def to_sample(self, clip, sample: dict) -> dict:
        out = self.pipeline.to_sample(clip)
        out["key"] = sample_key(sample)
        if self.num_classes:
            out["label"] = sample_target(sample, self.num_classes)
        return out
