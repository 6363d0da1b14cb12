"""A small synthetic detection dataset in the COCO instances format, for tests, smoke runs and demos.

Each image shows several shapes (the 8 kinds of :mod:`unveil.datasets.synth`, one category each) on a
textured background, some overlapping. Every shape is one annotation with its box and its mask: a
polygon when the whole shape is visible and has no hole, else the visible pixels as compressed RLE
(a later shape covers part of it, or it is a ring), so readers meet both COCO mask encodings.

Layout (what ``pycocotools`` and torchvision's ``CocoDetection`` read)::

    DIR/annotations/instances_train.json   DIR/train/000000.jpg ...
    DIR/annotations/instances_val.json     DIR/val/000000.jpg ...

Deterministic for a given ``seed``: each image draws from its own random stream ``(seed, split, index)``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm
from unveil.datasets.synth import SHAPE_KINDS, _draw_shape, _random_background, _random_color, _shape_outline

__all__ = ["make_coco_folder"]

_SPLIT_CODES = {"train": 0, "val": 1}


def _polygon_mask(points: np.ndarray, hole: np.ndarray | None, size: int) -> np.ndarray:
    """bool [size, size] of a polygon (minus its hole), rasterised at pixel resolution."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    draw.polygon([tuple(p) for p in points.tolist()], fill=1)
    if hole is not None:
        draw.polygon([tuple(p) for p in hole.tolist()], fill=0)
    return np.asarray(canvas, dtype=bool)


def _render(rng: np.random.Generator, size: int, kinds: list[str], objects: tuple[int, int]):
    """One image and its objects: (PIL image, [(category index, visible mask, polygon or None)])."""
    from pycocotools import mask as mask_utils  # noqa: F401  (imported by the caller too; fail early)

    canvas = Image.fromarray(_random_background(rng, size))
    shapes = []
    for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
        category = int(rng.integers(len(kinds)))
        radius = rng.uniform(0.08, 0.2) * size
        center = rng.uniform(radius, size - radius, size=2)
        angle = rng.uniform(0, 2 * math.pi)
        _draw_shape(canvas, kinds[category], tuple(center), radius, angle, _random_color(rng))
        outline, hole = _shape_outline(kinds[category], radius, angle)
        outline, hole = outline + center, None if hole is None else hole + center
        shapes.append((category, _polygon_mask(outline, hole, size), outline, hole))
    # visible part of each shape: what later (upper) shapes leave of it
    covered = np.zeros((size, size), dtype=bool)
    result = []
    for category, mask, outline, hole in reversed(shapes):
        visible = mask & ~covered
        covered |= mask
        polygon = outline if hole is None and visible.sum() == mask.sum() else None
        result.append((category, visible, polygon))
    return canvas, result[::-1]


def make_coco_folder(
    out: str | Path,
    num_classes: int = 8,
    train_images: int = 200,
    val_images: int = 40,
    size: int = 256,
    min_objects: int = 2,
    max_objects: int = 5,
    seed: int = 0,
) -> Path:
    """Write a synthetic COCO instances dataset (shapes with boxes and polygon/RLE masks) to ``out``.

    Args:
        out: output folder (``annotations/``, ``train/``, ``val/`` are created in it).
        num_classes: categories, the first ``num_classes`` shape kinds (ids 1..num_classes).
        train_images, val_images: images per split.
        size: image side in pixels.
        min_objects, max_objects: shapes per image (uniform).
        seed: random seed.

    Returns:
        ``out`` as a Path.
    """
    from pycocotools import mask as mask_utils

    if not 1 <= num_classes <= len(SHAPE_KINDS):
        raise ValueError(f"num_classes must be in [1, {len(SHAPE_KINDS)}], got {num_classes}")
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    if size < 32:
        raise ValueError(f"size must be at least 32, got {size}")
    out = Path(out)
    kinds = list(SHAPE_KINDS[:num_classes])
    categories = [{"id": i + 1, "name": kind, "supercategory": "shape"} for i, kind in enumerate(kinds)]
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train_images), ("val", val_images)):
        (out / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in tqdm(range(count), desc=f"synth coco {split}", leave=False):
            rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
            canvas, shapes = _render(rng, size, kinds, (min_objects, max_objects))
            file_name = f"{index:06d}.jpg"
            canvas.save(out / split / file_name, quality=92)
            image_id = index + 1
            images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
            for category, visible, polygon in shapes:
                area = int(visible.sum())
                if area < 4:  # hidden under later shapes
                    continue
                ys, xs = np.nonzero(visible)
                x0, y0 = int(xs.min()), int(ys.min())
                box = [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0]
                if polygon is not None:
                    segmentation = [np.round(polygon, 2).reshape(-1).tolist()]
                else:
                    rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
                    segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": category + 1,
                        "bbox": box,
                        "area": area,
                        "segmentation": segmentation,
                        "iscrowd": 0,
                    }
                )
        document = {
            "info": {"description": f"unveil synthetic shapes ({split}), seed {seed}"},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(document))
    return out
