"""SAM 2 speed: unveil beside the official ``sam2`` package, in the same process, alternating.

1. Image encoder latency (trunk + FPN neck + the decoder's high-res convs: ``forward_image``) on one
   image at ``--size``.
2. Per-frame video propagation time: a click on frame 0, then tracking ``--frames`` frames of a JPEG
   folder (image encoder, memory attention over up to 7 memories and 16 object pointers, heads, memory
   encoder per frame).

Both sides get the same weights; ratios are official time / unveil time (above 1: unveil is faster).

    python benchmarks/sam2_speed.py [--model tiny] [--size 1024] [--rounds 3] [--frames 6]

Needs the official package (see README, "SAM 2").
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

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


def best_of(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def image_encoder(args) -> None:
    official, ours = build(args.model, args.size, video=False)
    x = torch.randn(1, 3, args.size, args.size)
    with torch.inference_mode():
        official.forward_image(x), ours.forward_image(x)  # warm-up
        t_official, t_ours = [], []
        for _ in range(args.rounds):  # alternate, so that load on the machine hits both
            t_official.append(best_of(lambda: official.forward_image(x), 1))
            t_ours.append(best_of(lambda: ours.forward_image(x), 1))
    a, b = min(t_official), min(t_ours)
    print(f"image encoder ({args.model}, {args.size}px): official {a * 1000:.0f} ms, unveil {b * 1000:.0f} ms, "
          f"official/unveil {a / b:.2f}x")


def video(args) -> None:
    import numpy as np
    from PIL import Image

    official, ours = build(args.model, args.size, video=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rng = np.random.default_rng(0)
        for t in range(args.frames):
            Image.fromarray((rng.random((480, 640, 3)) * 255).astype(np.uint8)).save(folder / f"{t:05d}.jpg")

        def track(predictor) -> float:
            state = predictor.init_state(str(folder))
            predictor.add_new_points_or_box(state, 0, 1, points=[[320, 240]], labels=[1])
            start = time.perf_counter()
            for _ in predictor.propagate_in_video(state):
                pass
            return (time.perf_counter() - start) / args.frames

        t_official, t_ours = [], []
        for _ in range(args.rounds):
            t_official.append(track(official))
            t_ours.append(track(ours))
    a, b = min(t_official), min(t_ours)
    print(f"video propagation ({args.model}, {args.size}px, {args.frames} frames): official {a * 1000:.0f} ms/frame, "
          f"unveil {b * 1000:.0f} ms/frame, official/unveil {a / b:.2f}x")


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
