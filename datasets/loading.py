"""The DataLoaders of the sources: loaders that bring the skip counts of their workers along with the
batches (``CountingLoader``), and the resumable training loader of the folder/CSV sources.

The training loader (``ResumableLoader``) makes a run's data a pure function of its seeds: the sample
order of an epoch depends on ``(seed, epoch)`` only, each sample's augmentation on ``(seed, epoch,
index)`` only, and the loader saves its position in the epoch into Lightning checkpoints. A run resumed
from a checkpoint therefore reads exactly the batches the uninterrupted run would have read, whatever the
number of DataLoader workers, and with DDP the ranks split each global batch into contiguous shares, so
``R`` ranks with batch ``b`` see the same samples, augmented the same way, as one process with ``R * b``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate
from unveil.common.seeding import derive_seed

log = logging.getLogger("unveil.datasets")


# ------------------------------------------------------------------------------- skip counts with the batches


class Carried(NamedTuple):
    """A batch and the skip counts (``SkipCounter.take``, int64 [reasons + 2]) recorded while making it, as
    a DataLoader worker sends them; None for ``batch`` carries only counts (the end of a worker's data)."""

    batch: object
    skips: torch.Tensor | None


class CarriedDict(dict):
    """A dict batch that carries its skip counts as the attribute ``skips``: it still reads as the batch
    where a collate function is called outside its loader."""

    skips: torch.Tensor | None = None


class CarrySkips:
    """A collate function that sends each batch with the skip counts of ``dataset`` (its ``skip_counter``)
    recorded since the previous batch of this process: ``Carried(collate_fn(samples), counts)``."""

    def __init__(self, collate_fn: Callable | None, dataset: Dataset) -> None:
        self.collate_fn = collate_fn if collate_fn is not None else default_collate
        self.dataset = dataset

    @classmethod
    def wrap(cls, collate_fn: Callable | None, dataset: Dataset) -> CarrySkips:
        """Wrap ``collate_fn``, once (a loader Lightning re-creates passes its wrapped collate again)."""
        return collate_fn if isinstance(collate_fn, cls) else cls(collate_fn, dataset)

    def __call__(self, samples: list) -> CarriedDict | Carried:
        batch = self.collate_fn(samples)
        counter = getattr(self.dataset, "skip_counter", None)
        skips = None if counter is None else counter.take()
        if type(batch) is dict:
            carried = CarriedDict(batch)
            carried.skips = skips
            return carried
        return Carried(batch, skips)


def absorb_skips(items: Iterator, dataset) -> Iterator:
    """The batches of ``items`` with their carried skip counts added to ``dataset.skip_counter`` (in this
    process) before each is handed on; items that carry only counts are consumed."""
    for item in items:
        if isinstance(item, (Carried, CarriedDict)):
            counter = getattr(dataset, "skip_counter", None)
            if item.skips is not None and counter is not None:
                counter.absorb(item.skips)
            if isinstance(item, CarriedDict):
                item = dict(item)
            elif item.batch is None:
                continue
            else:
                item = item.batch
        yield item


class CountingLoader(DataLoader):
    """A DataLoader whose batches bring the skip counts of the workers that made them to the dataset's
    ``skip_counter`` in this process (``CarrySkips``, ``absorb_skips``), so ``SkipCounterCallback`` reads
    exact counts whatever the number of workers. Otherwise a plain DataLoader."""

    def __init__(self, dataset: Dataset, *args, collate_fn: Callable | None = None, **kwargs) -> None:
        super().__init__(dataset, *args, collate_fn=CarrySkips.wrap(collate_fn, dataset), **kwargs)

    def __iter__(self):
        return absorb_skips(super().__iter__(), self.dataset)


# --------------------------------------------------------------------------------------- resumable training data


@contextmanager
def seeded_host_rngs(seed: int):
    """Run the block with torch's CPU generator, ``random`` and ``numpy.random`` seeded from ``seed``, and
    restore all three afterwards, so the caller's random streams are left as they were.

    CUDA generators are not touched: data augmentation runs on the CPU, and re-seeding CUDA here would
    disturb the model's randomness when the loader runs in the main process (``num_workers=0``).
    """
    torch_state = torch.random.default_generator.get_state()
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    torch.random.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        torch.random.default_generator.set_state(torch_state)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class SeededSamples(Dataset):
    """A map-style dataset whose samples are drawn with their own seed: ``samples[(index, seed)]`` is
    ``dataset[index]`` computed with the host RNGs seeded from ``seed`` (see ``seeded_host_rngs``).

    A random augmentation then depends on the seed the sampler hands out, not on which worker process
    decodes the sample or how many samples that worker decoded before. A plain ``int`` key reads the
    sample with the RNGs as they are. Other attributes (``skip_counter``, ``classes``, ...) are the
    wrapped dataset's.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]):
        if isinstance(key, tuple):
            index, seed = key
            with seeded_host_rngs(seed):
                return self.dataset[index]
        return self.dataset[key]

    def __getattr__(self, name: str):
        if name == "dataset":  # not set yet (unpickling in a worker): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ResumableSampler(DistributedSampler):
    """Training sample order of one DDP rank that is a pure function of ``(seed, epoch)`` and can start
    anywhere in an epoch.

    Each epoch is a permutation of the dataset (``shuffle``) cut into global batches of ``batch_size *
    num_replicas`` samples; the incomplete last one is dropped. Rank ``r`` takes the ``r``-th contiguous
    share of every global batch, so the union of the ranks' batches at a step is the batch one process
    with ``batch_size * num_replicas`` reads at that step, in the same order. Yields ``(index,
    sample_seed)`` keys for ``SeededSamples``; ``sample_seed`` depends on ``(seed, epoch, index)`` only.

    It subclasses ``DistributedSampler`` because it already shards by rank: Lightning then keeps it
    instead of putting its own distributed sampler in its place (which would drop the resume position).
    ``set_epoch`` picks the epoch of the next ``iter()``; after ``resume_at``, iterations of that epoch
    start at the given sample instead, until ``set_epoch`` moves to another epoch (so iterating the
    resumed epoch again, as a restore may, gives the same batches).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
    ) -> None:
        if batch_size < 1 or num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"ResumableSampler: need batch_size >= 1 and 0 <= rank < num_replicas, got batch_size="
                f"{batch_size}, rank={rank}, num_replicas={num_replicas}"
            )
        super().__init__(
            range(num_samples),
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=True,
        )
        self.dataset_size = num_samples
        self.batch_size = batch_size
        self.global_batch_size = batch_size * num_replicas
        if num_samples < self.global_batch_size:
            raise ValueError(
                f"the training set has {num_samples} samples, fewer than one global batch (batch_size "
                f"{batch_size} x {num_replicas} ranks = {self.global_batch_size})"
            )
        self.batches_per_epoch = num_samples // self.global_batch_size
        self.num_samples = self.batches_per_epoch * batch_size  # this rank's samples per full epoch
        self.total_size = self.batches_per_epoch * self.global_batch_size
        # (epoch, first sample, batches of the epoch before it) of the latest iteration, and of the
        # iterations of the resumed epoch.
        self.origin: tuple[int, int, int] = (0, 0, 0)
        self._resumed: tuple[int, int, int] | None = None
        self._begun = False

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        if self._resumed is not None and self._resumed[0] != epoch:
            self._resumed = None  # the resumed epoch is over
        self.epoch = epoch

    def resume_at(self, epoch: int, first_sample: int, batches_before: int) -> None:
        """Start the iterations of ``epoch`` at sample ``first_sample`` (counted over all ranks);
        ``batches_before`` is the number of batches of that epoch already trained on (see
        ``ResumableLoader.state_dict``)."""
        self._resumed = (epoch, first_sample, batches_before)
        self.epoch = epoch

    def order(self, epoch: int) -> torch.Tensor:
        """The dataset indices of ``epoch`` in reading order, over all ranks ([dataset size] int64)."""
        if not self.shuffle:
            return torch.arange(self.dataset_size)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "order", epoch))
        return torch.randperm(self.dataset_size, generator=generator)

    def begin(self, epoch: int | None = None) -> None:
        """Fix where the next iteration starts: at the start of ``epoch`` (default: the ``set_epoch`` one), or
        at the resume position if it is in that epoch.

        A DataLoader without workers starts its sampler only at the first batch; Lightning may call
        ``set_epoch`` in between (with another epoch, when it resumes a run stopped by ``max_steps``).
        """
        if epoch is not None:
            self.set_epoch(epoch)
        resumed = self._resumed is not None and self._resumed[0] == self.epoch
        self.origin = self._resumed if resumed else (self.epoch, 0, 0)
        self._begun = True

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if not self._begun:
            self.begin()
        self._begun = False
        epoch, first, _ = self.origin
        return self._keys(epoch, first)

    def _keys(self, epoch: int, first: int) -> Iterator[tuple[int, int]]:
        order = self.order(epoch)
        share = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        for start in range(first, self.dataset_size - self.global_batch_size + 1, self.global_batch_size):
            for index in order[start : start + self.global_batch_size][share].tolist():
                yield index, derive_seed(self.seed, "sample", epoch, index)


class ResumableLoader(CountingLoader):
    """The training DataLoader of the folder/CSV sources: ``ResumableSampler`` order, ``SeededSamples``
    augmentation, and a ``state_dict`` that Lightning stores in checkpoints (the fit loop saves the state
    of every train loader that has one) and gives back through ``load_state_dict`` on resume.

    The position saved is the number of batches the training loop has consumed, which ``progress_fn``
    returns as ``(epoch, batches of the epoch)`` (the DataModules pass the trainer's progress). The
    loader cannot count that itself: Lightning fetches a batch ahead, and workers more. Without
    ``progress_fn`` the batches this loader has handed out are counted instead.

    Exact resumption needs the same dataset and global batch (ranks x batch size). With another global
    batch the resumed epoch continues at the first sample not yet read, but Lightning still counts the
    epoch's finished batches in the old size, so that epoch may end early; with another dataset size the
    epoch restarts from its beginning.

    Args:
        dataset: map-style dataset of samples.
        batch_size: samples per batch on this rank.
        seed: seed of the order and of the augmentations.
        rank, world_size: this process's DDP rank and the number of ranks.
        shuffle: shuffle each epoch (else read in index order).
        progress_fn: returns ``(epoch, batches consumed in it)`` or None.
        **kwargs: other DataLoader arguments (``num_workers``, ``collate_fn``, ``pin_memory``, ...).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        progress_fn: Callable[[], tuple[int, int] | None] | None = None,
        **kwargs,
    ) -> None:
        for name in ("sampler", "batch_sampler", "drop_last"):
            kwargs.pop(name, None)  # the sampler decides (Lightning re-creating a loader passes these)
        if not isinstance(dataset, SeededSamples):
            dataset = SeededSamples(dataset)
        sampler = ResumableSampler(len(dataset), batch_size, seed, world_size, rank, shuffle)
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, **kwargs)
        self.progress_fn = progress_fn
        self._handed_out = 0

    def __iter__(self):
        self._handed_out = 0
        progress = self.progress_fn() if self.progress_fn is not None else None
        # The trainer's epoch, fixed now: Lightning may make an iterator before it sets the sampler's epoch
        # (on resume the sampler would still be at epoch 0), or set it after (see ResumableSampler.begin).
        self.sampler.begin(progress[0] if progress is not None else None)
        batches = super().__iter__()  # skip counts absorbed (CountingLoader)
        if self.progress_fn is not None:
            return batches
        return self._counted(batches)

    def _counted(self, batches):
        for batch in batches:
            self._handed_out += 1
            yield batch

    def state_dict(self) -> dict:
        """``epoch``, ``sample`` (the first sample, over all ranks, not yet trained on), ``batches`` (of
        the epoch trained on), and what must match for an exact resume: seed, dataset size, global batch."""
        sampler: ResumableSampler = self.sampler
        epoch, first, before = sampler.origin
        progress = self.progress_fn() if self.progress_fn is not None else None
        if progress is None:
            consumed = before + self._handed_out
        else:
            consumed = progress[1]
            if progress[0] != epoch:  # the trainer is in an epoch this loader has not started yet
                epoch, first, before = progress[0], 0, 0
        return {
            "epoch": epoch,
            "sample": first + (consumed - before) * sampler.global_batch_size,
            "batches": consumed,
            "seed": sampler.seed,
            "dataset_size": sampler.dataset_size,
            "global_batch_size": sampler.global_batch_size,
        }

    def load_state_dict(self, state: dict) -> None:
        sampler: ResumableSampler = self.sampler
        epoch, first, batches = int(state["epoch"]), int(state["sample"]), int(state["batches"])
        if state.get("dataset_size") != sampler.dataset_size:
            log.warning(
                "the training set has %d samples, the checkpoint's had %s: epoch %d restarts from its beginning",
                sampler.dataset_size,
                state.get("dataset_size"),
                epoch,
            )
            first = 0
        elif state.get("seed") != sampler.seed:
            log.warning(
                "the data seed changed since the checkpoint: epoch %d continues in a new order", epoch
            )
        if state.get("global_batch_size") != sampler.global_batch_size:
            log.warning(
                "the global batch (batch size x ranks) is %d, the checkpoint's was %s: epoch %d continues at "
                "sample %d but may end early",
                sampler.global_batch_size,
                state.get("global_batch_size"),
                epoch,
                first,
            )
        if first + sampler.global_batch_size > sampler.dataset_size:  # no full batch left: the next epoch
            epoch, first, batches = epoch + 1, 0, 0
        sampler.resume_at(epoch, first, batches)
