"""SAM 2 speed: unveil beside the official ``sam2`` package, in the same process, alternating.

1. Image encoder latency (trunk + FPN neck + the decoder's high-res convs: ``forward_image``) on one
   image at ``--size``.
2. Per-frame video propagation time: a click on frame 0, then tracking ``--frames`` frames of a JPEG
   folder (image encoder, memory attention over up to 7 memories and 16 object pointers, heads, memory
   encoder per frame).

Both sides get the same weights; ratios are official time / unveil time (above 1: unveil is faster).
Each round times both sides, the one that goes first alternating. Printed: the median and the best
wall-clock time per side, the median of the per-round ratios, and the same ratio in CPU time (the
process's CPU seconds: on a machine shared with other jobs it moves less than wall-clock time, as
time spent waiting for a core is not counted; with one thread it is the compute time).

    python benchmarks/sam2_speed.py [--model tiny] [--size 1024] [--rounds 3] [--frames 6]

Needs the official package (see README, "SAM 2").
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

CONFIGS = {"tiny": "configs/sam2.1/sam2.1_hiera_t.yaml", "base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml"}


def build(model: str, size: int, video: bool):
    from sam2.build_sam import build_sam2, build_sam2_video_predictor
    from unveil.models.sam2 import SAM2, SAM2Config, VideoPredictor

    torch.manual_seed(0)
    extra = [f"++model.image_size={size}"] if size != 1024 else []
    builder = build_sam2_video_predictor if video else build_sam2
    official = builder(CONFIGS[model], None, device="cpu", hydra_overrides_extra=extra)
    ours = SAM2(SAM2Config(trunk=model, image_size=size)).eval()
    ours.load_official_state_dict(official.state_dict())
    if video:
        official.fill_hole_area = 0
        return official, VideoPredictor(ours, fill_hole_area=0)
    return official, ours


def timed(fn) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def alternate(official, ours, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Per round (wall, cpu) of each side; who goes first alternates, so that load hits both."""
    times: dict[str, list[tuple[float, float]]] = {"official": [], "unveil": []}
    for r in range(rounds):
        order = [("official", official), ("unveil", ours)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            times[name].append(fn())
    return times


def report(what: str, unit: str, scale: float, times: dict[str, list[tuple[float, float]]]) -> None:
    a, b = np.array(times["official"]), np.array(times["unveil"])  # [rounds, (wall, cpu)]
    wall, cpu = np.median(a[:, 0] / b[:, 0]), np.median(a[:, 1] / b[:, 1])
    print(
        f"{what}: official {np.median(a[:, 0]) * scale:.0f} {unit} (best {a[:, 0].min() * scale:.0f}), "
        f"unveil {np.median(b[:, 0]) * scale:.0f} {unit} (best {b[:, 0].min() * scale:.0f}); "
        f"official/unveil median of {len(a)} rounds {wall:.3f}x wall-clock, {cpu:.3f}x CPU time "
        f"(per round: {' '.join(f'{x:.2f}' for x in a[:, 0] / b[:, 0])} wall, "
        f"{' '.join(f'{x:.2f}' for x in a[:, 1] / b[:, 1])} CPU)"
    )


def image_encoder(args) -> None:
    official, ours = build(args.model, args.size, video=False)
    x = torch.randn(1, 3, args.size, args.size)
    with torch.inference_mode():
        official.forward_image(x), ours.forward_image(x)  # warm-up
        times = alternate(lambda: timed(lambda: official.forward_image(x)), lambda: timed(lambda: ours.forward_image(x)), args.rounds)
    report(f"image encoder ({args.model}, {args.size}px)", "ms", 1000, times)


def video(args) -> None:
    from PIL import Image

    official, ours = build(args.model, args.size, video=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rng = np.random.default_rng(0)
        for t in range(args.frames):
            Image.fromarray((rng.random((480, 640, 3)) * 255).astype(np.uint8)).save(folder / f"{t:05d}.jpg")

        def track(predictor) -> tuple[float, float]:
            """Per-frame (wall, cpu) of propagation after a click on frame 0 (opening the video and
            the click are not timed: the official predictor decodes every frame when opening)."""
            state = predictor.init_state(str(folder))
            predictor.add_new_points_or_box(state, 0, 1, points=[[320, 240]], labels=[1])
            wall, cpu = timed(lambda: [None for _ in predictor.propagate_in_video(state)])
            return wall / args.frames, cpu / args.frames

        times = alternate(lambda: track(official), lambda: track(ours), args.rounds)
    report(f"video propagation ({args.model}, {args.size}px, {args.frames} frames)", "ms/frame", 1000, times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", choices=sorted(CONFIGS))
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--only", choices=["image", "video"])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    if args.only != "video":
        image_encoder(args)
    if args.only != "image":
        video(args)


if __name__ == "__main__":
    main()
