"""What every DataModule shares: the train/val loaders (resumable folder/CSV loaders, or shard loaders),
switching between folder/CSV sources and WebDataset shards by configuration alone, the skip policy, and the
checks of the common arguments.

Training on a folder/CSV source resumes exactly: its loader (``unveil.datasets.common.ResumableLoader``)
reads in an order and with augmentations fixed by ``(seed_everything, shuffle_seed, epoch, sample)``, and
saves its position in the epoch into Lightning checkpoints. Shard sources restart the interrupted epoch
from its beginning on resume, in the same shard order (``shuffle_seed``, epoch); their mid-epoch position
and their shuffle buffer are not saved.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from unveil.common.config import plain_options
from unveil.datasets.common import derive_seed, run_seed
from unveil.datasets.datamodules.options import (
    LoaderOptions,
    ShardOptions,
    SkipPolicy,
    _require,
    _require_path,
    as_options,
)
from unveil.datasets.loading import CountingLoader, ResumableLoader
from unveil.datasets.shards import (
    ShardDataset,
    ShardLoader,
    resolve_shards,
)
from unveil.datasets.skips import SkipCounter


def _check_crop(owner: str, input_size: int, crop_scale: tuple[float, float], hflip: float) -> None:
    """Check the crop arguments of the image and video DataModules."""
    _require(owner, "input_size", input_size >= 1, ">= 1", input_size)
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
        return CountingLoader(
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

    A DataModule using it calls ``_init_loading`` (or ``_init_sources``) in ``__init__`` and defines
    ``_shard_decoder(train)`` (and ``_shard_collate`` when batches need more than ``default_collate``).
    """

    batch_size: int
    val_batch_size: int | None
    num_workers: int
    pin_memory: bool
    _shard_collate = staticmethod(default_collate)
    default_loader = LoaderOptions()  # what a partial ``loader`` mapping (a Python call) is completed from

    def _init_loading(
        self,
        *,
        batch_size: int,
        loader,
        shards,
        val_shards,
        shard_options,
        skips,
        **kind_arguments,
    ) -> None:
        """Check and keep the loader and source arguments that every DataModule takes. Call it with the saved
        hyperparameters (``self.save_hyperparameters(); self._init_loading(**self.hparams)``), whose option
        groups it then keeps as plain mappings; the DataModule's own arguments (``kind_arguments``) are left
        to it."""
        owner = type(self).__name__
        _require(owner, "batch_size", batch_size >= 1, ">= 1", batch_size)
        loader = as_options(owner, "loader", loader, LoaderOptions, self.default_loader)
        self._init_sources(owner, shards, val_shards, shard_options, skips, loader.shuffle_seed)
        plain_options(self.hparams)
        self.batch_size, self.val_batch_size = batch_size, loader.val_batch_size
        self.num_workers, self.pin_memory = loader.num_workers, loader.pin_memory

    def _init_sources(self, owner: str, shards, val_shards, shard_options, skips, shuffle_seed: int) -> None:
        """Resolve the shard sources (one line naming the key when they do not exist) and keep the shard,
        skip and order settings (``shard_options``, ``skips``: the dataclasses, or mappings of their fields)."""
        shard_options = as_options(owner, "shard_options", shard_options, ShardOptions)
        skips = as_options(owner, "skips", skips, SkipPolicy)
        hint = " (write shards with 'unveil shards make')"
        resolved = {}
        for argument, spec in (("shards", shards), ("val_shards", val_shards)):
            if spec is not None:
                try:
                    resolved[argument] = resolve_shards(spec)
                except (FileNotFoundError, ValueError) as error:
                    raise FileNotFoundError(f"{owner}.{argument}: {error}{hint}") from None
        resampled, epoch_samples = shard_options.resampled, shard_options.epoch_samples
        _require(
            owner,
            "shard_options.resampled",
            not resampled or shards is not None,
            "false without shards",
            resampled,
        )
        if resampled and epoch_samples is None:
            _require(
                owner,
                "shard_options.epoch_samples",
                resolved["shards"].num_samples is not None,
                "set with resampled shards that have no index (their sample count is unknown)",
                epoch_samples,
            )
        self.shards, self.val_shards, self.shard_sets = shards, val_shards, resolved
        self.shard_options, self.skips, self.shuffle_seed = shard_options, skips, shuffle_seed

    def _skip_counter(self) -> SkipCounter:
        return SkipCounter(self.skips.max_skip_fraction, skip_log=self.skips.skip_log)

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
            shuffle_buffer=self.shard_options.shuffle_buffer if train else 0,
            shard_shuffle=train,
            resampled=self.shard_options.resampled and train,
            epoch_samples=self.shard_options.epoch_samples if train else None,
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
