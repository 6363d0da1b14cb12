"""What ``make_shards`` converts: the samples of a folder/CSV source as ``ShardItem``s, listed as the
folder/CSV datasets list them (same order, same keys)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from unveil.datasets.common import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    list_class_files,
)
from unveil.datasets.video import (
    read_video_csv,
)


@dataclass(frozen=True)
class ShardItem:
    """One sample to write: its source file, label, key (as the folder/CSV dataset names it) and extras."""

    path: Path
    label: int
    key: str
    meta: dict = field(default_factory=dict)


def image_items(root: str | Path, split: str = "train") -> tuple[list[str], list[ShardItem]]:
    """The images of an ImageNet-layout split, as ``ImageFolderDataset`` lists them."""
    return _class_folder_items(Path(root) / split, IMAGE_EXTENSIONS)


def _class_folder_items(split_dir: Path, extensions) -> tuple[list[str], list[ShardItem]]:
    """The files of ``split_dir/<class>/...``, keyed by their path below ``split_dir``."""
    classes, files = list_class_files(split_dir, extensions)
    items = [
        ShardItem(path, label, path.relative_to(split_dir).as_posix(), {"class": classes[label]})
        for path, label in files
    ]
    return classes, items


def video_items(
    root: str | Path | None = None, split: str = "train", csv: str | Path | None = None
) -> tuple[list[str] | None, list[ShardItem]]:
    """The videos of a Kinetics-layout folder or CSV manifest, as ``VideoDataset`` lists them."""
    if csv is not None:
        records = read_video_csv(csv, root)
        items = []
        for record in records:
            meta = {} if record.start is None else {"start": record.start, "end": record.end}
            items.append(ShardItem(record.path, record.label, record.key, meta))
        return None, items
    if root is None:
        raise ValueError("video shards need a root folder or a csv manifest")
    return _class_folder_items(Path(root) / split, VIDEO_EXTENSIONS)


def audio_items(
    root: str | Path | None = None,
    split: str = "train",
    csv: str | Path | None = None,
    class_index: str | Path | None = None,
) -> tuple[object, list[ShardItem]]:
    """The clips of an AudioSet-style manifest or an audio class folder, as ``AudioDataset`` lists them;
    returns its ``ClassIndex`` and items whose ``label`` is the tuple of class indices."""
    from unveil.datasets.audio import AudioDataset  # torchaudio: imported only for audio

    dataset = AudioDataset(csv, root, split, class_index)
    items = [
        ShardItem(record.path, tuple(target), record.key)
        for record, target in zip(dataset.records, dataset.targets)
    ]
    return dataset.classes, items


def audio_video_items(
    root: str | Path | None = None,
    split: str = "train",
    csv: str | Path | None = None,
    class_index: str | Path | None = None,
) -> tuple[object, list[ShardItem]]:
    """The clips of an audio-video manifest or Kinetics-layout folder, as ``AudioVideoDataset`` lists
    them (a separate wav/flac goes in ``meta["audio"]``); returns its ``ClassIndex`` (None without
    labels) and the items."""
    from unveil.datasets.audio_video import AudioVideoDataset

    dataset = AudioVideoDataset(root, split, csv, class_index)
    items = [
        ShardItem(
            record.video,
            tuple(target),
            record.key,
            {} if record.audio is None else {"audio": str(record.audio)},
        )
        for record, target in zip(dataset.records, dataset.targets)
    ]
    return (dataset.classes if dataset.has_labels else None), items


_SOURCES: dict[str, Callable] = {
    "images": lambda root, split, csv, class_index: image_items(root, split),
    "videos": lambda root, split, csv, class_index: video_items(root, split, csv),
    "audio": audio_items,
    "audio-video": audio_video_items,
    "coco": lambda root, split, csv, class_index: coco_items(root, split),  # detection (issue 14)
}


def coco_items(root: str | Path, split: str = "train") -> tuple[list[str], list[ShardItem]]:
    """Detection (issue 14): the images of ``root/split`` with their COCO annotations
    (``root/annotations/instances_<split>.json``); see ``unveil.datasets.coco.coco_shard_items``."""
    from unveil.datasets.coco import coco_shard_items

    return coco_shard_items(root, split)
