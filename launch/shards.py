"""``unveil shards``: convert folder/CSV datasets into WebDataset tar shards, and describe shard sets.

    unveil shards make images --root data/imagenet --split train --out shards/imagenet
    unveil shards make videos --csv data/kinetics/train.csv --out shards/kinetics --short-side 320
    unveil shards make audio --csv data/audioset/train.csv --class-index data/audioset/class_labels_indices.csv --out shards/audioset
    unveil shards make audio-video --csv data/vggsound/train_av.csv --out shards/vggsound
    unveil shards make vos --root data/davis --split train --out shards/davis
    unveil shards info shards/imagenet/train.json

``make`` writes ``OUT/PREFIX-000000.tar, ...`` and the index ``OUT/PREFIX.json`` (PREFIX: the split, or
the manifest's name). Point a DataModule's ``shards:`` at the index. Rerunning an interrupted ``make``
keeps the finished shards and writes the rest.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

EXIT_USAGE = 2
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(text: str) -> int:
    """``"1GB"`` -> 10**9, ``"512MiB"`` -> 2**29, ``"3e9"`` -> 3000000000 (bytes)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if match is None or match[2].lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1GB, 500MB, 512MiB, 3e9)")
    size = int(float(match[1]) * _UNITS[match[2].lower()])
    if size < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return size


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unveil shards",
        description="WebDataset shards: make them from folders/CSV manifests, describe them.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser(
        "make",
        help="convert a folder/CSV dataset into size-limited tar shards and an index",
        description="Convert a folder/CSV dataset into size-limited tar shards plus an index (resumable).",
    )
    make.add_argument("kind", choices=("images", "videos", "audio", "audio-video", "coco", "vos"))
    make.add_argument("--out", required=True, help="folder for the shards and the index")
    make.add_argument("--root", help="dataset folder (folder layout), and the base of relative CSV paths")
    make.add_argument("--split", default="train", help="split sub-folder of --root (default: train)")
    make.add_argument("--csv", help="manifest instead of the folder layout (videos, audio, audio-video)")
    make.add_argument("--class-index", help="audio kinds: index,mid,display_name CSV naming the classes")
    make.add_argument("--prefix", help="shard name prefix (default: the split, or the manifest's name)")
    make.add_argument(
        "--max-size",
        type=parse_size,
        default=parse_size("1GB"),
        help="shard size limit, e.g. 1GB, 500MB (default: 1GB)",
    )
    make.add_argument(
        "--max-count", type=_positive, default=10_000, help="samples per shard (default: 10000)"
    )
    make.add_argument("--jpeg-quality", type=int, help="images: re-encode as JPEG at this quality")
    make.add_argument("--max-side", type=_positive, help="images: shrink the longer side to this, as JPEG")
    make.add_argument(
        "--short-side",
        type=_positive,
        help="videos: re-encode (H.264) with the shorter side scaled down to this",
    )
    make.add_argument(
        "--video-crf", type=int, default=23, help="H.264 quality of re-encoded videos (default: 23)"
    )
    make.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="copy files without decoding them first (bad files then get skipped when read)",
    )
    make.add_argument("--workers", type=int, default=0, help="encoding processes (default: 0, this one)")
    make.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a shard set made in --out from other sources or options",
    )
    make.add_argument("--quiet", action="store_true", help="no progress bar")
    info = commands.add_parser("info", help="list the shards and sample counts of a shard set")
    info.add_argument("shards", help="index file, folder, brace pattern or tar")
    return parser


def _check(args: argparse.Namespace) -> None:
    if args.kind == "images" and args.csv is not None:
        raise ValueError("images are read from the folder layout (--root, --split), not --csv")
    if args.root is None and args.csv is None:
        raise ValueError("give --root (folder layout) or --csv (manifest)")
    if args.jpeg_quality is not None and not 1 <= args.jpeg_quality <= 100:
        raise ValueError(f"--jpeg-quality must be in [1, 100], got {args.jpeg_quality}")
    if args.kind != "images" and (args.jpeg_quality is not None or args.max_side is not None):
        raise ValueError("--jpeg-quality and --max-side apply to images only")
    if args.kind in ("images", "audio") and args.short_side is not None:
        raise ValueError("--short-side applies to videos only (videos, audio-video)")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")


def _make_vos(args: argparse.Namespace, **writing):
    """Video object segmentation clips (SAM 2 training): a DAVIS/MOSE-layout --root, one sample per video."""
    from unveil.datasets.vos_shards import make_vos_shards

    if args.root is None or args.csv is not None:
        raise ValueError("vos shards are made from a DAVIS/MOSE-layout folder: give --root (not --csv)")
    return make_vos_shards(args.root, args.out, split=args.split, **writing)


def _make(args: argparse.Namespace, **writing):
    from unveil.datasets.shards import EncodeOptions, make_shards

    _check(args)
    options = EncodeOptions(
        jpeg_quality=args.jpeg_quality,
        max_side=args.max_side,
        short_side=args.short_side,
        video_crf=args.video_crf,
        verify=args.verify,
    )
    return make_shards(
        args.kind,
        args.out,
        root=args.root,
        split=args.split,
        csv=args.csv,
        options=options,
        class_index=args.class_index,
        workers=args.workers,
        **writing,
    )


def run_make(args: argparse.Namespace) -> None:
    from unveil.datasets.shards import read_index

    writing = {
        "prefix": args.prefix,
        "max_size": args.max_size,
        "max_count": args.max_count,
        "overwrite": args.overwrite,
        "progress": not args.quiet,
    }
    path = (_make_vos if args.kind == "vos" else _make)(args, **writing)
    index = read_index(path)
    skipped = ", ".join(f"{reason} {count}" for reason, count in index["skipped"].items()) or "none"
    print(f"{path}: {index['num_samples']} samples in {len(index['shards'])} shards (skipped: {skipped})")


def run_info(args: argparse.Namespace) -> None:
    from pathlib import Path

    from unveil.datasets.shards import resolve_shards

    shard_set = resolve_shards(args.shards)
    for url, size in zip(shard_set.urls, shard_set.sizes):
        count = "?" if size is None else str(size)
        print("\t".join([url, count] + ([] if Path(url).exists() else ["MISSING"])))
    total = shard_set.num_samples
    classes = shard_set.num_classes or (len(shard_set.classes) if shard_set.classes else None)
    print(
        f"{len(shard_set.urls)} shards, {'unknown number of' if total is None else total} samples"
        + (f", {classes} classes" if classes else "")
        + (f", kind {shard_set.kind}" if shard_set.kind else "")
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``unveil shards make|info ...``: returns the exit status (2 for a usage or data-source error)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "make":
            run_make(args)
        else:
            run_info(args)
    except (FileNotFoundError, ValueError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"unveil shards {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
