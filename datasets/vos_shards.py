"""Video object segmentation clips in WebDataset shards: written from a DAVIS/MOSE-layout folder
(``unveil shards make vos --root DIR --out OUT``), read back as the same samples ``VOSFolder`` gives.

One shard sample per video, holding its annotated frames (the only ones a clip is cut from)::

    000000042.frame00000.jpg  000000042.frame00001.jpg ...   the JPEGs of the annotated frames, bytes as stored
    000000042.json    {"key": "<video>", "frames": ["00000", ...], "objects": [1, 2, ...],
                       "height", "width", "source",
                       "masklet": [[RLE of object 1, RLE of object 2, ...] per annotated frame]}

``masklet`` is SA-V's layout (``unveil.datasets.sav``): per annotated frame, per object, a COCO RLE, empty
where the object is absent, so overlapping objects survive (a palette PNG cannot hold them). ``objects``
are the ids ``VOSFolder`` gives them. The reader draws clips with the same rules (``choose_clip``) and
makes the same tensors (``clip_sample``): with the same ``random`` state it returns exactly the sample
``VOSFolder`` returns.

Reading goes through ``unveil.datasets.shards.ShardDataset`` as every shard kind does: the shard list is
permuted from ``(seed, epoch)`` (``shard_shuffle`` is explicit), split by rank (webdataset's
``split_by_node`` with the rank passed in) then by worker, an empty rank or worker just yields nothing
(webdataset's ``empty_check=False``), samples pass a seeded shuffle buffer, and a sample that does not
decode is skipped and counted. The writer skips and lists (in the index) videos that cannot be read.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from unveil.datasets.sav import choose_clip, clip_sample, decode_rle, encode_rle, rle_area
from unveil.datasets.shards import ShardDataset, ShardItem, sample_key, sample_meta
from unveil.datasets.shards.write import write_shards
from unveil.datasets.skips import BadSample
from unveil.datasets.vos import VOSFolder

__all__ = ["VOSShardDecoder", "encode_vos_video", "make_vos_shards", "vos_shard_dataset"]

KIND = "vos"


def _frame_field(position: int) -> str:
    return f"frame{position:05d}.jpg"


# ============================================================================================ writing


def encode_vos_video(folder: VOSFolder, index: int) -> dict[str, bytes]:
    """The tar members of video ``index`` of ``folder`` (see the module docstring).

    Raises ``BadSample``/``OSError`` for a video that cannot be read (no annotated frame with a JPEG, no
    object, a JPEG that does not decode, sizes that disagree).
    """
    video = folder.videos[index]
    stems, object_dirs = folder._annotated_frames(video)
    if not stems:
        raise BadSample("no_annotations", f"{folder._path_of(index)}: no annotated frame with a JPEG")
    labels = [folder._read_labels(video, stem, object_dirs) for stem in stems]
    ids = sorted(set().union(*labels))
    if not ids:
        raise BadSample("no_annotations", f"{folder._path_of(index)}: no object in any annotated frame")
    shape = next(iter(next(frame for frame in labels if frame).values())).shape
    empty = encode_rle(np.zeros(shape, dtype=bool))
    masklet = []
    for stem, frame in zip(stems, labels):
        if any(mask.shape != shape for mask in frame.values()):
            raise BadSample(
                "decode_error", f"{folder._path_of(index)}/{stem}.png: size differs from the video's"
            )
        masklet.append([encode_rle(frame[i]) if i in frame else empty for i in ids])
    fields: dict[str, bytes] = {}
    for position, stem in enumerate(stems):
        path = folder.images / video / f"{stem}.jpg"
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB")  # full decode: a truncated JPEG raises here, not at training time
        if (rgb.height, rgb.width) != shape:
            raise BadSample(
                "decode_error",
                f"{path}: frame is {rgb.width}x{rgb.height}, its annotation {shape[1]}x{shape[0]}",
            )
        fields[_frame_field(position)] = data
    meta = {
        "key": video,
        "frames": stems,
        "objects": ids,
        "height": shape[0],
        "width": shape[1],
        "source": str(folder.images / video),
        "masklet": masklet,
    }
    fields["json"] = json.dumps(meta).encode()
    return fields


def make_vos_shards(
    root: str | Path,
    out: str | Path,
    split: str | None = "train",
    resolution: str | None = "480p",
    prefix: str | None = None,
    max_size: int = 1 << 30,
    max_count: int = 1000,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Convert a DAVIS/MOSE-layout folder (``VOSFolder``'s ``root``, ``split`` and ``resolution``) into tar
    shards of at most ``max_count`` videos and about ``max_size`` bytes, plus an index (``kind: "vos"``),
    and return the index's path. ``prefix`` defaults to the split.

    Resumable as ``make_shards`` is: finished shards are recorded in the index, a rerun continues after the
    last one, a finished set is left as it is; a set made from other sources or options is replaced only
    with ``overwrite``. A video that cannot be read is skipped with a warning and listed in the index.
    """
    folder = VOSFolder(root, split=split, resolution=resolution, num_frames=1, train=False)
    positions = {video: position for position, video in enumerate(folder.videos)}
    return write_shards(
        KIND,
        out,
        prefix or split or "all",
        [ShardItem(folder.images / video, -1, video) for video in folder.videos],
        lambda item: encode_vos_video(folder, positions[item.key]),
        source={"root": str(root), "split": split, "csv": None},
        settings={"resolution": resolution},
        max_size=max_size,
        max_count=max_count,
        overwrite=overwrite,
        progress=progress,
    )


# ============================================================================================ reading


class VOSShardDecoder:
    """``vos`` shard samples -> ``{"frames", "masks", "key"}`` clips, drawn and made as ``VOSFolder`` does.

    Args:
        num_frames: frames per clip (SAM 2 trains on 8).
        max_objects: objects per clip at most (SAM 2 trains on 3).
        size: frames and masks resized to ``size`` × ``size``; None keeps them.
        train: random windows and objects (``random``); else the first window and objects.
        transform: replaces the resize and normalisation (``unveil.datasets.sav.clip_sample``), e.g. SAM 2's
            augmentation.
    """

    def __init__(
        self,
        num_frames: int = 8,
        max_objects: int = 3,
        size: int | None = None,
        train: bool = True,
        transform: Callable | None = None,
    ) -> None:
        if num_frames < 1 or max_objects < 1:
            raise ValueError(
                f"num_frames and max_objects must be at least 1, got {num_frames}, {max_objects}"
            )
        self.num_frames, self.max_objects, self.size, self.train = num_frames, max_objects, size, train
        self.transform = transform

    def decode(self, sample: dict) -> tuple[np.ndarray, np.ndarray]:
        meta = sample_meta(sample)
        where = f"{sample_key(sample)} (shard sample {sample.get('__key__')})"
        masklet, ids = meta.get("masklet"), meta.get("objects")
        if not isinstance(masklet, list) or not isinstance(ids, list):
            raise BadSample("missing", f"{where}: no 'masklet' and 'objects' in the json entry")

        def visible(k: int) -> list[int]:
            return [ids[o] for o, entry in enumerate(masklet[k]) if rle_area(entry, f"{where} frame {k}") > 0]

        start, chosen = choose_clip(
            len(masklet), visible, self.num_frames, self.max_objects, self.train, where
        )
        columns = [ids.index(object_id) for object_id in chosen]
        window = range(start, start + self.num_frames)
        masks = np.stack(
            [np.stack([decode_rle(masklet[k][o], f"{where} frame {k}") for o in columns]) for k in window]
        )  # [T, O, H, W]
        frames = []
        for k in window:
            data = sample.get(_frame_field(k))
            if data is None:
                raise BadSample("missing", f"{where}: no {_frame_field(k)} entry")
            with Image.open(io.BytesIO(data)) as image:
                frames.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
        if any(frame.shape[:2] != masks.shape[2:] for frame in frames):
            raise BadSample("decode_error", f"{where}: frame and mask sizes differ")
        return np.stack(frames), masks

    def to_sample(self, decoded: tuple[np.ndarray, np.ndarray], sample: dict) -> dict:
        frames, masks = decoded
        return clip_sample(frames, masks, sample_key(sample), self.size, self.transform)


def vos_shard_dataset(
    shards,
    num_frames: int = 8,
    max_objects: int = 3,
    size: int | None = None,
    train: bool = True,
    transform: Callable | None = None,
    batch_size: int = 1,
    collate_fn: Callable[[list[dict]], object] = list,
    shuffle_buffer: int = 100,
    shard_shuffle: bool = True,
    resampled: bool = False,
    epoch_samples: int | None = None,
    seed: int = 0,
) -> ShardDataset:
    """A ``ShardDataset`` of VOS clips from ``make_vos_shards`` shards (index, folder, pattern or list).

    Clips have different object counts, so a batch is by default the list of its sample dicts
    (``collate_fn=list``). For evaluation pass ``train=False, shuffle_buffer=0, shard_shuffle=False``.
    The other arguments are ``ShardDataset``'s; wrap it in a ``ShardLoader`` to read it.
    """
    return ShardDataset(
        shards,
        VOSShardDecoder(num_frames, max_objects, size, train, transform),
        batch_size=batch_size,
        collate_fn=collate_fn,
        drop_last=train,
        shuffle_buffer=shuffle_buffer if train else 0,
        shard_shuffle=shard_shuffle,
        resampled=resampled,
        epoch_samples=epoch_samples,
        seed=seed,
    )
