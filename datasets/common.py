"""Pieces shared by the sources of every data kind: normalisation constants, class folders, skipping
samples that fail to decode, and ``PipelineDataset``, the folder/CSV dataset that reads through a data
kind's pipeline. The loaders (``CountingLoader``, the resumable ``ResumableLoader``) are in
``unveil.datasets.loading`` and importable from here as before.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import torch
from PIL import UnidentifiedImageError
from torch.utils.data import Dataset
from unveil.common.seeding import derive_seed, run_seed  # noqa: F401  (importable from here too)
from unveil.datasets.loading import (  # noqa: F401 - importable from here as before
    Carried,
    CarriedDict,
    CarrySkips,
    CountingLoader,
    ResumableLoader,
    ResumableSampler,
    SeededSamples,
    absorb_skips,
    seeded_host_rngs,
)

log = logging.getLogger("unveil.datasets")

# ImageNet statistics, the normalisation Hiera and MAE are trained with (same values as timm's constants).
IMAGENET_DEFAULT_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")


def find_class_folders(split_dir: Path) -> list[str]:
    """Class names of an ImageNet/Kinetics-layout split: its sub-folders, sorted (index = position)."""
    return sorted(entry.name for entry in split_dir.iterdir() if entry.is_dir())


def list_class_files(
    split_dir: Path, extensions: tuple[str, ...], folders: bool = False
) -> tuple[list[str], list[tuple[Path, int]]]:
    """Return ``(class_names, [(file, class_index), ...])`` for ``split_dir/<class>/<file>``, sorted.

    With ``folders``, the sub-folders of each class folder are listed too (videos stored as folders of
    frames); hidden ones (``.name``) are not.

    Raises ``FileNotFoundError`` when the folder is missing or holds no file with one of ``extensions``
    (nor, with ``folders``, a sub-folder).
    """
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{str(split_dir)!r} is not a directory")
    classes = find_class_folders(split_dir)
    samples = [
        (path, index)
        for index, name in enumerate(classes)
        for path in sorted((split_dir / name).iterdir())
        if (path.is_file() and path.suffix.lower() in extensions)
        or (folders and path.is_dir() and not path.name.startswith("."))
    ]
    if not samples:
        what = f"{'/'.join(extensions)} files" + (" or frame folders" if folders else "")
        raise FileNotFoundError(f"no {what} in {str(split_dir)!r}/<class>/")
    return classes, samples


def plain_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Drop a tv_tensors subclass (Image, Video), so samples and batches hold plain tensors."""
    return tensor.as_subclass(torch.Tensor)


def skip_reason(error: BaseException) -> str:
    """A short, countable name for why a file could not be decoded (see ``unveil.datasets.skips``)."""
    reason = getattr(error, "skip_reason", None)  # BadSample and any error that names its own reason
    if isinstance(reason, str):
        return reason
    if isinstance(error, FileNotFoundError):
        return "missing"
    if isinstance(error, UnidentifiedImageError):
        return "unidentified"
    message = str(error).lower()  # PIL: "image file is truncated (N bytes not processed)"
    if "is truncated" in message or "truncated file" in message:
        return "truncated"
    return "decode_error"


class SkipBadSamples:
    """Mixin for map-style datasets whose files may fail to decode.

    Subclasses split loading in two: ``_decode`` reads the file (its errors are caught) and ``_transform``
    turns the decoded data into the sample dict (its errors propagate: they are bugs, not bad files).
    A sample whose ``_decode`` raises one of ``decode_errors`` is skipped: a warning names the file, the
    reason is counted in ``self.skipped`` (a ``Counter``), and the next index is tried instead, up to
    ``max_retries`` times. With DataLoader workers, each worker counts in its own copy of the dataset.

    ``self.skip_counter`` (a ``unveil.datasets.skips.SkipCounter``) also counts every skip and every
    returned sample across all workers, for ``SkipCounterCallback`` to log, and stops the run with
    ``SkipFractionExceeded`` when its ``max_skip_fraction`` (None by default) is exceeded.
    """

    decode_errors: tuple[type[BaseException], ...] = (OSError,)
    max_retries: int = 10

    def _init_skipping(self, max_retries: int) -> None:
        from unveil.datasets.skips import SkipCounter  # imported here: skips.py imports Lightning

        self.max_retries = max_retries
        self.skipped: Counter[str] = Counter()
        self.skip_counter = SkipCounter()

    def _path_of(self, index: int) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def _decode(self, index: int):  # pragma: no cover - overridden
        raise NotImplementedError

    def _transform(self, decoded, index: int) -> dict:  # pragma: no cover - overridden
        raise NotImplementedError

    def __len__(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        for attempt in range(self.max_retries + 1):
            current = (index + attempt) % len(self)
            try:
                decoded = self._decode(current)
            except self.decode_errors as error:
                reason = skip_reason(error)
                if reason == "decode_error" and not Path(self._path_of(current)).exists():
                    reason = "missing"  # decord, for one, reports a missing file as a RuntimeError
                self.skipped[reason] += 1
                log.warning("skipping %s (%s: %s)", self._path_of(current), reason, error)
                counter = getattr(self, "skip_counter", None)
                if counter is not None:
                    counter.record_skip(reason, self._path_of(current), str(error), warn=False)
                continue
            sample = self._transform(decoded, current)
            counter = getattr(self, "skip_counter", None)
            if counter is not None:
                counter.record_delivered()
            return sample
        raise RuntimeError(
            f"{type(self).__name__}: {self.max_retries + 1} consecutive samples from index {index} failed "
            f"to decode (skipped so far: {dict(self.skipped)})"
        )


class PipelineDataset(SkipBadSamples, Dataset):
    """A folder/CSV source read through the pipeline of its data kind: the one generic map-style dataset.

    A pipeline (``ImagePipeline``, ``VideoPipeline``, ``AudioPipeline``, ``AudioVideoPipeline``, ...) has
    ``load(source, **options)``, which reads a path or the bytes of a shard member (its errors skip the
    sample), ``to_sample(decoded)``, which augments the result into the sample dict, and
    ``decode_errors``. The shard reader runs the same pipelines (``unveil.datasets.shards.ShardDecoder``),
    so a sample decodes the same way from either source. A subclass lists its source and says, per index,
    what to load (``_source``: the path and the ``load`` options), its ``key`` and its ``label`` (None:
    the sample has none).
    """

    pipeline = None

    @property
    def decode_errors(self) -> tuple[type[BaseException], ...]:  # type: ignore[override]
        return self.pipeline.decode_errors

    def _source(self, index: int) -> tuple[Path, dict]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _key(self, index: int) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def _label(self, index: int) -> torch.Tensor | None:
        return None

    def _path_of(self, index: int) -> str:
        return str(self._source(index)[0])

    def _decode(self, index: int):
        path, options = self._source(index)
        return self.pipeline.load(path, **options)

    def _transform(self, decoded, index: int) -> dict:
        sample = self.pipeline.to_sample(decoded)
        label = self._label(index)
        if label is not None:
            sample["label"] = label
        sample["key"] = self._key(index)
        return sample
