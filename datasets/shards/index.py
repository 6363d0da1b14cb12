"""Shard sets: the index ``make_shards`` writes beside the tars, and ``resolve_shards``, which turns an index,
a folder, a brace pattern or a list of them into shard URLs with their sample counts and classes."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds

log = logging.getLogger("unveil.datasets")


INDEX_FORMAT = "unveil-shards/1"
KINDS = ("images", "videos", "audio", "audio-video", "coco")
"""The sources ``make_shards`` converts."""


@dataclass
class ShardSet:
    """Resolved shard URLs, with what an index tells about them (sample counts, classes), when known."""

    urls: list[str]
    sizes: list[int | None]
    classes: list[str] | None = None
    num_classes: int | None = None
    kind: str | None = None
    class_mids: list[str] | None = None

    @property
    def num_samples(self) -> int | None:
        """Total samples, when every shard's count is known."""
        return None if any(size is None for size in self.sizes) else sum(self.sizes)  # type: ignore[arg-type]


def index_path(out: str | Path, prefix: str) -> Path:
    """Where ``make_shards`` writes the index of the shard set ``prefix`` in folder ``out``."""
    return Path(out) / f"{prefix}.json"


def read_index(path: str | Path) -> dict:
    """Load a shard index, checking that it is one ``make_shards`` wrote."""
    path = Path(path)
    index = json.loads(path.read_text())
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise ValueError(f"{path}: not a shard index (expected 'format': {INDEX_FORMAT!r})")
    return index


def _shard_set_from_index(path: Path) -> ShardSet:
    index = read_index(path)
    if not index.get("complete"):
        log.warning("%s: the shard set is incomplete (rerun 'unveil shards make' to finish it)", path)
    shards = index["shards"]
    return ShardSet(
        urls=[str(path.parent / shard["name"]) for shard in shards],
        sizes=[int(shard["samples"]) for shard in shards],
        classes=index.get("classes"),
        num_classes=index.get("num_classes"),
        kind=index.get("kind"),
        class_mids=index.get("class_mids"),
    )


def resolve_shards(spec: str | Path | Sequence[str | Path] | ShardSet) -> ShardSet:
    """Turn a shard specification into a ``ShardSet``.

    ``spec`` is an index file (``.json``), a folder holding exactly one index, a brace pattern or path of
    ``.tar`` files (``data/train-{000000..000009}.tar``), or a list of these (concatenated). Sample counts
    of tars named by pattern are looked up in an index beside them when there is one. Raises
    ``FileNotFoundError`` when the specification names no existing shard; a list may name some missing
    tars (reading reports them as ``shard_error``).
    """
    return _resolve_shards(spec, strict=True)


def _resolve_shards(spec, strict: bool) -> ShardSet:
    if isinstance(spec, ShardSet):
        return spec
    if not isinstance(spec, (str, Path)):
        parts = [_resolve_shards(item, strict=False) for item in spec]
        if not any(Path(url).exists() for part in parts for url in part.urls):
            raise FileNotFoundError(f"no existing shard in {[str(item) for item in spec]}")
        classes = next((part.classes for part in parts if part.classes), None)
        class_mids = next((part.class_mids for part in parts if part.class_mids), None)
        counts = [part.num_classes for part in parts if part.num_classes]
        return ShardSet(
            urls=[url for part in parts for url in part.urls],
            sizes=[size for part in parts for size in part.sizes],
            classes=classes,
            num_classes=max(counts) if counts else None,
            kind=next((part.kind for part in parts if part.kind), None),
            class_mids=class_mids,
        )
    text = str(spec)
    path = Path(text)
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"shard index {text!r} does not exist")
        return _shard_set_from_index(path)
    if path.is_dir():
        indexes = [p for p in sorted(path.glob("*.json")) if _is_index(p)]
        if len(indexes) == 1:
            return _shard_set_from_index(indexes[0])
        if len(indexes) > 1:
            names = ", ".join(p.name for p in indexes)
            raise ValueError(f"{text!r} holds several shard indexes ({names}); name one of them")
        tars = sorted(str(p) for p in path.glob("*.tar"))
        if not tars:
            raise FileNotFoundError(f"no shard index and no .tar files in {text!r}")
        return ShardSet(urls=tars, sizes=[None] * len(tars))
    urls = list(wds.shardlists.expand_urls(text))
    if strict and not any(Path(url).exists() for url in urls):
        raise FileNotFoundError(f"no shard matches {text!r}")
    known: dict[str, int] = {}
    classes, num_classes, kind, class_mids = None, None, None, None
    for candidate in sorted({Path(url).parent for url in urls}):
        for index_file in sorted(candidate.glob("*.json")):
            if _is_index(index_file):
                found = _shard_set_from_index(index_file)
                known.update(zip(found.urls, found.sizes))  # type: ignore[arg-type]
                if set(found.urls) & set(urls):
                    classes, num_classes, kind = found.classes, found.num_classes, found.kind
                    class_mids = found.class_mids
    return ShardSet(
        urls=urls,
        sizes=[known.get(url) for url in urls],
        classes=classes,
        num_classes=num_classes,
        kind=kind,
        class_mids=class_mids,
    )


def _is_index(path: Path) -> bool:
    try:
        read_index(path)
    except (ValueError, OSError, KeyError):
        return False
    return True
