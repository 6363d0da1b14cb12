"""COCO instances (boxes, labels, polygon or RLE masks) and the large-scale-jitter augmentation.

A detection sample is ``{"image": [3, H, W] float in [0, 1], "target": {...}, "key": file name}`` with
``target``: ``boxes`` [N, 4] float XYXY in pixels, ``labels`` [N] int64 in 1..num_classes (0 is
torchvision's background), ``masks`` [N, H, W] uint8, ``iscrowd`` [N], ``area`` [N] (COCO's segment
area, for AP small/medium/large) and ``image_id``. Normalisation is the detector's
(``GeneralizedRCNNTransform``), so the image stays in [0, 1]. A batch is the same dict with lists
(images differ in size at evaluation).

Crowd regions are handled as COCO does: training leaves them out of the targets (as detectron2's
mapper does); evaluation keeps them with ``iscrowd=1``, which COCO's matching treats as "ignore".
A training image with no usable annotation (none, or only crowd or empty ones) is skipped and counted
under ``no_annotations`` (detectron2 drops such images at load time); an annotation that an augmentation
empties (cropped away) is dropped, and the boxes are recomputed from the cropped masks (detectron2's
``recompute_boxes``).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2
from unveil.datasets.common import IMAGENET_DEFAULT_MEAN, PipelineDataset, plain_tensor
from unveil.datasets.datamodules import (
    LoaderOptions,
    ShardOptions,
    SkipPolicy,
    _LoadersMixin,
    _require,
    _require_path,
    _ShardsMixin,
)
from unveil.datasets.loading import CountingLoader
from unveil.datasets.shards import IMAGE_FIELDS, ShardDecoder, sample_meta
from unveil.datasets.skips import BadSample

__all__ = [
    "CocoDataModule",
    "CocoInstances",
    "annotations_to_target",
    "detection_collate",
    "lsj_transform",
]

NO_ANNOTATIONS = "no_annotations"


def lsj_transform(
    image_size: int = 1024, scale_range: tuple[float, float] = (0.1, 2.0), hflip: float = 0.5
) -> v2.Compose:
    """Large-scale jitter (ViTDet's ``coco_loader_lsj.py``): flip, resize so that the image fits
    ``image_size`` times a random factor in ``scale_range`` (``ScaleJitter``, detectron2's
    ResizeScale), a random ``image_size`` crop where larger, padding where smaller (detectron2's
    FixedSizeCrop; here the padding may fall on either side), then drop emptied instances.

    Takes and returns ``(tv_tensors.Image, {"boxes": BoundingBoxes, "masks": Mask, "labels", ...})``.
    Padding is the ImageNet mean colour, which normalisation maps to 0 (detectron2 pads with 0 after
    normalising).
    """
    fill = {tv_tensors.Image: tuple(IMAGENET_DEFAULT_MEAN), tv_tensors.Mask: 0, "others": 0}
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(hflip),
            v2.ScaleJitter((image_size, image_size), scale_range=tuple(scale_range), antialias=True),
            v2.RandomCrop(image_size, pad_if_needed=True, fill=fill),
            _RecomputeBoxes(),
            v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_instance_fields),
        ]
    )


def _instance_fields(sample) -> tuple:
    """The per-instance tensors that ``SanitizeBoundingBoxes`` must filter with the boxes (masks are
    filtered by type already)."""
    target = sample[1]
    return tuple(target[key] for key in ("labels", "iscrowd", "area") if key in target)


class _RecomputeBoxes(v2.Transform):
    """Boxes from the (cropped) masks, so a cropped shape's box is tight; an emptied mask gives a zero box,
    which ``SanitizeBoundingBoxes`` then drops."""

    def forward(self, *inputs):
        image, target = inputs if len(inputs) > 1 else inputs[0]
        masks = target["masks"]
        if masks.shape[0]:
            boxes = masks_to_boxes(masks.as_subclass(torch.Tensor).bool())
            boxes[:, 2:] += 1  # masks_to_boxes gives the last pixel's index; XYXY boxes end past it
            empty = masks.flatten(1).sum(1) == 0
            boxes[empty] = 0
            target["boxes"] = tv_tensors.BoundingBoxes(
                boxes, format="XYXY", canvas_size=tuple(masks.shape[-2:])
            )
        return image, target


def annotations_to_target(
    annotations: Sequence[dict],
    height: int,
    width: int,
    category_to_label: dict[int, int] | None,
    keep_crowd: bool,
) -> dict:
    """COCO annotations of one image → a torchvision target (tv_tensors boxes and masks).

    Labels map ``category_id`` through ``category_to_label``, or, when it is None, are the annotations'
    own ``label`` (shards store it). Boxes come from ``bbox`` (XYWH → XYXY, clipped to the image); annotations with an empty box are
    dropped; crowd ones unless ``keep_crowd``. Masks are decoded from polygons or RLE with pycocotools.
    """
    from pycocotools import mask as mask_utils

    boxes, labels, masks, crowd, area = [], [], [], [], []
    for annotation in annotations:
        is_crowd = int(annotation.get("iscrowd", 0))
        if is_crowd and not keep_crowd:
            continue
        x, y, w, h = annotation["bbox"]
        x0, y0 = max(0.0, x), max(0.0, y)
        x1, y1 = min(float(width), x + w), min(float(height), y + h)
        if x1 <= x0 or y1 <= y0:
            continue
        segmentation = annotation.get("segmentation")
        if isinstance(segmentation, list):  # polygons: one object may have several parts
            if not segmentation:
                continue
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation, dict):  # RLE, compressed (str counts) or not (list counts)
            rle = (
                mask_utils.frPyObjects(segmentation, height, width)
                if isinstance(segmentation["counts"], list)
                else segmentation
            )
        else:
            continue
        boxes.append([x0, y0, x1, y1])
        labels.append(
            category_to_label[annotation["category_id"]] if category_to_label else annotation["label"]
        )
        masks.append(mask_utils.decode(rle))
        crowd.append(is_crowd)
        area.append(float(annotation.get("area", w * h)))
    return {
        "boxes": tv_tensors.BoundingBoxes(
            torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            format="XYXY",
            canvas_size=(height, width),
        ),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": tv_tensors.Mask(
            torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, height, width, dtype=torch.uint8)
        ),
        "iscrowd": torch.tensor(crowd, dtype=torch.int64),
        "area": torch.tensor(area, dtype=torch.float32),
    }


class CocoPipeline:
    """Decode and augment one detection sample, from a path or a shard member's bytes and the image's COCO
    annotations: ``load`` gives ``(PIL image, target)`` (training images without a usable annotation raise
    ``BadSample("no_annotations")``), ``to_sample`` ``{"image", "target"}`` (``make_sample``).

    Args:
        transform: ``(tv_tensors.Image, target) → (image, target)``, e.g. :func:`lsj_transform`; None keeps
            the image as it is (evaluation: the detector resizes it).
        train: training mode: crowd annotations left out, images without usable ones skipped.
    """

    decode_errors: tuple[type[BaseException], ...] = (OSError, BadSample)

    def __init__(self, transform: Callable | None = None, train: bool = True) -> None:
        self.transform, self.train = transform, train

    def load(
        self,
        source: str | Path | bytes,
        annotations: list[dict],
        height: int,
        width: int,
        image_id: int,
        category_to_label: dict[int, int] | None = None,
        check_size: bool = True,
    ) -> tuple[Image.Image, dict]:
        """``category_to_label`` maps COCO category ids to labels (None: each annotation has its ``label``);
        ``check_size``: the image must be ``width`` x ``height`` (shards may hold resized images)."""
        target = annotations_to_target(
            annotations, height, width, category_to_label, keep_crowd=not self.train
        )
        if self.train and not (target["iscrowd"] == 0).any():
            raise BadSample(
                NO_ANNOTATIONS, f"image {image_id} has no usable (non-crowd, non-empty) annotation"
            )
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image = image.convert("RGB")
        if check_size and image.size != (width, height):
            raise BadSample(
                "decode_error", f"image is {image.size[0]}x{image.size[1]}, the JSON says {width}x{height}"
            )
        target["image_id"] = image_id
        return image, target

    def to_sample(self, decoded: tuple[Image.Image, dict]) -> dict:
        image, target = decoded
        sample = make_sample(image, target, self.transform, "")
        del sample["key"]  # the source's
        return sample


class CocoInstances(PipelineDataset):
    """A COCO instances JSON and its image folder, as detection samples (see the module docstring), read
    through a :class:`CocoPipeline`.

    Args:
        images: folder holding the images (``file_name`` is relative to it).
        annotations: the instances JSON.
        transform: ``(tv_tensors.Image, target) → (image, target)``, e.g. :func:`lsj_transform`; None
            keeps the image as it is (evaluation: the detector resizes it).
        train: training mode: crowd annotations left out, images without usable ones skipped.
        max_retries: consecutive skipped images tolerated before giving up.
    """

    def __init__(
        self,
        images: str | Path,
        annotations: str | Path,
        transform: Callable | None = None,
        train: bool = True,
        max_retries: int = 50,
    ) -> None:
        from pycocotools.coco import COCO

        self.images = Path(images)
        self.coco = _quiet_coco(COCO, annotations)
        self.ids = sorted(self.coco.imgs)
        category_ids = sorted(self.coco.cats)
        self.category_to_label = {cid: i + 1 for i, cid in enumerate(category_ids)}
        self.label_to_category = {i + 1: cid for i, cid in enumerate(category_ids)}
        self.classes = [self.coco.cats[cid]["name"] for cid in category_ids]
        self.pipeline = CocoPipeline(transform, train)
        self.transform, self.train = transform, train
        self._init_skipping(max_retries)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.ids)

    def _source(self, index: int) -> tuple[Path, dict]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        options = {
            "annotations": self.coco.imgToAnns.get(image_id, []),
            "height": info["height"],
            "width": info["width"],
            "image_id": image_id,
            "category_to_label": self.category_to_label,
        }
        return self.images / info["file_name"], options

    def _key(self, index: int) -> str:
        return self.coco.imgs[self.ids[index]]["file_name"]


def make_sample(image: Image.Image, target: dict, transform: Callable | None, key: str) -> dict:
    """PIL image + tv_tensors target → the detection sample dict of plain tensors."""
    image = tv_tensors.Image(v2.functional.pil_to_tensor(image))
    if transform is not None:
        image, target = transform(image, target)
    image = v2.functional.to_dtype(image, torch.float32, scale=True)
    target = {k: plain_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in target.items()}
    return {"image": plain_tensor(image), "target": target, "key": key}


def detection_collate(samples: list[dict]) -> dict:
    """Detection samples → ``{"image": list, "target": list, "key": list}`` (sizes may differ)."""
    return {key: [sample[key] for sample in samples] for key in ("image", "target", "key")}


def _quiet_coco(coco_class, annotations: str | Path):
    """pycocotools' COCO, without its progress prints."""
    import contextlib

    with contextlib.redirect_stdout(io.StringIO()):
        return coco_class(str(annotations))


def read_categories(annotations: str | Path) -> list[str]:
    """Category names of an instances JSON, in the order of their ids (label i+1 is names[i])."""
    document = json.loads(Path(annotations).read_text())
    return [c["name"] for c in sorted(document["categories"], key=lambda c: c["id"])]


# ------------------------------------------------------------------------------------------------- shards

_SHARD_FIELDS = ("id", "category_id", "bbox", "area", "segmentation", "iscrowd")


def coco_shard_items(root: str | Path, split: str = "train"):
    """``(category names, ShardItems)`` for ``unveil shards make coco``: one item per image of ``root/split``,
    its annotations (with their contiguous ``label``) in the item's meta, so in the shard's json entry."""
    from pycocotools.coco import COCO
    from unveil.datasets.shards import ShardItem

    coco = _quiet_coco(COCO, Path(root) / "annotations" / f"instances_{split}.json")
    category_ids = sorted(coco.cats)
    label_of = {cid: i + 1 for i, cid in enumerate(category_ids)}
    items = []
    for image_id in sorted(coco.imgs):
        info = coco.imgs[image_id]
        annotations = [
            {**{k: a[k] for k in _SHARD_FIELDS if k in a}, "label": label_of[a["category_id"]]}
            for a in coco.imgToAnns.get(image_id, [])
        ]
        meta = {
            "image_id": image_id,
            "width": info["width"],
            "height": info["height"],
            "annotations": annotations,
        }
        items.append(ShardItem(Path(root) / split / info["file_name"], 0, info["file_name"], meta))
    return [coco.cats[cid]["name"] for cid in category_ids], items


class CocoShardDecoder(ShardDecoder):
    """Shard samples of ``unveil shards make coco`` → detection samples, through the :class:`CocoPipeline` of
    :class:`CocoInstances` (same skipping of training images without usable annotations, counted as
    ``no_annotations``)."""

    fields, what = IMAGE_FIELDS, "image"

    def __init__(self, transform: Callable | None = None, train: bool = True) -> None:
        super().__init__(CocoPipeline(transform, train), num_classes=0)

    def load_options(self, sample: dict) -> dict:
        meta = sample_meta(sample)
        return {
            "annotations": meta["annotations"],
            "height": meta["height"],
            "width": meta["width"],
            "image_id": meta["image_id"],
            "check_size": False,
        }


class CocoDataModule(_ShardsMixin, _LoadersMixin, L.LightningDataModule):
    """COCO-layout detection data: ``root/<split>/`` images and ``root/annotations/instances_<split>.json``
    (COCO 2017: ``train_split: train2017``, ``val_split: val2017``; ``unveil synth coco``: train, val).

    Training: LSJ at ``image_size`` (:func:`lsj_transform`), images without usable annotations skipped
    and counted. Validation: the images as they are (the detector resizes the longest side to its
    ``image_size`` and maps its predictions back), crowd regions kept for COCO's matching.
    Batches: ``{"image": list of [3, H, W], "target": list of dicts, "key": list}``.

    Args:
        root: dataset folder.
        image_size: LSJ output side (ViTDet: 1024).
        scale_range: LSJ scale range (ViTDet: 0.1 to 2.0).
        batch_size: training images per batch per device.
        loader, skips, shard_options: as for ``ImageDataModule`` (4 loader workers by default).
        shards, val_shards: read WebDataset shards of ``unveil shards make coco`` instead of the folders
            (``root`` may then be null).
    """

    def __init__(
        self,
        root: str | None = None,
        image_size: int = 1024,
        scale_range: tuple[float, float] = (0.1, 2.0),
        hflip: float = 0.5,
        batch_size: int = 2,
        loader: LoaderOptions = LoaderOptions(num_workers=4),  # noqa: B008 - never mutated
        train_split: str = "train",
        val_split: str | None = "val",
        skips: SkipPolicy = SkipPolicy(),  # noqa: B008 - frozen dataclass
        shards: str | list[str] | None = None,
        val_shards: str | list[str] | None = None,
        shard_options: ShardOptions = ShardOptions(),  # noqa: B008 - frozen dataclass
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        hint = f" (run 'unveil synth coco --out {root}' to generate a dataset)"
        if root is None and shards is None:
            raise ValueError(f"{owner}: set root (COCO layout) or shards (unveil shards make coco)")
        if root is not None:
            _require_path(owner, "root", root, hint)
            for split, source in ((train_split, shards), (val_split, val_shards)):
                if split is not None and source is None:
                    _require_path(owner, "split", Path(root) / split, "")
                    _require_path(owner, "annotations", self._annotations(root, split), "")
        _require(
            owner, "image_size", image_size >= 32 and image_size % 32 == 0, "a multiple of 32", image_size
        )
        self.save_hyperparameters()
        self._init_loading(**self.hparams)
        self.root, self.image_size, self.scale_range, self.hflip = root, image_size, tuple(scale_range), hflip
        self.train_split, self.val_split = train_split, val_split
        self.train_set: CocoInstances | None = None
        self.val_set: CocoInstances | None = None

    default_loader = LoaderOptions(num_workers=4)
    collate_fn = staticmethod(detection_collate)
    _shard_collate = staticmethod(detection_collate)

    def _shard_decoder(self, train: bool) -> CocoShardDecoder:
        if train:
            return CocoShardDecoder(lsj_transform(self.image_size, self.scale_range, self.hflip), train=True)
        return CocoShardDecoder(None, train=False)

    @staticmethod
    def _annotations(root: str | Path, split: str) -> Path:
        return Path(root) / "annotations" / f"instances_{split}.json"

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and self.shards is None:
            self.train_set = CocoInstances(
                Path(self.root) / self.train_split,
                self._annotations(self.root, self.train_split),
                lsj_transform(self.image_size, self.scale_range, self.hflip),
                train=True,
            )
            self._limit_skips(self.train_set)
        if self.val_set is None and self.val_split is not None and self.val_shards is None and self.root:
            self.val_set = CocoInstances(
                Path(self.root) / self.val_split,
                self._annotations(self.root, self.val_split),
                None,
                train=False,
            )
            self._limit_skips(self.val_set)

    def val_dataloader(self):
        """Validation images split among DDP ranks without the padding repeats of a ``DistributedSampler``
        (Lightning keeps a sampler that is one), so that COCO AP, gathered over the ranks, counts each image
        once."""
        if self.val_shards is not None or self.val_split is None:
            return super().val_dataloader()
        self.setup()
        rank, world_size = self._rank_and_world_size()
        if world_size == 1:
            return self._loader(self.val_set, train=False)
        from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

        return CountingLoader(
            self.val_set,
            batch_size=self.val_batch_size or self.batch_size,
            sampler=UnrepeatedDistributedSampler(
                self.val_set, num_replicas=world_size, rank=rank, shuffle=False
            ),
            num_workers=self.num_workers,
            collate_fn=detection_collate,
            persistent_workers=self.num_workers > 0,
        )

    @property
    def num_classes(self) -> int:
        if self.shards is not None:
            return self._shard_num_classes()
        return len(read_categories(self._annotations(self.root, self.train_split)))
