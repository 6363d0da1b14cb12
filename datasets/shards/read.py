"""Reading shards for training: ``ShardDataset`` (DDP-correct splitting, a deterministic order, bad-sample
accounting) and ``ShardLoader``."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from itertools import islice
from pathlib import Path

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info
from unveil.datasets.common import (
    Carried,
    absorb_skips,
    skip_reason,
)
from unveil.datasets.shards.index import ShardSet, resolve_shards
from unveil.datasets.shards.samples import sample_key
from unveil.datasets.skips import SkipCounter
from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener


def _seed(*parts: object) -> int:
    """A 64-bit seed from parts (``random.Random`` hashes a str seed with SHA-512: stable everywhere)."""
    return random.Random("/".join(str(part) for part in parts)).getrandbits(64)


class _ShardErrors:
    """Records shards that cannot be opened or read (``shard_error``), once per shard and pass, and tells
    webdataset to go on with the next shard."""

    def __init__(self, counter: SkipCounter, sizes: dict[str, int | None]) -> None:
        self.counter, self.sizes = counter, sizes
        self.current: str | None = None
        self.failed: set[str] = set()

    def track(self, source: Iterator[dict]) -> Iterator[dict]:
        for item in source:  # between url_opener and tar_file_expander: the shard being expanded
            self.current = item["url"]
            yield item

    def _record(self, url: str | None, error: BaseException) -> None:
        if url is not None and url not in self.failed:
            self.failed.add(url)
            self.counter.record_skip(
                "shard_error",
                url,
                f"{type(error).__name__}: {error.args[0] if error.args else error}",
                lost=self.sizes.get(url) or 1,
            )

    def shard_handler(self, error: BaseException) -> bool:
        """Errors opening a shard, or reading its tar stream."""
        url = next((arg for arg in error.args if isinstance(arg, str) and arg in self.sizes), None)
        self._record(url or self.current, error)
        # An error with the URL attached comes from the opener or the expander: go to the next shard.
        # One without comes from inside the tar stream: stop reading this shard (returning False).
        return url is not None

    def group_handler(self, error: BaseException) -> bool:
        """Errors grouping files into samples (a duplicate member): drop the file, keep reading."""
        self.counter.record_skip("decode_error", str(self.current), f"{type(error).__name__}: {error}")
        return True


class ShardDataset(IterableDataset):
    """Batches from WebDataset shards: the iterable dataset behind ``ShardLoader``.

    Pipeline, in each DataLoader worker: shard list -> split by rank -> split by worker -> open and
    read the tars -> sample shuffle buffer -> decode (``decoder``; failures skipped and counted) ->
    batches of ``batch_size`` (``collate_fn``).

    Order. The shard list is permuted from ``(seed, epoch)`` before it is split, so every rank computes the
    same permutation and takes a disjoint slice; the shuffle buffer is seeded from ``(seed, epoch, rank,
    worker)``. The same seed, epoch, number of ranks and workers give the same samples in the same order.
    ``set_epoch`` sets the epoch; ``ShardLoader`` advances it at every pass otherwise.

    Epoch length.

    - Default: one pass over the shards; each rank reads ``shards[rank::world_size]``, so ranks see
      disjoint samples. Every rank needs a shard, and under DDP the ranks only get the same number of
      batches when their shards hold the same number of samples.
    - ``epoch_samples``: every rank yields exactly ``epoch_samples // (world_size * batch_size)`` batches
      (rounded up to a multiple of the number of workers), repeating its shards as needed. With
      ``resampled=True`` shards are drawn with replacement from one stream seeded by ``(seed, epoch)``, the
      stream being split between ranks and workers; this is the mode for DDP training.

    Args:
        shards: what ``resolve_shards`` takes (index file, folder, brace pattern, list).
        decoder: an object with ``decode(raw_sample)`` (may raise: the sample is skipped) and
            ``to_sample(decoded, raw_sample) -> dict`` (``ImageShardDecoder``, ``VideoShardDecoder``, ...).
        batch_size: samples per batch.
        collate_fn: list of sample dicts -> batch.
        drop_last: drop each worker's last incomplete batch.
        shuffle_buffer: samples in the shuffle buffer (0 or 1: no sample shuffle).
        shard_shuffle: permute the shards at each epoch.
        resampled: draw shards with replacement (needs ``epoch_samples`` or an index with sample counts).
        epoch_samples: samples per epoch over all ranks (fixed-length epochs; see above).
        seed: seed of the shard permutation, the resampling and the shuffle buffer.
        skip_counter: where skips are counted (default: a new ``SkipCounter``).
    """

    def __init__(
        self,
        shards: str | Path | Sequence[str | Path] | ShardSet,
        decoder,
        batch_size: int,
        collate_fn: Callable[[list[dict]], dict] = default_collate,
        drop_last: bool = True,
        shuffle_buffer: int = 1000,
        shard_shuffle: bool = True,
        resampled: bool = False,
        epoch_samples: int | None = None,
        seed: int = 0,
        skip_counter: SkipCounter | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.shard_set = resolve_shards(shards)
        if resampled and epoch_samples is None:
            epoch_samples = self.shard_set.num_samples
            if epoch_samples is None:
                raise ValueError("resampled shards need epoch_samples (no index gives the sample count)")
        if epoch_samples is not None and epoch_samples < 1:
            raise ValueError(f"epoch_samples must be >= 1, got {epoch_samples}")
        self.decoder, self.batch_size, self.collate_fn, self.drop_last = (
            decoder,
            batch_size,
            collate_fn,
            drop_last,
        )
        self.shuffle_buffer, self.shard_shuffle, self.resampled = shuffle_buffer, shard_shuffle, resampled
        self.epoch_samples, self.seed = epoch_samples, seed
        self.skip_counter = skip_counter if skip_counter is not None else SkipCounter()
        self.num_workers = 0  # DataLoader workers, for __len__: ShardLoader sets it
        self.carry_skips = False  # ShardLoader: send the skip counts with each batch (Carried)
        # [epoch, set explicitly]: shared memory, so persistent DataLoader workers see every update.
        self._epoch = torch.tensor([-1, 0], dtype=torch.int64).share_memory_()
        self._rank_world: tuple[int, int] | None = None

    # ----------------------------------------------------------------------------------------- epochs

    @property
    def epoch(self) -> int:
        return max(0, int(self._epoch[0]))

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next pass (the shard permutation, resampling and shuffle seeds)."""
        self._epoch[0], self._epoch[1] = epoch, 1

    def begin_pass(self) -> None:
        """Called in the main process before each pass: remembers this process's rank (workers may not see
        the process group) and advances the epoch, unless ``set_epoch`` chose it."""
        self._rank_world = _rank_and_world()
        if int(self._epoch[1]):
            self._epoch[1] = 0
        else:
            self._epoch[0] += 1

    # ----------------------------------------------------------------------------------------- length

    def _batches_per_worker(self, world_size: int, workers: int) -> int | None:
        if self.epoch_samples is None:
            return None
        per_rank = max(1, self.epoch_samples // (world_size * self.batch_size))
        return math.ceil(per_rank / max(1, workers))

    def __len__(self) -> int:
        """Batches per rank per epoch: exact with ``epoch_samples``, else an upper bound from the index."""
        _, world_size = self._rank_world or _rank_and_world()
        workers = max(1, self.num_workers)
        per_worker = self._batches_per_worker(world_size, workers)
        if per_worker is not None:
            return per_worker * workers
        sizes = self.shard_set.sizes
        if any(size is None for size in sizes):
            raise TypeError("the number of batches is unknown: no index gives the shards' sample counts")
        largest = sorted(sizes, reverse=True)[: math.ceil(len(sizes) / world_size)]  # type: ignore[arg-type]
        samples = sum(largest)  # type: ignore[arg-type]
        if self.drop_last:
            return samples // self.batch_size
        return math.ceil(samples / self.batch_size) + workers - 1

    # -------------------------------------------------------------------------------------- iteration

    def _shard_source(self, epoch: int) -> Callable[[], Iterator[dict]]:
        urls = self.shard_set.urls
        passes = iter(range(1 << 62))

        def source() -> Iterator[dict]:
            rng = random.Random(_seed(self.seed, epoch, next(passes)))
            if self.resampled:
                while True:
                    yield {"url": urls[rng.randrange(len(urls))]}
            order = list(urls)
            if self.shard_shuffle:
                rng.shuffle(order)
            for url in order:
                yield {"url": url}

        return source

    def _decode(self, samples: Iterator[dict], failed_shards: set[str]) -> Iterator[dict]:
        counter = self.skip_counter
        for sample in samples:
            try:
                decoded = self.decoder.decode(sample)
            except Exception as error:  # noqa: BLE001 - bytes that do not decode skip the sample, whatever the cause
                if sample.get("__url__") in failed_shards:
                    continue  # the part of a sample a broken shard left: its shard_error counts it
                try:
                    key = sample_key(sample)
                except ValueError:  # unreadable json
                    key = sample.get("__key__", "?")
                shard = Path(str(sample.get("__url__", "?"))).name
                counter.record_skip(
                    skip_reason(error), f"{key} (shard {shard})", f"{type(error).__name__}: {error}"
                )
                continue
            yield self.decoder.to_sample(decoded, sample)
            counter.record_delivered()

    def __iter__(self) -> Iterator[dict]:
        rank, world_size = self._rank_world or _rank_and_world()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = self.epoch
        shards = len(self.shard_set.urls)
        if not self.resampled and shards < world_size:
            raise ValueError(
                f"{shards} shards for {world_size} ranks: every rank needs a shard; "
                "make smaller shards or set resampled: true"
            )
        if not self.resampled and self.epoch_samples is not None and shards < world_size * workers:
            raise ValueError(
                f"{shards} shards for {world_size} ranks x {workers} workers: with epoch_samples every worker "
                "needs a shard; use fewer workers, smaller shards, or resampled: true"
            )
        errors = _ShardErrors(self.skip_counter, dict(zip(self.shard_set.urls, self.shard_set.sizes)))
        stages: list = [
            self._shard_source(epoch),
            partial(_split_by_rank, rank=rank, world_size=world_size),
            wds.split_by_worker,
            partial(url_opener, handler=errors.shard_handler),
            errors.track,
            partial(tar_file_expander, handler=errors.shard_handler),
            partial(group_by_keys, handler=errors.group_handler),
        ]
        if self.shuffle_buffer > 1:
            initial = min(self.shuffle_buffer, 100)
            stages.append(
                wds.shuffle(self.shuffle_buffer, initial, seed=_seed(self.seed, epoch, rank, worker))
            )
        stages += [
            partial(self._decode, failed_shards=errors.failed),
            wds.batched(self.batch_size, self.collate_fn, partial=not self.drop_last),
        ]
        pipeline = wds.DataPipeline(*stages)
        per_worker = self._batches_per_worker(world_size, workers)
        if per_worker is not None:
            pipeline = pipeline.with_epoch(nbatches=per_worker)
        if not self.carry_skips:
            return iter(pipeline)
        return self._carrying(iter(pipeline))

    def _carrying(self, batches: Iterator) -> Iterator[Carried]:
        """Each batch with the skip counts recorded while making it, then the counts recorded after the
        last one (a dropped incomplete batch, skips at the end): they reach the training process exactly."""
        for batch in batches:
            yield Carried(batch, self.skip_counter.take())
        tail = self.skip_counter.take()
        if tail.any():
            yield Carried(None, tail)


def _rank_and_world() -> tuple[int, int]:
    rank, world_size, _, _ = wds.utils.pytorch_worker_info()
    return rank, world_size


def _split_by_rank(source: Iterator[dict], rank: int, world_size: int) -> Iterator[dict]:
    """``wds.split_by_node`` with the rank given: DataLoader workers started by spawn or forkserver do not
    see the process group."""
    return islice(source, rank, None, world_size) if world_size > 1 else source


class ShardLoader(DataLoader):
    """A DataLoader over a ``ShardDataset``, whose batches the dataset already makes (``batch_size=None``).

    Each ``iter()`` starts an epoch: the epoch is ``epoch_fn()`` when given (the DataModules pass the
    trainer's current epoch, so a resumed run reads in the same order), else the previous one plus one.
    ``len()`` is the dataset's number of batches per rank. The skip counts each worker sends with its
    batches are added to the dataset's ``skip_counter`` in this process (exact, whatever the workers).
    """

    def __init__(
        self,
        dataset: ShardDataset,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        epoch_fn: Callable[[], int | None] | None = None,
        **kwargs,
    ) -> None:
        self.epoch_fn = epoch_fn
        for name in ("batch_size", "shuffle", "sampler", "batch_sampler", "drop_last"):
            kwargs.pop(name, None)  # the dataset batches; (Lightning re-creating a loader passes these)
        super().__init__(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers and num_workers > 0,
            **kwargs,
        )
        dataset.num_workers = num_workers
        dataset.carry_skips = True

    def __iter__(self):
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        if epoch is not None:
            self.dataset.set_epoch(epoch)
        self.dataset.begin_pass()
        return absorb_skips(super().__iter__(), self.dataset)
