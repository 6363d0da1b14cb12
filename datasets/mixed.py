"""A weighted mix of datasets (SA-1B images with SA-V and DAVIS/MOSE videos, as SAM 2 trains), read like
the other training sources: resumable, deterministic for a seed, the same under any number of workers.

SAM 2's ``TorchTrainMixedDataset`` gives each dataset a probability and, at every step, draws which
dataset the batch comes from with a generator seeded the same on every rank, so all ranks read the same
dataset at a step (an image step or a video step everywhere, never both). Here:

- ``MixedSources`` concatenates the datasets (index = offset of the dataset + index in it) and gives them
  one ``SkipCounter``, so skips of every source are counted together.
- ``WeightedMixSampler`` draws the source of each global batch (``batch_size`` × ranks samples) with
  probabilities ``weights``, from a generator seeded by ``(seed, epoch)``: every rank draws the same
  sources, and the empirical share of each source tends to its weight. Inside a source, samples come in the
  order of a permutation seeded by ``(seed, epoch, source, cycle)``, a new one each time the source is used
  up (a small source is repeated, a large one is partly read). Rank ``r`` takes the ``r``-th share of
  every global batch, as ``ResumableSampler`` does. Each key carries a sample seed from ``(seed, epoch,
  position)``, so augmentation and the clip drawn do not depend on the worker that decodes it.
- ``MixedLoader`` is a ``ResumableLoader`` over them: its position in the epoch goes into checkpoints.
- ``WeightedMix`` is the mix as a plain dataset, for a DataModule that builds its own DataLoader (such as
  ``SAM2DataModule``'s ``train_dataset``): each item draws its source, so ratios hold on average only.

An epoch is ``epoch_samples`` samples over all ranks (default: the sum of the datasets' lengths).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from itertools import accumulate

import torch
from torch.utils.data import DataLoader, Dataset
from unveil.datasets.common import ResumableLoader, ResumableSampler, SeededSamples, derive_seed
from unveil.datasets.loading import CarrySkips

__all__ = ["MixedLoader", "MixedSources", "WeightedMix", "WeightedMixSampler", "normalised_weights"]


def normalised_weights(weights: Sequence[float], count: int) -> torch.Tensor:
    """float64 [count] probabilities from non-negative ``weights`` (any positive sum)."""
    values = torch.tensor([float(weight) for weight in weights], dtype=torch.float64)
    if len(values) != count:
        raise ValueError(f"weights: {len(values)} values for {count} datasets")
    if not torch.isfinite(values).all() or (values < 0).any() or values.sum() <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero, got {list(weights)}")
    return values / values.sum()


class MixedSources(Dataset):
    """The concatenation of ``datasets``: index ``offsets[s] + i`` is ``datasets[s][i]``.

    Every dataset that counts skips (``skip_counter``) gets this one's counter, so ``SkipCounterCallback``
    sees the skips of all sources. Setting ``transform`` (SAM 2's augmentation, which ``SAM2DataModule``
    sets on a dataset whose ``transform`` is None) sets it on every source that has one.
    """

    def __init__(self, datasets: Sequence[Dataset], transform: Callable | None = None) -> None:
        from unveil.datasets.skips import SkipCounter

        if not datasets:
            raise ValueError("MixedSources needs at least one dataset")
        self.datasets = list(datasets)
        self.sizes = [len(dataset) for dataset in self.datasets]  # type: ignore[arg-type]
        empty = [s for s, size in enumerate(self.sizes) if size == 0]
        if empty:
            raise ValueError(f"dataset {empty[0]} of the mix is empty")
        self.offsets = [0, *accumulate(self.sizes)][:-1]
        self.skip_counter = SkipCounter()
        for dataset in self.datasets:
            if hasattr(dataset, "skip_counter"):
                dataset.skip_counter = self.skip_counter
        if transform is not None:
            self.transform = transform

    @property
    def transform(self) -> Callable | None:
        """The common ``transform`` of the sources that have one (None when none has, or they differ)."""
        transforms = {id(d.transform): d.transform for d in self.datasets if hasattr(d, "transform")}
        return next(iter(transforms.values())) if len(transforms) == 1 else None

    @transform.setter
    def transform(self, value: Callable | None) -> None:
        for dataset in self.datasets:
            if hasattr(dataset, "transform"):
                dataset.transform = value

    def __len__(self) -> int:
        return sum(self.sizes)

    def locate(self, index: int) -> tuple[int, int]:
        """``(source, index in it)`` of a concatenated index."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} outside [0, {len(self)})")
        source = max(s for s, offset in enumerate(self.offsets) if offset <= index)
        return source, index - self.offsets[source]

    def __getitem__(self, index: int):
        source, local = self.locate(index)
        return self.datasets[source][local]


class WeightedMix(MixedSources):
    """A weighted mix usable with any DataLoader: item ``i`` (of ``epoch_samples``) is a sample of a source
    drawn with probabilities ``weights``, at a uniformly drawn index in it.

    The draws use ``random``: under ``ResumableLoader`` (``SeededSamples`` seeds it per sample from
    ``(seed, epoch, index)``) they are a function of the seed; under a plain shuffled DataLoader, of
    PyTorch's per-worker seeds. Unlike ``MixedLoader``, the ranks of a step do not share a source, and the
    share of each source is right on average rather than per step.

    Args:
        datasets: the sources.
        weights: relative probability of each source.
        epoch_samples: length of the dataset (default: the sum of the sources' lengths).
        transform: set on every source that has a ``transform`` (see ``MixedSources``).
    """

    def __init__(
        self,
        datasets: Sequence[Dataset],
        weights: Sequence[float],
        epoch_samples: int | None = None,
        transform: Callable | None = None,
    ) -> None:
        super().__init__(datasets, transform)
        self.weights = normalised_weights(weights, len(self.datasets)).tolist()
        self.epoch_samples = sum(self.sizes) if epoch_samples is None else int(epoch_samples)
        if self.epoch_samples < 1:
            raise ValueError(f"epoch_samples must be >= 1, got {epoch_samples}")

    def __len__(self) -> int:
        return self.epoch_samples

    def __getitem__(self, index: int):
        if not 0 <= index < self.epoch_samples:
            raise IndexError(f"index {index} outside [0, {self.epoch_samples})")
        source = random.choices(range(len(self.datasets)), weights=self.weights)[0]
        return self.datasets[source][random.randrange(self.sizes[source])]


class WeightedMixSampler(ResumableSampler):
    """Keys ``(concatenated index, sample seed)`` of one rank, each global batch drawn from one source with
    probabilities ``weights`` (see the module docstring). A ``ResumableSampler`` otherwise: ``set_epoch``,
    ``resume_at`` and Lightning keeping it under DDP work the same.

    Args:
        sizes: lengths of the mixed datasets, in ``MixedSources`` order.
        weights: relative probability of each dataset per step.
        batch_size: samples per batch on this rank.
        seed: seed of the draws, the orders and the sample seeds.
        num_replicas, rank: DDP ranks and this one.
        epoch_samples: samples per epoch over all ranks (default: ``sum(sizes)``); whole global batches.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float],
        batch_size: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        epoch_samples: int | None = None,
    ) -> None:
        self.sizes = [int(size) for size in sizes]
        if not self.sizes or min(self.sizes) < 1:
            raise ValueError(f"every mixed dataset needs samples, got sizes {self.sizes}")
        self.weights = normalised_weights(weights, len(self.sizes))
        self.offsets = [0, *accumulate(self.sizes)][:-1]
        epoch_samples = sum(self.sizes) if epoch_samples is None else int(epoch_samples)
        super().__init__(epoch_samples, batch_size, seed, num_replicas, rank, shuffle=True)
        self._cache: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def schedule(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sources, order)`` of ``epoch`` over all ranks: int64 [batches] the source of each global
        batch, and int64 [batches × global batch] the concatenated indices in reading order."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1], self._cache[2]
        steps, width = self.batches_per_epoch, self.global_batch_size
        draws = torch.Generator().manual_seed(derive_seed(self.seed, "mix", epoch))
        sources = torch.multinomial(self.weights.float(), steps, replacement=True, generator=draws)
        # How many samples each source gives this epoch, then that many from its permutations, in turn.
        counts = torch.bincount(sources, minlength=len(self.sizes)).tolist()
        streams = []
        for source, (size, count) in enumerate(zip(self.sizes, counts)):
            needed, cycles = count * width, []
            for cycle in range(-(-needed // size)):
                generator = torch.Generator().manual_seed(derive_seed(self.seed, "mix", epoch, source, cycle))
                cycles.append(torch.randperm(size, generator=generator))
            stream = torch.cat(cycles)[:needed] if cycles else torch.empty(0, dtype=torch.int64)
            streams.append(stream.view(count, width) + self.offsets[source])
        taken = [0] * len(self.sizes)
        rows = []
        for source in sources.tolist():
            rows.append(streams[source][taken[source]])
            taken[source] += 1
        order = torch.cat(rows) if rows else torch.empty(0, dtype=torch.int64)
        self._cache = (epoch, sources, order)
        return sources, order

    def order(self, epoch: int) -> torch.Tensor:
        return self.schedule(epoch)[1]

    def _keys(self, epoch: int, first: int) -> Iterator[tuple[int, int]]:
        order = self.order(epoch)
        width = self.global_batch_size
        share = range(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        for start in range(first, len(order) - width + 1, width):
            for offset in share:
                position = start + offset
                yield int(order[position]), derive_seed(self.seed, "mix-sample", epoch, position)


class MixedLoader(ResumableLoader):
    """The training DataLoader of a weighted mix: ``WeightedMixSampler`` keys, ``SeededSamples`` reading,
    and ``ResumableLoader``'s checkpointed position.

    Args:
        dataset: a ``MixedSources`` (or a list of datasets, mixed here).
        weights: relative probability of each dataset per step.
        batch_size: samples per batch on this rank (variable-size clips: pass a ``collate_fn`` that
            keeps them apart, e.g. ``list``).
        seed, rank, world_size, progress_fn: as for ``ResumableLoader``.
        epoch_samples: samples per epoch over all ranks (default: the sum of the datasets' lengths).
        **kwargs: other DataLoader arguments (``num_workers``, ``collate_fn``, ...).
    """

    def __init__(
        self,
        dataset: MixedSources | Sequence[Dataset],
        weights: Sequence[float],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epoch_samples: int | None = None,
        progress_fn: Callable[[], tuple[int, int] | None] | None = None,
        **kwargs,
    ) -> None:
        for name in ("sampler", "batch_sampler", "drop_last", "shuffle"):
            kwargs.pop(name, None)  # the sampler decides (Lightning re-creating a loader passes these)
        mix = dataset.dataset if isinstance(dataset, SeededSamples) else dataset
        if isinstance(mix, WeightedMix):
            raise TypeError(
                "MixedLoader draws the sources itself: pass the datasets or a MixedSources, not a WeightedMix"
            )
        if not isinstance(mix, MixedSources):
            mix = MixedSources(mix)  # type: ignore[arg-type]
        sampler = WeightedMixSampler(mix.sizes, weights, batch_size, seed, world_size, rank, epoch_samples)
        # the workers' skip counts travel with the batches (ResumableLoader adds them to mix's counter here)
        kwargs["collate_fn"] = CarrySkips.wrap(kwargs.get("collate_fn"), mix)
        DataLoader.__init__(
            self, SeededSamples(mix), batch_size=batch_size, sampler=sampler, drop_last=True, **kwargs
        )
        self.weights, self.epoch_samples = list(weights), epoch_samples
        self.progress_fn = progress_fn
        self._handed_out = 0
