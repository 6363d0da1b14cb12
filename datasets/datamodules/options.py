"""Argument groups every DataModule shares, as small typed dataclasses that jsonargparse builds from YAML.

A recipe sets them as nested keys::

    data:
      class_path: unveil.datasets.VideoDataModule
      init_args:
        shards: /shards/k400/train.json
        shard_options: {resampled: true, epoch_samples: 240000}
        skips: {max_skip_fraction: 0.05, skip_log: runs/skips-{rank}.jsonl}
        loader: {num_workers: 10, val_batch_size: 16}

and the audio DataModules' ``fbank: {freqm: 48, timem: 192}``.

jsonargparse checks the constrained types (``PositiveInt``, ``NonNegativeInt``, ``ClosedUnitInterval``) while it
parses, so a bad value stops the command with one line naming the key; ``__post_init__`` applies the same
checks to objects built in Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jsonargparse.typing import ClosedUnitInterval, NonNegativeInt, PositiveFloat, PositiveInt
from unveil.common.config import as_options, builtin_fields  # noqa: F401  (as_options: importable from here)
from unveil.datasets.audio import AUDIOSET_MEAN, AUDIOSET_STD, FbankTransform


def _require_path(owner: str, argument: str, path: str | Path, hint: str) -> None:
    if not Path(path).exists():
        raise FileNotFoundError(f"{owner}.{argument}: {str(path)!r} does not exist{hint}")


def _require(owner: str, argument: str, ok: bool, expected: str, value: object) -> None:
    if not ok:
        raise ValueError(f"{owner}.{argument} must be {expected}, got {value!r}")


@dataclass
class LoaderOptions:
    """How this machine loads the batches: settings that change speed, not the experiment (the batch size,
    which the learning rate scales with, is the DataModule's own ``batch_size``).

    Args:
        num_workers: DataLoader worker processes per device (0 loads in the main process).
        pin_memory: pin host memory of the batches, for faster copies to a GPU (ignored without one).
        val_batch_size: samples per validation batch; null: the DataModule's ``batch_size``.
        shuffle_seed: seed of the training order: for folder/CSV sources, combined with ``seed_everything``
            (sample order and augmentation); for shards, the shard order and shuffle buffer, with the epoch.
    """

    num_workers: NonNegativeInt = 8
    pin_memory: bool = True
    val_batch_size: PositiveInt | None = None
    shuffle_seed: int = 0

    def __post_init__(self) -> None:
        builtin_fields(self)
        owner = type(self).__name__
        _require(owner, "num_workers", self.num_workers >= 0, ">= 0", self.num_workers)
        _require(
            owner,
            "val_batch_size",
            self.val_batch_size is None or self.val_batch_size >= 1,
            ">= 1 or null",
            self.val_batch_size,
        )


@dataclass
class ShardOptions:
    """How the training shards are read (with ``shards``; folder/CSV sources ignore it).

    Args:
        epoch_samples: samples per training epoch over all ranks, for fixed-length epochs; null: one pass.
        resampled: draw training shards with replacement, so every DDP rank gets the same number of batches
            (the epoch is ``epoch_samples``, else the index's sample count).
        shuffle_buffer: samples in the shard reader's shuffle buffer (held as encoded bytes, per worker).
    """

    epoch_samples: PositiveInt | None = None
    resampled: bool = False
    shuffle_buffer: NonNegativeInt = 1000

    def __post_init__(self) -> None:
        builtin_fields(self)
        owner = type(self).__name__
        _require(
            owner,
            "epoch_samples",
            self.epoch_samples is None or self.epoch_samples >= 1,
            ">= 1 or null",
            self.epoch_samples,
        )
        _require(owner, "shuffle_buffer", self.shuffle_buffer >= 0, ">= 0", self.shuffle_buffer)


@dataclass
class SkipPolicy:
    """What happens to samples that fail to decode: they are skipped and counted per reason; this says when
    the run stops and where the skips are listed.

    Args:
        max_skip_fraction: stop the run (``SkipFractionExceeded``) when more than this fraction of the samples
            seen were skipped as bad; null never stops.
        skip_log: JSON-lines file listing every skipped sample and its reason (``{rank}`` becomes the rank).
    """

    max_skip_fraction: ClosedUnitInterval | None = 0.1
    skip_log: str | None = None

    def __post_init__(self) -> None:
        builtin_fields(self)
        fraction = self.max_skip_fraction
        _require(
            type(self).__name__,
            "max_skip_fraction",
            fraction is None or 0 <= fraction <= 1,
            "in [0, 1] or null",
            fraction,
        )


@dataclass
class FbankOptions:
    """How the audio DataModules turn a clip's waveform into the fbank the model sees, besides its length
    (the DataModule's ``target_length``): augmentation in training, and the normalisation.

    Args:
        freqm, timem: maximum widths of the frequency and time masks in training (0 disables; AudioMAE
            pretrains with 0, fine-tunes on AudioSet with 48, 192).
        gain: AudioMAE's ``--roll_mag_aug`` in training, a random gain (``random_gain``; its roll never
            shifts, so it keeps an audio-video clip aligned); on, as in AudioMAE's AS-2M pretraining.
        time_shift: a random circular shift of the waveform in training (``time_shift_waveform``; ours).
            Audio only: audio-video clips refuse it, as it would break their alignment with the frames.
        norm_mean, norm_std: fbank statistics of the dataset (AudioSet's by default).
    """

    freqm: NonNegativeInt = 0
    timem: NonNegativeInt = 0
    gain: bool = True
    time_shift: bool = False
    norm_mean: float = AUDIOSET_MEAN
    norm_std: PositiveFloat = AUDIOSET_STD

    def __post_init__(self) -> None:
        builtin_fields(self)
        owner = type(self).__name__
        _require(owner, "freqm", self.freqm >= 0, ">= 0 (0 disables frequency masking)", self.freqm)
        _require(owner, "timem", self.timem >= 0, ">= 0 (0 disables time masking)", self.timem)
        _require(owner, "norm_std", self.norm_std > 0, "> 0", self.norm_std)

    def transform(self, target_length: int, train: bool) -> FbankTransform:
        """The ``FbankTransform`` of ``target_length`` frames (augmented when ``train``)."""
        return FbankTransform(
            target_length,
            train,
            self.freqm,
            self.timem,
            self.gain,
            self.time_shift,
            mean=self.norm_mean,
            std=self.norm_std,
        )
