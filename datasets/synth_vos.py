"""A small synthetic video object segmentation dataset in the DAVIS 2017 layout, for tests and smoke runs.

Each video shows 2–3 shapes (the kinds of :mod:`unveil.datasets.synth`) moving over a textured
background, later shapes drawn over earlier ones, so objects overlap and occlude each other. The first
object of every video swings out of the frame and comes back (it is absent from some middle frames),
as objects do in MOSE and SA-V; all objects are visible in the first frame. Annotations are what is
visible of each object.

Layout (what davis2017-evaluation and SAM 2's ``PNGRawDataset`` read)::

    DIR/JPEGImages/480p/<video>/00000.jpg ...
    DIR/Annotations/480p/<video>/00000.png ...   palette PNG, pixel value = object id (0 background)
    DIR/ImageSets/2017/train.txt, val.txt        one video name per line

The folder is called ``480p`` as in DAVIS whatever ``size`` is. Deterministic for a given ``seed``: each
video draws from its own random stream ``(seed, split, index)``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from unveil.datasets.synth import SHAPE_KINDS, _draw_shape, _random_background, _random_color, _shape_outline

__all__ = ["davis_palette", "make_vos_folder"]

_SPLIT_CODES = {"train": 0, "val": 1}


def davis_palette() -> list[int]:
    """The 256-colour palette of DAVIS / PASCAL VOC annotations (id 1 dark red, 2 dark green, …), flat RGB."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        bits = index
        for shift in range(7, -1, -1):  # the id's bits, spread over the high bits of the three channels
            red |= (bits & 1) << shift
            green |= ((bits >> 1) & 1) << shift
            blue |= ((bits >> 2) & 1) << shift
            bits >>= 3
        palette += [red, green, blue]
    return palette


def _shape_mask(kind: str, center: tuple[float, float], radius: float, angle: float, size: int) -> np.ndarray:
    """bool [size, size] of a shape (minus its hole), the pixels ``_draw_shape`` paints."""
    outline, hole = _shape_outline(kind, radius, angle)
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    draw.polygon([tuple(p) for p in (outline + center).tolist()], fill=1)
    if hole is not None:
        draw.polygon([tuple(p) for p in (hole + center).tolist()], fill=0)
    return np.asarray(canvas, dtype=bool)


def _trajectories(rng: np.random.Generator, objects: int, frames: int, size: int) -> list[dict]:
    """Per object: kind, colour, radius, spin, and its centre in every frame."""
    result = []
    times = np.arange(frames, dtype=np.float64)
    for index in range(objects):
        radius = rng.uniform(0.12, 0.2) * size
        start = rng.uniform(0.3, 0.7, size=2) * size
        if index == 0:
            # swings out past an edge and back: the centre goes ``radius`` beyond the edge mid-video
            axis = int(rng.integers(2))
            period = max(frames - 1, 2)
            amplitude = size / 2 + 2 * radius
            offset = np.zeros((frames, 2))
            offset[:, axis] = amplitude * np.sin(np.pi * times / period) * rng.choice([-1.0, 1.0])
            centers = np.array([size / 2, size / 2]) + offset
            centers[:, 1 - axis] += start[1 - axis] - size / 2
        else:
            velocity = rng.uniform(-0.04, 0.04, size=2) * size
            wobble = (
                rng.uniform(0.02, 0.06)
                * size
                * np.sin(times[:, None] * rng.uniform(0.3, 0.8) + rng.uniform(0, 6))
            )
            centers = start + velocity * times[:, None] + wobble
            centers = np.clip(centers, radius * 0.5, size - radius * 0.5)  # these stay (mostly) in view
        result.append(
            {
                "kind": SHAPE_KINDS[int(rng.integers(len(SHAPE_KINDS)))],
                "color": _random_color(rng),
                "radius": radius,
                "angle": rng.uniform(0, 2 * math.pi),
                "spin": rng.uniform(-0.15, 0.15),
                "centers": centers,
            }
        )
    return result


def _render_video(rng: np.random.Generator, frames: int, size: int, objects: int):
    """Frames (PIL RGB) and label maps (uint8 [size, size], 0 background, object id k+1) of one video."""
    background = _random_background(rng, size)
    tracks = _trajectories(rng, objects, frames, size)
    images, labels = [], []
    for t in range(frames):
        canvas = Image.fromarray(background.copy())
        label = np.zeros((size, size), np.uint8)
        # object 1 (the one that leaves the frame) is drawn last, so that it starts in full view; the
        # others are drawn in id order and occlude each other
        order = [*range(2, len(tracks) + 1), 1]
        for object_id in order:
            track = tracks[object_id - 1]
            center = tuple(track["centers"][t])
            angle = track["angle"] + track["spin"] * t
            _draw_shape(canvas, track["kind"], center, track["radius"], angle, track["color"])
            label[_shape_mask(track["kind"], center, track["radius"], angle, size)] = object_id
        images.append(canvas)
        labels.append(label)
    return images, labels


def make_vos_folder(
    out: str | Path,
    train_videos: int = 8,
    val_videos: int = 4,
    frames: int = 12,
    size: int = 64,
    min_objects: int = 2,
    max_objects: int = 3,
    seed: int = 0,
) -> Path:
    """Write a synthetic video object segmentation dataset (DAVIS 2017 layout) to ``out``.

    Args:
        out: output folder (``JPEGImages/``, ``Annotations/``, ``ImageSets/`` are created in it).
        train_videos, val_videos: videos per split.
        frames: frames per video (at least 8, the training clip length).
        size: frame side in pixels.
        min_objects, max_objects: objects per video (uniform), at most 255.
        seed: random seed.

    Returns:
        ``out`` as a Path.
    """
    if frames < 8:
        raise ValueError(f"frames must be at least 8 (SAM 2's training clip), got {frames}")
    if not 1 <= min_objects <= max_objects <= 255:
        raise ValueError(f"need 1 <= min_objects <= max_objects <= 255, got {min_objects}, {max_objects}")
    if size < 32:
        raise ValueError(f"size must be at least 32, got {size}")
    out = Path(out)
    palette = davis_palette()
    (out / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train_videos), ("val", val_videos)):
        names = []
        for index in range(count):
            rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
            name = f"{split}_{index:04d}"
            objects = int(rng.integers(min_objects, max_objects + 1))
            images, labels = _render_video(rng, frames, size, objects)
            image_dir = out / "JPEGImages" / "480p" / name
            mask_dir = out / "Annotations" / "480p" / name
            image_dir.mkdir(parents=True, exist_ok=True)
            mask_dir.mkdir(parents=True, exist_ok=True)
            for t, (image, label) in enumerate(zip(images, labels)):
                image.save(image_dir / f"{t:05d}.jpg", quality=92)
                annotation = Image.fromarray(label)
                annotation.putpalette(palette)  # makes it a palette ("P") image with the same indices
                annotation.save(mask_dir / f"{t:05d}.png")
            names.append(name)
        (out / "ImageSets" / "2017" / f"{split}.txt").write_text("".join(f"{name}\n" for name in names))
    return out
