"""WebDataset tar shards: writing them from folder/CSV sources (``unveil shards make``), and reading them
for training, with DDP-correct splitting, a deterministic order and bad-sample accounting.

Shard format (one tar member per field, grouped by key; keys are the sample's position in the source)::

    images        000000042.jpg (or .png, .webp, ...)  000000042.cls  000000042.json
    videos        000000042.mp4 (or .avi, .webm, ...)  000000042.cls  000000042.json
    audio         000000042.wav (or .flac, ...)                       000000042.json
    audio-video   000000042.mp4 [000000042.wav/.flac]                 000000042.json

``cls`` holds the class index as text; ``json`` holds ``{"key", "label" or "labels", "source", ...}`` where
``key`` is the key the folder/CSV dataset gives the same sample (``"circle/circle_00003.JPEG"``), ``labels``
the class indices of a multi-label sample (audio), and for videos ``fps``, ``num_frames``, ``duration``
and the optional ``start``/``end`` segment in seconds. An audio-video sample carries a separate audio
file when its source had one, else the audio is the mp4's own track.

A shard set is ``<out>/<prefix>-000000.tar, ...`` plus the index ``<out>/<prefix>.json``, which lists each
shard's name and sample count, the class names, the options it was made with and the samples skipped while
making it. The reading side (``ShardDataset``) takes an index file, a folder holding one index, a brace
pattern (``shards/train-{000000..000146}.tar``), a single tar or a list of any of these.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import random
import tarfile
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from functools import partial
from itertools import islice
from pathlib import Path

import av
import torch
import webdataset as wds
from decord._ffi.base import DECORDError
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info
from torchvision import tv_tensors
from tqdm import tqdm
from unveil.datasets.common import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    list_class_files,
    plain_tensor,
    skip_reason,
)
from unveil.datasets.frames import open_video
from unveil.datasets.skips import BadSample, SkipCounter
from unveil.datasets.video import (
    FullWindowVideoDataset,  # noqa: F401 - importable from here as before
    decode_clips,
    read_video_csv,
)
from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

log = logging.getLogger("unveil.datasets")

INDEX_FORMAT = "unveil-shards/1"
KINDS = ("images", "videos", "audio", "audio-video", "coco")
"""The sources ``make_shards`` converts."""

IMAGE_FIELDS = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)  # jpeg, jpg, png, bmp, webp, tif, tiff
VIDEO_FIELDS = tuple(ext.lstrip(".") for ext in VIDEO_EXTENSIONS)  # mp4, avi, mkv, webm, mov
AUDIO_FIELDS = ("wav", "flac", "ogg", "aiff", "aif", "mp3", "m4a", "aac", "opus")
_TAR_BLOCK = 512

# ================================================================================== shard sets and index


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


# ====================================================================================== writing: sources


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


# ===================================================================================== writing: encoding


@dataclass(frozen=True)
class EncodeOptions:
    """How ``make_shards`` stores each sample.

    Attributes:
        jpeg_quality: re-encode images as JPEG at this quality (default: copy the file's bytes).
        max_side: shrink images whose longer side exceeds this (bicubic), then re-encode as JPEG.
        short_side: re-encode videos (H.264 through PyAV) with their shorter side scaled down to this;
            the audio track is copied as is.
        video_crf: H.264 quality of re-encoded videos (lower is better).
        verify: decode every image (open every video) while writing, and skip those that fail.
    """

    jpeg_quality: int | None = None
    max_side: int | None = None
    short_side: int | None = None
    video_crf: int = 23
    verify: bool = True


def _tar_size(fields: dict[str, bytes]) -> int:
    """Bytes a sample takes in a tar: a 512-byte header per member plus its data padded to 512."""
    return sum(_TAR_BLOCK + math.ceil(len(data) / _TAR_BLOCK) * _TAR_BLOCK for data in fields.values())


def _tar_file_size(content: int) -> int:
    """Size of a tar file holding ``content`` bytes of members: plus two end blocks, padded to a record."""
    return math.ceil((content + 2 * _TAR_BLOCK) / tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def _encode_image(item: ShardItem, options: EncodeOptions) -> dict[str, bytes]:
    data = item.path.read_bytes()
    suffix = item.path.suffix.lower().lstrip(".")
    media, extra = ("jpg" if suffix in ("jpg", "jpeg") else suffix), {}
    if options.verify or options.jpeg_quality is not None or options.max_side is not None:
        with Image.open(io.BytesIO(data)) as opened:
            image = opened.convert("RGB")  # full decode: a truncated file raises here
        if options.max_side is not None and max(image.size) > options.max_side:
            scale = options.max_side / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        if options.jpeg_quality is not None or options.max_side is not None:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=options.jpeg_quality or 90)
            data, media = buffer.getvalue(), "jpg"
        extra = {"width": image.width, "height": image.height}
    meta = {"key": item.key, "label": item.label, "source": str(item.path), **item.meta, **extra}
    return {media: data, "cls": str(item.label).encode(), "json": json.dumps(meta).encode()}


def reencode_video(data: bytes, short_side: int, crf: int = 23) -> tuple[bytes, float, int]:
    """Re-encode a video's bytes as an H.264 MP4 whose shorter side is at most ``short_side`` (even sizes,
    aspect kept, constant frame rate), copying its audio track. Returns ``(mp4 bytes, fps, frames)``.

    The frames are those PyAV shows (edit lists honoured), and the video keeps its start time on the
    source's clock (to the nearest frame), so a video that starts after its audio stays in step with it."""
    source = av.open(io.BytesIO(data))
    output_buffer = io.BytesIO()
    try:
        video_in = source.streams.video[0]
        audio_in = source.streams.audio[0] if source.streams.audio else None
        fps = Fraction(video_in.average_rate or video_in.guessed_rate or 25)
        width, height = video_in.codec_context.width, video_in.codec_context.height
        scale = min(1.0, short_side / min(width, height))
        out_width, out_height = (max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2))
        with av.open(output_buffer, mode="w", format="mp4") as output:
            video_out = output.add_stream(
                "libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps
            )
            video_out.width, video_out.height, video_out.pix_fmt = out_width, out_height, "yuv420p"
            video_out.options = {"crf": str(crf), "preset": "veryfast"} if video_out.name == "libx264" else {}
            audio_out = output.add_stream_from_template(audio_in) if audio_in is not None else None
            frames, first = 0, None
            streams = [video_in] + ([audio_in] if audio_in is not None else [])
            for packet in source.demux(*streams):
                if packet.stream.type == "audio":
                    if packet.dts is not None:
                        packet.stream = audio_out
                        output.mux(packet)
                    continue
                for frame in packet.decode():
                    if first is None:  # where the video starts on the source's clock, in frames
                        first = max(0, round((frame.time or 0.0) * fps))
                    frame = frame.reformat(width=out_width, height=out_height, format="yuv420p")
                    # Constant frame rate: frame i is shown at (first + i) / fps.
                    frame.pts, frame.time_base = first + frames, 1 / fps
                    output.mux(video_out.encode(frame))
                    frames += 1
            output.mux(video_out.encode())
    finally:
        source.close()
    return output_buffer.getvalue(), float(fps), frames


def _encode_video(item: ShardItem, options: EncodeOptions) -> dict[str, bytes]:
    if item.path.is_dir():
        raise BadSample("decode_error", "a folder of frames: shards hold video files (encode it as an mp4)")
    data = item.path.read_bytes()
    media = item.path.suffix.lower().lstrip(".")
    if options.short_side is not None:
        data, fps, num_frames = reencode_video(data, options.short_side, options.video_crf)
        media = "mp4"
        duration = num_frames / fps if fps and num_frames else None
    else:
        try:
            with _video_file(data, "." + media) as path:
                video = open_video(path)  # by presentation time: what the reader will see
                fps, num_frames, duration = video.fps, video.num_frames, video.duration
        except (RuntimeError, DECORDError, av.FFmpegError):
            if options.verify:
                raise
            # Unverified: stored as is; the reader skips it if it is bad.
            fps, num_frames, duration = None, None, None
    meta = {
        "key": item.key,
        "label": item.label,
        "source": str(item.path),
        "fps": fps,
        "num_frames": num_frames,
        "duration": duration,
        **item.meta,
    }
    return {media: data, "cls": str(item.label).encode(), "json": json.dumps(meta).encode()}


def _encode_audio(item: ShardItem, options: EncodeOptions) -> dict[str, bytes]:
    from unveil.datasets.audio import decode_audio

    data = item.path.read_bytes()
    if options.verify:
        decode_audio(data)  # raises for missing, empty or undecodable audio
    meta = {"key": item.key, "labels": list(item.label), "source": str(item.path)}  # type: ignore[arg-type]
    return {item.path.suffix.lower().lstrip("."): data, "json": json.dumps(meta).encode()}


def _encode_audio_video(item: ShardItem, options: EncodeOptions) -> dict[str, bytes]:
    from unveil.datasets.audio import read_audio

    audio_path = item.meta.get("audio")
    fields = _encode_video(ShardItem(item.path, -1, item.key), options)  # mp4 (re-encoded: track copied)
    meta = json.loads(fields.pop("json"))
    fields.pop("cls")
    if audio_path is not None:
        audio = Path(audio_path).read_bytes()  # a missing file listed in the manifest raises here
        if options.verify:
            read_audio(audio)
        fields[Path(audio_path).suffix.lower().lstrip(".")] = audio
    meta.update(labels=list(item.label), audio_source=audio_path)  # type: ignore[arg-type]
    del meta["label"]
    fields["json"] = json.dumps(meta).encode()
    return fields


_ENCODERS: dict[str, Callable[[ShardItem, EncodeOptions], dict[str, bytes]]] = {
    "images": _encode_image,
    "videos": _encode_video,
    "audio": _encode_audio,
    "audio-video": _encode_audio_video,
    "coco": _encode_image,  # detection (issue 14): the image, its annotations in the json entry
}


def _encode(kind: str, options: EncodeOptions, item: ShardItem) -> tuple[str, object]:
    """``("ok", fields)`` or ``("skip", (reason, detail))``; runs in a pool worker, so it never raises for
    a bad file."""
    try:
        return "ok", _ENCODERS[kind](item, options)
    except Exception as error:  # noqa: BLE001 - any failure to read or decode a source file skips it
        return "skip", (skip_reason(error), f"{type(error).__name__}: {error}")


# ======================================================================================= writing: shards


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
    options: EncodeOptions = EncodeOptions(),
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
        options: re-encoding and verification (``EncodeOptions``).
        class_index: audio kinds: an ``index,mid,display_name`` CSV naming the classes (AudioSet's
            ``class_labels_indices.csv``); default: the labels found in the manifest.
        workers: processes encoding samples in parallel (0: in this process). The output is the same.
        overwrite: start again when ``out`` holds a shard set made from other sources or options
            (default: refuse).

    Resumable: samples go to shards in source order, each shard is written under a temporary name and
    renamed when complete, and the index records every finished shard. Rerunning the same command after
    an interruption keeps the finished shards and writes the rest; rerunning a finished one does nothing.

    A sample that cannot be read or decoded (missing, truncated, corrupt) is skipped with a warning; the
    index lists it with its reason.
    """
    if kind not in _ENCODERS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {tuple(_ENCODERS)}")
    if max_count < 1 or max_size < 1:
        raise ValueError(f"max_count and max_size must be >= 1, got {max_count}, {max_size}")
    classes, items = _SOURCES[kind](root, split, csv, class_index)
    if not items:
        raise ValueError("the source lists no samples")
    prefix = prefix or (Path(csv).stem if csv is not None else split)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"max_size": max_size, "max_count": max_count, "prefix": prefix, **asdict(options)}
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
        class_mids = None
        if classes is not None and not isinstance(classes, list):  # an audio ClassIndex
            class_mids, classes = list(classes.mids), list(classes.names)
        if classes is not None:
            num_classes = len(classes)
        elif kind == "audio-video":
            num_classes = 0  # no labels
        else:
            num_classes = max(item.label for item in items) + 1  # type: ignore[type-var]
        index = {
            "format": INDEX_FORMAT,
            "kind": kind,
            "complete": False,
            "fingerprint": fingerprint,
            "source": {
                "root": None if root is None else str(root),
                "split": split,
                "csv": None if csv is None else str(csv),
                "items": len(items),
            },
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
    encode = partial(_encode, kind, options)
    pool = multiprocessing.Pool(workers) if workers > 0 else None
    results = pool.imap(encode, items[start:], chunksize=4) if pool else map(encode, items[start:])
    writer = _ShardRoller(out, prefix, max_size, max_count, index, path)
    try:
        with tqdm(total=len(items), initial=start, desc=f"shards {prefix}", disable=not progress) as bar:
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

# ===================================================================================== reading: decoders


def sample_meta(sample: dict) -> dict:
    """The parsed ``json`` entry of a raw shard sample (cached in it), or ``{}``."""
    if "_meta" not in sample:
        raw = sample.get("json")
        meta = json.loads(raw) if raw else {}
        sample["_meta"] = meta if isinstance(meta, dict) else {}
    return sample["_meta"]


def sample_key(sample: dict) -> str:
    """The dataset key of a raw shard sample: its json ``key``, else the tar key."""
    try:
        key = sample_meta(sample).get("key")
    except ValueError:
        key = None
    return str(key) if key is not None else sample["__key__"]


def sample_label(sample: dict) -> int:
    """The class index of a raw shard sample (``cls``, else json ``label``), or -1 when it has none."""
    if sample.get("cls") is not None:
        return int(sample["cls"].decode() if isinstance(sample["cls"], bytes) else sample["cls"])
    label = sample_meta(sample).get("label")
    return int(label) if isinstance(label, (int, float, str)) and str(label).lstrip("-").isdigit() else -1


def _media(sample: dict, fields: tuple[str, ...], what: str) -> tuple[str, bytes]:
    for name in fields:
        if sample.get(name) is not None:
            return name, sample[name]
    raise BadSample("missing", f"the sample has no {what} entry ({'/'.join(fields)})")


_SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


class _video_file:
    """A video's bytes as a temporary file (in memory, on Linux), for decord and PyAV.

    decord can read from a BytesIO, but when such bytes fail to open it prints all of them to stderr;
    from a file it prints the path.
    """

    def __init__(self, data: bytes, suffix: str = ".mp4") -> None:
        self.data, self.suffix = data, suffix

    def __enter__(self) -> str:
        descriptor, self.path = tempfile.mkstemp(suffix=self.suffix, dir=_SCRATCH)
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(self.data)
        return self.path

    def __exit__(self, *exc) -> None:
        os.unlink(self.path)


class ImageShardDecoder:
    """Image shard samples (``jpg``/``png``/... + ``cls``/``json``) -> ``{"image", "label", "key"}``.

    Args:
        transform: PIL RGB image -> tensor [3, H, W] (``mae_image_transform`` or ``image_eval_transform``).
    """

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.transform = transform

    def decode(self, sample: dict) -> Image.Image:
        _, data = _media(sample, IMAGE_FIELDS, "image")
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")  # forces the full decode, so truncation raises here

    def to_sample(self, image: Image.Image, sample: dict) -> dict:
        return {
            "image": plain_tensor(self.transform(image)),
            "label": torch.tensor(sample_label(sample), dtype=torch.int64),
            "key": sample_key(sample),
        }


class VideoShardDecoder:
    """Video shard samples (``mp4``/... + ``json``/``cls``) -> ``{"video", "label", "key"}``, sampled and
    augmented as ``VideoDataset`` does: ``video`` is [3, T, S, S], or [R, 3, T, S, S] with
    ``repeated_sampling`` R > 1 (batch those with ``repeated_collate``).

    Args:
        transform: ``tv_tensors.Video`` uint8 [T, 3, H, W] -> float [T, 3, S, S] (``mae_video_transform``
            or ``video_eval_transform``).
        require_full_window: skip (``short_clip``) videos shorter than the clip window instead of
            repeating their last frame.
    """

    def __init__(
        self,
        transform: Callable[[tv_tensors.Video], torch.Tensor],
        num_frames: int = 16,
        sampling_rate: int = 4,
        train: bool = True,
        repeated_sampling: int = 1,
        require_full_window: bool = False,
    ) -> None:
        self.transform = transform
        self.num_frames, self.sampling_rate, self.train = num_frames, sampling_rate, train
        self.repeated_sampling, self.require_full_window = repeated_sampling, require_full_window

    def decode(self, sample: dict) -> torch.Tensor:
        name, data = _media(sample, VIDEO_FIELDS, "video")
        meta = sample_meta(sample)
        with _video_file(data, "." + name) as path:
            return decode_clips(
                open_video(path),
                self.num_frames,
                self.sampling_rate,
                self.train,
                self.repeated_sampling,
                meta.get("start"),
                meta.get("end"),
                self.require_full_window,
            )

    def to_sample(self, clips: torch.Tensor, sample: dict) -> dict:
        videos = []
        for clip in clips:  # [T, H, W, 3]: each clip gets its own crop, shared by its frames
            video = self.transform(tv_tensors.Video(clip.permute(0, 3, 1, 2)))  # [T, 3, S, S]
            videos.append(plain_tensor(video).permute(1, 0, 2, 3))  # [3, T, S, S], Hiera's layout
        return {
            "video": videos[0] if self.repeated_sampling == 1 else torch.stack(videos),
            "label": torch.tensor(sample_label(sample), dtype=torch.int64),
            "key": sample_key(sample),
        }


def sample_target(sample: dict, num_classes: int) -> torch.Tensor:
    """Multi-hot float [num_classes] of a raw shard sample: json ``labels`` (several classes), else its
    single class (``cls`` / json ``label``); all zeros when it has none."""
    labels = sample_meta(sample).get("labels")
    if labels is None:
        label = sample_label(sample)
        labels = [] if label < 0 else [label]
    target = torch.zeros(num_classes, dtype=torch.float32)
    target[list(labels)] = 1.0
    return target


class AudioShardDecoder:
    """Audio shard samples (``wav``/``flac``/... + ``json``) -> ``{"fbank", "label", "key"}``, as
    ``AudioDataset`` makes them: ``decode_audio`` (mono, resampled), then ``transform`` (an
    ``FbankTransform``: float [1, target_length, 128]); ``label`` is multi-hot float [num_classes]."""

    def __init__(
        self, transform: Callable[[torch.Tensor], torch.Tensor], num_classes: int, sample_rate: int = 16000
    ):
        self.transform, self.num_classes, self.sample_rate = transform, num_classes, sample_rate

    def decode(self, sample: dict) -> torch.Tensor:
        from unveil.datasets.audio import decode_audio

        _, data = _media(sample, AUDIO_FIELDS, "audio")
        return decode_audio(data, self.sample_rate)

    def to_sample(self, waveform: torch.Tensor, sample: dict) -> dict:
        return {
            "fbank": self.transform(waveform),
            "label": sample_target(sample, self.num_classes),
            "key": sample_key(sample),
        }


class AudioVideoShardDecoder:
    """Audio-video shard samples (``mp4`` [+ ``wav``/``flac``] + ``json``) -> ``{"video", "fbank",
    "audio_missing", "key"[, "label"]}``, through the same ``AudioVideoPipeline`` as
    ``AudioVideoDataset``.

    Args:
        pipeline: window sampling, augmentation and the missing-audio policy.
        num_classes: length of the multi-hot ``label``; None (or 0) for data without labels.
        audio_from: ``"auto"`` (the separate audio file when the sample has one, else the mp4's track),
            ``"track"`` or ``"file"`` (a sample without a separate file is skipped as ``missing``).
    """

    def __init__(self, pipeline, num_classes: int | None = None, audio_from: str = "auto") -> None:
        if audio_from not in ("auto", "track", "file"):
            raise ValueError(f"audio_from must be 'auto', 'track' or 'file', got {audio_from!r}")
        self.pipeline, self.num_classes, self.audio_from = pipeline, num_classes or None, audio_from

    def decode(self, sample: dict):
        name, video = _media(sample, VIDEO_FIELDS, "video")
        audio = None
        if self.audio_from != "track":
            audio = next((sample[f] for f in AUDIO_FIELDS if sample.get(f) is not None), None)
            if audio is None and self.audio_from == "file":
                raise BadSample("missing", "the sample has no separate audio entry (audio_from='file')")
        with _video_file(video, "." + name) as path:
            return self.pipeline.load(path, audio)

    def to_sample(self, clip, sample: dict) -> dict:
        out = self.pipeline.to_sample(clip)
        out["key"] = sample_key(sample)
        if self.num_classes:
            out["label"] = sample_target(sample, self.num_classes)
        return out


# ====================================================================================== reading: dataset


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
        return iter(pipeline)


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
    ``len()`` is the dataset's number of batches per rank.
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

    def __iter__(self):
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        if epoch is not None:
            self.dataset.set_epoch(epoch)
        self.dataset.begin_pass()
        return super().__iter__()
