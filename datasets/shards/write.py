"""``make_shards``: a folder/CSV source into tar shards of bounded size plus an index, resumably;
``write_shards``, its writer, for any kind (one with a source of its own, such as ``vos``, calls it)."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path

import webdataset as wds
from tqdm import tqdm
from unveil.datasets.shards.encode import (
    _ENCODERS,
    EncodeOptions,
    _encode_or_skip,
    _tar_file_size,
    _tar_size,
)
from unveil.datasets.shards.index import INDEX_FORMAT, index_path, read_index
from unveil.datasets.shards.sources import _SOURCES, ShardItem

log = logging.getLogger("unveil.datasets")


def _fingerprint(kind: str, items: list[ShardItem], settings: dict) -> str:
    digest = hashlib.sha256(json.dumps({"kind": kind, "settings": settings}, sort_keys=True).encode())
    for item in items:
        digest.update(json.dumps([item.key, item.label, str(item.path), item.meta], sort_keys=True).encode())
    return digest.hexdigest()


def _write_json_atomic(path: Path, value: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(temporary, path)


def make_shards(
    kind: str,
    out: str | Path,
    root: str | Path | None = None,
    split: str = "train",
    csv: str | Path | None = None,
    prefix: str | None = None,
    max_size: int = 1 << 30,
    max_count: int = 10_000,
    options: EncodeOptions | None = None,
    class_index: str | Path | None = None,
    workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Convert a folder/CSV dataset into tar shards of at most ``max_count`` samples and about ``max_size``
    bytes, plus an index, and return the index's path.

    Args:
        kind: ``"images"`` (ImageNet layout ``root/split/<class>/<file>``), ``"videos"`` (Kinetics layout
            ``root/split/<class>/<clip>``, or the manifest ``csv``), ``"audio"`` (AudioSet-style manifest
            ``csv``, or ``root/split/<class>/<file>.wav``) or ``"audio-video"`` (manifest
            ``video[,audio][,labels]``, or a Kinetics-layout folder with optional wav/flac companions).
        out: folder for the shards ``<prefix>-NNNNNN.tar`` and the index ``<prefix>.json``.
        prefix: shard name prefix; default: ``split``, or the manifest's name for a CSV source.
        max_size: shard size limit in bytes; a sample larger than it gets a shard of its own.
        max_count: samples per shard.
        options: re-encoding and verification (``EncodeOptions``; default: its defaults).
        class_index: audio kinds: an ``index,mid,display_name`` CSV naming the classes (AudioSet's
            ``class_labels_indices.csv``); default: the labels found in the manifest.
        workers: processes encoding samples in parallel (0: in this process). The output is the same.
        overwrite: start again when ``out`` holds a shard set made from other sources or options
            (default: refuse).

    Resumable: samples go to shards in source order, each shard is written under a temporary name and
    renamed when complete, and the index records every finished shard. Rerunning the same command after
    an interruption keeps the finished shards and writes the rest; rerunning a finished one does nothing.

    A sample that cannot be read or decoded (missing, truncated, corrupt) is skipped with a warning; the
    index lists it with its reason. Kinds with a source of their own go through :func:`write_shards`.
    """
    options = options if options is not None else EncodeOptions()
    if kind not in _ENCODERS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {tuple(_ENCODERS)}")
    _check_limits(max_size, max_count)
    classes, items = _SOURCES[kind](root, split, csv, class_index)
    if not items:
        raise ValueError("the source lists no samples")
    class_mids = None
    if classes is not None and not isinstance(classes, list):  # an audio ClassIndex
        class_mids, classes = list(classes.mids), list(classes.names)
    if classes is not None:
        num_classes = len(classes)
    elif kind == "audio-video":
        num_classes = 0  # no labels
    else:
        num_classes = max(item.label for item in items) + 1  # type: ignore[type-var]
    return write_shards(
        kind,
        out,
        prefix or (Path(csv).stem if csv is not None else split),
        items,
        partial(_ENCODERS[kind], options=options),
        source={
            "root": None if root is None else str(root),
            "split": split,
            "csv": None if csv is None else str(csv),
        },
        settings=asdict(options),
        classes=classes,
        class_mids=class_mids,
        num_classes=num_classes,
        max_size=max_size,
        max_count=max_count,
        workers=workers,
        overwrite=overwrite,
        progress=progress,
    )


def _check_limits(max_size: int, max_count: int) -> None:
    if max_count < 1 or max_size < 1:
        raise ValueError(f"max_count and max_size must be >= 1, got {max_count}, {max_size}")


def write_shards(
    kind: str,
    out: str | Path,
    prefix: str,
    items: list[ShardItem],
    encode: Callable[[ShardItem], dict[str, bytes]],
    source: dict,
    settings: dict | None = None,
    classes: list[str] | None = None,
    class_mids: list[str] | None = None,
    num_classes: int = 0,
    max_size: int = 1 << 30,
    max_count: int = 10_000,
    workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write ``items``, each encoded by ``encode``, into ``out/<prefix>-NNNNNN.tar`` shards plus the index
    ``out/<prefix>.json`` (``kind`` recorded in it), resumably, and return the index's path: the writer of
    :func:`make_shards`, for any kind, including one with a source of its own (``vos``).

    ``encode(item)`` returns the sample's tar members without ``__key__`` (the item's position names it),
    and raises for a sample that cannot be read: it is skipped, logged and listed in the index with
    ``skip_reason``'s reason. With ``workers`` > 0 it runs in a process pool, so it must pickle.
    ``source`` (where the items come from) and ``settings`` (what changes the output besides the sizes) go
    into the index; with the items, they fingerprint the set, so that a rerun continues only the same set
    and another one needs ``overwrite``. ``classes``, ``class_mids`` and ``num_classes`` describe the labels.
    """
    _check_limits(max_size, max_count)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"max_size": max_size, "max_count": max_count, "prefix": prefix, **(settings or {})}
    fingerprint = _fingerprint(kind, items, settings)
    path = index_path(out, prefix)

    index = None
    if path.exists():
        previous = read_index(path)
        if previous.get("fingerprint") == fingerprint:
            index = previous
        elif not overwrite:
            raise ValueError(
                f"{path} was made from other sources or options; pass overwrite=True (--overwrite) to "
                "replace it, or choose another --out/--prefix"
            )
        else:
            for shard in previous.get("shards", []):
                (out / shard["name"]).unlink(missing_ok=True)
    if index is None:
        index = {
            "format": INDEX_FORMAT,
            "kind": kind,
            "complete": False,
            "fingerprint": fingerprint,
            "source": {**source, "items": len(items)},
            "settings": settings,
            "classes": classes,
            "class_mids": class_mids,
            "num_classes": num_classes,
            "num_samples": 0,
            "next_item": 0,
            "shards": [],
            "skipped": {},
            "skipped_samples": [],
        }
    if index["complete"]:
        log.info("%s: all %d shards are already written", path, len(index["shards"]))
        return path
    for leftover in out.glob(f"{prefix}-*.tar.tmp"):
        leftover.unlink()

    start = index["next_item"]
    index["skipped_samples"] = [s for s in index["skipped_samples"] if s["item"] < start]
    encode = partial(_encode_or_skip, encode)
    pool = multiprocessing.Pool(workers) if workers > 0 else None
    results = pool.imap(encode, items[start:], chunksize=4) if pool else map(encode, items[start:])
    writer = _ShardRoller(out, prefix, max_size, max_count, index, path)
    try:
        with tqdm(
            total=len(items), initial=start, desc=f"{kind} shards {prefix}", disable=not progress
        ) as bar:
            for position, (status, value) in enumerate(results, start=start):
                item = items[position]
                if status == "ok":
                    writer.add(position, f"{position:09d}", value)  # type: ignore[arg-type]
                else:
                    reason, detail = value  # type: ignore[misc]
                    log.warning("skipping %s (%s: %s)", item.path, reason, detail[:300])
                    index["skipped_samples"].append(
                        {"item": position, "key": item.key, "reason": reason, "detail": detail[:300]}
                    )
                bar.update()
                bar.set_postfix(shards=len(index["shards"]), refresh=False)
            writer.finish(len(items))
        if index["num_samples"] == 0:
            reasons = Counter(sample["reason"] for sample in index["skipped_samples"])
            raise ValueError(f"no sample could be written: all {len(items)} were skipped ({dict(reasons)})")
    finally:
        writer.close()
        if pool is not None:
            pool.terminate()
    return path


class _ShardRoller:
    """Writes samples into ``<prefix>-NNNNNN.tar`` shards, rolling over at the size and count limits,
    and records each finished shard in the index (written to disk after each)."""

    def __init__(self, out: Path, prefix: str, max_size: int, max_count: int, index: dict, path: Path):
        self.out, self.prefix, self.max_size, self.max_count = out, prefix, max_size, max_count
        self.index, self.path = index, path
        self.writer: wds.TarWriter | None = None
        self.stream = None
        self.count = self.size = 0

    def _open(self) -> None:
        name = f"{self.prefix}-{len(self.index['shards']):06d}.tar"
        self.stream = open(self.out / (name + ".tmp"), "wb")  # noqa: SIM115 - open until the shard is full
        # Fixed mtime and owner: the same sources give byte-identical shards.
        self.writer = wds.TarWriter(self.stream, encoder=False, mtime=0, user="unveil", group="unveil")
        self.name, self.count, self.size = name, 0, 0

    def add(self, position: int, key: str, fields: dict[str, bytes]) -> None:
        size = _tar_size(fields)
        if self.writer is not None and (
            self.count >= self.max_count or _tar_file_size(self.size + size) > self.max_size
        ):
            self._close_shard(next_item=position)
        if self.writer is None:
            self._open()
        self.writer.write({"__key__": key, **fields})
        self.count += 1
        self.size += size

    def _close_shard(self, next_item: int) -> None:
        assert self.writer is not None and self.stream is not None
        self.writer.close()
        self.stream.close()
        os.replace(self.out / (self.name + ".tmp"), self.out / self.name)
        self.index["shards"].append(
            {"name": self.name, "samples": self.count, "bytes": (self.out / self.name).stat().st_size}
        )
        self.index["num_samples"] += self.count
        self.index["next_item"] = next_item
        self._save()
        self.writer = self.stream = None

    def _save(self) -> None:
        skipped: dict[str, int] = {}
        for sample in self.index["skipped_samples"]:
            skipped[sample["reason"]] = skipped.get(sample["reason"], 0) + 1
        self.index["skipped"] = skipped
        _write_json_atomic(self.path, self.index)

    def finish(self, num_items: int) -> None:
        if self.writer is not None:
            self._close_shard(next_item=num_items)
        self.index["next_item"] = num_items
        self.index["complete"] = True
        self._save()

    def close(self) -> None:
        """Drop an unfinished shard (after an error): the index does not list it, a rerun rewrites it."""
        if self.writer is not None:
            self.writer.close()
            self.stream.close()
            (self.out / (self.name + ".tmp")).unlink(missing_ok=True)
            self.writer = None
