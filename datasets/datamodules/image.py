"""``ImageDataModule``: ImageNet-layout folders or image shards, with the MAE augmentation."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from unveil.datasets.datamodules.base import (
    _check_crop,
    _LoadersMixin,
    _require,
    _require_path,
    _ShardsMixin,
)
from unveil.datasets.datamodules.options import LoaderOptions, ShardOptions, SkipPolicy
from unveil.datasets.image import ImageFolderDataset, ImagePipeline, image_eval_transform, mae_image_transform
from unveil.datasets.shards import (
    ImageShardDecoder,
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
        crop_scale: RandomResizedCrop area range; MAE uses (0.2, 1.0).
        hflip: horizontal-flip probability.
        train_split: training sub-folder of ``root``.
        val_split: validation sub-folder of ``root``, or None for no validation.
        eval_crop_pct: centre-crop fraction of the validation resize.
        loader: how batches load (``LoaderOptions``): ``num_workers``, ``pin_memory``, ``val_batch_size``
            (images per validation batch; null: ``batch_size``), and ``shuffle_seed``: for shards, the seed of the
            shard order and shuffle buffer, with the epoch; for the folder/CSV source, combined with
            ``seed_everything``, the seed of the sample order and augmentation.
        shards: train from WebDataset shards instead of the folder/CSV source: an index written by
            ``unveil shards make``, a folder holding one, a brace pattern of tars, or a list of these.
        val_shards: validate on shards (default: the folder/CSV validation source, if any).
        shard_options: how training shards are read (``ShardOptions``: ``epoch_samples``, ``resampled``,
            ``shuffle_buffer``).
        skips: bad samples (``SkipPolicy``: ``max_skip_fraction`` at which the run stops, ``skip_log``).
    """

    def __init__(
        self,
        root: str | None = None,
        input_size: int = 224,
        batch_size: int = 64,
        loader: LoaderOptions = LoaderOptions(),  # noqa: B008 - never mutated
        crop_scale: tuple[float, float] = (0.2, 1.0),
        hflip: float = 0.5,
        train_split: str = "train",
        val_split: str | None = "val",
        eval_crop_pct: float = 0.875,
        shards: str | list[str] | None = None,
        val_shards: str | list[str] | None = None,
        shard_options: ShardOptions = ShardOptions(),  # noqa: B008 - never mutated
        skips: SkipPolicy = SkipPolicy(),  # noqa: B008 - never mutated
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
        _check_crop(owner, input_size, crop_scale, hflip)
        _require(owner, "eval_crop_pct", 0 < eval_crop_pct <= 1, "in (0, 1]", eval_crop_pct)
        self.save_hyperparameters()
        self._init_loading(**self.hparams)
        self.root, self.input_size, self.crop_scale, self.hflip = root, input_size, tuple(crop_scale), hflip
        self.train_split, self.val_split, self.eval_crop_pct = train_split, val_split, eval_crop_pct
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
