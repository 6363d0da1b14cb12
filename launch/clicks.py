"""``unveil clicks``: mIoU of a SAM 2 checkpoint after 1 and 5 simulated clicks on single images.

    unveil clicks runs/quickstart_sam2/version_0/checkpoints/last.ckpt --data data/vos_shapes
    unveil clicks last.ckpt --data /datasets/SA-1B/test --layout sa1b --objects 10 --images 500
    unveil clicks sam2.1_hiera_tiny.pt --size tiny --data /datasets/SA-1B/test --layout sa1b

CKPT is a ``SAM2FineTune`` checkpoint (``unveil fit`` with a SAM 2 recipe; its size, input size and trunk
arguments are read from it), or an official SAM 2 / 2.1 checkpoint with ``--size`` (and ``--image-size``,
default 1024). Images, at their own size, go through :class:`unveil.models.sam2.ImagePredictor`; the clicks
follow :mod:`unveil.finetune.click_eval` (first click at the object's interior-most pixel, each next one
in the deepest error region, the previous low-res logits fed back). ``--layout vos`` takes the first
annotated frame of each video of a DAVIS/MOSE folder (``unveil synth vos`` writes one), ``--layout sa1b``
the images of an SA-1B folder (jpg + json; unreadable ones and those without a usable mask are left out).
Prints ``miou@1`` and ``miou@5`` (``--clicks``) over all objects; ``--json`` also writes every mIoU@k.
Mistakes stop the command with one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from unveil.launch.cli import OneLineParser, UsageError

__all__ = ["build_parser", "main", "run_clicks"]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="unveil clicks", description="mIoU of SAM 2 after simulated clicks on single images."
    )
    parser.add_argument(
        "checkpoint", help="a SAM2FineTune .ckpt, or an official SAM 2 checkpoint with --size"
    )
    parser.add_argument("--data", required=True, help="a DAVIS/MOSE-layout folder, or an SA-1B folder")
    parser.add_argument("--layout", choices=("vos", "sa1b"), default="vos", help="the folder's layout")
    parser.add_argument("--split", default="val", help="image set of a vos folder (default val)")
    parser.add_argument("--images", type=int, default=None, help="the first this many images only")
    parser.add_argument("--objects", type=int, default=3, help="sa1b: masks per image, the first ones")
    parser.add_argument("--clicks", type=int, default=5, help="clicks per object (default 5)")
    parser.add_argument("--size", default=None, help="official checkpoint: tiny, small, base_plus or large")
    parser.add_argument("--image-size", type=int, default=1024, help="official checkpoint: input side")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--json", default=None, help="also write the result to this JSON file")
    return parser


def _load_model(args: argparse.Namespace):
    from unveil.common.checkpoints import read_checkpoint
    from unveil.finetune.sam2_train import build_sam2

    path = Path(args.checkpoint)
    try:
        checkpoint, _ = read_checkpoint(path)
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(str(error).splitlines()[0]) from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if hparams is not None and "size" in hparams:
        size, image_size, trunk_args = hparams["size"], hparams["image_size"], hparams.get("trunk_args")
    elif args.size is None:
        raise UsageError(f"'{path}' is not a SAM2FineTune checkpoint; give the SAM 2 size with --size")
    else:
        size, image_size, trunk_args = args.size, args.image_size, None
    del checkpoint
    try:
        model, origin = build_sam2(size, image_size, trunk_args, init_checkpoint=str(path))
    except (ValueError, KeyError) as error:
        raise UsageError(str(error).splitlines()[0]) from None
    return model, origin


def _images(args: argparse.Namespace, stats: dict):
    """(HxWx3 uint8 image, bool [O, H, W] masks) pairs at the images' own size; ``stats["left_out"]`` counts
    the images that could not be read or have no usable mask."""
    from unveil.datasets.sa1b import SA1BFolder
    from unveil.datasets.sam2_data import VOSFirstFrames

    keep = lambda frames, masks: (frames, masks)  # uint8 frames, no resize
    try:
        if args.layout == "vos":
            dataset = VOSFirstFrames(args.data, split=args.split, max_videos=args.images, transform=keep)
        else:
            dataset = SA1BFolder(args.data, max_objects=args.objects, train=False, transform=keep)
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(str(error).splitlines()[0]) from None
    count = len(dataset) if args.images is None else min(args.images, len(dataset))
    if count == 0:
        raise UsageError(f"no image in '{args.data}' ({args.layout} layout)")
    seen = set()
    stats["left_out"] = 0
    for index in range(count):
        sample = dataset[index]  # an unreadable image is replaced by the next one: each is scored once
        if sample["key"] in seen:
            stats["left_out"] += 1
            continue
        seen.add(sample["key"])
        yield sample["frames"][0].permute(1, 2, 0).numpy(), sample["masks"][0].numpy()


def run_clicks(args: argparse.Namespace) -> dict:
    import torch
    from unveil.finetune.click_eval import evaluate_clicks
    from unveil.models.sam2 import ImagePredictor

    if args.clicks < 1:
        raise UsageError(f"--clicks must be at least 1, got {args.clicks}")
    if not Path(args.data).is_dir():
        raise UsageError(f"no folder '{args.data}'")
    model, origin = _load_model(args)
    model = model.to(torch.device(args.device)).eval()
    stats: dict = {}
    result = evaluate_clicks(ImagePredictor(model), _images(args, stats), num_clicks=args.clicks)
    return {**result, **stats, "checkpoint": str(args.checkpoint), "weights": origin, "layout": args.layout}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run_clicks(args)
    shown = sorted({1, args.clicks})
    scores = "  ".join(f"miou@{k} {result[f'miou@{k}']:.4f}" for k in shown if f"miou@{k}" in result)
    left_out = f", {result['left_out']} left out (unreadable or no usable mask)" if result["left_out"] else ""
    print(f"{scores}  ({result['objects']} objects, {result['images']} images{left_out})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0
