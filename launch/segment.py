"""``unveil segment``: a first look at SAM 2 masks on an image or a video.

    unveil segment image IMAGE --point X,Y [--point X,Y --negative X,Y --box X0,Y0,X1,Y1] --checkpoint CKPT [--out OUT.png]
    unveil segment video VIDEO --point FRAME,X,Y [--point FRAME,X,Y ...] --checkpoint CKPT [--out OUT.mp4 | OUT_DIR]

CKPT is an official SAM 2.1 checkpoint (``sam2.1_hiera_tiny.pt``: ``{"model": state_dict}``), read with
``torch.load(weights_only=True)``; its size is read from the weights. ``--trunk`` instead starts from an
unveil export (``unveil export ... --format sam2``) or pretraining ``.ckpt`` of an abs-win Hiera, with the
rest of SAM 2 untrained (for smoke tests of the plumbing, not for useful masks). Nothing is downloaded.

Video points are ``FRAME,X,Y`` (positive) or with ``--negative``; each ``--object`` flag starts the next
object's points (the first object needs none). VIDEO is an mp4 or a folder of JPEG frames; OUT ending in
``.mp4`` writes a video, anything else a folder of PNG overlays.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from unveil.launch.cli import OneLineParser, UsageError

# trunk (embed dim, blocks) → SAM 2 size
_SIZES = {(96, 12): "tiny", (96, 16): "small", (112, 24): "base_plus", (144, 48): "large"}
_COLOURS = np.array([[30, 144, 255], [255, 80, 60], [60, 200, 90], [250, 200, 40], [180, 90, 230]], dtype=np.float32)


def _floats(text: str, count: int, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        raise UsageError(f"{what} takes {count} comma-separated numbers, got '{text}'")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="unveil segment", description="SAM 2 masks drawn over an image or a video")
    sub = parser.add_subparsers(dest="kind", required=True, parser_class=OneLineParser)
    for kind in ("image", "video"):
        p = sub.add_parser(kind)
        p.add_argument("source", help="image file" if kind == "image" else "mp4 file or folder of JPEG frames")
        where = "X,Y" if kind == "image" else "FRAME,X,Y"
        p.add_argument("--point", action="append", default=[], metavar=where, help="a foreground click (repeatable)")
        p.add_argument("--negative", action="append", default=[], metavar=where, help="a background click (repeatable)")
        weights = p.add_mutually_exclusive_group()
        weights.add_argument("--checkpoint", help="official SAM 2.1 checkpoint ({'model': state_dict})")
        weights.add_argument("--trunk", help="unveil export or pretraining .ckpt of an abs-win Hiera (heads untrained)")
        p.add_argument("--size", choices=sorted(set(_SIZES.values())), help="model size (read from --checkpoint)")
        p.add_argument("--out", help="output file (image: PNG; video: .mp4 or a folder)")
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        p.add_argument("--image-size", type=int, default=1024, help="model input side (SAM 2: 1024; smaller is faster, coarser)")
        if kind == "image":
            p.add_argument("--box", metavar="X0,Y0,X1,Y1", help="a box prompt")
            p.add_argument("--multimask", action="store_true", help="keep the best of three candidate masks")
        else:
            p.add_argument("--object", action="append_const", const=True, dest="objects", help=argparse.SUPPRESS)
    return parser


def size_of(state: dict) -> str:
    """The SAM 2 size of an official state dict, from its trunk."""
    weight = state.get("image_encoder.trunk.patch_embed.proj.weight")
    if weight is None:
        raise UsageError("not a SAM 2 checkpoint: no 'image_encoder.trunk.patch_embed.proj.weight'")
    blocks = {k.split(".")[3] for k in state if k.startswith("image_encoder.trunk.blocks.")}
    key = (weight.shape[0], len(blocks))
    if key not in _SIZES:
        raise UsageError(f"a SAM 2 trunk of width {key[0]} and {key[1]} blocks is none of the released sizes")
    return _SIZES[key]


def load_model(checkpoint: str | None, trunk: str | None, size: str | None, device: str, image_size: int = 1024):
    """A SAM 2 model from an official checkpoint, or with its trunk from an unveil backbone file."""
    from unveil.common.checkpoints import load_checkpoint_state
    from unveil.models.sam2 import SAM2, SAM2Config
    from unveil.models.sam2.loading import sam2_from_trunk

    if checkpoint is None and trunk is None:
        raise UsageError("give --checkpoint (an official SAM 2.1 checkpoint) or --trunk (an unveil backbone)")
    try:
        state = load_checkpoint_state(checkpoint or trunk)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        raise UsageError(str(error)) from None
    if checkpoint:
        model = SAM2(SAM2Config(trunk=size or size_of(state), image_size=image_size))
        try:
            model.load_official_state_dict(state)
        except ValueError as error:
            raise UsageError(f"'{checkpoint}': {error}") from None
    else:
        try:
            model, report = sam2_from_trunk(state, image_size=image_size)
        except ValueError as error:
            raise UsageError(f"'{trunk}': {error}") from None
        print(report.summary(), file=sys.stderr)
    return model.to(device).eval()


def overlay(image: np.ndarray, masks: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """HxWx3 uint8 image with boolean masks [N, H, W] tinted in, one colour each."""
    out = image.astype(np.float32)
    for i, mask in enumerate(masks):
        colour = _COLOURS[i % len(_COLOURS)]
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    return out.clip(0, 255).astype(np.uint8)


def segment_image(args) -> Path:
    from PIL import Image
    from unveil.models.sam2.predictor import ImagePredictor

    source = Path(args.source)
    if not source.is_file():
        raise UsageError(f"image not found: '{source}'")
    clicks = [_floats(p, 2, "--point") for p in args.point] + [_floats(p, 2, "--negative") for p in args.negative]
    labels = [1] * len(args.point) + [0] * len(args.negative)
    box = _floats(args.box, 4, "--box") if args.box else None
    if not clicks and box is None:
        raise UsageError("give at least one --point or a --box")
    model = load_model(args.checkpoint, args.trunk, args.size, args.device, args.image_size)
    image = np.array(Image.open(source).convert("RGB"))
    predictor = ImagePredictor(model)
    predictor.set_image(image)
    masks, ious, _ = predictor.predict(
        point_coords=np.array(clicks) if clicks else None,
        point_labels=np.array(labels) if clicks else None,
        box=np.array(box) if box else None,
        multimask_output=args.multimask,
    )
    best = masks[int(np.argmax(ious))] > 0
    out = Path(args.out or source.with_name(source.stem + "_sam2.png"))
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(image, best[None])).save(out)
    print(f"mask of {int(best.sum())} pixels (predicted IoU {float(ious.max()):.3f}); wrote {out}")
    return out


def _video_prompts(argv_order: list[tuple[str, str]]) -> list[list[tuple[int, float, float, int]]]:
    """Command-line order of --object / --point / --negative → per object [(frame, x, y, label)]."""
    objects: list[list] = [[]]
    for flag, value in argv_order:
        if flag == "--object":
            objects.append([])
        else:
            frame, x, y = _floats(value, 3, flag)
            objects[-1].append((int(frame), x, y, 1 if flag == "--point" else 0))
    return [o for o in objects if o]


def segment_video(args, argv: Sequence[str]) -> Path:
    from unveil.models.sam2.video import VideoPredictor

    source = Path(args.source)
    if not source.exists():
        raise UsageError(f"video not found: '{source}'")
    order = [(flag, argv[i + 1] if flag != "--object" else "") for i, flag in enumerate(argv) if flag in ("--point", "--negative", "--object")]
    objects = _video_prompts(order)
    if not objects:
        raise UsageError("give at least one --point FRAME,X,Y")
    model = load_model(args.checkpoint, args.trunk, args.size, args.device, args.image_size)
    predictor = VideoPredictor(model)
    try:
        state = predictor.init_state(str(source))
    except (FileNotFoundError, RuntimeError) as error:
        raise UsageError(str(error)) from None
    for obj_id, clicks in enumerate(objects, start=1):
        for frame in sorted({c[0] for c in clicks}):
            if not 0 <= frame < state.num_frames:
                raise UsageError(f"frame {frame} out of range: the video has {state.num_frames} frames")
            here = [c for c in clicks if c[0] == frame]
            predictor.add_new_points_or_box(state, frame, obj_id, points=[c[1:3] for c in here], labels=[c[3] for c in here])
    results: dict[int, np.ndarray] = {}
    for frame_idx, _, masks in predictor.propagate_in_video(state):
        results[frame_idx] = (masks[:, 0] > 0).cpu().numpy()
    first = min(c[0] for clicks in objects for c in clicks)
    if first > 0:
        for frame_idx, _, masks in predictor.propagate_in_video(state, start_frame_idx=first, reverse=True):
            results[frame_idx] = (masks[:, 0] > 0).cpu().numpy()
    out = Path(args.out or (source.with_suffix("").as_posix() + "_sam2.mp4"))
    _write_overlays(source, state, results, out)
    print(f"tracked {len(objects)} object(s) over {len(results)} frames; wrote {out}")
    return out


def _original_frames(source: Path, count: int):
    """A video file's frames at their own size, HxWx3 uint8, one at a time."""
    import decord

    reader = decord.VideoReader(str(source), num_threads=1)
    for i in range(count):
        frame = reader[i]
        yield frame.numpy() if isinstance(frame, torch.Tensor) else frame.asnumpy()


def _write_overlays(source: Path, state, results: dict[int, np.ndarray], out: Path) -> None:
    from PIL import Image

    frames = state.frames
    if frames.paths is not None:
        pictures = (np.array(Image.open(p).convert("RGB")) for p in frames.paths)
    else:
        pictures = _original_frames(source, state.num_frames)
    if out.suffix.lower() == ".mp4":
        import av

        out.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(out), "w") as container:
            stream = container.add_stream("libx264", rate=24)
            stream.width, stream.height = state.video_width - state.video_width % 2, state.video_height - state.video_height % 2
            stream.pix_fmt = "yuv420p"
            for i, picture in enumerate(pictures):
                frame = overlay(picture, results.get(i, np.zeros((0, *picture.shape[:2]), bool)))
                frame = frame[: stream.height, : stream.width]
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    else:
        out.mkdir(parents=True, exist_ok=True)
        for i, picture in enumerate(pictures):
            Image.fromarray(overlay(picture, results.get(i, np.zeros((0, *picture.shape[:2]), bool)))).save(out / f"{i:05d}.png")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    with torch.inference_mode():
        if args.kind == "image":
            segment_image(args)
        else:
            segment_video(args, argv)
    return 0
