"""Small synthetic datasets written in real formats, for tests, smoke runs and demos.

Every sample shows coloured shapes of one kind (the class: circle, square, triangle, ...) over a textured
gradient background, so a model has something to learn; an image shows one large shaded shape (see
``render_image``), a video one or two moving ones. Images are JPEG files in the ImageNet layout;
videos are MP4 clips in the Kinetics layout, with CSV manifests, in which the shapes move in straight lines,
bounce off the borders, spin and pulse. Audio-video clips (MP4 with an AAC track, plus wav/flac copies and
Kinetics/AudioSet-style manifests; ``synth_av.py``) sound like their picture: each shape plays a tone whose pitch is set by
its colour and whose onsets are its appearance and its bounces, with a timbre per class.

Output is deterministic for a given ``seed``: each sample draws from its own random stream, seeded by
``(seed, split, class, index)``, so a sample does not depend on how many others are written.

Command line (the ``unveil synth`` command wraps the same functions)::

    python -m unveil.datasets.synth images --out data/synth-images
    python -m unveil.datasets.synth videos --out data/synth-videos
    python -m unveil.datasets.synth audiovideo --out data/synth-av
    python -m unveil.datasets.synth audio --out data/synth-audio
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

SHAPE_KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "hexagon", "ring", "arrow")
"""The shape kinds a dataset draws its classes from, first to last (see ``class_names``)."""

_SPLIT_CODES = {"train": 0, "val": 1}
_SUPERSAMPLE = 2  # shape masks are drawn at 2x and box-filtered down, which anti-aliases their edges


def class_names(num_classes: int) -> list[str]:
    """Class names (folder names) for ``num_classes``: the first ``num_classes`` shape kinds, sorted.

    The class index (label) of a name is its position in this list, which is also the index that sorting
    the folders gives (``ImageFolderDataset``, torchvision's ``ImageFolder``).
    """
    if not 1 <= num_classes <= len(SHAPE_KINDS):
        raise ValueError(f"num_classes must be in [1, {len(SHAPE_KINDS)}], got {num_classes}")
    return sorted(SHAPE_KINDS[:num_classes])


# ---------------------------------------------------------------------------------------------- drawing


def _regular_polygon(sides: int, radius: float, angle: float) -> np.ndarray:
    """Vertices [sides, 2] of a regular polygon around the origin."""
    theta = angle + np.arange(sides) * (2 * math.pi / sides)
    return radius * np.stack([np.cos(theta), np.sin(theta)], axis=1)


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    cos, sin = math.cos(angle), math.sin(angle)
    return points @ np.array([[cos, sin], [-sin, cos]])


def _shape_outline(kind: str, radius: float, angle: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Outer polygon [N, 2] of a shape centred at the origin, and the polygon of its hole (or None)."""
    if kind == "circle":
        return _regular_polygon(64, radius, 0.0), None
    if kind == "ring":
        return _regular_polygon(64, radius, 0.0), _regular_polygon(64, 0.55 * radius, 0.0)
    if kind == "square":
        return _regular_polygon(4, radius, angle + math.pi / 4), None
    if kind == "triangle":
        return _regular_polygon(3, radius, angle - math.pi / 2), None
    if kind == "hexagon":
        return _regular_polygon(6, radius, angle), None
    if kind == "star":
        outer = _regular_polygon(5, radius, angle - math.pi / 2)
        inner = _regular_polygon(5, 0.42 * radius, angle - math.pi / 2 + math.pi / 5)
        return np.stack([outer, inner], axis=1).reshape(10, 2), None
    if kind == "cross":
        arm = 0.33 * radius
        points = np.array(
            [
                (-arm, -radius),
                (arm, -radius),
                (arm, -arm),
                (radius, -arm),
                (radius, arm),
                (arm, arm),
                (arm, radius),
                (-arm, radius),
                (-arm, arm),
                (-radius, arm),
                (-radius, -arm),
                (-arm, -arm),
            ]
        )
        return _rotate(points, angle), None
    if kind == "arrow":
        points = np.array(
            [
                (-radius, -0.25 * radius),
                (0.1 * radius, -0.25 * radius),
                (0.1 * radius, -0.65 * radius),
                (radius, 0.0),
                (0.1 * radius, 0.65 * radius),
                (0.1 * radius, 0.25 * radius),
                (-radius, 0.25 * radius),
            ]
        )
        return _rotate(points, angle), None
    raise ValueError(f"unknown shape kind {kind!r}; expected one of {SHAPE_KINDS}")


def _draw_shape(
    canvas: Image.Image,
    kind: str,
    center: tuple[float, float],
    radius: float,
    angle: float,
    color: tuple[int, int, int] | Image.Image,
) -> None:
    """Paint one filled shape onto the RGB ``canvas``, in place, with anti-aliased edges; ``color`` is an RGB
    colour or an RGB image of the canvas's size (the fill).

    The shape's mask is drawn at ``_SUPERSAMPLE`` times the resolution and box-filtered down, which gives
    soft edges and lets sub-pixel motion show.
    """
    scale = _SUPERSAMPLE
    outline, hole = _shape_outline(kind, radius * scale, angle)
    mask = Image.new("L", (canvas.width * scale, canvas.height * scale), 0)
    draw = ImageDraw.Draw(mask)
    offset = np.asarray(center) * scale
    draw.polygon([tuple(p) for p in (outline + offset).tolist()], fill=255)
    if hole is not None:
        draw.polygon([tuple(p) for p in (hole + offset).tolist()], fill=0)
    canvas.paste(color, mask=mask.reduce(scale))  # a colour, or an image of the canvas's size


def _random_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A muted two-colour gradient with a sinusoidal texture and light noise: uint8 [size, size, 3]."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(coords, coords, indexing="ij")
    direction = rng.uniform(0, 2 * math.pi)
    ramp = (np.cos(direction) * (x - 0.5) + np.sin(direction) * (y - 0.5)) / math.sqrt(0.5) + 0.5  # ~[0, 1]
    start, end = rng.uniform(40, 200, size=(2, 3)).astype(np.float32)
    image = start + ramp[..., None] * (end - start)
    stripe_angle, frequency, phase = rng.uniform(0, math.pi), rng.uniform(3, 12), rng.uniform(0, 2 * math.pi)
    stripes = np.sin(2 * math.pi * frequency * (np.cos(stripe_angle) * x + np.sin(stripe_angle) * y) + phase)
    image += rng.uniform(8, 24) * stripes[..., None]
    image += 4 * rng.standard_normal(size=image.shape, dtype=np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def _random_color(rng: np.random.Generator) -> tuple[int, int, int]:
    """A saturated colour, which stands out from the muted backgrounds."""
    channels = rng.permutation([rng.uniform(200, 255), rng.uniform(0, 60), rng.uniform(0, 255)])
    return tuple(int(c) for c in channels)  # type: ignore[return-value]


def _shaded_fill(rng: np.random.Generator, size: int, color: tuple[int, int, int]) -> Image.Image:
    """An RGB canvas of ``color`` lit by a linear ramp in a random direction (about +-40 levels across it)."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    y, x = np.meshgrid(coords, coords, indexing="ij")
    direction = rng.uniform(0, 2 * math.pi)
    ramp = (np.cos(direction) * x + np.sin(direction) * y) * rng.uniform(50, 90)  # [size, size], ~+-40
    fill = np.asarray(color, dtype=np.float32) + ramp[..., None]
    return Image.fromarray(np.clip(fill, 0, 255).astype(np.uint8))


def render_image(kind: str, rng: np.random.Generator, size: int) -> Image.Image:
    """One RGB image of one large shape of ``kind``, drawn from ``rng``.

    The shape is large (radius 25-38% of the side) and lies near the centre, so that any view of the image,
    and the visible units of a masked autoencoder's input, show part of its outline: completing the hidden
    part takes knowing the shape. Its fill is a saturated colour with a linear shading in a random direction,
    so that a patch inside it has structure to predict (MAE's per-patch normalised targets of a flat patch
    would be amplified JPEG noise). Colour, shading, size, position and rotation are random and the same for
    every class: only the outline tells the class.
    """
    canvas = Image.fromarray(_random_background(rng, size))
    radius = rng.uniform(0.25, 0.38) * size
    center = size / 2 + rng.uniform(-0.08, 0.08, size=2) * size  # inside the 87.5% centre crop of evaluation
    angle, color = rng.uniform(0, 2 * math.pi), _random_color(rng)
    _draw_shape(canvas, kind, tuple(center), radius, angle, _shaded_fill(rng, size, color))
    return canvas


def render_video(kind: str, rng: np.random.Generator, size: int, num_frames: int) -> Iterator[np.ndarray]:
    """Frames (uint8 [size, size, 3]) of 1 or 2 shapes of ``kind`` moving over a still background.

    Each shape moves in a straight line at constant speed and bounces off the borders, turns at a constant
    rate, and its size pulses slowly.
    """
    background = Image.fromarray(_random_background(rng, size))
    shapes = []
    for _ in range(int(rng.integers(1, 3))):
        radius = rng.uniform(0.12, 0.22) * size
        speed, heading = rng.uniform(0.01, 0.03) * size, rng.uniform(0, 2 * math.pi)
        shapes.append(
            {
                "radius": radius,
                "position": rng.uniform(radius * 1.2, size - radius * 1.2, size=2),
                "velocity": speed * np.array([math.cos(heading), math.sin(heading)]),
                "angle": rng.uniform(0, 2 * math.pi),
                "spin": rng.uniform(-0.08, 0.08),  # radians per frame
                "pulse": (rng.uniform(0.0, 0.15), rng.uniform(0.02, 0.1), rng.uniform(0, 2 * math.pi)),
                "color": _random_color(rng),
            }
        )
    for frame_index in range(num_frames):
        canvas = background.copy()
        for shape in shapes:
            amplitude, frequency, phase = shape["pulse"]
            radius = shape["radius"] * (1 + amplitude * math.sin(frequency * frame_index + phase))
            _draw_shape(canvas, kind, tuple(shape["position"]), radius, shape["angle"], shape["color"])
            # Advance, reflecting off the borders (the bounce keeps the shape's nominal extent inside).
            position, velocity = shape["position"] + shape["velocity"], shape["velocity"]
            low, high = shape["radius"], size - shape["radius"]
            for axis in range(2):
                if position[axis] < low:
                    position[axis], velocity[axis] = 2 * low - position[axis], abs(velocity[axis])
                elif position[axis] > high:
                    position[axis], velocity[axis] = 2 * high - position[axis], -abs(velocity[axis])
            shape["position"] = position
            shape["angle"] += shape["spin"]
        yield np.asarray(canvas)


# ---------------------------------------------------------------------------------------------- writers


def _sample_rng(seed: int, split: str, class_index: int, item_index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_CODES[split], class_index, item_index])


def _splits(train_per_class: int, val_per_class: int) -> list[tuple[str, int]]:
    if train_per_class < 1 or val_per_class < 0:
        raise ValueError(
            f"need train_per_class >= 1 and val_per_class >= 0, got {train_per_class}, {val_per_class}"
        )
    return [
        (split, count) for split, count in (("train", train_per_class), ("val", val_per_class)) if count > 0
    ]


def make_image_folder(
    out: str | Path,
    num_classes: int = 8,
    train_per_class: int = 96,
    val_per_class: int = 32,
    size: int = 256,
    seed: int = 0,
    quality: int = 90,
    progress: bool = True,
) -> Path:
    """Write a shapes dataset of JPEG files in the ImageNet layout and return ``out``.

    Layout: ``out/{train,val}/<class_name>/<class_name>_<index>.JPEG`` where the class names are
    ``class_names(num_classes)`` (for 4: circle, square, star, triangle; sorted, as the folder order gives
    the class index). Images are ``size`` x ``size`` RGB. Existing files with the same names are overwritten.
    The same arguments write byte-identical files.
    """
    out = Path(out)
    names = class_names(num_classes)
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    for split, per_class in _splits(train_per_class, val_per_class):
        with tqdm(total=num_classes * per_class, desc=f"synth images {split}", disable=not progress) as bar:
            for class_index, name in enumerate(names):
                folder = out / split / name
                folder.mkdir(parents=True, exist_ok=True)
                for item in range(per_class):
                    image = render_image(name, _sample_rng(seed, split, class_index, item), size)
                    image.save(folder / f"{name}_{item:05d}.JPEG", format="JPEG", quality=quality)
                    bar.update()
    return out


def video_codec() -> str:
    """The encoder used for MP4 clips: ``libx264`` when this PyAV build has it, else ``mpeg4``."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_mp4(path: str | Path, frames: Iterator[np.ndarray] | list[np.ndarray], fps: int) -> None:
    """Encode RGB uint8 frames [H, W, 3] (H, W even) as an MP4 (``video_codec()``, yuv420p)."""
    codec = video_codec()
    with av.open(str(path), mode="w") as container:
        stream = None
        for array in frames:
            if stream is None:
                stream = container.add_stream(codec, rate=fps)
                stream.height, stream.width = array.shape[:2]
                stream.pix_fmt = "yuv420p"
                # Quality high enough that the shapes' edges survive; one thread keeps bytes reproducible.
                stream.options = (
                    {"crf": "18", "preset": "veryfast"} if codec == "libx264" else {"qscale": "3"}
                )
                stream.codec_context.thread_count = 1
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        if stream is None:
            raise ValueError("write_mp4 needs at least one frame")
        for packet in stream.encode():
            container.mux(packet)


def make_video_folder(
    out: str | Path,
    num_classes: int = 4,
    train_per_class: int = 8,
    val_per_class: int = 2,
    num_frames: int = 64,
    fps: int = 16,
    size: int = 128,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write a moving-shapes dataset of MP4 clips in the Kinetics layout and return ``out``.

    Writes:

    - ``out/{train,val}/<class_name>/<class_name>_<index>.mp4``: ``num_frames`` frames of ``size`` x
      ``size`` (a multiple of 32) at ``fps``, encoded by ``video_codec()`` in yuv420p;
    - ``out/train.csv`` and ``out/val.csv``: Kinetics-style manifests, one header-less ``path,label`` line
      per clip, where ``path`` is relative to the folder holding the CSV (here ``out``);
    - ``out/classes.txt``: the class names, one per line, in label order.

    The same arguments give identical decoded frames.
    """
    out = Path(out)
    names = class_names(num_classes)
    if size < 32 or size % 32:
        # decord 0.6 mis-decodes a few small frame widths (16, 24, 48, 72: "The size must exactly match");
        # multiples of 32 are safe, and even as yuv420p needs.
        raise ValueError(f"size must be a multiple of 32 (decord-safe), got {size}")
    if num_frames < 1 or fps < 1:
        raise ValueError(f"num_frames and fps must be >= 1, got {num_frames}, {fps}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("".join(f"{name}\n" for name in names))
    for split, per_class in _splits(train_per_class, val_per_class):
        lines = []
        with tqdm(total=num_classes * per_class, desc=f"synth videos {split}", disable=not progress) as bar:
            for class_index, name in enumerate(names):
                folder = out / split / name
                folder.mkdir(parents=True, exist_ok=True)
                for item in range(per_class):
                    path = folder / f"{name}_{item:05d}.mp4"
                    rng = _sample_rng(seed, split, class_index, item)
                    write_mp4(path, render_video(name, rng, size, num_frames), fps)
                    lines.append(f"{path.relative_to(out).as_posix()},{class_index}\n")
                    bar.update()
        (out / f"{split}.csv").write_text("".join(lines))
    return out


# The audio and audio-video generators live in unveil.datasets.synth_av; their names resolve here too.
_AUDIO_NAMES = frozenset(
    [
        "AUDIO_SAMPLE_RATE",
        "audio_codec",
        "class_mid",
        "color_pitch",
        "make_audio_folder",
        "make_audio_video_folder",
        "render_audio_video",
        "render_scene_frames",
        "simulate_scene",
        "synthesize_scene_audio",
        "write_audio",
        "write_av",
    ]
)


def __getattr__(name: str):
    if name in _AUDIO_NAMES:
        from unveil.datasets import synth_av

        return getattr(synth_av, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> None:
    """``python -m unveil.datasets.synth {images,videos,audiovideo,audio} --out DIR [...]``."""
    from unveil.datasets.synth_av import AUDIO_SAMPLE_RATE, make_audio_folder, make_audio_video_folder

    parser = argparse.ArgumentParser(
        prog="python -m unveil.datasets.synth", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="kind", required=True)
    for kind, defaults in (("images", (64, 8, 256)), ("videos", (8, 2, 128))):
        command = commands.add_parser(kind)
        command.add_argument("--out", required=True)
        command.add_argument("--num-classes", type=int, default=4)
        command.add_argument("--train-per-class", type=int, default=defaults[0])
        command.add_argument("--val-per-class", type=int, default=defaults[1])
        command.add_argument("--size", type=int, default=defaults[2])
        command.add_argument("--seed", type=int, default=0)
        if kind == "videos":
            command.add_argument("--num-frames", type=int, default=64)
            command.add_argument("--fps", type=int, default=16)
    for kind, defaults in (("audiovideo", (8, 2)), ("audio", (16, 4))):
        command = commands.add_parser(kind)
        command.add_argument("--out", required=True)
        command.add_argument("--num-classes", type=int, default=4)
        command.add_argument("--train-per-class", type=int, default=defaults[0])
        command.add_argument("--val-per-class", type=int, default=defaults[1])
        command.add_argument("--duration", type=float, default=4.0)
        command.add_argument("--sample-rate", type=int, default=AUDIO_SAMPLE_RATE)
        command.add_argument("--audio-format", choices=("wav", "flac"), default="wav")
        command.add_argument("--seed", type=int, default=0)
        if kind == "audiovideo":
            command.add_argument("--fps", type=int, default=8)
            command.add_argument("--size", type=int, default=64)
    args = vars(parser.parse_args(argv))
    maker = {
        "images": make_image_folder,
        "videos": make_video_folder,
        "audiovideo": make_audio_video_folder,
        "audio": make_audio_folder,
    }[args.pop("kind")]
    print(maker(**args))


if __name__ == "__main__":
    main()
