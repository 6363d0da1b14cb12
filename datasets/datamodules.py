"""LightningDataModules for MAE pretraining, built from YAML recipes through their typed arguments.

Every argument is checked in ``__init__``, so a wrong path or value fails at once with one line that
names the argument, before any worker starts or any file is scanned.

Training on a folder/CSV source resumes exactly: its loader (``unveil.datasets.common.ResumableLoader``)
reads in an order and with augmentations fixed by ``(seed_everything, shuffle_seed, epoch, sample)``, and
saves its position in the epoch into Lightning checkpoints. Shard sources restart the interrupted epoch
from its beginning on resume, in the same shard order (``shuffle_seed``, epoch); their mid-epoch position
and their shuffle buffer are not saved.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from unveil.datasets.audio import (
    AUDIOSET_MEAN,
    AUDIOSET_STD,
    AudioDataset,
    AudioPipeline,
    ClassIndex,
    FbankTransform,
)
from unveil.datasets.audio_video import AudioVideoDataset, AudioVideoPipeline
from unveil.datasets.common import ResumableLoader, derive_seed, run_seed
from unveil.datasets.image import ImageFolderDataset, ImagePipeline, image_eval_transform, mae_image_transform
from unveil.datasets.shards import (
    AudioShardDecoder,
    AudioVideoShardDecoder,
    ImageShardDecoder,
    ShardDataset,
    ShardLoader,
    VideoShardDecoder,
    resolve_shards,
)
from unveil.datasets.skips import SkipCounter
from unveil.datasets.video import (
    VideoDataset,
    VideoPipeline,
    mae_video_transform,
    repeated_collate,
    video_eval_transform,
)


def _require_path(owner: str, argument: str, path: str | Path, hint: str) -> None:
    if not Path(path).exists():
        raise FileNotFoundError(f"{owner}.{argument}: {str(path)!r} does not exist{hint}")


def _require(owner: str, argument: str, ok: bool, expected: str, value: object) -> None:
    if not ok:
        raise ValueError(f"{owner}.{argument} must be {expected}, got {value!r}")


def _check_common(
    owner: str,
    input_size: int,
    batch_size: int,
    num_workers: int,
    crop_scale: tuple[float, float],
    hflip: float,
) -> None:
    _require(owner, "input_size", input_size >= 1, ">= 1", input_size)
    _require(owner, "batch_size", batch_size >= 1, ">= 1", batch_size)
    _require(owner, "num_workers", num_workers >= 0, ">= 0", num_workers)
    _require(
        owner,
        "crop_scale",
        len(crop_scale) == 2 and 0 < crop_scale[0] <= crop_scale[1] <= 1,
        "(low, high) with 0 < low <= high <= 1",
        crop_scale,
    )
    _require(owner, "hflip", 0 <= hflip <= 1, "a probability in [0, 1]", hflip)


def _check_clip_source(
    owner: str,
    synth_kind: str,
    root: str | None,
    csv_train: str | None,
    csv_val: str | None,
    train_split: str,
    val_split: str | None,
    shards,
    val_shards,
) -> None:
    """A clip DataModule reads a folder layout, CSV manifests, or shards: check the paths it will read."""
    if root is None and csv_train is None and shards is None:
        raise ValueError(f"{owner}: set root (folder layout) or csv_train (manifest), or shards")
    if root is not None:
        _require_path(
            owner, "root", root, f" (run 'unveil synth {synth_kind} --out {root}' to generate a dataset)"
        )
    if csv_train is not None:
        _require_path(owner, "csv_train", csv_train, "")
    elif shards is None:
        _require_path(owner, "train_split", Path(root) / train_split, "")
    if csv_val is not None:
        _require_path(owner, "csv_val", csv_val, "")
    elif val_split is not None and root is not None and val_shards is None:
        _require_path(owner, "val_split", Path(root) / val_split, " (set val_split: null for no validation)")


class _LoadersMixin:
    """Train/val DataLoaders shared by every DataModule (folder/CSV sources, or shards).

    Folder/CSV training data goes through a ``ResumableLoader`` that splits each global batch among the
    DDP ranks itself (Lightning keeps it: it is a ``DistributedSampler``), so ``use_distributed_sampler``
    does not change the training split; validation loaders are plain DataLoaders that Lightning shards.
    """

    batch_size: int
    val_batch_size: int | None
    num_workers: int
    pin_memory: bool
    train_set: Dataset | None
    val_set: Dataset | None

    collate_fn = None  # the DataLoader's default collate unless a DataModule sets its own

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        common = {
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory and torch.cuda.is_available(),  # pinning needs a GPU
            "persistent_workers": self.num_workers > 0,
            "collate_fn": self.collate_fn,
        }
        if train:
            # Resumable: order and augmentation follow (seed, epoch, sample), and the position in the epoch
            # goes into checkpoints. The loader splits global batches by rank itself (see ResumableSampler).
            rank, world_size = self._rank_and_world_size()
            return ResumableLoader(
                dataset,
                batch_size=self.batch_size,
                seed=derive_seed(run_seed(), getattr(self, "shuffle_seed", 0)),
                rank=rank,
                world_size=world_size,
                progress_fn=self._train_progress,
                **common,
            )
        return DataLoader(
            dataset,
            batch_size=self.val_batch_size or self.batch_size,
            shuffle=False,
            drop_last=False,
            **common,
        )

    def _rank_and_world_size(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _train_progress(self) -> tuple[int, int] | None:
        """``(epoch, training batches of the epoch consumed)`` from the trainer, for the loader's position."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return None
        return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def train_dataloader(self) -> DataLoader:
        if self.shards is not None:
            return self._shard_loader(train=True)
        self.setup()
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_shards is not None:
            return self._shard_loader(train=False)
        self.setup()
        return [] if self.val_set is None else self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader | list:
        """The validation split: pretraining data has a train and a val split, and ``unveil test`` evaluates on
        the held-out one (as ``unveil validate`` does, its metrics logged under ``test/``)."""
        return self.val_dataloader()


class _ShardsMixin:
    """Switches a DataModule's source between its folders/CSV manifests and WebDataset shards by
    configuration alone (``shards``, ``val_shards``), and applies the skip limits to either source.

    A DataModule using it calls ``_init_shards`` in ``__init__`` and defines ``_shard_decoder(train)``
    (and ``_shard_collate`` when batches need more than ``default_collate``).
    """

    batch_size: int
    val_batch_size: int | None
    num_workers: int
    pin_memory: bool
    _shard_collate = staticmethod(default_collate)

    def _init_shards(
        self,
        owner: str,
        shards,
        val_shards,
        epoch_samples: int | None,
        resampled: bool,
        shuffle_buffer: int,
        shuffle_seed: int,
        max_skip_fraction: float | None,
        skip_log: str | None,
    ) -> None:
        hint = " (write shards with 'unveil shards make')"
        resolved = {}
        for argument, spec in (("shards", shards), ("val_shards", val_shards)):
            if spec is not None:
                try:
                    resolved[argument] = resolve_shards(spec)
                except (FileNotFoundError, ValueError) as error:
                    raise FileNotFoundError(f"{owner}.{argument}: {error}{hint}") from None
        _require(
            owner, "epoch_samples", epoch_samples is None or epoch_samples >= 1, ">= 1 or null", epoch_samples
        )
        _require(owner, "resampled", not resampled or shards is not None, "false without shards", resampled)
        if resampled and epoch_samples is None:
            _require(
                owner,
                "epoch_samples",
                resolved["shards"].num_samples is not None,
                "set with resampled shards that have no index (their sample count is unknown)",
                epoch_samples,
            )
        _require(owner, "shuffle_buffer", shuffle_buffer >= 0, ">= 0", shuffle_buffer)
        _require(
            owner,
            "max_skip_fraction",
            max_skip_fraction is None or 0 <= max_skip_fraction <= 1,
            "in [0, 1] or null",
            max_skip_fraction,
        )
        self.shards, self.val_shards = shards, val_shards
        self.shard_sets = resolved
        self.epoch_samples, self.resampled = epoch_samples, resampled
        self.shuffle_buffer, self.shuffle_seed = shuffle_buffer, shuffle_seed
        self.max_skip_fraction, self.skip_log = max_skip_fraction, skip_log

    def _skip_counter(self) -> SkipCounter:
        return SkipCounter(self.max_skip_fraction, skip_log=self.skip_log)

    def _limit_skips(self, dataset: Dataset | None) -> None:
        """Give a folder/CSV dataset this DataModule's skip limit and log."""
        if dataset is not None and hasattr(dataset, "skip_counter"):
            dataset.skip_counter = self._skip_counter()

    def _trainer_epoch(self) -> int | None:
        trainer = getattr(self, "trainer", None)
        return None if trainer is None else trainer.current_epoch

    def _shard_num_classes(self) -> int:
        shard_set = self.shard_sets["shards"]
        if shard_set.num_classes:
            return int(shard_set.num_classes)
        if shard_set.classes:
            return len(shard_set.classes)
        raise ValueError(
            f"{type(self).__name__}.shards: the number of classes is unknown (no shard index names them)"
        )

    def _shard_decoder(self, train: bool):  # pragma: no cover - overridden
        raise NotImplementedError

    def _shard_loader(self, train: bool) -> ShardLoader:
        dataset = ShardDataset(
            self.shard_sets["shards" if train else "val_shards"],
            self._shard_decoder(train),
            batch_size=self.batch_size if train else (self.val_batch_size or self.batch_size),
            collate_fn=self._shard_collate,
            drop_last=train,
            shuffle_buffer=self.shuffle_buffer if train else 0,
            shard_shuffle=train,
            resampled=self.resampled and train,
            epoch_samples=self.epoch_samples if train else None,
            seed=self.shuffle_seed,
            skip_counter=self._skip_counter(),
        )
        return ShardLoader(
            dataset,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            epoch_fn=self._trainer_epoch,
        )


class ImageDataModule(_ShardsMixin, _LoadersMixin, L.LightningDataModule):
    """ImageNet-layout images (``root/<split>/<class>/<file>``) with the MAE augmentation.

    Training batches: ``{"image": [B, 3, S, S], "label": [B], "key": list[str]}`` with S = ``input_size``,
    shuffled, last incomplete batch dropped. Validation uses ``image_eval_transform`` (resize to
    ``input_size / eval_crop_pct``, centre crop); ``val_split: null`` disables validation.

    Sources: the folder ``root/<train_split>``, or the shards ``shards`` (image shards of ``unveil shards
    make images``); validation: ``val_shards``, else the folder ``root/<val_split>`` when ``root`` is set.

    Args:
        root: dataset folder holding the split folders (optional with ``shards``).
        input_size: side of the square crops.
        batch_size: images per training batch (per device).
        num_workers: DataLoader worker processes (0 loads in the main process).
        crop_scale: RandomResizedCrop area range; MAE uses (0.2, 1.0).
        hflip: horizontal-flip probability.
        train_split: training sub-folder of ``root``.
        val_split: validation sub-folder of ``root``, or None for no validation.
        eval_crop_pct: centre-crop fraction of the validation resize.
        pin_memory: pin host memory of the batches (faster copies to the GPU).
        val_batch_size: images per validation batch; defaults to ``batch_size``.
        shards: train from WebDataset shards instead of the folder/CSV source: an index written by
            ``unveil shards make``, a folder holding one, a brace pattern of tars, or a list of these.
        val_shards: validate on shards (default: the folder/CSV validation source, if any).
        epoch_samples: samples per training epoch over all ranks, for fixed-length epochs (shards only).
        resampled: draw training shards with replacement, so every DDP rank gets the same number of
            batches (shards only; the epoch is ``epoch_samples``, else the index's sample count).
        shuffle_buffer: samples in the shard reader's shuffle buffer (held as encoded bytes, per worker).
        shuffle_seed: seed of the shard order and the shuffle buffer, combined with the epoch; for the
            folder/CSV source, combined with ``seed_everything``: seed of the sample order and augmentation.
        max_skip_fraction: stop the run (``SkipFractionExceeded``) when more than this fraction of the
            samples seen were skipped as bad; null never stops.
        skip_log: JSON-lines file listing every skipped sample and its reason (``{rank}`` becomes the rank).
    """

    def __init__(
        self,
        root: str | None = None,
        input_size: int = 224,
        batch_size: int = 64,
        num_workers: int = 8,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        hflip: float = 0.5,
        train_split: str = "train",
        val_split: str | None = "val",
        eval_crop_pct: float = 0.875,
        pin_memory: bool = True,
        val_batch_size: int | None = None,
        shards: str | list[str] | None = None,
        val_shards: str | list[str] | None = None,
        epoch_samples: int | None = None,
        resampled: bool = False,
        shuffle_buffer: int = 1000,
        shuffle_seed: int = 0,
        max_skip_fraction: float | None = 0.1,
        skip_log: str | None = None,
    ) -> None:
        super().__init__()
        owner, hint = type(self).__name__, f" (run 'unveil synth images --out {root}' to generate a dataset)"
        if root is None and shards is None:
            raise ValueError(f"{owner}: set root (folder layout) or shards (WebDataset shards)")
        if root is not None:
            _require_path(owner, "root", root, hint)
        if shards is None:
            _require_path(owner, "train_split", Path(root) / train_split, "")
        if val_split is not None and val_shards is None and root is not None:
            _require_path(
                owner, "val_split", Path(root) / val_split, " (set val_split: null for no validation)"
            )
        _check_common(owner, input_size, batch_size, num_workers, crop_scale, hflip)
        _require(owner, "eval_crop_pct", 0 < eval_crop_pct <= 1, "in (0, 1]", eval_crop_pct)
        _require(
            owner, "val_batch_size", val_batch_size is None or val_batch_size >= 1, ">= 1", val_batch_size
        )
        self.save_hyperparameters()
        self._init_shards(
            owner,
            shards,
            val_shards,
            epoch_samples,
            resampled,
            shuffle_buffer,
            shuffle_seed,
            max_skip_fraction,
            skip_log,
        )
        self.root, self.input_size, self.crop_scale, self.hflip = root, input_size, tuple(crop_scale), hflip
        self.train_split, self.val_split, self.eval_crop_pct = train_split, val_split, eval_crop_pct
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.train_set: ImageFolderDataset | None = None
        self.val_set: ImageFolderDataset | None = None

    def pipeline(self, train: bool) -> ImagePipeline:
        """Decoding and augmentation of the training or validation images, for folders and shards alike."""
        if train:
            return ImagePipeline(mae_image_transform(self.input_size, self.crop_scale, self.hflip))
        return ImagePipeline(image_eval_transform(self.input_size, self.eval_crop_pct))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and self.shards is None:
            self.train_set = ImageFolderDataset(self.root, self.train_split, pipeline=self.pipeline(True))
            self._limit_skips(self.train_set)
        if self.val_set is None and self.val_split is not None and self.val_shards is None and self.root:
            self.val_set = ImageFolderDataset(self.root, self.val_split, pipeline=self.pipeline(False))
            self._limit_skips(self.val_set)

    def _shard_decoder(self, train: bool) -> ImageShardDecoder:
        return ImageShardDecoder(pipeline=self.pipeline(train))

    @property
    def num_classes(self) -> int:
        """Number of class folders in the training split (or classes in the shard index)."""
        if self.shards is not None:
            return self._shard_num_classes()
        self.setup()
        return len(self.train_set.classes)


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
        num_workers: DataLoader worker processes (0 loads in the main process).
        pin_memory: pin host memory of the batches.
        val_batch_size: videos per validation batch; defaults to ``batch_size``.
        require_full_window: skip (reason ``short_clip``) videos shorter than the clip window
            ``(num_frames - 1) * sampling_rate + 1`` instead of repeating their last frame.
        frames_fps: frame rate of videos given as folders of frames (a class folder's sub-folder, or a
            CSV row naming a folder); it turns manifest segments in seconds into frames.
        shards: train from WebDataset shards instead of the folder/CSV source: an index written by
            ``unveil shards make``, a folder holding one, a brace pattern of tars, or a list of these.
        val_shards: validate on shards (default: the folder/CSV validation source, if any).
        epoch_samples: samples per training epoch over all ranks, for fixed-length epochs (shards only).
        resampled: draw training shards with replacement, so every DDP rank gets the same number of
            batches (shards only; the epoch is ``epoch_samples``, else the index's sample count).
        shuffle_buffer: samples in the shard reader's shuffle buffer (held as encoded bytes, per worker).
        shuffle_seed: seed of the shard order and the shuffle buffer, combined with the epoch; for the
            folder/CSV source, combined with ``seed_everything``: seed of the sample order and augmentation.
        max_skip_fraction: stop the run (``SkipFractionExceeded``) when more than this fraction of the
            samples seen were skipped as bad; null never stops.
        skip_log: JSON-lines file listing every skipped sample and its reason (``{rank}`` becomes the rank).
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
        num_workers: int = 8,
        pin_memory: bool = True,
        val_batch_size: int | None = None,
        require_full_window: bool = False,
        frames_fps: float = 30.0,
        shards: str | list[str] | None = None,
        val_shards: str | list[str] | None = None,
        epoch_samples: int | None = None,
        resampled: bool = False,
        shuffle_buffer: int = 100,
        shuffle_seed: int = 0,
        max_skip_fraction: float | None = 0.1,
        skip_log: str | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        _check_clip_source(
            owner, "videos", root, csv_train, csv_val, train_split, val_split, shards, val_shards
        )
        _check_common(owner, input_size, batch_size, num_workers, crop_scale, hflip)
        for name, value in (
            ("num_frames", num_frames),
            ("sampling_rate", sampling_rate),
            ("repeated_sampling", repeated_sampling),
        ):
            _require(owner, name, value >= 1, ">= 1", value)
        _require(
            owner, "val_batch_size", val_batch_size is None or val_batch_size >= 1, ">= 1", val_batch_size
        )
        self.save_hyperparameters()
        self._init_shards(
            owner,
            shards,
            val_shards,
            epoch_samples,
            resampled,
            shuffle_buffer,
            shuffle_seed,
            max_skip_fraction,
            skip_log,
        )
        self.require_full_window = require_full_window
        _require(owner, "frames_fps", frames_fps > 0, "> 0", frames_fps)
        self.frames_fps = frames_fps
        self.root, self.csv_train, self.csv_val = root, csv_train, csv_val
        self.train_split, self.val_split = train_split, val_split
        self.input_size, self.num_frames, self.sampling_rate = input_size, num_frames, sampling_rate
        self.repeated_sampling, self.crop_scale, self.hflip = repeated_sampling, tuple(crop_scale), hflip
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
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
        if train:
            return mae_video_transform(self.input_size, self.crop_scale, self.hflip)
        return video_eval_transform(self.input_size)

    @property
    def num_classes(self) -> int:
        """Number of classes of the training set (class folders, largest manifest label + 1, or the shard
        index's classes)."""
        if self.shards is not None:
            return self._shard_num_classes()
        self.setup()
        return self.train_set.num_classes


def _check_audio(
    owner: str, target_length: int | None, freqm: int, timem: int, norm_std: float, val_batch_size: int | None
) -> None:
    _require(owner, "target_length", target_length is None or target_length >= 1, ">= 1", target_length)
    _require(owner, "freqm", freqm >= 0, ">= 0 (0 disables frequency masking)", freqm)
    _require(owner, "timem", timem >= 0, ">= 0 (0 disables time masking)", timem)
    _require(owner, "norm_std", norm_std > 0, "> 0", norm_std)
    _require(owner, "val_batch_size", val_batch_size is None or val_batch_size >= 1, ">= 1", val_batch_size)


class AudioDataModule(_ShardsMixin, _LoadersMixin, L.LightningDataModule):
    """Audio clips as AudioMAE fbanks (``AudioDataset``), for audio MAE pretraining and fine-tuning.

    Sources. Training: ``manifest`` (AudioSet-style CSV ``id_or_path,"labels"`` or AudioMAE's JSON) when
    given, else the folder ``root/<train_split>/<class>/*.{wav,flac}``. Validation: ``val_manifest`` when
    given, else the folder ``root/<val_split>`` when ``root`` and ``val_split`` are set, else none.
    Relative manifest paths resolve against ``root`` when given, else the manifest's folder.

    Batches: ``{"fbank": [B, 1, target_length, 128], "label": [B, num_classes] float multi-hot,
    "key": list[str]}``. Training applies ``gain``, ``time_shift`` and SpecAugment (``freqm``/``timem``);
    validation none.

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
        freqm, timem: maximum widths of the frequency and time masks in training (0 disables; AudioMAE
            pretrains with 0, fine-tunes on AudioSet with 48, 192).
        gain: AudioMAE's ``--roll_mag_aug`` in training, a random gain (``random_gain``; its roll never
            shifts); on, as in AudioMAE's AS-2M pretraining.
        time_shift: a random circular shift of the waveform in training (``time_shift_waveform``; ours).
        norm_mean, norm_std: fbank statistics of the dataset (AudioSet's by default).
        batch_size: clips per training batch (per device).
        num_workers: DataLoader worker processes (0 loads in the main process).
        pin_memory: pin host memory of the batches.
        val_batch_size: clips per validation batch; defaults to ``batch_size``.
        shards: train from WebDataset shards instead of the folder/CSV source: an index written by
            ``unveil shards make``, a folder holding one, a brace pattern of tars, or a list of these.
        val_shards: validate on shards (default: the folder/CSV validation source, if any).
        epoch_samples: samples per training epoch over all ranks, for fixed-length epochs (shards only).
        resampled: draw training shards with replacement, so every DDP rank gets the same number of
            batches (shards only; the epoch is ``epoch_samples``, else the index's sample count).
        shuffle_buffer: samples in the shard reader's shuffle buffer (held as encoded bytes, per worker).
        shuffle_seed: seed of the shard order and the shuffle buffer, combined with the epoch; for the
            folder/CSV source, combined with ``seed_everything``: seed of the sample order and augmentation.
        max_skip_fraction: stop the run (``SkipFractionExceeded``) when more than this fraction of the
            samples seen were skipped as bad; null never stops.
        skip_log: JSON-lines file listing every skipped sample and its reason (``{rank}`` becomes the rank).
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
        freqm: int = 0,
        timem: int = 0,
        gain: bool = True,
        time_shift: bool = False,
        norm_mean: float = AUDIOSET_MEAN,
        norm_std: float = AUDIOSET_STD,
        batch_size: int = 32,
        num_workers: int = 8,
        pin_memory: bool = True,
        val_batch_size: int | None = None,
        shards: str | list[str] | None = None,
        val_shards: str | list[str] | None = None,
        epoch_samples: int | None = None,
        resampled: bool = False,
        shuffle_buffer: int = 500,
        shuffle_seed: int = 0,
        max_skip_fraction: float | None = 0.1,
        skip_log: str | None = None,
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
        _require(owner, "batch_size", batch_size >= 1, ">= 1", batch_size)
        _require(owner, "num_workers", num_workers >= 0, ">= 0", num_workers)
        _check_audio(owner, target_length, freqm, timem, norm_std, val_batch_size)
        self.save_hyperparameters()
        self._init_shards(
            owner,
            shards,
            val_shards,
            epoch_samples,
            resampled,
            shuffle_buffer,
            shuffle_seed,
            max_skip_fraction,
            skip_log,
        )
        self.manifest, self.class_index, self.val_manifest = manifest, class_index, val_manifest
        self.root, self.train_split, self.val_split = root, train_split, val_split
        self.target_length, self.freqm, self.timem = target_length, freqm, timem
        self.gain, self.time_shift = gain, time_shift
        self.norm_mean, self.norm_std = norm_mean, norm_std
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.train_set: AudioDataset | None = None
        self.val_set: AudioDataset | None = None

    def pipeline(self, train: bool) -> AudioPipeline:
        """Decoding and fbank features (augmented in training), for manifests, folders and shards alike."""
        transform = FbankTransform(
            self.target_length,
            train,
            self.freqm,
            self.timem,
            self.gain,
            self.time_shift,
            mean=self.norm_mean,
            std=self.norm_std,
        )
        return AudioPipeline(transform)

    def _dataset(self, manifest: str | None, split: str, train: bool, classes) -> AudioDataset:
        return AudioDataset(manifest, self.root, split, classes, pipeline=self.pipeline(train))

    def setup(self, stage: str | None = None) -> None:
        if self.shards is not None:
            # Labels in shards are class indices fixed when they were made; the index names the classes.
            if self.val_set is None and self.val_shards is None and (self.val_manifest or self.root):
                classes = self.class_index
                shard_set = self.shard_sets["shards"]
                if classes is None and shard_set.classes is not None:
                    classes = ClassIndex(
                        tuple(shard_set.class_mids or shard_set.classes), tuple(shard_set.classes)
                    )
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
        freqm, timem: SpecAugment mask widths in training (0 disables; AudioMAE pretrains with 0).
        gain: AudioMAE's ``--roll_mag_aug`` in training, a random gain of the audio (its roll never shifts,
            so it keeps the alignment with the frames); on, as in AudioMAE's AS-2M pretraining. There is no
            time shift here: it would break the alignment.
        norm_mean, norm_std: fbank statistics (AudioSet's by default).
        missing_audio: ``skip`` or ``zeros`` (zero fbank and ``audio_missing=True``) for clips without
            an audio track or with a silent one.
        silence_threshold: peak amplitude at or below which a track counts as silent.
        audio_from: ``auto``, ``track`` or ``file`` (see ``AudioVideoDataset``).
        frames_fps: frame rate of videos given as folders of frames (with a separate audio file).
        allow_short: keep videos shorter than the window (last frame repeated, audio zero-padded)
            instead of skipping them.
        batch_size, num_workers, pin_memory, val_batch_size: DataLoader settings.
        shards: train from WebDataset shards instead of the folder/CSV source: an index written by
            ``unveil shards make``, a folder holding one, a brace pattern of tars, or a list of these.
        val_shards: validate on shards (default: the folder/CSV validation source, if any).
        epoch_samples: samples per training epoch over all ranks, for fixed-length epochs (shards only).
        resampled: draw training shards with replacement, so every DDP rank gets the same number of
            batches (shards only; the epoch is ``epoch_samples``, else the index's sample count).
        shuffle_buffer: samples in the shard reader's shuffle buffer (held as encoded bytes, per worker).
        shuffle_seed: seed of the shard order and the shuffle buffer, combined with the epoch; for the
            folder/CSV source, combined with ``seed_everything``: seed of the sample order and augmentation.
        max_skip_fraction: stop the run (``SkipFractionExceeded``) when more than this fraction of the
            samples seen were skipped as bad; null never stops.
        skip_log: JSON-lines file listing every skipped sample and its reason (``{rank}`` becomes the rank).
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
        freqm: int = 0,
        timem: int = 0,
        gain: bool = True,
        norm_mean: float = AUDIOSET_MEAN,
        norm_std: float = AUDIOSET_STD,
        missing_audio: str = "skip",
        silence_threshold: float = 1e-4,
        audio_from: str = "auto",
        allow_short: bool = False,
        frames_fps: float = 30.0,
        batch_size: int = 8,
        num_workers: int = 8,
        pin_memory: bool = True,
        val_batch_size: int | None = None,
        shards: str | list[str] | None = None,
        val_shards: str | list[str] | None = None,
        epoch_samples: int | None = None,
        resampled: bool = False,
        shuffle_buffer: int = 100,
        shuffle_seed: int = 0,
        max_skip_fraction: float | None = 0.1,
        skip_log: str | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        _check_clip_source(
            owner, "audiovideo", root, csv_train, csv_val, train_split, val_split, shards, val_shards
        )
        if class_index is not None:
            _require_path(owner, "class_index", class_index, "")
        _check_common(owner, input_size, batch_size, num_workers, crop_scale, hflip)
        _check_audio(owner, target_length, freqm, timem, norm_std, val_batch_size)
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
        self.save_hyperparameters()
        self._init_shards(
            owner,
            shards,
            val_shards,
            epoch_samples,
            resampled,
            shuffle_buffer,
            shuffle_seed,
            max_skip_fraction,
            skip_log,
        )
        self.root, self.csv_train, self.csv_val, self.class_index = root, csv_train, csv_val, class_index
        self.train_split, self.val_split = train_split, val_split
        self.duration, self.video_fps, self.num_frames, self.stride = duration, video_fps, num_frames, stride
        self.input_size, self.crop_scale, self.hflip = input_size, tuple(crop_scale), hflip
        self.target_length, self.freqm, self.timem, self.gain = target_length, freqm, timem, gain
        self.norm_mean, self.norm_std = norm_mean, norm_std
        self.missing_audio, self.silence_threshold = missing_audio, silence_threshold
        self.audio_from, self.allow_short = audio_from, allow_short
        _require(owner, "frames_fps", frames_fps > 0, "> 0", frames_fps)
        self.frames_fps = frames_fps
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.train_set: AudioVideoDataset | None = None
        self.val_set: AudioVideoDataset | None = None

    def pipeline(self, train: bool) -> AudioVideoPipeline:
        """The clip sampler and augmentation of this DataModule (the shard reader uses the same)."""
        return AudioVideoPipeline(
            duration=self.duration,
            fps=self.video_fps,
            num_frames=self.num_frames,
            stride=self.stride,
            train=train,
            input_size=self.input_size,
            crop_scale=self.crop_scale,
            hflip=self.hflip,
            target_length=self.target_length,
            freqm=self.freqm,
            timem=self.timem,
            gain=self.gain,
            norm_mean=self.norm_mean,
            norm_std=self.norm_std,
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
                classes = self.class_index
                shard_set = self.shard_sets["shards"]
                if classes is None and shard_set.classes is not None:
                    classes = ClassIndex(
                        tuple(shard_set.class_mids or shard_set.classes), tuple(shard_set.classes)
                    )
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
