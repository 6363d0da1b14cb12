"""Draw the online-probe curves of a pretraining run (``probe/knn_top1``, ``probe/linear_top1``) as a PNG.

    unveil synth images --out data/shapes
    unveil fit --config quickstart
    python benchmarks/plot_probe_curve.py runs/quickstart/version_0 --out docs/quickstart_probe.png

Reads the run's TensorBoard event files (the quickstart's logger); the dashed line is chance (1 / classes).
Drawn with Pillow, so no plotting package is needed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw

SERIES = {
    "probe/knn_top1": ((31, 119, 180), "kNN top-1 (k=20)"),
    "probe/linear_top1": ((214, 39, 40), "linear top-1"),
}


def read_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of every scalar in the TensorBoard event files under ``run``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(run.rglob("events.out.tfevents.*"))
    if not files:
        raise SystemExit(f"no TensorBoard event files under {run}")
    scalars: dict[str, dict[int, float]] = {}
    for file in files:
        accumulator = EventAccumulator(str(file), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars(tag):
                scalars.setdefault(tag, {})[event.step] = event.value
    return {tag: sorted(values.items()) for tag, values in scalars.items()}


def draw(curves: dict[str, list[tuple[int, float]]], chance: float | None, title: str, path: Path) -> None:
    width, height, left, right, top, bottom = 640, 400, 60, 20, 40, 50
    image = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(image)
    max_step = max(step for values in curves.values() for step, _ in values)
    x_of = lambda step: left + (width - left - right) * step / max_step
    y_of = lambda value: top + (height - top - bottom) * (1.0 - value)
    for tick in range(0, 11, 2):  # accuracy grid, 0 to 1
        y = y_of(tick / 10)
        pen.line([(left, y), (width - right, y)], fill=(225, 225, 225))
        pen.text((left - 30, y - 6), f"{tick / 10:.1f}", fill="black")
    for index in range(5):
        step = round(max_step * index / 4)
        pen.text((x_of(step) - 10, height - bottom + 6), str(step), fill="black")
    pen.rectangle([left, top, width - right, height - bottom], outline="black")
    pen.text((width // 2 - 40, height - 22), "optimiser step", fill="black")
    pen.text((left, 12), title, fill="black")
    if chance is not None:
        y = y_of(chance)
        for x in range(left, width - right, 12):
            pen.line([(x, y), (min(x + 6, width - right), y)], fill=(120, 120, 120))
        pen.text((width - right - 60, y - 14), "chance", fill=(120, 120, 120))
    legend_y = top + 8
    for tag, values in curves.items():
        color, label = SERIES[tag]
        points = [(x_of(step), y_of(value)) for step, value in values]
        if len(points) > 1:
            pen.line(points, fill=color, width=3)
        for x, y in points:
            pen.ellipse([x - 4, y - 4, x + 4, y + 4], fill=color)
        pen.line([(left + 12, legend_y + 6), (left + 36, legend_y + 6)], fill=color, width=3)
        pen.text((left + 42, legend_y), f"{label}: {values[-1][1]:.2f} at step {values[-1][0]}", fill="black")
        legend_y += 18
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="the run's log folder (runs/quickstart/version_0)")
    parser.add_argument("--out", default="docs/quickstart_probe.png")
    parser.add_argument("--classes", type=int, default=8, help="for the chance line (0: none)")
    parser.add_argument("--title", default="quickstart MAE: online probes on the validation set")
    args = parser.parse_args(argv)
    scalars = read_scalars(Path(args.run))
    curves = {tag: scalars[tag] for tag in SERIES if tag in scalars}
    if not curves:
        raise SystemExit(f"{args.run} has no probe/ scalars (was OnlineProbes among the callbacks?)")
    draw(curves, 1.0 / args.classes if args.classes else None, args.title, Path(args.out))
    for tag, values in curves.items():
        print(tag, " ".join(f"{step}:{value:.3f}" for step, value in values))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
