"""The fields of a raw shard sample (the dict webdataset groups from tar members): media bytes, key,
label, metadata."""

from __future__ import annotations

import json
import os
import tempfile

import torch
from unveil.datasets.common import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
)
from unveil.datasets.skips import BadSample

IMAGE_FIELDS = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)  # jpeg, jpg, png, bmp, webp, tif, tiff
VIDEO_FIELDS = tuple(ext.lstrip(".") for ext in VIDEO_EXTENSIONS)  # mp4, avi, mkv, webm, mov
AUDIO_FIELDS = ("wav", "flac", "ogg", "aiff", "aif", "mp3", "m4a", "aac", "opus")


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
