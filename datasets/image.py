"""Images: the pipeline that decodes and transforms one image (folders and shards), image folders in the
ImageNet layout, and the MAE image augmentation."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from unveil.datasets.common import (
    IMAGE_EXTENSIONS,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    PipelineDataset,
    list_class_files,
    plain_tensor,
)


def mae_image_transform(
    input_size: int = 224,
    crop_scale: tuple[float, float] = (0.2, 1.0),
    hflip: float = 0.5,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> v2.Compose:
    """MAE pretraining augmentation: PIL image -> float tensor [3, input_size, input_size], normalised.

    RandomResizedCrop (bicubic, area in ``crop_scale``, aspect ratio 3/4..4/3), horizontal flip with
    probability ``hflip``, then scale to [0, 1] and normalise by ``mean``/``std`` (MAE, He et al. 2022;
    Hiera keeps the same recipe).
    """
    return v2.Compose(
        [
            v2.RandomResizedCrop(
                input_size, scale=crop_scale, interpolation=InterpolationMode.BICUBIC, antialias=True
            ),
            v2.RandomHorizontalFlip(hflip),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )


def image_eval_transform(
    input_size: int = 224,
    crop_pct: float = 0.875,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> v2.Compose:
    """Evaluation transform: resize the short side to ``input_size / crop_pct`` (bicubic), centre-crop
    ``input_size``, scale to [0, 1] and normalise -> float tensor [3, input_size, input_size]."""
    return v2.Compose(
        [
            v2.Resize(int(input_size / crop_pct), interpolation=InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(input_size),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )


class ImagePipeline:
    """Decode and transform one image, from a path or a shard member's bytes: ``load`` gives the PIL RGB
    image (fully decoded, so a truncated file raises there), ``to_sample`` ``{"image": [3, H, W]}``.

    Args:
        transform: PIL image -> tensor [3, H, W]; default ``image_eval_transform()``.
    """

    decode_errors: tuple[type[BaseException], ...] = (OSError,)  # PIL: unidentified and truncated files

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor] | None = None) -> None:
        self.transform = transform if transform is not None else image_eval_transform()

    def load(self, source: str | Path | bytes) -> Image.Image:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            return image.convert("RGB")  # forces the full decode, so truncation raises here

    def to_sample(self, image: Image.Image) -> dict:
        return {"image": plain_tensor(self.transform(image))}


class ImageFolderDataset(PipelineDataset):
    """Images in the ImageNet layout ``root/<split>/<class_name>/<file>``.

    Classes are the sorted sub-folder names of ``root/<split>``; a class's index is its position.
    A sample is ``{"image": transform(PIL RGB image), "label": int64 tensor, "key": str}`` where ``key`` is
    the file's path relative to ``root/<split>`` (e.g. ``"circle/circle_00003.JPEG"``).

    A file that fails to decode (truncated, not an image, deleted since the scan) is skipped: a warning
    names it, ``self.skipped[reason]`` counts it, and the next index is returned instead.

    Args:
        root: dataset folder holding one sub-folder per split.
        split: sub-folder to read, e.g. ``"train"`` or ``"val"``.
        transform: PIL image -> tensor [3, H, W]; defaults to ``image_eval_transform()``.
        max_retries: consecutive bad files tolerated before giving up with a ``RuntimeError``.
        pipeline: the ``ImagePipeline`` to read through (default: one with ``transform``).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        max_retries: int = 10,
        pipeline: ImagePipeline | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.split_dir = self.root / split
        self.classes, self.samples = list_class_files(self.split_dir, IMAGE_EXTENSIONS)
        self.pipeline = pipeline if pipeline is not None else ImagePipeline(transform)
        self._init_skipping(max_retries)

    @property
    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        return self.pipeline.transform

    def __len__(self) -> int:
        return len(self.samples)

    def _source(self, index: int) -> tuple[Path, dict]:
        return self.samples[index][0], {}

    def _key(self, index: int) -> str:
        return self.samples[index][0].relative_to(self.split_dir).as_posix()

    def _label(self, index: int) -> torch.Tensor:
        return torch.tensor(self.samples[index][1], dtype=torch.int64)
