"""Does a CPU-sized MAE learn anything a random trunk does not? An in-memory check on generated data variants.

The quickstart's MAE (its model block, read from ``recipes/quickstart.yaml``) is trained in memory on one of
several generated 8-class image sets, and its frozen features are scored against the same trunk at its random
initialisation: kNN (unveil's dinov2 protocol, cosine, T = 0.07) and a logistic regression on standardised
pooled features; ``--finetune-steps N`` then fine-tunes both starts with a linear head for N steps and prints
val top-1 as it goes. No files are written except ``--save`` (the pretrained state dict).

    python benchmarks/mae_data_variants.py --data symmetry --steps 400 --finetune-steps 300
    python benchmarks/mae_data_variants.py --data shapes --steps 400          # what `unveil synth images` draws

Data (``--data``; 128 px, every image drawn from its own seeded stream):

- ``shapes``: ``unveil synth images`` (one large shaded shape over a textured background; class = the shape);
- ``flat``: one large flat-coloured shape on a flat background (per-patch normalised targets are non-zero only
  at the outline, so the whole loss is about the shape); class = the shape;
- ``symmetry``: 3-6 random shapes of every kind over a textured background, made symmetric; class = the
  symmetry (none, left-right mirror, top-bottom mirror, both mirrors, 180 and 90 degree rotation, a diagonal
  mirror, all of a square's symmetries). Local statistics are the same for every class: only relations between
  distant parts tell it, which is what masked reconstruction rewards (a hidden part is a copy of a visible one);
- ``textures``: a two-colour periodic pattern over the whole image (stripes, checks, dots, rings, ...), random
  period, phase, tilt and colours; class = the pattern, each its own mirror image so flips keep the label;
- ``layouts``: 6 shapes of random kinds and colours over a textured background, placed in one of 8 fixed
  left-right symmetric arrangements on a 4x4 grid (any two share at most one cell of a half); class = the
  arrangement: a hidden cell holds a shape or not depending on the arrangement, which only the visible cells tell.

One seed per run, 256 validation images: one standard error near chance is about 0.02. Use
``OMP_NUM_THREADS=1`` beside other work (README: "Does pretraining learn?").
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
import yaml
from PIL import Image
from torch import nn
from unveil.datasets import synth
from unveil.finetune.knn import knn_accuracy, pooled_features
from unveil.models import MaskedAutoencoderHiera

SYMMETRIES = ("none", "mirror_lr", "mirror_tb", "mirror_both", "rot180", "rot90", "diagonal", "square")
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def flat_image(class_index: int, rng: np.random.Generator, size: int) -> Image.Image:
    canvas = Image.new("RGB", (size, size), tuple(int(c) for c in rng.uniform(40, 200, size=3)))
    kind = synth.SHAPE_KINDS[class_index]
    center = size / 2 + rng.uniform(-0.08, 0.08, size=2) * size
    radius, angle = rng.uniform(0.25, 0.38) * size, rng.uniform(0, 2 * math.pi)
    synth._draw_shape(canvas, kind, tuple(center), radius, angle, synth._random_color(rng))
    return canvas


def _mirror_both(quarter: np.ndarray) -> np.ndarray:
    top = np.concatenate([quarter, quarter[:, ::-1]], axis=1)
    return np.concatenate([top, top[::-1]], axis=0)


def symmetric(image: np.ndarray, symmetry: str, rng: np.random.Generator) -> np.ndarray:
    """``image`` [S, S, 3] (S even) made symmetric under ``symmetry`` (one of ``SYMMETRIES``)."""
    half = image.shape[0] // 2
    out = image.copy()
    if symmetry == "mirror_lr":
        out[:, half:] = image[:, :half][:, ::-1]
    elif symmetry == "mirror_tb":
        out[half:] = image[:half][::-1]
    elif symmetry == "mirror_both":
        out = _mirror_both(image[:half, :half])
    elif symmetry == "rot180":
        out[half:] = image[:half][::-1, ::-1]
    elif symmetry == "rot90":
        quarter = image[:half, :half]
        out[:half, :half], out[:half, half:] = quarter, np.rot90(quarter, -1)
        out[half:, half:], out[half:, :half] = np.rot90(quarter, 2), np.rot90(quarter, 1)
    elif symmetry in ("diagonal", "square"):
        upper = np.triu_indices(image.shape[0], 1)
        out[upper] = image.transpose(1, 0, 2)[upper]  # out == out transposed
        if symmetry == "square":
            out = _mirror_both(out[:half, :half])
        elif rng.random() < 0.5:
            out = out[:, ::-1]  # the other diagonal: a horizontal flip maps one class onto itself
    return np.ascontiguousarray(out)


def symmetry_image(class_index: int, rng: np.random.Generator, size: int) -> Image.Image:
    canvas = Image.fromarray(synth._random_background(rng, size))
    for _ in range(int(rng.integers(3, 7))):
        kind = synth.SHAPE_KINDS[int(rng.integers(len(synth.SHAPE_KINDS)))]
        center, radius = rng.uniform(0, 1, size=2) * size, rng.uniform(0.06, 0.16) * size
        fill = synth._shaded_fill(rng, size, synth._random_color(rng))
        synth._draw_shape(canvas, kind, tuple(center), radius, rng.uniform(0, 2 * math.pi), fill)
    return Image.fromarray(symmetric(np.asarray(canvas), SYMMETRIES[class_index], rng))


TEXTURES = ("stripes_h", "stripes_v", "checker", "diamonds", "dots", "rings", "grid", "zigzag")


def texture_image(class_index: int, rng: np.random.Generator, size: int) -> Image.Image:
    """A two-colour periodic texture; class = the pattern (each is its own mirror image, so flips keep labels)."""
    period = rng.uniform(10, 22)
    tilt = rng.uniform(-0.15, 0.15)  # radians
    coords = np.arange(size, dtype=np.float32) + 0.5
    y, x = np.meshgrid(coords, coords, indexing="ij")
    y, x = y * np.cos(tilt) - x * np.sin(tilt), y * np.sin(tilt) + x * np.cos(tilt)
    y, x = y + rng.uniform(0, period), x + rng.uniform(0, period)
    w = 2 * np.pi / period
    kind = TEXTURES[class_index]
    if kind == "stripes_h":
        field = np.sin(w * y)
    elif kind == "stripes_v":
        field = np.sin(w * x)
    elif kind == "checker":
        field = np.sin(w * y) * np.sin(w * x)
    elif kind == "diamonds":
        field = np.sin(w * (x + y) / 1.4) * np.sin(w * (x - y) / 1.4)
    elif kind == "dots":
        field = 1.0 - 2.0 * (np.hypot((y % period) - period / 2, (x % period) - period / 2) > period * 0.28)
    elif kind == "rings":
        cy, cx = rng.uniform(0, size, size=2)
        field = np.sin(w * np.hypot(y - cy, x - cx))
    elif kind == "grid":
        field = 1.0 - 2.0 * (np.minimum(y % period, x % period) > period * 0.22)
    else:  # zigzag: horizontal stripes bent by a triangle wave
        field = np.sin(w * (y + np.abs((x % period) - period / 2)))
    mix = 1 / (1 + np.exp(-4 * field))[..., None]
    first, second = np.array(synth._random_color(rng)), rng.uniform(30, 220, size=3)
    pixels = mix * first + (1 - mix) * second + rng.normal(0, 6, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _layouts() -> list[list[tuple[int, int]]]:
    """8 fixed arrangements of 3 cells in the left half of a 4x4 grid (mirrored to the right); any two share at
    most one cell."""
    cells = [(row, col) for row in range(4) for col in range(2)]
    triples = list(itertools.combinations(range(len(cells)), 3))
    rng = np.random.default_rng(7)
    while True:  # greedy packing over shuffled triples; a few restarts find 8
        chosen: list[tuple[int, ...]] = []
        for index in rng.permutation(len(triples)):
            if all(len(set(triples[index]) & set(other)) <= 1 for other in chosen):
                chosen.append(triples[index])
        if len(chosen) >= 8:
            return [[cells[i] for i in triple] for triple in chosen[:8]]


LAYOUTS = _layouts()


def layout_image(class_index: int, rng: np.random.Generator, size: int) -> Image.Image:
    """6 shapes of random kinds and colours in one of 8 fixed left-right symmetric arrangements; class = arrangement."""
    canvas = Image.fromarray(synth._random_background(rng, size))
    cell, shift = size / 4, rng.uniform(-0.06, 0.06, size=2) * size
    for row, col in LAYOUTS[class_index]:
        for c in (col, 3 - col):
            center = (c + 0.5) * cell + shift[1] + rng.uniform(-2, 2), (row + 0.5) * cell + shift[0] + rng.uniform(-2, 2)
            kind = synth.SHAPE_KINDS[int(rng.integers(len(synth.SHAPE_KINDS)))]
            fill = synth._shaded_fill(rng, size, synth._random_color(rng))
            synth._draw_shape(canvas, kind, center, rng.uniform(0.3, 0.42) * cell, rng.uniform(0, 2 * math.pi), fill)
    return canvas


RENDER = {
    "shapes": lambda index, rng, size: synth.render_image(synth.SHAPE_KINDS[index], rng, size),
    "flat": flat_image,
    "symmetry": symmetry_image,
    "textures": texture_image,
    "layouts": layout_image,
}


def make_split(data: str, split: str, per_class: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for index in range(8):
        for item in range(per_class):
            image = RENDER[data](index, synth._sample_rng(123, split, index, item), size)
            images.append(torch.from_numpy(np.array(image)).permute(2, 0, 1))
            labels.append(index)
    return torch.stack(images), torch.tensor(labels)


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255 - MEAN) / STD


def quickstart_mae(args: argparse.Namespace) -> MaskedAutoencoderHiera:
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
    config = dict(yaml.safe_load(recipe.read_text())["model"]["init_args"]["model"]["init_args"])
    config.update(input_size=[args.size, args.size])
    for key in ("mask_ratio", "decoder_depth"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    model = MaskedAutoencoderHiera(**config)
    if args.no_fusion:  # only the final stage reaches the decoder
        for head in model.multi_scale_fusion_heads[:-1]:
            for parameter in head.parameters():
                parameter.data.zero_()
                parameter.requires_grad_(False)
    return model


def cosine_lr(step: int, steps: int, peak: float, warmup: int) -> float:
    if step <= warmup:
        return peak * step / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


@torch.no_grad()
def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    out = torch.cat([pooled_features(model, normalise(x[i : i + 64])) for i in range(0, len(x), 64)])
    model.train()
    return out


def frozen_scores(model: nn.Module, train, val) -> str:
    from sklearn.linear_model import LogisticRegression

    f_train, f_val = features(model, train[0]), features(model, val[0])
    knn = knn_accuracy(F.normalize(f_train, dim=1), train[1], F.normalize(f_val, dim=1), val[1], 8, ks=(10, 20))
    mean, std = f_train.mean(0), f_train.std(0) + 1e-6
    clf = LogisticRegression(max_iter=3000).fit(((f_train - mean) / std).numpy(), train[1].numpy())
    logreg = clf.score(((f_val - mean) / std).numpy(), val[1].numpy())
    centroid = F.normalize(f_train.mean(0), dim=0)
    collapse = (F.normalize(f_train, dim=1) @ centroid).mean().item()
    return f"kNN k=10 {knn[10]:.3f} k=20 {knn[20]:.3f}  logreg {logreg:.3f}  mean cosine to centroid {collapse:.2f}"


def pretrain(model, train, val, args, augment, started) -> None:
    optimiser = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05
    )
    draw = torch.Generator().manual_seed(args.seed)
    for step in range(1, args.steps + 1):
        for group in optimiser.param_groups:
            group["lr"] = cosine_lr(step, args.steps, args.lr, max(1, args.steps // 20))
        index = torch.randint(0, len(train[0]), (args.batch,), generator=draw)
        loss = model(normalise(torch.stack([augment(train[0][j]) for j in index]))).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % args.eval_every == 0 or step == args.steps:
            print(f"pretrain step {step:5d} loss {loss.item():.3f}  {frozen_scores(model, train, val)}  "
                  f"({time.time() - started:.0f} s)", flush=True)


def finetune(trunk: nn.Module, train, val, args, augment, name: str, started) -> None:
    head = nn.Linear(trunk.num_features, 8)
    params = [p for p in trunk.parameters() if p.requires_grad] + list(head.parameters())
    optimiser = torch.optim.AdamW(params, lr=args.finetune_lr, weight_decay=0.05)
    draw = torch.Generator().manual_seed(args.seed + 1)
    classify = lambda x: head(pooled_features(trunk, normalise(x)))
    for step in range(1, args.finetune_steps + 1):
        for group in optimiser.param_groups:
            group["lr"] = cosine_lr(step, args.finetune_steps, args.finetune_lr, 10)
        index = torch.randint(0, len(train[0]), (args.batch,), generator=draw)
        x = torch.stack([augment(train[0][j]) for j in index])
        loss = F.cross_entropy(classify(x), train[1][index], label_smoothing=0.1)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 50 == 0 or step == args.finetune_steps:
            trunk.eval()
            with torch.no_grad():
                predicted = torch.cat([classify(val[0][i : i + 64]).argmax(1) for i in range(0, len(val[0]), 64)])
            trunk.train()
            top1 = (predicted == val[1]).float().mean().item()
            print(f"finetune {name:11s} step {step:4d} loss {loss.item():.3f} val top-1 {top1:.3f}  "
                  f"({time.time() - started:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=sorted(RENDER), default="symmetry")
    parser.add_argument("--steps", type=int, default=400, help="pretraining steps")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--train-per-class", type=int, default=96)
    parser.add_argument("--val-per-class", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--mask-ratio", dest="mask_ratio", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--decoder-depth", dest="decoder_depth", type=int, default=None)
    parser.add_argument("--no-fusion", action="store_true", help="zero the stage 1-3 fusion heads")
    parser.add_argument("--crop", type=float, default=0.35, help="RandomResizedCrop's smallest area")
    parser.add_argument("--finetune-steps", type=int, default=0)
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", default=None, help="write the pretrained MAE's state dict here")
    args = parser.parse_args(argv)

    started = time.time()
    train = make_split(args.data, "train", args.train_per_class, args.size)
    val = make_split(args.data, "val", args.val_per_class, args.size)
    augment = T.Compose([T.RandomResizedCrop(args.size, scale=(args.crop, 1.0), antialias=True),
                         T.RandomHorizontalFlip()])
    torch.manual_seed(args.seed)
    model = quickstart_mae(args)
    random_state = {k: v.clone() for k, v in model.state_dict().items()}
    print(f"{args.data}: {len(train[0])} training, {len(val[0])} validation images ({time.time() - started:.0f} s)")
    print(f"random trunk: {frozen_scores(model, train, val)}", flush=True)
    pretrain(model, train, val, args, augment, started)
    if args.save:
        torch.save(model.state_dict(), args.save)
    if args.finetune_steps:
        finetune(model, train, val, args, augment, "pretrained", started)
        model.load_state_dict(random_state)
        finetune(model, train, val, args, augment, "random init", started)


if __name__ == "__main__":
    sys.exit(main())
