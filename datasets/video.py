"""Video clips in the Kinetics layout (folders or CSV manifests; video files or folders of frames), decoded
by presentation time (``unveil.datasets.frames``), sampled and augmented for MAE pretraining of Hiera
(Feichtenhofer et al. 2022 "MAE as spatiotemporal learners"; Hiera, Ryali et al. 2023)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import torch
from decord._ffi.base import DECORDError
from torch.utils.data import default_collate
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from unveil.datasets.common import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    VIDEO_EXTENSIONS,
    PipelineDataset,
    list_class_files,
    plain_tensor,
)
from unveil.datasets.frames import VideoSource, open_video
from unveil.datasets.skips import BadSample

# ---------------------------------------------------------------------------------------- clip sampling


def clip_indices(
    num_video_frames: int,
    num_frames: int,
    sampling_rate: int,
    train: bool = True,
    start_frame: int = 0,
    end_frame: int | None = None,
) -> torch.Tensor:
    """Frame indices (int64 [num_frames]) of one clip: ``num_frames`` frames, ``sampling_rate`` apart.

    The clip spans ``(num_frames - 1) * sampling_rate + 1`` frames and lies inside the segment
    ``[start_frame, end_frame)`` (default: the whole video). In training its start is uniform over every
    position that fits (torch's global RNG, which DataLoader seeds per worker); in evaluation it is centred.

    A segment shorter than the span: the clip starts at the segment's first frame and the indices that
    would fall past its last frame are clamped to it, so the last frame repeats (the stride is kept).
    """
    if num_frames < 1 or sampling_rate < 1:
        raise ValueError(f"num_frames and sampling_rate must be >= 1, got {num_frames}, {sampling_rate}")
    end = num_video_frames if end_frame is None else min(end_frame, num_video_frames)
    start = max(0, min(start_frame, end - 1))
    if end <= start:
        raise ValueError(
            f"empty segment [{start_frame}, {end_frame}) in a video of {num_video_frames} frames"
        )
    span = (num_frames - 1) * sampling_rate + 1
    slack = (end - start) - span  # positions the window can shift by and still fit
    if slack > 0:
        start += int(torch.randint(0, slack + 1, ()).item()) if train else slack // 2
    indices = start + torch.arange(num_frames, dtype=torch.int64) * sampling_rate
    return indices.clamp_(max=end - 1)


# ----------------------------------------------------------------------------------------- augmentation


def mae_video_transform(
    input_size: int = 224,
    crop_scale: tuple[float, float] = (0.5, 1.0),
    hflip: float = 0.5,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> v2.Compose:
    """Video MAE augmentation of a ``tv_tensors.Video`` uint8 [T, 3, H, W] -> float [T, 3, S, S].

    One RandomResizedCrop (bilinear, area in ``crop_scale``) and one flip decision for the whole clip:
    torchvision v2 draws the parameters once per call and applies them to every frame of a Video.
    """
    return v2.Compose(
        [
            v2.RandomResizedCrop(
                input_size, scale=crop_scale, interpolation=InterpolationMode.BILINEAR, antialias=True
            ),
            v2.RandomHorizontalFlip(hflip),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )


def video_eval_transform(
    input_size: int = 224,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> v2.Compose:
    """Evaluation transform of a video [T, 3, H, W]: short side to ``input_size``, centre crop, normalise."""
    return v2.Compose(
        [
            v2.Resize(input_size, interpolation=InterpolationMode.BILINEAR, antialias=True),
            v2.CenterCrop(input_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )


def clip_transform(
    train: bool,
    input_size: int = 224,
    crop_scale: tuple[float, float] = (0.5, 1.0),
    hflip: float = 0.5,
    **norm,
) -> v2.Compose:
    """A clip's transform: ``mae_video_transform`` in training, else ``video_eval_transform`` (``norm``: their
    ``mean`` and ``std``)."""
    if train:
        return mae_video_transform(input_size, crop_scale, hflip, **norm)
    return video_eval_transform(input_size, **norm)


# ------------------------------------------------------------------------------------------------ pipeline


class VideoPipeline:
    """Decode, sample and augment the clips of one video, from a path (a file or a folder of frames) or a
    shard member's bytes: the one video path of the folder/CSV dataset and the shard reader.

    ``load(source, start=None, end=None)`` opens the video (``open_video``: frames by presentation time, mp4
    edit lists honoured), takes ``repeated_sampling`` windows among the frames shown during ``[start, end)``
    seconds (default: the whole video; ``windows``) and decodes each needed frame once: uint8 [R, T, H, W,
    3]. With ``require_full_window``, a video or segment shorter than the window ``(num_frames - 1) *
    sampling_rate + 1`` raises ``BadSample("short_clip")`` instead of repeating its last frame.
    ``to_sample(clips)`` gives each clip its own spatial augmentation, shared by its frames: ``{"video":
    [3, T, S, S]}``, or [R, 3, T, S, S] with R > 1 (batch those with ``repeated_collate``).

    Args:
        transform: ``tv_tensors.Video`` uint8 [T, 3, H, W] -> float [T, 3, S, S]; default
            ``mae_video_transform`` in training, else ``video_eval_transform``, from ``input_size``,
            ``crop_scale``, ``hflip``, ``mean``, ``std``.
        frames_fps: frame rate of videos given as folders of frames.
    """

    decode_errors: tuple[type[BaseException], ...] = (
        OSError,
        RuntimeError,
        DECORDError,
        av.FFmpegError,
        BadSample,
    )
    reads_files = True  # shard bytes go through a temporary file (decord prints undecodable bytes in full)

    def __init__(
        self,
        transform: Callable[[tv_tensors.Video], torch.Tensor] | None = None,
        num_frames: int = 16,
        sampling_rate: int = 4,
        train: bool = True,
        repeated_sampling: int = 1,
        require_full_window: bool = False,
        frames_fps: float = 30.0,
        input_size: int = 224,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        hflip: float = 0.5,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ) -> None:
        if frames_fps <= 0:
            raise ValueError(f"frames_fps must be > 0, got {frames_fps}")
        if repeated_sampling < 1:
            raise ValueError(f"repeated_sampling must be >= 1, got {repeated_sampling}")
        if num_frames < 1 or sampling_rate < 1:
            raise ValueError(f"num_frames and sampling_rate must be >= 1, got {num_frames}, {sampling_rate}")
        if transform is None:
            transform = clip_transform(train, input_size, crop_scale, hflip, mean=mean, std=std)
        self.transform = transform
        self.num_frames, self.sampling_rate, self.train = num_frames, sampling_rate, train
        self.repeated_sampling, self.require_full_window = repeated_sampling, require_full_window
        self.frames_fps = frames_fps

    @property
    def span(self) -> int:
        """Source frames one clip window covers."""
        return (self.num_frames - 1) * self.sampling_rate + 1

    def windows(self, num_video_frames: int, start_frame: int, end_frame: int) -> torch.Tensor:
        """Frame indices of the clips, int64 [R, T], inside the segment ``[start_frame, end_frame)``."""
        return torch.stack(
            [
                clip_indices(
                    num_video_frames, self.num_frames, self.sampling_rate, self.train, start_frame, end_frame
                )
                for _ in range(self.repeated_sampling)
            ]
        )

    def load(self, source: VideoSource, start: float | None = None, end: float | None = None) -> torch.Tensor:
        """uint8 [R, T, H, W, 3]: the clips of the video ``source`` within ``[start, end)`` seconds."""
        video = open_video(source, self.frames_fps)
        start_frame, end_frame = 0, len(video)
        if start is not None:
            start_frame = video.frame_at(start)
            if end is not None:
                end_frame = min(end_frame, video.first_frame_from(end))
        if self.require_full_window and end_frame - start_frame < self.span:
            raise BadSample(
                "short_clip",
                f"{end_frame - start_frame} frames, the window needs {self.span} "
                f"({self.num_frames} x stride {self.sampling_rate})",
            )
        clips = self.windows(len(video), start_frame, end_frame)  # [R, T]
        return video.read(clips.flatten()).unflatten(0, clips.shape)  # each frame decoded once

    def to_sample(self, clips: torch.Tensor) -> dict:
        videos = []
        for clip in clips:  # [T, H, W, 3]: each clip gets its own crop, shared by its frames
            video = self.transform(tv_tensors.Video(clip.permute(0, 3, 1, 2)))  # [T, 3, S, S]
            videos.append(plain_tensor(video).permute(1, 0, 2, 3))  # [3, T, S, S], Hiera's layout
        return {"video": videos[0] if len(videos) == 1 else torch.stack(videos)}


# ---------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class VideoRecord:
    """One video of a dataset: its file (or folder of frames), label, optional segment in seconds, and
    its key."""

    path: Path
    label: int
    key: str
    start: float | None = None
    end: float | None = None


def read_video_csv(csv: str | Path, root: str | Path | None = None) -> list[VideoRecord]:
    """Parse a Kinetics-style manifest: one header-less line per video, ``path,label`` or
    ``path,label,start,end`` (segment in seconds). Space-separated lines (``path label``) are read too.

    Relative paths are resolved against ``root`` when given, else against the CSV's own folder; the key
    of a record is the path as written in the CSV. Blank lines and lines starting with ``#`` are ignored.
    """
    csv = Path(csv)
    base = Path(root) if root is not None else csv.parent
    records = []
    for number, line in enumerate(csv.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = [field.strip() for field in line.split(",")] if "," in line else line.split()
        try:
            if len(fields) not in (2, 4):
                raise ValueError(f"expected 2 or 4 fields, got {len(fields)}")
            start, end = (float(fields[2]), float(fields[3])) if len(fields) == 4 else (None, None)
            if start is not None and not 0 <= start < end:
                raise ValueError(f"need 0 <= start < end, got start={start}, end={end}")
            records.append(VideoRecord(base / fields[0], int(fields[1]), fields[0], start, end))
        except ValueError as error:
            raise ValueError(
                f"{csv}:{number}: bad manifest line {line!r} ({error}); "
                "expected 'path,label' or 'path,label,start,end'"
            ) from None
    if not records:
        raise ValueError(f"{csv}: the manifest lists no videos")
    return records


def _pipeline_setting(name: str) -> property:
    """A read-only attribute of a dataset that is its pipeline's ``name``."""
    return property(lambda self: getattr(self.pipeline, name), doc=f"The pipeline's ``{name}``.")


class VideoDataset(PipelineDataset):
    """Video clips for MAE pretraining, from a Kinetics-layout folder or a CSV manifest.

    Sources: ``csv`` (see ``read_video_csv``; relative paths resolve against ``root`` when given, else
    the CSV's folder) or, without ``csv``, the folder ``root/<split>/<class_name>/<video>`` (class index =
    sorted folder position, key = path relative to ``root/<split>``). A video is a file (mp4, avi, mkv,
    webm, mov) or a folder of JPEG/PNG frames (DAVIS, SA-V and pre-extracted Kinetics layouts) shown at
    ``frames_fps``; a CSV row names either.

    Each sample opens one video (``open_video``: frames by presentation time, mp4 edit lists honoured),
    takes ``repeated_sampling`` clips from it, each with its own temporal window (``clip_indices``) and its
    own spatial augmentation, shared by all frames of that clip, and decodes each needed frame once. A
    manifest's ``start,end`` segment selects the frames shown during it. A sample is::

        {"video": float [3, T, S, S]            (repeated_sampling == 1)
                  float [R, 3, T, S, S]         (repeated_sampling == R > 1),
         "label": int64 scalar, "key": str}

    with T = ``num_frames`` and S = ``input_size``. Batch R > 1 samples with ``repeated_collate``. In
    evaluation (``train=False``) every clip is the centred window, resized and centre-cropped.

    Repeated sampling amortises decoding, which dominates the cost of video MAE: Hiera and MAE-ST take
    4 clips per decoded video.

    A video that fails to decode is skipped (warning naming it, ``self.skipped[reason]`` counted) and the
    next index is returned instead. With ``require_full_window``, so is (reason ``short_clip``) a video or
    segment shorter than the clip window ``(num_frames - 1) * sampling_rate + 1``, instead of repeating
    its last frame.

    Decoding, sampling and augmentation are the ``pipeline``'s (``VideoPipeline``, built from the
    arguments when not given), the same the shard reader runs.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        csv: str | Path | None = None,
        num_frames: int = 16,
        sampling_rate: int = 4,
        train: bool = True,
        input_size: int = 224,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        hflip: float = 0.5,
        repeated_sampling: int = 1,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        transform: Callable[[tv_tensors.Video], torch.Tensor] | None = None,
        max_retries: int = 10,
        frames_fps: float = 30.0,
        require_full_window: bool = False,
        pipeline: VideoPipeline | None = None,
    ) -> None:
        if pipeline is None:
            pipeline = VideoPipeline(
                transform,
                num_frames,
                sampling_rate,
                train,
                repeated_sampling,
                require_full_window,
                frames_fps,
                input_size,
                crop_scale,
                hflip,
                mean,
                std,
            )  # checks the arguments before the source is scanned
        self.pipeline = pipeline
        self.classes: list[str] | None = None
        if csv is not None:
            self.records = read_video_csv(csv, root)
        elif root is not None:
            split_dir = Path(root) / split
            self.classes, files = list_class_files(split_dir, VIDEO_EXTENSIONS, folders=True)
            self.records = [
                VideoRecord(path, label, path.relative_to(split_dir).as_posix()) for path, label in files
            ]
        else:
            raise ValueError("VideoDataset needs a root folder or a csv manifest")
        self._init_skipping(max_retries)

    # The clip settings are the pipeline's.
    transform = _pipeline_setting("transform")
    num_frames = _pipeline_setting("num_frames")
    sampling_rate = _pipeline_setting("sampling_rate")
    train = _pipeline_setting("train")
    repeated_sampling = _pipeline_setting("repeated_sampling")
    frames_fps = _pipeline_setting("frames_fps")
    require_full_window = _pipeline_setting("require_full_window")

    @property
    def num_classes(self) -> int:
        """Class folders found, or (manifests) the largest label + 1."""
        return len(self.classes) if self.classes is not None else max(r.label for r in self.records) + 1

    def __len__(self) -> int:
        return len(self.records)

    def _source(self, index: int) -> tuple[Path, dict]:
        record = self.records[index]
        return record.path, {"start": record.start, "end": record.end}

    def _key(self, index: int) -> str:
        return self.records[index].key

    def _label(self, index: int) -> torch.Tensor:
        return torch.tensor(self.records[index].label, dtype=torch.int64)


class FullWindowVideoDataset(VideoDataset):
    """``VideoDataset`` that skips (reason ``short_clip``) the videos, or manifest segments, shorter than
    the clip window ``(num_frames - 1) * sampling_rate + 1``, instead of repeating their last frame."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("require_full_window", True)
        super().__init__(*args, **kwargs)


def repeated_collate(samples: list[dict]) -> dict:
    """Collate samples whose ``video`` is [R, 3, T, H, W] into a batch of B * R clips.

    ``video`` becomes [B * R, 3, T, H, W] with the R clips of a video next to each other (row b * R + r is
    clip r of sample b); ``label`` and every other tensor are repeated R times along the batch dimension
    (``repeat_interleave``), and ``key`` lists each key R times. Samples with a [3, T, H, W] ``video``
    collate as ``default_collate`` does, so this is safe to use for any ``repeated_sampling``.
    """
    batch = default_collate(samples)
    video = batch["video"]
    if video.ndim != 6:  # [B, 3, T, H, W]: no repetition
        return batch
    repeats = video.shape[1]
    out = {}
    for name, value in batch.items():
        if name == "video":
            out[name] = value.flatten(0, 1)
        elif isinstance(value, torch.Tensor):
            out[name] = value.repeat_interleave(repeats, dim=0)
        elif isinstance(value, list):
            out[name] = [item for item in value for _ in range(repeats)]
        else:
            out[name] = value
    return out
