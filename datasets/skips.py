"""Accounting for the samples a run skips: counted per reason and per rank, logged as metrics, and a
limit on the skipped fraction above which the run stops.

DataLoader workers are separate processes, so the counts travel with the batches: a worker's
``SkipCounter`` keeps what it recorded since its previous batch (``pending``), the loader's collate
(``unveil.datasets.loading.CarrySkips``, or ``ShardDataset`` for shards) hands that vector out with each batch
(``take``), and the loader, in the process that trains, adds it to the dataset's counter there (``absorb``)
before the batch goes on. The counts are exact, whatever the number of workers. Each DDP rank builds its own
dataset, hence its own counter; ``SkipCounterCallback`` gathers the counters of all ranks at its log
intervals, logs them (``data/skipped/<reason>``, and ``data/skipped/rank<r>/<reason>`` under DDP) and stops
the run on every rank at once when too many samples were skipped.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, get_worker_info

log = logging.getLogger("unveil.datasets")

SKIP_REASONS: tuple[str, ...] = (
    "decode_error",  # the bytes do not decode (corrupt MP4, garbage audio, unreadable image data)
    "truncated",  # the file ends early (truncated JPEG)
    "unidentified",  # not an image at all (PIL cannot identify it)
    "missing",  # a file listed in a manifest does not exist, or a shard sample lacks its media entry
    "short_clip",  # fewer frames than the requested window, when full windows are required
    "empty_audio",  # an audio file or track with no samples
    "no_audio",  # a clip without an audio track where one is required
    "silent",  # a silent audio track where the policy says skip
    "shard_error",  # a whole shard could not be opened or read to its end
    "no_annotations",  # a detection training image without one usable (non-crowd, non-empty) annotation
    "other",  # any reason not listed above (its real name is in the warning and the skip log)
)
"""The reasons a sample can be skipped for; each one is a column of a ``SkipCounter``."""

_MAX_MESSAGE = 300  # decoders may put a whole file's bytes in an error message; logs get this much


class SkipFractionExceeded(RuntimeError):
    """Too large a fraction of the samples seen so far were skipped: the data is broken, stop the run."""


class BadSample(ValueError):
    """Raised by a decoder for a sample it must skip, with the reason to count (one of ``SKIP_REASONS``).

    ``unveil.datasets.common.skip_reason`` reads ``skip_reason`` from any exception that has it.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.skip_reason = reason


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "..."


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


class SkipCounter:
    """Counts the skipped and delivered samples of one dataset in one process.

    ``record_skip`` and ``record_delivered`` count in the process that decodes (a DataLoader worker, or the
    main process). Those counts are ``pending`` until ``take`` hands them out with a batch; ``absorb`` adds a
    batch's counts in the process that receives it. ``vector`` (and ``counts``, ``delivered``, ``lost``) is
    what this process knows: the counts it absorbed plus those still pending here, so a dataset read without
    a DataLoader counts too.

    Args:
        max_skip_fraction: when set, ``check`` (run after every skip, and on every absorbed batch) raises
            ``SkipFractionExceeded`` once ``lost / (delivered + lost)`` exceeds it. Only in a single-process
            run: under DDP one rank stopping alone would leave the others waiting in a collective, so there
            ``SkipCounterCallback`` checks all ranks together.
        min_samples: the check waits until this many samples were seen, so that a bad first sample does
            not read as 100 %.
        skip_log: optional JSON-lines file; each skip appends ``{"reason", "key", "detail", "rank",
            "worker", "time"}``. A ``{rank}`` in the path is replaced by the rank.

    Columns are ``SKIP_REASONS`` followed by ``delivered`` (samples returned) and ``lost`` (samples lost:
    1 per skipped sample, the shard's sample count for a shard that could not be read, when known).
    """

    def __init__(
        self,
        max_skip_fraction: float | None = None,
        min_samples: int = 100,
        skip_log: str | Path | None = None,
    ) -> None:
        if max_skip_fraction is not None and not 0 <= max_skip_fraction <= 1:
            raise ValueError(f"max_skip_fraction must be in [0, 1] or None, got {max_skip_fraction!r}")
        self.reasons = SKIP_REASONS
        self.max_skip_fraction = max_skip_fraction
        self.min_samples = min_samples
        self.skip_log = None if skip_log is None else str(skip_log)
        self._column = {reason: column for column, reason in enumerate(self.reasons)}
        self._delivered, self._lost = len(self.reasons), len(self.reasons) + 1
        width = len(self.reasons) + 2
        self.absorbed = torch.zeros(width, dtype=torch.int64)  # carried here by batches
        self.pending = torch.zeros(width, dtype=torch.int64)  # recorded here, not handed out yet
        self.seen = torch.zeros(width, dtype=torch.int64)  # recorded here, ever (this process's check)

    # ------------------------------------------------------------------------------------------ writing

    def record_skip(self, reason: str, key: str, detail: str = "", lost: int = 1, warn: bool = True) -> None:
        """Count one skip of ``key`` for ``reason`` (``lost`` samples), warn unless ``warn`` is False,
        append it to the skip log, then check the skipped fraction."""
        column = self._column.get(reason, self._column["other"])
        for table in (self.pending, self.seen):
            table[column] += 1
            table[self._lost] += max(1, lost)
        if warn:
            log.warning("skipping %s (%s: %s)", key, reason, _short(detail))
        if self.skip_log is not None:
            info = get_worker_info()
            record = {
                "reason": reason,
                "key": key,
                "detail": _short(detail),
                "rank": _rank(),
                "worker": -1 if info is None else info.id,
                "time": round(time.time(), 3),
            }
            path = Path(self.skip_log.replace("{rank}", str(record["rank"])))
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as stream:  # one short line per write: appends do not interleave
                stream.write(json.dumps(record) + "\n")
        if _world_size() == 1:
            check_skip_fraction(self.seen, self.max_skip_fraction, self.min_samples, scope="the data")

    def record_delivered(self, count: int = 1) -> None:
        self.pending[self._delivered] += count
        self.seen[self._delivered] += count

    def take(self) -> torch.Tensor:
        """The counts recorded since the previous ``take``, int64 [len(SKIP_REASONS) + 2], to send with a
        batch; they stop being pending here."""
        counts = self.pending.clone()
        self.pending.zero_()
        return counts

    def absorb(self, counts: torch.Tensor) -> None:
        """Add the counts a batch carried (``take`` in the process that made it), then check the fraction."""
        self.absorbed += counts
        self.check()

    def reset(self) -> None:
        for table in (self.absorbed, self.pending, self.seen):
            table.zero_()

    # ------------------------------------------------------------------------------------------ reading

    def vector(self) -> torch.Tensor:
        """int64 [len(SKIP_REASONS) + 2]: skips per reason, then delivered and lost, as this process knows them."""
        return self.absorbed + self.pending

    def counts(self) -> dict[str, int]:
        """Skips per reason (only reasons with skips)."""
        return counts_of(self.vector())

    @property
    def delivered(self) -> int:
        return int(self.vector()[self._delivered])

    @property
    def lost(self) -> int:
        return int(self.vector()[self._lost])

    def check(self) -> None:
        """Raise ``SkipFractionExceeded`` when the skipped fraction is above the limit (single process)."""
        if _world_size() == 1:
            check_skip_fraction(self.vector(), self.max_skip_fraction, self.min_samples, scope="the data")


def counts_of(vector: torch.Tensor) -> dict[str, int]:
    """``{reason: count}`` of a counter vector (``SkipCounter.vector``), reasons with zero left out."""
    return {reason: int(n) for reason, n in zip(SKIP_REASONS, vector.tolist()) if n}


def skip_fraction(vector: torch.Tensor) -> float:
    """Lost samples over samples seen (delivered + lost) of a counter vector; 0 when nothing was seen."""
    delivered, lost = int(vector[len(SKIP_REASONS)]), int(vector[len(SKIP_REASONS) + 1])
    return lost / (delivered + lost) if delivered + lost else 0.0


def check_skip_fraction(
    vector: torch.Tensor, max_skip_fraction: float | None, min_samples: int, scope: str, final: bool = False
) -> None:
    """Raise ``SkipFractionExceeded`` naming the counts when ``vector``'s skipped fraction is too large.

    The check waits for ``min_samples`` samples seen, unless ``final`` (the end of an epoch: the whole
    epoch is the sample).
    """
    if max_skip_fraction is None:
        return
    delivered, lost = int(vector[len(SKIP_REASONS)]), int(vector[len(SKIP_REASONS) + 1])
    if delivered + lost == 0 or (not final and delivered + lost < max(1, min_samples)):
        return
    fraction = skip_fraction(vector)
    if fraction > max_skip_fraction:
        reasons = ", ".join(f"{reason} {count}" for reason, count in counts_of(vector).items())
        raise SkipFractionExceeded(
            f"{fraction:.1%} of the samples seen by {scope} were skipped ({lost} of {delivered + lost}; "
            f"{reasons}), above max_skip_fraction={max_skip_fraction}: the data is broken or mis-configured "
            "(see the 'skipping ...' warnings or the skip log for the files and reasons)"
        )


def find_skip_counters(loaders: object) -> Iterator[SkipCounter]:
    """The ``skip_counter`` of every dataset behind ``loaders`` (a DataLoader or a list/dict of them)."""
    if loaders is None:
        return
    if isinstance(loaders, DataLoader):
        counter = getattr(loaders.dataset, "skip_counter", None)
        if isinstance(counter, SkipCounter):
            yield counter
    elif isinstance(loaders, dict):
        for value in loaders.values():
            yield from find_skip_counters(value)
    elif isinstance(loaders, Iterable) and not isinstance(loaders, (str, bytes)):
        for value in loaders:
            yield from find_skip_counters(value)


class SkipCounterCallback(L.Callback):
    """Logs the skipped samples of the training (and validation) data, and stops a run that skips too many.

    Every ``every_n_batches`` training batches, at the end of each training epoch and of each validation,
    the counters of all ranks are gathered (a collective: every rank does it at the same step) and logged
    to the trainer's loggers:

    - ``data/skipped/<reason>``: skips summed over ranks, cumulative over the run;
    - ``data/skipped/rank<r>/<reason>``: the same per rank (only under DDP);
    - ``data/skip_fraction``: lost samples over samples seen, all ranks together.

    Validation data logs the same under ``data/val_skipped/...``. When the training fraction exceeds
    ``max_skip_fraction`` (after ``min_samples`` samples, or at the end of an epoch whatever their number),
    every rank raises ``SkipFractionExceeded`` at the same step: the run stops rather than train on nothing.
    ``max_skip_fraction=None`` takes the limit the datasets' counters were built with.

    The last gathered counts stay readable as ``totals`` (``{reason: count}``), ``per_rank``
    (``[{reason: count}, ...]``), ``delivered`` (samples decoded) and ``fraction``, for the training data,
    and ``val_totals`` for validation.
    """

    def __init__(
        self,
        every_n_batches: int = 50,
        max_skip_fraction: float | None = None,
        min_samples: int | None = None,
    ) -> None:
        if every_n_batches < 1:
            raise ValueError(f"every_n_batches must be >= 1, got {every_n_batches}")
        self.every_n_batches = every_n_batches
        self.max_skip_fraction = max_skip_fraction
        self.min_samples = min_samples
        self.totals: dict[str, int] = {}
        self.per_rank: list[dict[str, int]] = []
        self.val_totals: dict[str, int] = {}
        self.fraction = 0.0
        self.delivered = 0

    def _gather(self, trainer: L.Trainer, counters: list[SkipCounter]) -> torch.Tensor:
        """[world_size, reasons + 2]: each rank's counts (summed over its counters)."""
        local = torch.zeros(len(SKIP_REASONS) + 2, dtype=torch.int64)
        for counter in counters:
            local += counter.vector()
        if trainer.world_size == 1:
            return local[None]
        gathered = trainer.strategy.all_gather(local.to(trainer.strategy.root_device))
        return gathered.reshape(trainer.world_size, -1).cpu()

    def _log(self, trainer: L.Trainer, prefix: str, per_rank: torch.Tensor) -> None:
        total = per_rank.sum(0)
        metrics = {f"{prefix}/{reason}": float(count) for reason, count in counts_of(total).items()}
        if trainer.world_size > 1:
            for rank, vector in enumerate(per_rank):
                metrics.update(
                    {f"{prefix}/rank{rank}/{reason}": float(n) for reason, n in counts_of(vector).items()}
                )
        if prefix == "data/skipped":
            metrics["data/skip_fraction"] = skip_fraction(total)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def _limits(self, counters: list[SkipCounter]) -> tuple[float | None, int]:
        limit = self.max_skip_fraction
        if limit is None:
            limits = [c.max_skip_fraction for c in counters if c.max_skip_fraction is not None]
            limit = min(limits) if limits else None
        min_samples = self.min_samples
        if min_samples is None:
            min_samples = min((c.min_samples for c in counters), default=100)
        return limit, min_samples

    def _update_train(self, trainer: L.Trainer, final: bool = False) -> None:
        counters = list(find_skip_counters(trainer.train_dataloader))
        per_rank = self._gather(trainer, counters)
        total = per_rank.sum(0)
        self.totals = counts_of(total)
        self.per_rank = [counts_of(vector) for vector in per_rank]
        self.fraction = skip_fraction(total)
        self.delivered = int(total[len(SKIP_REASONS)])
        self._log(trainer, "data/skipped", per_rank)
        limit, min_samples = self._limits(counters)
        scope = f"all {trainer.world_size} ranks" if trainer.world_size > 1 else "the training data"
        check_skip_fraction(total, limit, min_samples, scope=scope, final=final)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % self.every_n_batches == 0:
            self._update_train(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._update_train(trainer, final=True)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        counters = list(find_skip_counters(trainer.val_dataloaders))
        per_rank = self._gather(trainer, counters)
        self.val_totals = counts_of(per_rank.sum(0))
        self._log(trainer, "data/val_skipped", per_rank)
