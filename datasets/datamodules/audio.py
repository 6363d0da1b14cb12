"""``AudioDataModule`` (AudioMAE fbanks) and ``AudioVideoDataModule`` (MAViL clips): manifests, folders or
shards."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
from unveil.datasets.audio import FRAMES_PER_SECOND, AudioDataset, AudioPipeline, ClassIndex
from unveil.datasets.audio_video import AudioVideoDataset, AudioVideoPipeline
from unveil.datasets.datamodules.base import (
    _check_clip_source,
    _check_crop,
    _LoadersMixin,
    _require,
    _require_path,
    _ShardsMixin,
)
from unveil.datasets.datamodules.options import (
    FbankOptions,
    LoaderOptions,
    ShardOptions,
    SkipPolicy,
    as_options,
)
from unveil.datasets.shards import (
    AudioShardDecoder,
    AudioVideoShardDecoder,
)
from unveil.datasets.video import clip_transform


def _check_audio(owner: str, target_length: int | None, fbank) -> FbankOptions:
    """Check the fbank length; ``fbank`` as ``FbankOptions`` (from a mapping too)."""
    _require(owner, "target_length", target_length is None or target_length >= 1, ">= 1", target_length)
    return as_options(owner, "fbank", fbank, FbankOptions)


def _classes_of_shards(class_index: str | None, shard_set) -> str | ClassIndex | None:
    """The classes of a validation folder/manifest next to training shards: ``class_index`` when given, else
    the shard index's (labels in shards are class indices fixed when they were made)."""
    if class_index is None and shard_set.classes is not None:
        return ClassIndex(tuple(shard_set.class_mids or shard_set.classes), tuple(shard_set.classes))
    return class_index


class AudioDataModule(_ShardsMixin, _LoadersMixin, L.LightningDataModule):
    """Audio clips as AudioMAE fbanks (``AudioDataset``), for audio MAE pretraining and fine-tuning.

    Sources. Training: ``manifest`` (AudioSet-style CSV ``id_or_path,"labels"`` or AudioMAE's JSON) when
    given, else the folder ``root/<train_split>/<class>/*.{wav,flac}``. Validation: ``val_manifest`` when
    given, else the folder ``root/<val_split>`` when ``root`` and ``val_split`` are set, else none.
    Relative manifest paths resolve against ``root`` when given, else the manifest's folder.

    Batches: ``{"fbank": [B, 1, target_length, 128], "label": [B, num_classes] float multi-hot,
    "key": list[str]}``. Training applies ``fbank``'s gain, time shift and SpecAugment; validation none.

    With ``shards`` (``unveil shards make audio``) training reads them instead of the manifest/folder, and
    the classes are the shard index's; ``val_shards`` likewise replaces the validation source.

    Args:
        manifest: training manifest (CSV or JSON).
        class_index: AudioSet ``class_labels_indices.csv``-style file (``index,mid,display_name``); without
            it, classes come from the training manifest's labels (or the class folders).
        val_manifest: validation manifest.
        root: dataset folder (folder layout), and the base of relative manifest paths.
        train_split, val_split: sub-folders of ``root`` (folder layout); ``val_split: null`` disables it.
        target_length: fbank frames per clip (100 per second: 1024 for AudioSet's 10 s).
        fbank: SpecAugment widths, gain, time shift and normalisation of the fbanks (``FbankOptions``).
        batch_size: clips per training batch (per device).
        loader: how batches load (``LoaderOptions``: ``num_workers``, ``pin_memory``, ``val_batch_size`` in
            clips, ``shuffle_seed``), as for ``ImageDataModule``.
        shards, val_shards, shard_options, skips: shard sources, their reading options and the bad-sample
            policy, as for ``ImageDataModule``.
    """

    def __init__(
        self,
        manifest: str | None = None,
        class_index: str | None = None,
        val_manifest: str | None = None,
        root: str | None = None,
        train_split: str = "train",
        val_split: str | None = "val",
        target_length: int = 1024,
        fbank: FbankOptions = FbankOptions(),  # noqa: B008 - never mutated
        batch_size: int = 32,
        loader: LoaderOptions = LoaderOptions(),  # noqa: B008 - never mutated
        shards: str | list[str] | None = None,
        val_shards: str | list[str] | None = None,
        shard_options: ShardOptions = ShardOptions(shuffle_buffer=500),  # noqa: B008 - never mutated
        skips: SkipPolicy = SkipPolicy(),  # noqa: B008 - never mutated
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        hint = " (run 'unveil synth audio --out DIR' to generate a dataset)"
        if manifest is None and root is None and shards is None:
            raise ValueError(f"{owner}: set manifest (CSV/JSON manifest) or root (folder layout), or shards")
        if manifest is not None:
            _require_path(owner, "manifest", manifest, hint)
        elif root is not None:
            _require_path(owner, "root", root, hint)
            if shards is None:
                _require_path(owner, "train_split", Path(root) / train_split, "")
        if class_index is not None:
            _require_path(owner, "class_index", class_index, "")
        if val_manifest is not None:
            _require_path(owner, "val_manifest", val_manifest, "")
        elif manifest is None and val_split is not None and root is not None and val_shards is None:
            _require_path(
                owner, "val_split", Path(root) / val_split, " (set val_split: null for no validation)"
            )
        self.fbank = _check_audio(owner, target_length, fbank)
        self.save_hyperparameters()
        self._init_loading(**self.hparams)
        self.manifest, self.class_index, self.val_manifest = manifest, class_index, val_manifest
        self.root, self.train_split, self.val_split = root, train_split, val_split
        self.target_length = target_length
        self.train_set: AudioDataset | None = None
        self.val_set: AudioDataset | None = None

    def pipeline(self, train: bool) -> AudioPipeline:
        """Decoding and fbank features (augmented in training), for manifests, folders and shards alike."""
        return AudioPipeline(self.fbank.transform(self.target_length, train))

    def _dataset(self, manifest: str | None, split: str, train: bool, classes) -> AudioDataset:
        return AudioDataset(manifest, self.root, split, classes, pipeline=self.pipeline(train))

    def setup(self, stage: str | None = None) -> None:
        if self.shards is not None:
            if self.val_set is None and self.val_shards is None and (self.val_manifest or self.root):
                classes = _classes_of_shards(self.class_index, self.shard_sets["shards"])
                if self.val_manifest is not None:
                    self.val_set = self._dataset(self.val_manifest, "", False, classes)
                elif self.val_split is not None:
                    self.val_set = self._dataset(None, self.val_split, False, classes)
                self._limit_skips(self.val_set)
            return
        if self.train_set is None:
            self.train_set = self._dataset(self.manifest, self.train_split, True, self.class_index)
            self._limit_skips(self.train_set)
        if self.val_set is None and self.val_shards is None:
            if self.val_manifest is not None:
                self.val_set = self._dataset(self.val_manifest, "", False, self.train_set.classes)
            elif self.manifest is None and self.val_split is not None:
                self.val_set = self._dataset(None, self.val_split, False, self.train_set.classes)
            self._limit_skips(self.val_set)

    def _shard_decoder(self, train: bool) -> AudioShardDecoder:
        return AudioShardDecoder(pipeline=self.pipeline(train), num_classes=self._shard_num_classes())

    @property
    def num_classes(self) -> int:
        """Number of classes (class index, training manifest labels, class folders, or shard index)."""
        if self.shards is not None:
            return self._shard_num_classes()
        self.setup()
        return self.train_set.num_classes


class AudioVideoDataModule(_ShardsMixin, _LoadersMixin, L.LightningDataModule):
    """Audio-video clips for MAViL (``AudioVideoDataset``): frames and audio of the same time window.

    Sources. Training: ``csv_train`` (``video_path[,audio_path][,labels...]``, see ``read_av_manifest``)
    when given, else the folder ``root/<train_split>/<class>/*.mp4`` (audio: the wav/flac with the same
    stem, else the video's track; see ``audio_from``). Validation: ``csv_val`` when given, else the
    folder ``root/<val_split>`` when ``root`` and ``val_split`` are set, else none.

    Each clip is a ``duration``-second window (random in training, centred in validation). Frames are
    sampled by rate (``video_fps``, MAViL: 2 fps, so 8 frames over 4 s; ``num_frames`` defaults to
    ``duration * video_fps``) or, with ``video_fps: null``, as ``num_frames`` frames ``stride`` apart.
    The window's audio becomes an fbank of ``target_length`` frames (default ``duration * 100``).

    Batches: ``{"video": [B, 3, T, S, S], "fbank": [B, 1, target_length, 128], "audio_missing": [B]
    bool, "key": list[str], "label": [B, num_classes] float}`` (``label`` only when the source has labels).

    With ``shards`` (``unveil shards make audio-video``) training reads them instead of the manifest/folder
    (labels: the shard index's classes); ``val_shards`` likewise replaces the validation source.

    Args:
        root: dataset folder (folder layout), and the base of relative CSV paths.
        csv_train, csv_val: manifests.
        class_index: ``index,mid,display_name`` CSV mapping the labels; default: the training labels.
        train_split, val_split: sub-folders of ``root``; ``val_split: null`` disables validation.
        duration: window length in seconds (audio and video).
        video_fps: frames per second sampled in the window; null to sample by ``stride``.
        num_frames: frames per clip (T).
        stride: source frames between sampled frames (with ``video_fps: null``).
        input_size: side of the square video crops.
        crop_scale, hflip: video RandomResizedCrop area range and flip probability (one draw per clip).
        target_length: fbank frames per clip; default ``round(duration * 100)``.
        fbank: SpecAugment widths, gain and normalisation of the fbanks (``FbankOptions``; its
            ``time_shift`` must stay off: it would break the alignment with the frames).
        missing_audio: ``skip`` or ``zeros`` (zero fbank and ``audio_missing=True``) for clips without
            an audio track or with a silent one.
        silence_threshold: peak amplitude at or below which a track counts as silent.
        audio_from: ``auto``, ``track`` or ``file`` (see ``AudioVideoDataset``).
        frames_fps: frame rate of videos given as folders of frames (with a separate audio file).
        allow_short: keep videos shorter than the window (last frame repeated, audio zero-padded)
            instead of skipping them.
        batch_size: clips per training batch (per device).
        loader: how batches load (``LoaderOptions``), as for ``ImageDataModule``.
        shards, val_shards, shard_options, skips: shard sources, their reading options and the bad-sample
            policy, as for ``ImageDataModule``.
    """

    def __init__(
        self,
        root: str | None = None,
        csv_train: str | None = None,
        csv_val: str | None = None,
        class_index: str | None = None,
        train_split: str = "train",
        val_split: str | None = "val",
        duration: float = 4.0,
        video_fps: float | None = 2.0,
        num_frames: int | None = None,
        stride: int | None = None,
        input_size: int = 224,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        hflip: float = 0.5,
        target_length: int | None = None,
        fbank: FbankOptions = FbankOptions(),  # noqa: B008 - never mutated
        missing_audio: str = "skip",
        silence_threshold: float = 1e-4,
        audio_from: str = "auto",
        allow_short: bool = False,
        frames_fps: float = 30.0,
        batch_size: int = 8,
        loader: LoaderOptions = LoaderOptions(),  # noqa: B008 - never mutated
        shards: str | list[str] | None = None,
        val_shards: str | list[str] | None = None,
        shard_options: ShardOptions = ShardOptions(shuffle_buffer=100),  # noqa: B008 - never mutated
        skips: SkipPolicy = SkipPolicy(),  # noqa: B008 - never mutated
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        _check_clip_source(
            owner, "audiovideo", root, csv_train, csv_val, train_split, val_split, shards, val_shards
        )
        if class_index is not None:
            _require_path(owner, "class_index", class_index, "")
        _check_crop(owner, input_size, crop_scale, hflip)
        fbank = _check_audio(owner, target_length, fbank)
        _require(
            owner,
            "fbank.time_shift",
            not fbank.time_shift,
            "false (a time shift would break the audio's alignment with the frames)",
            fbank.time_shift,
        )
        _require(owner, "duration", duration > 0, "> 0 seconds", duration)
        if video_fps is not None:
            _require(owner, "video_fps", video_fps > 0, "> 0, or null to sample by stride", video_fps)
            _require(
                owner, "stride", stride is None, "null when sampling by rate (set video_fps: null)", stride
            )
            frames = num_frames if num_frames is not None else max(1, round(duration * video_fps))
            _require(
                owner,
                "num_frames",
                frames >= 1 and (frames - 1) / video_fps < duration,
                f"between 1 and {math.ceil(duration * video_fps)} ({video_fps} fps in {duration} s)",
                num_frames,
            )
        else:
            _require(
                owner, "stride", stride is not None and stride >= 1, ">= 1 when video_fps is null", stride
            )
            _require(
                owner,
                "num_frames",
                num_frames is not None and num_frames >= 1,
                ">= 1 with stride",
                num_frames,
            )
        _require(
            owner, "missing_audio", missing_audio in ("skip", "zeros"), "'skip' or 'zeros'", missing_audio
        )
        _require(
            owner,
            "audio_from",
            audio_from in ("auto", "track", "file"),
            "'auto', 'track' or 'file'",
            audio_from,
        )
        _require(owner, "silence_threshold", silence_threshold >= 0, ">= 0", silence_threshold)
        _require(owner, "frames_fps", frames_fps > 0, "> 0", frames_fps)
        self.save_hyperparameters()
        self._init_loading(**self.hparams)
        self.root, self.csv_train, self.csv_val, self.class_index = root, csv_train, csv_val, class_index
        self.train_split, self.val_split = train_split, val_split
        self.duration, self.video_fps, self.num_frames, self.stride = duration, video_fps, num_frames, stride
        self.input_size, self.crop_scale, self.hflip = input_size, tuple(crop_scale), hflip
        self.target_length, self.fbank = target_length, fbank
        self.missing_audio, self.silence_threshold = missing_audio, silence_threshold
        self.audio_from, self.allow_short, self.frames_fps = audio_from, allow_short, frames_fps
        self.train_set: AudioVideoDataset | None = None
        self.val_set: AudioVideoDataset | None = None

    def pipeline(self, train: bool) -> AudioVideoPipeline:
        """The clip sampler and augmentation of this DataModule (the shard reader uses the same)."""
        target_length = self.target_length or round(self.duration * FRAMES_PER_SECOND)
        return AudioVideoPipeline(
            duration=self.duration,
            fps=self.video_fps,
            num_frames=self.num_frames,
            stride=self.stride,
            train=train,
            target_length=target_length,
            video_transform=clip_transform(train, self.input_size, self.crop_scale, self.hflip),
            fbank_transform=self.fbank.transform(target_length, train),
            missing_audio=self.missing_audio,
            silence_threshold=self.silence_threshold,
            allow_short=self.allow_short,
            frames_fps=self.frames_fps,
        )

    def _dataset(self, split: str, csv: str | None, train: bool, classes) -> AudioVideoDataset:
        return AudioVideoDataset(self.root, split, csv, classes, self.audio_from, self.pipeline(train))

    def setup(self, stage: str | None = None) -> None:
        wants_val = self.val_shards is None and (
            self.csv_val is not None or (self.val_split is not None and self.root)
        )
        if self.shards is not None:
            if self.val_set is None and wants_val:
                classes = _classes_of_shards(self.class_index, self.shard_sets["shards"])
                self.val_set = self._dataset(self.val_split, self.csv_val, False, classes)
                self._limit_skips(self.val_set)
            return
        if self.train_set is None:
            self.train_set = self._dataset(self.train_split, self.csv_train, True, self.class_index)
            self._limit_skips(self.train_set)
        if self.val_set is None and wants_val:
            self.val_set = self._dataset(self.val_split, self.csv_val, False, self.train_set.classes)
            self._limit_skips(self.val_set)

    def _shard_decoder(self, train: bool) -> AudioVideoShardDecoder:
        num_classes = self.shard_sets["shards" if train else "val_shards"].num_classes
        return AudioVideoShardDecoder(self.pipeline(train), num_classes, self.audio_from)

    @property
    def num_classes(self) -> int:
        """Number of classes (class index, training labels, class folders, or shard index)."""
        if self.shards is not None:
            return self._shard_num_classes()
        self.setup()
        return self.train_set.num_classes
