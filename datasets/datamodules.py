"""LightningDataModules for MAE pretraining, built from YAML recipes through their typed arguments.

Every argument is checked in ``__init__``, so a wrong path or value fails at once with one line that
names the argument, before any worker starts or any file is scanned.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from unveil.datasets.image import ImageFolderDataset, image_eval_transform, mae_image_transform
from unveil.datasets.video import VideoDataset, repeated_collate


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


class _LoadersMixin:
    """Train/val DataLoaders shared by the image and video DataModules."""

    batch_size: int
    val_batch_size: int | None
    num_workers: int
    pin_memory: bool
    train_set: Dataset | None
    val_set: Dataset | None

    def _loader(self, dataset: Dataset, train: bool, collate_fn=None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else (self.val_batch_size or self.batch_size),
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),  # pinning needs a GPU
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_fn,
        )


class ImageDataModule(_LoadersMixin, L.LightningDataModule):
    """ImageNet-layout images (``root/<split>/<class>/<file>``) with the MAE augmentation.

    Training batches: ``{"image": [B, 3, S, S], "label": [B], "key": list[str]}`` with S = ``input_size``,
    shuffled, last incomplete batch dropped. Validation uses ``image_eval_transform`` (resize to
    ``input_size / eval_crop_pct``, centre crop); ``val_split: null`` disables validation.

    Args:
        root: dataset folder holding the split folders.
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
    """

    def __init__(
        self,
        root: str,
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
    ) -> None:
        super().__init__()
        owner, hint = type(self).__name__, f" (run 'unveil synth images --out {root}' to generate a dataset)"
        _require_path(owner, "root", root, hint)
        _require_path(owner, "train_split", Path(root) / train_split, "")
        if val_split is not None:
            _require_path(
                owner, "val_split", Path(root) / val_split, " (set val_split: null for no validation)"
            )
        _check_common(owner, input_size, batch_size, num_workers, crop_scale, hflip)
        _require(owner, "eval_crop_pct", 0 < eval_crop_pct <= 1, "in (0, 1]", eval_crop_pct)
        _require(
            owner, "val_batch_size", val_batch_size is None or val_batch_size >= 1, ">= 1", val_batch_size
        )
        self.save_hyperparameters()
        self.root, self.input_size, self.crop_scale, self.hflip = root, input_size, tuple(crop_scale), hflip
        self.train_split, self.val_split, self.eval_crop_pct = train_split, val_split, eval_crop_pct
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.train_set: ImageFolderDataset | None = None
        self.val_set: ImageFolderDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = ImageFolderDataset(
                self.root, self.train_split, mae_image_transform(self.input_size, self.crop_scale, self.hflip)
            )
        if self.val_set is None and self.val_split is not None:
            self.val_set = ImageFolderDataset(
                self.root, self.val_split, image_eval_transform(self.input_size, self.eval_crop_pct)
            )

    @property
    def num_classes(self) -> int:
        """Number of class folders in the training split."""
        self.setup()
        return len(self.train_set.classes)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        return [] if self.val_set is None else self._loader(self.val_set, train=False)


class VideoDataModule(_LoadersMixin, L.LightningDataModule):
    """Kinetics-layout video clips for video MAE (``VideoDataset``).

    Sources. Training: ``csv_train`` when given, else the folder ``root/<train_split>/<class>/*.mp4``.
    Validation: ``csv_val`` when given, else the folder ``root/<val_split>`` when ``val_split`` is set,
    else none. Relative paths in a CSV resolve against ``root`` when given, else the CSV's folder.

    Training batches hold ``batch_size * repeated_sampling`` clips: ``batch_size`` videos are decoded and
    each gives ``repeated_sampling`` clips (``repeated_collate``): ``{"video": [B*R, 3, T, S, S],
    "label": [B*R], "key": list[str]}``. Validation takes one centred clip per video.

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
    """

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
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        hint = f" (run 'unveil synth videos --out {root}' to generate a dataset)"
        if root is None and csv_train is None:
            raise ValueError(f"{owner}: set root (folder layout) or csv_train (manifest)")
        if root is not None:
            _require_path(owner, "root", root, hint)
        if csv_train is not None:
            _require_path(owner, "csv_train", csv_train, "")
        else:
            _require_path(owner, "train_split", Path(root) / train_split, "")
        if csv_val is not None:
            _require_path(owner, "csv_val", csv_val, "")
        elif val_split is not None and root is not None:
            _require_path(
                owner, "val_split", Path(root) / val_split, " (set val_split: null for no validation)"
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
        self.root, self.csv_train, self.csv_val = root, csv_train, csv_val
        self.train_split, self.val_split = train_split, val_split
        self.input_size, self.num_frames, self.sampling_rate = input_size, num_frames, sampling_rate
        self.repeated_sampling, self.crop_scale, self.hflip = repeated_sampling, tuple(crop_scale), hflip
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.train_set: VideoDataset | None = None
        self.val_set: VideoDataset | None = None

    def _dataset(self, split: str, csv: str | None, train: bool) -> VideoDataset:
        return VideoDataset(
            self.root,
            split,
            csv,
            self.num_frames,
            self.sampling_rate,
            train=train,
            input_size=self.input_size,
            crop_scale=self.crop_scale,
            hflip=self.hflip,
            repeated_sampling=self.repeated_sampling if train else 1,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self._dataset(self.train_split, self.csv_train, train=True)
        if self.val_set is None and (self.csv_val is not None or (self.val_split is not None and self.root)):
            self.val_set = self._dataset(self.val_split, self.csv_val, train=False)

    @property
    def num_classes(self) -> int:
        """Number of classes of the training set (class folders, or largest manifest label + 1)."""
        self.setup()
        return self.train_set.num_classes

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_set, train=True, collate_fn=repeated_collate)

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        return (
            []
            if self.val_set is None
            else self._loader(self.val_set, train=False, collate_fn=repeated_collate)
        )
