"""SA-1B (Segment Anything 1 Billion) images as single-frame SAM 2 training clips.

Layout of the SA-1B release (each tar of the release holds pairs)::

    ROOT/.../sa_223750.jpg
    ROOT/.../sa_223750.json     {"image": {"image_id", "width", "height", "file_name"},
                                 "annotations": [{"id", "segmentation": {"size": [H, W], "counts": str},
                                                  "bbox", "area", "predicted_iou", "stability_score",
                                                  "crop_box", "point_coords"}, ...]}

The json may also lie under a separate ``annotations`` folder at the same relative path (SAM 2's
``SA1BRawDataset`` takes an image folder and a mask folder). Masks are COCO RLEs, decoded with
pycocotools; only the chosen ones are decoded.

A sample is a clip of one frame (SAM 2 trains on images as one-frame videos)::

    {"frames": float [1, 3, H, W] (ImageNet-normalised), "masks": bool [1, O, H, W], "key": "sa_223750"}

with ``O`` = at most ``max_objects`` of the image's masks (a random choice in training, the first ones in
evaluation). As in SAM 2's loader, masks of zero area are left out, and optionally those covering at
least ``max_area_fraction`` of the image or with a ``stability_score`` below ``min_stability_score``.
An image whose json is missing, unreadable, or lists no usable mask is skipped and counted (``missing``,
``decode_error``, ``no_annotations``), as is an image that does not decode (``truncated``,
``unidentified``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from unveil.datasets.common import SkipBadSamples
from unveil.datasets.sav import clip_sample, decode_rle
from unveil.datasets.skips import BadSample

__all__ = ["SA1BFolder", "read_sa1b_annotations"]


def read_sa1b_annotations(
    path: str | Path,
    image_size: tuple[int, int] | None = None,
    max_area_fraction: float | None = None,
    min_stability_score: float | None = None,
) -> list[dict]:
    """The usable annotations of an SA-1B json: non-zero ``area``, and, when set, area below
    ``max_area_fraction`` of the image (``image_size`` = (height, width), else the json's ``image``) and
    ``stability_score`` at least ``min_stability_score``.

    Raises ``FileNotFoundError`` (missing) and ``BadSample`` (``decode_error`` for a file that is not an
    SA-1B annotation, ``no_annotations`` when no mask is left).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadSample("decode_error", f"{path}: not JSON ({error})") from None
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise BadSample("decode_error", f"{path}: no 'annotations' list")
    if max_area_fraction is not None and image_size is None:
        info = data.get("image") or {}
        if "height" not in info or "width" not in info:
            raise BadSample("decode_error", f"{path}: no image height/width for max_area_fraction")
        image_size = (int(info["height"]), int(info["width"]))
    usable = []
    for annotation in annotations:
        if not isinstance(annotation, dict) or "segmentation" not in annotation:
            raise BadSample("decode_error", f"{path}: an annotation without 'segmentation'")
        area = annotation.get("area", 0)
        if not area > 0:
            continue
        if max_area_fraction is not None and area / (image_size[0] * image_size[1]) >= max_area_fraction:
            continue
        if min_stability_score is not None and annotation.get("stability_score", 1.0) < min_stability_score:
            continue
        usable.append(annotation)
    if not usable:
        raise BadSample("no_annotations", f"{path}: no usable mask ({len(annotations)} annotations)")
    return usable


class SA1BFolder(SkipBadSamples, Dataset):
    """SA-1B images with their masks as one-frame clips (see the module docstring).

    Args:
        root: folder searched (recursively) for ``*.jpg`` images.
        annotations: folder holding the jsons at the images' relative paths (default: beside each image).
        file_list: text file of the image names to use (``sa_223750`` or ``sa_223750.jpg``), one a line.
        max_objects: masks per sample at most.
        size: image and masks resized to ``size`` × ``size`` (bilinear / nearest); None keeps them.
        train: a random choice of masks; else the first ones (reproducible).
        transform: replaces the resize and normalisation (``unveil.datasets.sav.clip_sample``), e.g. SAM 2's
            augmentation.
        max_area_fraction: leave out masks covering at least this fraction of the image (SAM 2's
            ``mask_area_frac_thresh``; None: keep all).
        min_stability_score: leave out masks whose ``stability_score`` is lower (None: keep all).
        max_retries: consecutive skipped images tolerated before giving up.
    """

    decode_errors = (OSError, BadSample)

    def __init__(
        self,
        root: str | Path,
        annotations: str | Path | None = None,
        file_list: str | Path | None = None,
        max_objects: int = 3,
        size: int | None = None,
        train: bool = True,
        transform: Callable | None = None,
        max_area_fraction: float | None = None,
        min_stability_score: float | None = None,
        max_retries: int = 20,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: not a directory (SA-1B root holding sa_*.jpg)")
        if max_objects < 1:
            raise ValueError(f"max_objects must be at least 1, got {max_objects}")
        self.annotations = self.root if annotations is None else Path(annotations)
        images = sorted(path for path in self.root.rglob("*.jpg") if not path.name.startswith("."))
        if file_list is not None:
            wanted = [
                Path(line.strip()).stem for line in Path(file_list).read_text().splitlines() if line.strip()
            ]
            by_name = {path.stem: path for path in images}
            missing = [name for name in wanted if name not in by_name]
            if missing:
                raise FileNotFoundError(f"{file_list}: no {missing[0]}.jpg under {self.root}")
            images = [by_name[name] for name in wanted]
        if not images:
            raise FileNotFoundError(f"{self.root}: no .jpg images found")
        self.images = images
        self.max_objects, self.size, self.train, self.transform = max_objects, size, train, transform
        self.max_area_fraction, self.min_stability_score = max_area_fraction, min_stability_score
        self._init_skipping(max_retries)

    def __len__(self) -> int:
        return len(self.images)

    def annotation_of(self, index: int) -> Path:
        """The json of image ``index``."""
        return self.annotations / self.images[index].relative_to(self.root).with_suffix(".json")

    def _path_of(self, index: int) -> str:
        return str(self.images[index])

    def _decode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        path = self.images[index]
        with Image.open(path) as opened:
            image = np.array(opened.convert("RGB"), dtype=np.uint8)  # full decode: truncation raises here
        height, width = image.shape[:2]
        usable = read_sa1b_annotations(
            self.annotation_of(index), (height, width), self.max_area_fraction, self.min_stability_score
        )
        chosen = list(range(len(usable)))
        if len(chosen) > self.max_objects:
            chosen = (
                sorted(random.sample(chosen, self.max_objects)) if self.train else chosen[: self.max_objects]
            )
        masks = []
        for position in chosen:
            mask = decode_rle(
                usable[position]["segmentation"], f"{self.annotation_of(index)} mask {position}"
            )
            if mask.shape != (height, width):
                raise BadSample(
                    "decode_error",
                    f"{self.annotation_of(index)}: a {mask.shape[1]}x{mask.shape[0]} mask on a {width}x{height} image",
                )
            masks.append(mask)
        return image[None], np.stack(masks)[None]  # [1, H, W, 3], [1, O, H, W]

    def _transform(self, decoded: tuple[np.ndarray, np.ndarray], index: int) -> dict:
        frames, masks = decoded
        return clip_sample(frames, masks, self.images[index].stem, self.size, self.transform)
