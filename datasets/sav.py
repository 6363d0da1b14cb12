"""SA-V (Segment Anything Video) as SAM 2 training clips, and the clip rules every masklet source shares.

Layout of the SA-V training release (``sav_dataset/README.md`` of the SAM 2 repository)::

    ROOT/.../sav_000001.mp4             24 fps video
    ROOT/.../sav_000001_manual.json     its manual masklets (``*_auto.json``, SAM's automatic ones, are not read)

or, as SAM 2's ``JSONRawDataset`` reads extracted frames, a folder of frames named by their 24 fps index
(``sav_000001/00000.jpg, 00001.jpg, ...``, or only every 4th one) beside the json or under
``frames_root``. The json is a dict whose ``masklet`` is a list over annotated frames of a list over
objects of COCO RLEs (``{"size": [H, W], "counts": str}``); the other keys (``video_id``,
``video_frame_count``, ``video_height``, ``video_width``, ``masklet_id``, ``masklet_num``,
``masklet_first_appeared_frame``, ...) describe it. Videos are annotated at 6 fps: annotated frame
``k`` is video frame ``4 k``. An object not visible in a frame has an empty RLE there; a frame whose entry
(or one of whose objects' entries) is null counts as not annotated, as in SAM 2's loader. A json holding a
plain list is that ``masklet`` list; a dict with ``fps`` (the annotation rate) sets the spacing to
``24 / fps``.

A sample follows the rules of ``unveil.datasets.vos.VOSFolder``: ``num_frames`` consecutive annotated
frames whose first frame shows at least one object, and at most ``max_objects`` of the objects visible
there (random in training; the first window and objects in evaluation)::

    {"frames": float [T, 3, H, W] (ImageNet-normalised), "masks": bool [T, O, H, W], "key": "sav_000001"}

Only the clip's frames are decoded (``unveil.datasets.frames.open_video``: decord, or PyAV when the mp4
has an edit list), and only its objects' masks. A video whose json is unreadable or malformed, or whose
frames do not decode, is skipped and counted (``decode_error``, ``missing``), one with fewer annotated
frames than ``num_frames`` as ``short_clip``, one with no object at the start of any window as
``no_annotations``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from decord._ffi.base import DECORDError
from PIL import Image
from torch.utils.data import Dataset
from unveil.datasets.common import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, SkipBadSamples
from unveil.datasets.frames import open_video
from unveil.datasets.skips import BadSample

__all__ = [
    "ANNOTATION_EVERY",
    "SAVFolder",
    "choose_clip",
    "clip_sample",
    "decode_rle",
    "encode_rle",
    "read_masklets",
    "rle_area",
]

ANNOTATION_EVERY = 4
"""Video frames per annotated frame in SA-V: 24 fps videos annotated at 6 fps (``sav_dataset/README.md``)."""

VIDEO_FPS = 24
"""SA-V's video frame rate, against which a json's ``fps`` (annotation rate) is read."""


# ============================================================================================ RLE masks


def _rle(entry: object, where: str) -> dict:
    """A COCO RLE as pycocotools takes it: compressed counts (str or bytes) as they are, uncompressed
    (a list of run lengths) converted."""
    from pycocotools import mask as mask_utils

    if not isinstance(entry, dict) or "size" not in entry or "counts" not in entry:
        raise BadSample("decode_error", f"{where}: not a COCO RLE ({{'size', 'counts'}})")
    if isinstance(entry["counts"], list):
        height, width = entry["size"]
        return mask_utils.frPyObjects(entry, height, width)
    return entry


def rle_area(entry: object, where: str = "mask") -> int:
    """Pixels of a COCO RLE (without decoding it)."""
    from pycocotools import mask as mask_utils

    return int(mask_utils.area(_rle(entry, where)))


def decode_rle(entry: object, where: str = "mask") -> np.ndarray:
    """bool [H, W] of a COCO RLE; a malformed one raises ``BadSample("decode_error")`` naming ``where``."""
    from pycocotools import mask as mask_utils

    rle = _rle(entry, where)
    try:
        return mask_utils.decode(rle).astype(bool)
    except (ValueError, TypeError, KeyError) as error:
        raise BadSample("decode_error", f"{where}: bad RLE ({error})") from None


def encode_rle(mask: np.ndarray) -> dict:
    """The compressed COCO RLE of a bool [H, W] mask, JSON-ready (``counts`` as str), as SA-1B and SA-V
    store masks."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


# ============================================================================================ clip rules


def choose_clip(
    count: int,
    visible: Callable[[int], Sequence[int]],
    num_frames: int,
    max_objects: int,
    train: bool,
    where: str,
) -> tuple[int, list[int]]:
    """The first frame and the objects of a clip of ``num_frames`` consecutive annotated frames, as SAM 2's
    ``RandomUniformSampler`` picks them and ``VOSFolder`` does.

    Args:
        count: annotated frames of the video.
        visible: annotated frame -> the ids of the objects visible in it.
        train: try windows in random order and pick objects at random (``random``, so a seeded sample is
            reproducible); else the first window that shows an object, and its first objects.
        where: names the video in errors.

    Returns ``(start, sorted object ids)``. Raises ``BadSample`` (``short_clip``, ``no_annotations``).
    """
    if count < num_frames:
        raise BadSample("short_clip", f"{where}: {count} annotated frames, a clip needs {num_frames}")
    starts = list(range(count - num_frames + 1))
    if train:
        random.shuffle(starts)
    for start in starts:
        ids = sorted(visible(start))
        if ids:
            break
    else:
        raise BadSample("no_annotations", f"{where}: no object in the first frame of any clip")
    if len(ids) > max_objects:
        ids = sorted(random.sample(ids, max_objects)) if train else ids[:max_objects]
    return start, ids


def clip_sample(
    frames: np.ndarray | torch.Tensor,
    masks: np.ndarray,
    key: str,
    size: int | None,
    transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict:
    """The sample dict of a clip, made as ``VOSFolder`` makes it.

    Args:
        frames: uint8 [T, H, W, 3] RGB.
        masks: bool [T, O, H, W].
        size: frames (bilinear, antialiased) and masks (nearest) resized to ``size`` × ``size``; None keeps them.
        transform: replaces the resize and normalisation, as ``VOSFolder``'s does: called with uint8 frames
            [T, 3, H, W] and bool masks [T, O, H, W], returns the sample's ``(frames, masks)``
            (``unveil.datasets.sam2_data.SAM2Augment``).

    Returns ``{"frames": float [T, 3, S, S] ImageNet-normalised, "masks": bool [T, O, S, S], "key"}``.
    """
    pixels = torch.as_tensor(np.asarray(frames)).permute(0, 3, 1, 2)  # [T, 3, H, W] uint8
    mask = torch.from_numpy(np.ascontiguousarray(masks))  # [T, O, H, W]
    if transform is not None:
        pixels, mask = transform(pixels, mask)
        return {"frames": pixels, "masks": mask, "key": key}
    video = pixels.float() / 255.0
    if size is not None:
        video = F.interpolate(video, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        mask = F.interpolate(mask.float(), size=(size, size), mode="nearest") > 0.5
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    return {"frames": (video - mean) / std, "masks": mask, "key": key}


# ============================================================================================ SA-V json


def read_masklets(path: str | Path, annotation_every: int = ANNOTATION_EVERY) -> tuple[list, int]:
    """``(masklet, annotation_every)`` of an SA-V annotation json: the per-annotated-frame lists of
    per-object RLEs, and the video frames per annotated frame.

    Raises ``FileNotFoundError`` for a missing file and ``BadSample("decode_error")`` for one that is not
    an SA-V annotation.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadSample("decode_error", f"{path}: not JSON ({error})") from None
    if isinstance(data, dict):
        field = "masklet" if "masklet" in data else "masks"  # SAM 2's loader accepts both names
        masklet = data.get(field)
        if "fps" in data:
            fps = data["fps"][0] if isinstance(data["fps"], list) else data["fps"]
            if not fps or VIDEO_FPS % int(fps):
                raise BadSample("decode_error", f"{path}: annotation fps {fps!r} does not divide {VIDEO_FPS}")
            annotation_every = VIDEO_FPS // int(fps)
    else:
        masklet = data
    if not isinstance(masklet, list) or not all(
        frame is None or isinstance(frame, list) for frame in masklet
    ):
        raise BadSample("decode_error", f"{path}: no 'masklet' list of per-frame lists of RLEs")
    return masklet, annotation_every


def _annotated(frame: list | None) -> bool:
    """An annotated frame: present, with an entry for every object (SAM 2 drops frames with a null)."""
    return frame is not None and all(entry is not None for entry in frame)


# ============================================================================================ dataset


class SAVFolder(SkipBadSamples, Dataset):
    """Clips of SA-V videos and their manual masklets (see the module docstring).

    Args:
        root: folder searched (recursively) for ``*_manual.json``.
        frames_root: folder of extracted frame folders ``<video_id>/00000.jpg`` (SAM 2's ``img_folder``);
            default: the ``<video_id>.mp4`` beside each json, else a ``<video_id>/`` frame folder there.
        file_list: text file of the video ids to use, one a line (default: every json found).
        num_frames: frames per clip (SAM 2 trains on 8).
        max_objects: objects per clip at most (SAM 2 trains on 3).
        size: frames and masks resized to ``size`` × ``size``; None keeps them.
        train: random windows and objects; else the first window and objects (reproducible).
        transform: replaces the resize and normalisation (see ``clip_sample``), e.g. SAM 2's augmentation.
        annotation_every: video frames per annotated frame (4 for SA-V), unless the json gives ``fps``.
        max_retries: consecutive skipped videos tolerated before giving up.
    """

    decode_errors = (OSError, RuntimeError, DECORDError, av.FFmpegError, BadSample)

    def __init__(
        self,
        root: str | Path,
        frames_root: str | Path | None = None,
        file_list: str | Path | None = None,
        num_frames: int = 8,
        max_objects: int = 3,
        size: int | None = None,
        train: bool = True,
        transform: Callable | None = None,
        annotation_every: int = ANNOTATION_EVERY,
        max_retries: int = 20,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: not a directory (SA-V root holding *_manual.json)")
        if num_frames < 1 or max_objects < 1 or annotation_every < 1:
            raise ValueError(
                "num_frames, max_objects and annotation_every must be at least 1, got "
                f"{num_frames}, {max_objects}, {annotation_every}"
            )
        self.frames_root = None if frames_root is None else Path(frames_root)
        found = {path.name[: -len("_manual.json")]: path for path in sorted(self.root.rglob("*_manual.json"))}
        if file_list is not None:
            wanted = [line.strip() for line in Path(file_list).read_text().splitlines() if line.strip()]
            missing = [name for name in wanted if name not in found]
            if missing:
                raise FileNotFoundError(f"{file_list}: no {missing[0]}_manual.json under {self.root}")
            found = {name: found[name] for name in wanted}
        if not found:
            raise FileNotFoundError(f"{self.root}: no *_manual.json (SA-V annotations) found")
        self.videos = list(found)
        self.annotation_files = list(found.values())
        self.num_frames, self.max_objects, self.size, self.train = num_frames, max_objects, size, train
        self.annotation_every, self.transform = annotation_every, transform
        self._init_skipping(max_retries)

    def __len__(self) -> int:
        return len(self.videos)

    def _path_of(self, index: int) -> str:
        return str(self.annotation_files[index])

    def media_of(self, index: int) -> Path:
        """The video file or frame folder of video ``index``."""
        video = self.videos[index]
        if self.frames_root is not None:
            return self.frames_root / video
        beside = self.annotation_files[index].parent
        mp4 = beside / f"{video}.mp4"
        return mp4 if mp4.exists() or not (beside / video).is_dir() else beside / video

    def _decode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        where = self._path_of(index)
        masklet, every = read_masklets(self.annotation_files[index], self.annotation_every)
        media = self.media_of(index)
        if media.is_dir():
            video = None
            available = lambda k: (media / f"{k * every:05d}.jpg").is_file()
        else:
            video = open_video(media)  # the index only: no pixels yet
            available = lambda k: k * every < video.num_frames
        # The annotated frames the video has (SA-V's last annotation may lie past a short video's end).
        annotated = [k for k, frame in enumerate(masklet) if _annotated(frame) and available(k)]

        def visible(position: int) -> list[int]:
            frame = masklet[annotated[position]]
            return [o for o, entry in enumerate(frame) if rle_area(entry, f"{where} frame {position}") > 0]

        start, ids = choose_clip(
            len(annotated), visible, self.num_frames, self.max_objects, self.train, where
        )
        window = annotated[start : start + self.num_frames]
        masks = np.stack(
            [
                np.stack([decode_rle(masklet[k][o], f"{where} frame {k} object {o}") for o in ids])
                for k in window
            ]
        )  # [T, O, H, W]
        if video is None:
            frames = []
            for k in window:
                with Image.open(media / f"{k * every:05d}.jpg") as image:
                    frames.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
            if len({frame.shape for frame in frames}) > 1:
                raise BadSample("decode_error", f"{media}: frames of different sizes")
            pixels = np.stack(frames)
        else:
            pixels = video.read([k * every for k in window]).numpy()  # [T, H, W, 3]
        if pixels.shape[1:3] != masks.shape[2:]:
            raise BadSample(
                "decode_error",
                f"{media}: frames are {pixels.shape[2]}x{pixels.shape[1]}, masks {masks.shape[3]}x{masks.shape[2]}",
            )
        return pixels, masks

    def _transform(self, decoded: tuple[np.ndarray, np.ndarray], index: int) -> dict:
        frames, masks = decoded
        return clip_sample(frames, masks, self.videos[index], self.size, self.transform)
