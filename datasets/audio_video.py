"""Audio-video clips for MAViL (Huang et al. 2023): video frames and the audio of the same time span.

One clip is a window ``[t0, t0 + duration)`` of a video: its frames, sampled by rate (MAViL: 2 fps, so 8
frames over 4 s) or by ``num_frames``/``stride``, and the audio of exactly that window, turned into an
AudioMAE fbank of ``target_length`` frames (``duration * 100`` by default: 400 for 4 s). The audio comes
from the video's own track, or from a separate wav/flac that starts with the video.

Time is presentation time (``unveil.datasets.frames``): the frames of a window are those a player shows
during it, and its audio is the track's samples of the same seconds, on the clock of the video stream.
So a clip cut with stream copy, whose mp4 edit list hides the frames before the cut (most AudioSet and
VGGSound downloads), gets the frames that go with its audio. The video may also be a folder of frames
(at ``frames_fps``) with a separate audio file.

A sample is::

    {"video": float [3, T, S, S],                 normalised as the video MAE data (ImageNet statistics)
     "fbank": float [1, target_length, 128],      normalised AudioMAE-style
     "audio_missing": bool scalar,                True when the audio was replaced by zeros
     "key": str,
     "label": float [num_classes]}                multi-hot; only when the source has labels

Missing audio (no audio track, or a track whose peak amplitude is at most ``silence_threshold``) follows
``missing_audio``: ``"skip"`` drops the clip (skip reason ``no_audio``, ``empty_audio`` or ``silent``), ``"zeros"``
keeps it with an all-zero normalised ``fbank`` (the dataset mean) and ``audio_missing = True``, so a loss
can leave it out. A missing or undecodable file is always skipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import torch
from decord._ffi.base import DECORDError
from torchvision import tv_tensors
from unveil.datasets.audio import (
    AUDIOSET_MEAN,
    AUDIOSET_STD,
    FRAMES_PER_SECOND,
    SAMPLE_RATE,
    AudioSource,
    FbankTransform,
    read_audio,
    to_mono,
)
from unveil.datasets.common import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    VIDEO_EXTENSIONS,
    PipelineDataset,
    list_class_files,
    plain_tensor,
)
from unveil.datasets.frames import FrameFolder, VideoFrames, open_video
from unveil.datasets.manifests import (
    AVRecord,
    ClassIndex,
    _companion_audio,
    read_av_manifest,
    read_class_index,
    resolve_labels,
)
from unveil.datasets.skips import BadSample
from unveil.datasets.video import clip_transform

MissingAudio = Literal["skip", "zeros"]
AudioFrom = Literal["auto", "track", "file"]

_EPS = 1e-6  # seconds: absorbs float error when times land exactly on frame boundaries


# ------------------------------------------------------------------------------------ window and frames


def start_of_window(video: VideoFrames, duration: float, train: bool) -> float:
    """Start (s) of a ``duration`` window in ``video``: the presentation time of a frame.

    Training: uniform over the frames the window can start at and still end within the video (torch's
    global RNG); evaluation: the centred one (rounded down to a frame). A video no longer than the window
    gives its first frame.
    """
    last = video.frame_at(video.duration - duration)  # the last frame the window may start at
    if video.duration - duration < float(video.times[0]) or last <= 0:
        return float(video.times[0])
    frame = int(torch.randint(0, last + 1, ()).item()) if train else last // 2
    return float(video.times[frame])


def frames_of_window(
    video: VideoFrames,
    start: float,
    duration: float,
    num_frames: int,
    fps: float | None = None,
    stride: int | None = None,
) -> torch.Tensor:
    """Indices (int64 [num_frames]) of the frames of ``video`` in the window ``[start, start + duration)``.

    By rate (``fps``): the frames shown at ``start + i / fps``. By stride: ``num_frames`` frames
    ``stride`` apart from the first frame shown in the window. Indices past the window's (or the video's)
    last frame are clamped to it, so a short video repeats its last frame.
    """
    if (fps is None) == (stride is None):
        raise ValueError("give exactly one of fps (sample by rate) and stride (sample by frames)")
    last = max(video.first_frame_from(start + duration) - 1, 0)  # the last frame shown in the window
    if fps is not None:
        indices = video.frames_at(start + torch.arange(num_frames, dtype=torch.float64) / fps)
    else:
        first = video.first_frame_from(start)
        indices = first + torch.arange(num_frames, dtype=torch.int64) * stride
    return indices.clamp_(min=0, max=last)


class _ConstantRate(VideoFrames):
    """The timeline of ``num_frames`` frames at ``fps`` (frame ``i`` at ``i / fps``) lasting ``length`` s."""

    def __init__(self, num_frames: int, fps: float, length: float | None = None) -> None:
        times = torch.arange(max(num_frames, 1), dtype=torch.float64) / fps
        super().__init__(times, num_frames / fps if length is None else length)


def window_start(length: float, duration: float, video_fps: float, train: bool) -> float:
    """``start_of_window`` for a constant-rate video of ``length`` seconds at ``video_fps``."""
    video = _ConstantRate(math.ceil(length * video_fps - _EPS), video_fps, length)
    return start_of_window(video, duration, train)


def window_frame_indices(
    start: float,
    duration: float,
    video_fps: float,
    num_video_frames: int,
    num_frames: int,
    fps: float | None = None,
    stride: int | None = None,
) -> torch.Tensor:
    """``frames_of_window`` for a constant-rate video of ``num_video_frames`` frames at ``video_fps``."""
    video = _ConstantRate(num_video_frames, video_fps)
    return frames_of_window(video, start, duration, num_frames, fps, stride)


def crop_waveform(waveform: torch.Tensor, first_sample: int, num_samples: int) -> torch.Tensor:
    """``waveform[:, first_sample : first_sample + num_samples]`` [1, num_samples], zero where the
    range falls outside the waveform (before its start or past its end)."""
    out = waveform.new_zeros(waveform.shape[0], num_samples)
    low, high = max(first_sample, 0), min(first_sample + num_samples, waveform.shape[-1])
    if high > low:
        out[:, low - first_sample : high - first_sample] = waveform[:, low:high]
    return out


# --------------------------------------------------------------------------------------------- decoding


@dataclass
class AVClip:
    """The decoded content of one window: ``frames`` uint8 [T, H, W, 3], ``waveform`` float32 [1, N]
    (mono, N = duration * sample_rate), the window ``start`` (s, presentation time from the start of the
    video stream), the ``frame_indices`` int64 [T] taken (frames in presentation order), and
    ``audio_missing`` (the waveform is zeros standing in for no or silent audio)."""

    frames: torch.Tensor
    waveform: torch.Tensor
    start: float
    frame_indices: torch.Tensor
    audio_missing: bool


def load_av_clip(
    video: AudioSource,
    audio: AudioSource | None = None,
    *,
    duration: float = 4.0,
    fps: float | None = 2.0,
    num_frames: int | None = None,
    stride: int | None = None,
    train: bool = True,
    start: float | None = None,
    sample_rate: int = SAMPLE_RATE,
    missing_audio: MissingAudio = "skip",
    silence_threshold: float = 1e-4,
    allow_short: bool = False,
    frames_fps: float = 30.0,
) -> AVClip:
    """Decode one clip: the frames and the audio of the window ``[t0, t0 + duration)``.

    Args:
        video: the video (path, bytes or binary file object, or a folder of frames), opened with
            ``open_video``: frames by presentation time, mp4 edit lists honoured.
        audio: a separate wav/flac (or any ``read_audio`` source) that starts with the video; None reads
            the video's own audio track with PyAV (its start offset from the video stream's start
            honoured). A folder of frames has no track: without ``audio`` it counts as ``no_audio``.
        duration: window length in seconds.
        fps: sample frames by rate; ``num_frames`` defaults to ``round(duration * fps)``.
        num_frames, stride: sample ``num_frames`` frames ``stride`` apart instead (set ``fps=None``).
        train: random window start (on a frame boundary), else the centred one (``window_start``).
        start: force the window start (s), e.g. for tests or evaluation views.
        sample_rate: rate of the returned waveform.
        missing_audio: no audio track, or peak amplitude of the whole track <= ``silence_threshold``:
            ``"skip"`` raises ``BadSample`` (``no_audio`` / ``empty_audio`` / ``silent``), ``"zeros"`` returns a
            zero waveform with ``audio_missing=True``.
        allow_short: a video shorter than the window (by more than one frame) raises
            ``BadSample("short_clip")`` unless this is True; then the window starts at 0, the last frame
            repeats and the audio is zero-padded.
        frames_fps: frame rate of a folder of frames.

    Raises ``FileNotFoundError``, ``BadSample`` and the decoders' errors (``DECORDError``,
    ``av.FFmpegError``, ``soundfile.LibsndfileError``, ``RuntimeError``) for bad files.
    """
    if missing_audio not in ("skip", "zeros"):
        raise ValueError(f"missing_audio must be 'skip' or 'zeros', got {missing_audio!r}")
    if num_frames is None:
        if fps is None:
            raise ValueError("sampling by stride needs num_frames")
        num_frames = max(1, round(duration * fps))
    if hasattr(video, "read"):
        video = video.read()  # a file object: the video and its audio track are read from its bytes
    frames = open_video(video, frames_fps)
    length = frames.duration
    if length + length / frames.num_frames < duration - _EPS and not allow_short:  # one frame of slack
        raise BadSample("short_clip", f"the video lasts {length:.3f} s, the window {duration:.3f} s")

    # Audio first: a clip skipped for its audio costs no frame decoding.
    audio_missing = False
    try:
        if audio is None and isinstance(frames, FrameFolder):
            raise BadSample("no_audio", "a folder of frames has no audio track (give a separate audio file)")
        raw = read_audio(video if audio is None else audio)
    except BadSample as error:
        if error.skip_reason not in ("no_audio", "empty_audio") or missing_audio == "skip":
            raise
        audio_missing = True
    else:
        peak = float(abs(raw.samples).max())
        if peak <= silence_threshold:
            if missing_audio == "skip":
                raise BadSample("silent", f"peak amplitude {peak:.3g} <= {silence_threshold:.3g}")
            audio_missing = True

    if start is None:
        start = start_of_window(frames, duration, train)
    else:
        start = min(max(start, 0.0), max(length - duration, 0.0))
    num_samples = round(duration * sample_rate)
    if audio_missing:
        waveform = torch.zeros(1, num_samples)
    else:
        waveform = crop_waveform(
            to_mono(raw, sample_rate), round((start - raw.start) * sample_rate), num_samples
        )  # [1, num_samples]

    indices = frames_of_window(frames, start, duration, num_frames, fps, stride)
    return AVClip(frames.read(indices), waveform, start, indices, audio_missing)  # frames [T, H, W, 3]


class AudioVideoPipeline:
    """Decode, sample and augment one audio-video clip from paths or bytes into a sample dict (without
    ``key``/``label``): ``{"video": [3, T, S, S], "fbank": [1, target_length, 128], "audio_missing"}``.

    The folder/CSV dataset and the shard reader both call it. Clip arguments are ``load_av_clip``'s;
    video augmentation is ``mae_video_transform`` in training (one crop and flip for all frames) and
    ``video_eval_transform`` otherwise; audio features are ``FbankTransform`` (``freqm``/``timem``/
    ``gain`` only in training; no time shift, which would break the audio's alignment with the frames).
    ``frames_fps`` is the frame rate of videos given as folders of frames.
    """

    decode_errors: tuple[type[BaseException], ...] = (
        OSError,
        RuntimeError,
        BadSample,
        DECORDError,
        av.FFmpegError,
        EOFError,
    )
    reads_files = True  # shard bytes go through a temporary file (decord prints undecodable bytes in full)

    def __init__(
        self,
        duration: float = 4.0,
        fps: float | None = 2.0,
        num_frames: int | None = None,
        stride: int | None = None,
        train: bool = True,
        input_size: int = 224,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        hflip: float = 0.5,
        target_length: int | None = None,
        freqm: int = 0,
        timem: int = 0,
        gain: bool = True,
        norm_mean: float = AUDIOSET_MEAN,
        norm_std: float = AUDIOSET_STD,
        missing_audio: MissingAudio = "skip",
        silence_threshold: float = 1e-4,
        allow_short: bool = False,
        sample_rate: int = SAMPLE_RATE,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        video_transform: Callable[[tv_tensors.Video], torch.Tensor] | None = None,
        fbank_transform: FbankTransform | None = None,
        frames_fps: float = 30.0,
    ) -> None:
        if duration <= 0:
            raise ValueError(f"duration must be > 0, got {duration}")
        if (fps is None) == (stride is None):
            raise ValueError("give exactly one of fps (sample by rate) and stride (sample by frames)")
        if fps is not None and fps <= 0 or stride is not None and stride < 1:
            raise ValueError(f"need fps > 0 or stride >= 1, got fps={fps}, stride={stride}")
        if num_frames is None:
            if fps is None:
                raise ValueError("sampling by stride needs num_frames")
            num_frames = max(1, round(duration * fps))
        if num_frames < 1 or fps is not None and (num_frames - 1) / fps >= duration:
            raise ValueError(f"{num_frames} frames at {fps} fps do not fit in a {duration} s window")
        if missing_audio not in ("skip", "zeros"):
            raise ValueError(f"missing_audio must be 'skip' or 'zeros', got {missing_audio!r}")
        if frames_fps <= 0:
            raise ValueError(f"frames_fps must be > 0, got {frames_fps}")
        self.frames_fps = frames_fps
        self.duration, self.fps, self.num_frames, self.stride = duration, fps, num_frames, stride
        self.train, self.missing_audio, self.silence_threshold = train, missing_audio, silence_threshold
        self.allow_short, self.sample_rate = allow_short, sample_rate
        if target_length is None:
            target_length = round(duration * FRAMES_PER_SECOND)
        self.target_length = target_length
        if video_transform is None:
            video_transform = clip_transform(train, input_size, crop_scale, hflip, mean=mean, std=std)
        self.video_transform = video_transform
        self.fbank_transform = fbank_transform or FbankTransform(
            target_length, train, freqm, timem, gain, mean=norm_mean, std=norm_std, sample_rate=sample_rate
        )

    def load(
        self, video: AudioSource, audio: AudioSource | None = None, start: float | None = None
    ) -> AVClip:
        """The decoded clip (``load_av_clip`` with this pipeline's arguments)."""
        return load_av_clip(
            video,
            audio,
            duration=self.duration,
            fps=self.fps,
            num_frames=self.num_frames,
            stride=self.stride,
            train=self.train,
            start=start,
            sample_rate=self.sample_rate,
            missing_audio=self.missing_audio,
            silence_threshold=self.silence_threshold,
            allow_short=self.allow_short,
            frames_fps=self.frames_fps,
        )

    def to_sample(self, clip: AVClip) -> dict:
        """Augment a decoded clip into ``{"video", "fbank", "audio_missing"}``."""
        video = self.video_transform(tv_tensors.Video(clip.frames.permute(0, 3, 1, 2)))  # [T, 3, S, S]
        if clip.audio_missing:
            fbank = torch.zeros(1, self.fbank_transform.target_length, self.fbank_transform.num_mel_bins)
        else:
            fbank = self.fbank_transform(clip.waveform)  # [1, L, mel]
        return {
            "video": plain_tensor(video).permute(1, 0, 2, 3),  # [3, T, S, S], Hiera's layout
            "fbank": fbank,
            "audio_missing": torch.tensor(clip.audio_missing),
        }

    def __call__(self, video: AudioSource, audio: AudioSource | None = None) -> dict:
        return self.to_sample(self.load(video, audio))


# ---------------------------------------------------------------------------------------------- sources


class AudioVideoDataset(PipelineDataset):
    """Audio-video clips from a CSV manifest (``read_av_manifest``) or a Kinetics-layout folder
    ``root/<split>/<class_name>/<video>`` (one class per clip). A video is a file or a folder of frames
    (at the pipeline's ``frames_fps``, with its audio in a separate file).

    Audio (``audio_from``): ``"auto"`` takes the separate file (the CSV's ``audio_path`` column, or in a
    folder the wav/flac with the video's stem) when there is one, else the video's track; ``"track"``
    always the video's track; ``"file"`` always the separate file (a clip without one is skipped as
    ``missing``).

    Labels are multi-hot float [num_classes] over ``self.classes`` (``class_index`` CSV when given, else
    built from the manifest's labels, or the class folders); a manifest without labels gives samples
    without ``label``. Sampling, augmentation and the missing-audio policy are the ``pipeline``'s
    (``AudioVideoPipeline``; default: its defaults, training). Bad files are skipped and counted in
    ``self.skipped``, with the reason in the warning.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        csv: str | Path | None = None,
        class_index: str | Path | ClassIndex | None = None,
        audio_from: AudioFrom = "auto",
        pipeline: AudioVideoPipeline | None = None,
        max_retries: int = 10,
    ) -> None:
        if audio_from not in ("auto", "track", "file"):
            raise ValueError(f"audio_from must be 'auto', 'track' or 'file', got {audio_from!r}")
        if csv is not None:
            self.records = read_av_manifest(csv, root)
            where = str(csv)
        elif root is not None:
            split_dir = Path(root) / split
            names, files = list_class_files(split_dir, VIDEO_EXTENSIONS, folders=True)
            self.records = [
                AVRecord(
                    path,
                    _companion_audio(path) if audio_from != "track" else None,
                    (names[label],),
                    path.relative_to(split_dir).as_posix(),
                )
                for path, label in files
            ]
            where = str(split_dir)
            if class_index is None:
                class_index = ClassIndex(tuple(names), tuple(names))
        else:
            raise ValueError("AudioVideoDataset needs a root folder or a csv manifest")
        if isinstance(class_index, ClassIndex):
            self.classes = class_index
        elif class_index is not None:
            self.classes = read_class_index(class_index)
        else:
            self.classes = ClassIndex.from_labels(label for r in self.records for label in r.labels)
        self.has_labels = any(r.labels for r in self.records)
        self.targets = [
            resolve_labels(list(r.labels), self.classes, f"{where} ({r.key})") for r in self.records
        ]
        self.audio_from = audio_from
        self.pipeline = pipeline or AudioVideoPipeline()
        self._init_skipping(max_retries)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.records)

    def _source(self, index: int) -> tuple[Path, dict]:
        record = self.records[index]
        return record.video, {"audio": None if self.audio_from == "track" else record.audio}

    def _key(self, index: int) -> str:
        return self.records[index].key

    def _label(self, index: int) -> torch.Tensor | None:
        return self.classes.multi_hot(self.targets[index]) if self.has_labels else None

    def _decode(self, index: int) -> AVClip:
        if self.audio_from == "file" and self.records[index].audio is None:
            raise FileNotFoundError(f"no separate audio file for {str(self.records[index].video)!r}")
        return super()._decode(index)
