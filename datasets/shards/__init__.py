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

Modules: ``index`` (shard sets and their index), ``sources`` (what a folder/CSV source lists),
``encode`` (one sample's tar members), ``write`` (``make_shards``; ``write_shards``, its writer, for a kind
with a source of its own), ``samples`` (fields of a raw shard sample), ``decoders`` (raw sample -> sample
dict, per data kind) and ``read`` (``ShardDataset``, ``ShardLoader``). Every public name is importable from ``unveil.datasets.shards``.
"""

from unveil.datasets.shards.decoders import (
    AudioShardDecoder,
    AudioVideoShardDecoder,
    ImageShardDecoder,
    ShardDecoder,
    VideoShardDecoder,
)
from unveil.datasets.shards.encode import _ENCODERS, EncodeOptions, reencode_video  # noqa: F401 - _ENCODERS: tests patch it
from unveil.datasets.shards.index import INDEX_FORMAT, KINDS, ShardSet, index_path, read_index, resolve_shards
from unveil.datasets.shards.read import ShardDataset, ShardLoader
from unveil.datasets.shards.samples import (
    AUDIO_FIELDS,
    IMAGE_FIELDS,
    VIDEO_FIELDS,
    _media,  # noqa: F401 - coco.py reads media through it
    sample_key,
    sample_label,
    sample_meta,
    sample_target,
)
from unveil.datasets.shards.sources import (
    _SOURCES,  # noqa: F401
    ShardItem,
    audio_items,
    audio_video_items,
    coco_items,
    image_items,
    video_items,
)
from unveil.datasets.shards.write import make_shards, write_shards
from unveil.datasets.video import FullWindowVideoDataset  # importable from here as before

__all__ = [
    "AUDIO_FIELDS",
    "IMAGE_FIELDS",
    "INDEX_FORMAT",
    "KINDS",
    "VIDEO_FIELDS",
    "AudioShardDecoder",
    "AudioVideoShardDecoder",
    "EncodeOptions",
    "FullWindowVideoDataset",
    "ImageShardDecoder",
    "ShardDataset",
    "ShardDecoder",
    "ShardItem",
    "ShardLoader",
    "ShardSet",
    "VideoShardDecoder",
    "audio_items",
    "audio_video_items",
    "coco_items",
    "image_items",
    "index_path",
    "make_shards",
    "read_index",
    "reencode_video",
    "resolve_shards",
    "sample_key",
    "sample_label",
    "sample_meta",
    "sample_target",
    "video_items",
    "write_shards",
]
