"""Video object segmentation folders (DAVIS, MOSE, and ``unveil synth vos``) as SAM 2 training clips.

Layouts read, as davis2017-evaluation and SAM 2's ``training/dataset`` read them::

    ROOT/JPEGImages[/480p]/<video>/00000.jpg ...
    ROOT/Annotations[/480p]/<video>/00000.png ...        a palette (or grey) PNG: pixel = object id, 0 background
    ROOT/Annotations[/480p]/<video>/<object>/00000.png   or one folder per object: non-zero = the object
    ROOT/ImageSets/<year>/<split>.txt                     optional list of videos (else every video folder)

DAVIS keeps a resolution folder (``480p``, ``Full-Resolution``); MOSE does not. A frame without a PNG is
not annotated (SA-V annotates every 4th frame); in the per-object layout, an object without a PNG for an
annotated frame is absent from it. Pixel value 255 (DAVIS's "void") counts as background.

A sample, as SAM 2's training sampler draws it: ``num_frames`` consecutive annotated frames whose first
frame shows at least one object, and at most ``max_objects`` of the objects visible in that first frame
(a random choice in training; the first ones, from the first window, in evaluation)::

    {"frames": float [T, 3, H, W] (ImageNet-normalised), "masks": bool [T, O, H, W], "key": "<video>"}

O differs between samples (1..max_objects), so batches are one clip each (SAM 2 trains with batch 1 per
GPU). A video whose annotations or frames cannot be read is skipped and counted (``unidentified``,
``truncated`` or ``decode_error``, as for images), one with fewer
annotated frames than ``num_frames`` as ``short_clip``, one whose annotations show no object at the start
of any window as ``no_annotations`` (``unveil.datasets.skips``).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from unveil.datasets.common import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, SkipBadSamples
from unveil.datasets.skips import BadSample

__all__ = ["VOSFolder"]

_VOID = 255


def _media_root(root: Path, kind: str, resolution: str | None) -> Path:
    base = root / kind
    if resolution is not None and (base / resolution).is_dir():
        return base / resolution
    return base


class VOSFolder(SkipBadSamples, Dataset):
    """Clips of a DAVIS/MOSE-layout folder (see the module docstring).

    Args:
        root: dataset folder holding ``JPEGImages/`` and ``Annotations/``.
        split: name of the ``ImageSets/*/<split>.txt`` list of videos; None (or no such list) takes every
            video folder under ``Annotations``.
        resolution: DAVIS's resolution folder, used when it exists (``480p``).
        num_frames: frames per clip (SAM 2 trains on 8).
        max_objects: objects per clip at most (SAM 2 trains on 3).
        size: frames and masks resized to ``size`` × ``size`` (bilinear / nearest); None keeps them.
        train: random windows and objects; else the first window and the first objects (reproducible).
        transform: replaces the resize and normalisation: called with the clip's uint8 frames [T, 3, H, W] and
            bool masks [T, O, H, W], it returns the sample's ``(frames, masks)`` (e.g.
            :class:`unveil.datasets.sam2_data.SAM2Augment`, which resizes and normalises itself).
        max_retries: consecutive skipped videos tolerated before giving up.
    """

    decode_errors = (OSError, BadSample)

    def __init__(
        self,
        root: str | Path,
        split: str | None = "train",
        resolution: str | None = "480p",
        num_frames: int = 8,
        max_objects: int = 3,
        size: int | None = None,
        train: bool = True,
        transform=None,
        max_retries: int = 20,
    ) -> None:
        self.root = Path(root)
        self.images = _media_root(self.root, "JPEGImages", resolution)
        self.annotations = _media_root(self.root, "Annotations", resolution)
        if not self.images.is_dir() or not self.annotations.is_dir():
            raise FileNotFoundError(
                f"{self.root}: no JPEGImages/ and Annotations/ folders (DAVIS/MOSE layout)"
            )
        if num_frames < 1 or max_objects < 1:
            raise ValueError(
                f"num_frames and max_objects must be at least 1, got {num_frames}, {max_objects}"
            )
        self.videos = self._video_names(split)
        if not self.videos:
            raise FileNotFoundError(f"{self.annotations}: no videos found")
        self.num_frames = num_frames
        self.max_objects = max_objects
        self.size = size
        self.train = train
        self.transform = transform
        self._init_skipping(max_retries)

    def _video_names(self, split: str | None) -> list[str]:
        if split is not None:
            lists = sorted((self.root / "ImageSets").glob(f"*/{split}.txt")) + sorted(
                (self.root / "ImageSets").glob(f"{split}.txt")
            )
            if lists:
                return [line.strip() for line in lists[-1].read_text().splitlines() if line.strip()]
        return sorted(path.name for path in self.annotations.iterdir() if path.is_dir())

    def __len__(self) -> int:
        return len(self.videos)

    def _path_of(self, index: int) -> str:
        return str(self.annotations / self.videos[index])

    # ------------------------------------------------------------------------------------------ reading

    def _annotated_frames(self, video: str) -> tuple[list[str], dict[str, list[Path]] | None]:
        """Names (stems) of the annotated frames that have a JPEG, and the per-object folders (None: palette)."""
        folder = self.annotations / video
        if not folder.is_dir():
            raise BadSample("missing", f"{folder}: no annotation folder")
        object_dirs = sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.name)
        if object_dirs:
            stems = sorted({png.stem for d in object_dirs for png in d.glob("*.png")})
        else:
            stems = sorted(png.stem for png in folder.glob("*.png"))
        stems = [stem for stem in stems if (self.images / video / f"{stem}.jpg").is_file()]
        return stems, ({d.name: d for d in object_dirs} if object_dirs else None)

    def _read_labels(self, video: str, stem: str, object_dirs) -> dict[int, np.ndarray]:
        """{object id: bool [H, W]} of one annotated frame (objects absent from it left out)."""
        if object_dirs is None:
            path = self.annotations / video / f"{stem}.png"
            with Image.open(path) as png:
                if png.mode not in ("P", "L", "I", "I;16"):
                    raise BadSample(
                        "decode_error", f"{path}: annotation mode {png.mode}, expected a palette or grey PNG"
                    )
                labels = np.asarray(png)
            return {int(i): labels == i for i in np.unique(labels) if i not in (0, _VOID)}
        masks = {}
        for index, (name, directory) in enumerate(object_dirs.items(), start=1):
            path = directory / f"{stem}.png"
            if path.is_file():
                with Image.open(path) as png:
                    mask = np.asarray(png.convert("L")) > 0
                if mask.any():
                    object_id = int(name) + 1 if name.isdigit() else index
                    masks[object_id] = mask
        return masks

    def video_annotations(self, index: int) -> tuple[Path, list[str], list[int], torch.Tensor]:
        """For evaluation: the video's JPEG folder, the names (stems) of its annotated frames, the ids of
        the objects of the first one, and their masks over the annotated frames, bool [T, O, H, W]
        (the semi-supervised protocol)."""
        video = self.videos[index]
        stems, object_dirs = self._annotated_frames(video)
        if not stems:
            raise BadSample("no_annotations", f"{self._path_of(index)}: no annotated frame with a JPEG")
        first = self._read_labels(video, stems[0], object_dirs)
        if not first:
            raise BadSample(
                "no_annotations", f"{self._path_of(index)}/{stems[0]}.png: no object in the first frame"
            )
        ids = sorted(first)
        height, width = next(iter(first.values())).shape
        masks = np.zeros((len(stems), len(ids), height, width), dtype=bool)
        for t, stem in enumerate(stems):
            labels = first if t == 0 else self._read_labels(video, stem, object_dirs)
            for o, object_id in enumerate(ids):
                if object_id in labels:
                    masks[t, o] = labels[object_id]
        return self.images / video, stems, ids, torch.from_numpy(masks)

    def _decode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        video = self.videos[index]
        stems, object_dirs = self._annotated_frames(video)
        if len(stems) < self.num_frames:
            raise BadSample(
                "short_clip",
                f"{self._path_of(index)}: {len(stems)} annotated frames, a clip needs {self.num_frames}",
            )
        starts = list(range(len(stems) - self.num_frames + 1))
        if self.train:
            random.shuffle(starts)
        for (
            start
        ) in starts:  # the first window (in random order when training) whose first frame shows objects
            first = self._read_labels(video, stems[start], object_dirs)
            if first:
                break
        else:
            raise BadSample(
                "no_annotations", f"{self._path_of(index)}: no object in the first frame of any clip"
            )
        ids = sorted(first)
        if len(ids) > self.max_objects:
            ids = sorted(random.sample(ids, self.max_objects)) if self.train else ids[: self.max_objects]
        window = stems[start : start + self.num_frames]
        height, width = next(iter(first.values())).shape
        masks = np.zeros((len(window), len(ids), height, width), dtype=bool)
        for t, stem in enumerate(window):
            labels = first if t == 0 else self._read_labels(video, stem, object_dirs)
            for o, object_id in enumerate(ids):
                if object_id in labels:
                    if labels[object_id].shape != (height, width):
                        raise BadSample(
                            "decode_error", f"{self._path_of(index)}/{stem}.png: size differs from the clip's"
                        )
                    masks[t, o] = labels[object_id]
        frames = []
        for stem in window:  # read here, not in _transform: a corrupt JPEG skips the video
            path = self.images / video / f"{stem}.jpg"
            with Image.open(path) as image:
                frame = np.asarray(image.convert("RGB"), dtype=np.uint8)
            if frame.shape[:2] != (height, width):
                raise BadSample(
                    "decode_error",
                    f"{path}: frame is {frame.shape[1]}x{frame.shape[0]}, its annotation {width}x{height}",
                )
            frames.append(frame)
        return np.stack(frames), masks

    def _transform(self, decoded: tuple[np.ndarray, np.ndarray], index: int) -> dict:
        frames, masks = decoded
        if self.transform is not None:
            video, mask = self.transform(
                torch.from_numpy(frames).permute(0, 3, 1, 2), torch.from_numpy(masks)
            )
            return {"frames": video, "masks": mask, "key": self.videos[index]}
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0  # [T, 3, H, W]
        mask = torch.from_numpy(masks)  # [T, O, H, W]
        if self.size is not None:
            video = F.interpolate(
                video, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
            )
            mask = F.interpolate(mask.float(), size=(self.size, self.size), mode="nearest") > 0.5
        mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
        return {"frames": (video - mean) / std, "masks": mask, "key": self.videos[index]}
