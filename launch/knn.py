"""``unveil knn``: kNN top-1 of a backbone's frozen features on an image folder (dinov2's protocol).

    unveil knn runs/quickstart/version_0/checkpoints/last.ckpt --data data/shapes --input-size 128
    unveil knn hiera_t_mae.pt --data data/shapes --input-size 128          # an `unveil export` file
    unveil knn last.ckpt --data data/shapes --input-size 128 --random-init # the same trunk, untrained

CKPT is any image backbone ``unveil.finetune.load_pretrained_backbone`` starts from: an ``unveil export``
file, an MAE pretraining ``.ckpt`` (its Hiera), or an official Hiera state dict with ``--model hiera_tiny_224``
(video and audio backbones: call ``unveil.finetune.knn`` from Python, or use the ``OnlineProbes`` callback). The training split (``--train-split``)
is the neighbour bank, the validation split the queries; both go through the evaluation transform (resize,
centre crop), as dinov2 does. Features: the final tokens, mean-pooled, LayerNorm without parameters,
L2-normalised; votes weighted by ``exp(cosine / T)`` with T = 0.07, for each ``--k``.
Mistakes (no such file or folder, a file that is not a backbone) stop the command with one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from unveil.launch.cli import OneLineParser, UsageError


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="unveil knn", description="kNN top-1 of a backbone's frozen features (dinov2 protocol)."
    )
    parser.add_argument(
        "checkpoint", help="an unveil export, a pretraining .ckpt, or an official Hiera state dict"
    )
    parser.add_argument("--data", required=True, help="ImageNet-layout folder with the train and val splits")
    parser.add_argument("--input-size", type=int, default=224, help="side of the centre crop (default 224)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--k", type=int, nargs="+", default=[10, 20, 100, 200], help="neighbour counts")
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--val-split", default="val")
    parser.add_argument(
        "--model", default=None, help="factory name for a plain state dict (hiera_tiny_224, ...)"
    )
    parser.add_argument("--random-init", action="store_true", help="the same architecture, weights untrained")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    parser.add_argument("--json", default=None, help="also write the result to this JSON file")
    return parser


def run_knn(args: argparse.Namespace) -> dict:
    """Load, extract, vote; returns ``{"top1": {k: accuracy}, ...}`` (see the module docstring)."""
    import torch
    from torch.utils.data import DataLoader
    from unveil.datasets.image import ImageFolderDataset, image_eval_transform
    from unveil.finetune.backbone import load_pretrained_backbone
    from unveil.finetune.knn import extract_features, knn_accuracy

    data = Path(args.data)
    for split in (args.train_split, args.val_split):
        if not (data / split).is_dir():
            raise UsageError(
                f"no folder '{data / split}' (run 'unveil synth images --out {data}' to generate one)"
            )
    torch.manual_seed(args.seed)
    try:
        loaded = load_pretrained_backbone(args.checkpoint, model=args.model, random_init=args.random_init)
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(str(error).splitlines()[0]) from None
    if loaded.kind != "hiera":
        raise UsageError(
            f"'{args.checkpoint}' holds a {loaded.kind} backbone; 'unveil knn' evaluates image backbones"
        )
    transform = image_eval_transform(args.input_size)
    features = {}
    for split in (args.train_split, args.val_split):
        dataset = ImageFolderDataset(data, split, transform=transform)
        loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers)
        features[split] = (*extract_features(loaded.model, loader), dataset.classes)
    train_features, train_labels, classes = features[args.train_split]
    val_features, val_labels, val_classes = features[args.val_split]
    if val_classes != classes:
        raise UsageError(f"the class folders of '{args.val_split}' and '{args.train_split}' differ")
    top1 = knn_accuracy(
        train_features,
        train_labels,
        val_features,
        val_labels,
        len(classes),
        ks=args.k,
        temperature=args.temperature,
    )
    return {
        "checkpoint": str(args.checkpoint),
        "source": loaded.source,
        "data": str(data),
        "train_samples": len(train_labels),
        "val_samples": len(val_labels),
        "classes": len(classes),
        "temperature": args.temperature,
        "top1": top1,
    }


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        result = run_knn(args)
    except UsageError as error:
        sys.stderr.write(f"unveil knn: error: {error}\n")
        return 2
    print(
        f"kNN (cosine, T={result['temperature']}) of {result['source']} on {result['data']}: "
        f"{result['train_samples']} train -> {result['val_samples']} val, {result['classes']} classes"
    )
    for k, accuracy in result["top1"].items():
        print(f"  k={k:<4d} top-1 {accuracy:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
