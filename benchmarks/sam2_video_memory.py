"""Peak resident memory of SAM 2 video tracking: unveil's VideoPredictor beside the official one.

A folder of JPEG frames is written once; then each predictor runs in its own fresh process (peak RSS
is per process): open the video, click on frame 0, track ``--track`` frames (all by default). The
official predictor decodes every frame to 1024 x 1024 float32 when the video is opened (12 MiB a
frame); unveil's decodes a frame when tracking reaches it. Both keep the same compact per-frame
outputs (bfloat16 memory, low-res logits, object pointer), on the CPU here.

    python benchmarks/sam2_video_memory.py [--frames 300] [--track 300] [--size 1024] [--model tiny] [--curve 10]

``--curve N`` prints the peak RSS after every N tracked frames: flat for unveil, where the official
predictor's has already grown with the video's length when it is opened.

Needs the official package (see README, "SAM 2"). Random weights: memory does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIGS = {"tiny": "configs/sam2.1/sam2.1_hiera_t.yaml", "base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml"}


def write_frames(folder: Path, count: int, height: int = 480, width: int = 854) -> None:
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    background = (np.random.default_rng(0).random((height, width, 3)) * 80).astype(np.uint8)
    for t in range(count):
        image = Image.fromarray(background)
        ImageDraw.Draw(image).ellipse([100 + t % 400, 150, 260 + t % 400, 310], fill=(220, 40, 40))
        image.save(folder / f"{t:05d}.jpg", quality=90)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_one(which: str, folder: str, track: int, size: int, model: str, curve: int = 0) -> dict:
    """In a child process: build one predictor, open the video, click, track; report memory and time."""
    import torch

    torch.manual_seed(0)
    start = time.perf_counter()
    if which == "official":
        from sam2.build_sam import build_sam2_video_predictor

        extra = [f"++model.image_size={size}"] if size != 1024 else []
        predictor = build_sam2_video_predictor(CONFIGS[model], None, device="cpu", hydra_overrides_extra=extra)
        predictor.fill_hole_area = 0
    else:
        from unveil.models.sam2 import SAM2, SAM2Config, VideoPredictor

        predictor = VideoPredictor(SAM2(SAM2Config(trunk=model, image_size=size)).eval(), fill_hole_area=0)
    built = peak_rss_mib()
    state = predictor.init_state(folder)
    opened = peak_rss_mib()
    predictor.add_new_points_or_box(state, 0, 1, points=[[180, 230]], labels=[1])
    frames = 0
    points = []  # (frames tracked, peak RSS MiB)
    with torch.inference_mode():
        for _ in predictor.propagate_in_video(state, max_frame_num_to_track=track - 1):
            frames += 1
            if curve and frames % curve == 0:
                points.append((frames, round(peak_rss_mib())))
                print(f"{which}: {frames} frames, peak RSS {points[-1][1]} MiB", file=sys.stderr, flush=True)
    return dict(
        which=which,
        frames_tracked=frames,
        seconds=time.perf_counter() - start,
        rss_after_build_mib=built,
        rss_after_open_mib=opened,
        peak_rss_mib=peak_rss_mib(),
        curve=points,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--track", type=int, default=None, help="frames to track (default: all)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--model", default="tiny", choices=sorted(CONFIGS))
    parser.add_argument("--only", choices=["official", "unveil"], help="run one side")
    parser.add_argument("--curve", type=int, default=0, help="print the peak RSS every N tracked frames")
    parser.add_argument("--child", nargs=2, metavar=("WHICH", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    track = args.track or args.frames
    if args.child:
        print(json.dumps(run_one(args.child[0], args.child[1], track, args.size, args.model, args.curve)))
        return
    torch_threads = os.environ.get("OMP_NUM_THREADS", "default")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "frames"
        write_frames(folder, args.frames)
        print(f"{args.frames} JPEG frames 854x480, model {args.model} at {args.size}, tracking {track} frames, "
              f"CPU, threads {torch_threads}")
        results = {}
        for which in ("unveil", "official"):
            if args.only and which != args.only:
                continue
            cmd = [sys.executable, __file__, "--child", which, str(folder), "--frames", str(args.frames),
                   "--track", str(track), "--size", str(args.size), "--model", args.model, "--curve", str(args.curve)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                if out.returncode < 0:  # e.g. -9: the kernel's OOM killer
                    print(f"{which}: killed by signal {-out.returncode} (out of memory?)")
                else:
                    errors = [line for line in out.stderr.splitlines() if "it/s]" not in line and "s/it]" not in line]
                    print(f"{which}: failed\n" + "\n".join(errors[-20:]))
                continue
            results[which] = json.loads(out.stdout.strip().splitlines()[-1])
            r = results[which]
            print(f"{which:9s} peak RSS {r['peak_rss_mib']:8.0f} MiB  (after build {r['rss_after_build_mib']:.0f}, "
                  f"after opening the video {r['rss_after_open_mib']:.0f})  {r['frames_tracked']} frames in {r['seconds']:.0f} s")
            if r["curve"]:
                print(f"{which:9s} peak RSS (MiB) by frames tracked: " + ", ".join(f"{n}: {m}" for n, m in r["curve"]))
        if len(results) == 2:
            print(f"official / unveil peak RSS: {results['official']['peak_rss_mib'] / results['unveil']['peak_rss_mib']:.2f}x")


if __name__ == "__main__":
    main()
