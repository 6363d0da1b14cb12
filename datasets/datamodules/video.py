"""``VideoDataModule``: Kinetics-layout clips (folders, CSV manifests or shards) for video MAE."""

from __future__ import annotations

import lightning as L
from unveil.datasets.datamodules.base import (
    _check_clip_source,
    _check_crop,
    _LoadersMixin,
    _require,
    _ShardsMixin,
)
from unveil.datasets.datamodules.options import LoaderOptions, ShardOptions, SkipPolicy
from unveil.datasets.shards import (
    VideoShardDecoder,
)
from unveil.datasets.video import (
    VideoDataset,
    VideoPipeline,
    clip_transform,
    repeated_collate,
)


class VideoDataModule(_ShardsMixin, _LoadersMixin, L.LightningDataModule):
    """Kinetics-layout video clips for video MAE (``VideoDataset``).

    Sources. Training: ``csv_train`` when given, else the folder ``root/<train_split>/<class>/*.mp4``.
    Validation: ``csv_val`` when given, else the folder ``root/<val_split>`` when ``val_split`` is set,
    else none. Relative paths in a CSV resolve against ``root`` when given, else the CSV's folder.

    Training batches hold ``batch_size * repeated_sampling`` clips: ``batch_size`` videos are decoded and
    each gives ``repeated_sampling`` clips (``repeated_collate``): ``{"video": [B*R, 3, T, S, S],
    "label": [B*R], "key": list[str]}``. Validation takes one centred clip per video.

    With ``shards`` (video shards of ``unveil shards make videos``) training reads them instead of
    ``csv_train``/the folder; ``val_shards`` likewise replaces the validation source.

    Args:
        root: dataset folder (folder layout), and the base of relative CSV paths.
        csv_train: training manifest (``path,label[,start,end]`` lines).
        csv_val: validation manifest.
        train_split: training sub-folder of ``root`` (folder layout).
        val_split: validation sub-folder of ``root``, or None for no validation.
        input_size: side of the square crops.
        num_frames: frames per clip (T).
        sampling_rate: temporal stride between sampled frames.
        repeated_sampling: clips per decoded video in training (Hiera and MAE-ST use 4).
        crop_scale: RandomResizedCrop area range; MAE-ST uses (0.5, 1.0).
        hflip: horizontal-flip probability.
        batch_size: videos per training batch (per device); clips per batch = ``batch_size * repeated_sampling``.
        loader: how batches load (``LoaderOptions``: ``num_workers``, ``pin_memory``, ``val_batch_size`` in
            videos, ``shuffle_seed``), as for ``ImageDataModule``.
        require_full_window: skip (reason ``short_clip``) videos shorter than the clip window
            ``(num_frames - 1) * sampling_rate + 1`` instead of repeating their last frame.
        frames_fps: frame rate of videos given as folders of frames (a class folder's sub-folder, or a
            CSV row naming a folder); it turns manifest segments in seconds into frames.
        shards, val_shards, shard_options, skips: shard sources, their reading options and the bad-sample
            policy, as for ``ImageDataModule``.
    """

    collate_fn = staticmethod(repeated_collate)  # repeated sampling: R clips per video join the batch

    def __init__(
        self,
        root: str | None = None,
        csv_train: str | None = None,
        csv_val: str | None = None,
        train_split: str = "train",
        val_split: str | None = "val",
        input_size: int = 224,
        num_frames: int = 16,
        sampling_rate: int = 4,
        repeated_sampling: int = 1,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        hflip: float = 0.5,
        batch_size: int = 8,
        loader: LoaderOptions = LoaderOptions(),  # noqa: B008 - never mutated
        require_full_window: bool = False,
        frames_fps: float = 30.0,
        shards: str | list[str] | None = None,
        val_shards: str | list[str] | None = None,
        shard_options: ShardOptions = ShardOptions(shuffle_buffer=100),  # noqa: B008 - never mutated
        skips: SkipPolicy = SkipPolicy(),  # noqa: B008 - never mutated
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        _check_clip_source(
            owner, "videos", root, csv_train, csv_val, train_split, val_split, shards, val_shards
        )
        _check_crop(owner, input_size, crop_scale, hflip)
        for name, value in (
            ("num_frames", num_frames),
            ("sampling_rate", sampling_rate),
            ("repeated_sampling", repeated_sampling),
        ):
            _require(owner, name, value >= 1, ">= 1", value)
        _require(owner, "frames_fps", frames_fps > 0, "> 0", frames_fps)
        self.save_hyperparameters()
        self._init_loading(**self.hparams)
        self.require_full_window, self.frames_fps = require_full_window, frames_fps
        self.root, self.csv_train, self.csv_val = root, csv_train, csv_val
        self.train_split, self.val_split = train_split, val_split
        self.input_size, self.num_frames, self.sampling_rate = input_size, num_frames, sampling_rate
        self.repeated_sampling, self.crop_scale, self.hflip = repeated_sampling, tuple(crop_scale), hflip
        self.train_set: VideoDataset | None = None
        self.val_set: VideoDataset | None = None

    def pipeline(self, train: bool) -> VideoPipeline:
        """Clip sampling, decoding and augmentation, for folders, manifests and shards alike."""
        return VideoPipeline(
            self._dataset_transform(train),
            self.num_frames,
            self.sampling_rate,
            train=train,
            repeated_sampling=self.repeated_sampling if train else 1,
            require_full_window=self.require_full_window,
            frames_fps=self.frames_fps,
        )

    def _dataset(self, split: str, csv: str | None, train: bool) -> VideoDataset:
        return VideoDataset(self.root, split, csv, pipeline=self.pipeline(train))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and self.shards is None:
            self.train_set = self._dataset(self.train_split, self.csv_train, train=True)
            self._limit_skips(self.train_set)
        if (
            self.val_set is None
            and self.val_shards is None
            and (self.csv_val is not None or (self.val_split is not None and self.root))
        ):
            self.val_set = self._dataset(self.val_split, self.csv_val, train=False)
            self._limit_skips(self.val_set)

    _shard_collate = staticmethod(repeated_collate)

    def _shard_decoder(self, train: bool) -> VideoShardDecoder:
        return VideoShardDecoder(pipeline=self.pipeline(train))

    def _dataset_transform(self, train: bool):
        return clip_transform(train, self.input_size, self.crop_scale, self.hflip)

    @property
    def num_classes(self) -> int:
        """Number of classes of the training set (class folders, largest manifest label + 1, or the shard
        index's classes)."""
        if self.shards is not None:
            return self._shard_num_classes()
        self.setup()
        return self.train_set.num_classes
