"""Argument groups every DataModule shares, as small typed dataclasses that jsonargparse builds from YAML.

A recipe sets them as nested keys::

    data:
      class_path: unveil.datasets.VideoDataModule
      init_args:
        shards: /shards/k400/train.json
        shard_options: {resampled: true, epoch_samples: 240000}
        skips: {max_skip_fraction: 0.05, skip_log: runs/skips-{rank}.jsonl}

jsonargparse checks the constrained types (``PositiveInt``, ``NonNegativeInt``, ``ClosedUnitInterval``) while it
parses, so a bad value stops the command with one line naming the key; ``__post_init__`` applies the same
checks to objects built in Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jsonargparse.typing import ClosedUnitInterval, NonNegativeInt, PositiveInt


def _require_path(owner: str, argument: str, path: str | Path, hint: str) -> None:
    if not Path(path).exists():
        raise FileNotFoundError(f"{owner}.{argument}: {str(path)!r} does not exist{hint}")


def _require(owner: str, argument: str, ok: bool, expected: str, value: object) -> None:
    if not ok:
        raise ValueError(f"{owner}.{argument} must be {expected}, got {value!r}")


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
        fraction = self.max_skip_fraction
        _require(
            type(self).__name__,
            "max_skip_fraction",
            fraction is None or 0 <= fraction <= 1,
            "in [0, 1] or null",
            fraction,
        )


def as_options(owner: str, argument: str, value, kind: type):
    """``value`` as a ``kind`` dataclass: one already, or a mapping of its fields (a checkpoint's hparams)."""
    if isinstance(value, kind):
        return value
    if isinstance(value, dict):
        try:
            return kind(**value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{owner}.{argument}: {error}") from None
    raise ValueError(
        f"{owner}.{argument} must be a {kind.__name__} or a mapping of its fields, got {value!r}"
    )
