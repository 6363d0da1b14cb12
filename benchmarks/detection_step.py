"""One Mask R-CNN training step at 1024 with batch 2, for both ways of running a Hiera trunk.

Times forward + backward + AdamW step of :class:`unveil.models.detection.HieraMaskRCNN` with the
``maskunit`` trunk (the Hiera paper's COCO setting: mask-unit attention in stages 1-2, global attention in
stages 3-4) and the ``windowed`` trunk (HieraDet / SAM 2: windows and three global blocks), side by side in
one process, and prints the peak memory of each (CUDA: ``max_memory_allocated``; CPU: the process's peak
resident set, which only grows, so read the CPU figure of the second row as an upper bound).

    python benchmarks/detection_step.py                       # Hiera-B, 1024, batch 2, on the GPU if any
    python benchmarks/detection_step.py --size tiny --image-size 256 --steps 1   # a CPU smoke run
    /usr/bin/time -v python benchmarks/detection_step.py --execution windowed --warmup 0 --steps 1
                                # one trunk per process, so the peak RSS is that trunk's own
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from unveil.models.detection import HieraMaskRCNN


def batch(size: int, count: int, device: torch.device, generator: torch.Generator):
    images, targets = [], []
    for _ in range(count):
        images.append(torch.rand(3, size, size, generator=generator).to(device))
        boxes, masks = [], torch.zeros(8, size, size, dtype=torch.uint8)
        for i in range(8):  # 8 objects of various sizes
            x0, y0 = (torch.rand(2, generator=generator) * size * 0.6).tolist()
            w, h = ((0.05 + torch.rand(2, generator=generator) * 0.35) * size).tolist()
            boxes.append([x0, y0, x0 + w, y0 + h])
            masks[i, int(y0) : int(y0 + h), int(x0) : int(x0 + w)] = 1
        targets.append(
            {
                "boxes": torch.tensor(boxes, device=device),
                "labels": torch.randint(1, 81, (8,), generator=generator).to(device),
                "masks": masks.to(device),
            }
        )
    return images, targets


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run(execution: str, args, device: torch.device) -> tuple[float, float]:
    model = HieraMaskRCNN(num_classes=80, size=args.size, execution=execution, image_size=args.image_size,
                          drop_path_rate=0.2).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    images, targets = batch(args.image_size, args.batch_size, device, generator)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with autocast:
            losses = model(images, targets)
        sum(losses.values()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    return sum(times) / len(times), peak_memory_gib(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="base", help="tiny, small, base, base_plus, large")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (the recipes' bf16-mixed)")
    parser.add_argument("--execution", choices=("windowed", "maskunit", "both"), default="both",
                        help="one trunk only (its own peak RSS on the CPU), or both side by side")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"Mask R-CNN training step: Hiera {args.size}, {args.image_size}x{args.image_size}, batch "
          f"{args.batch_size}, {'bf16 autocast' if args.bf16 else 'fp32'}, {device}")
    rows = []
    executions = ("windowed", "maskunit") if args.execution == "both" else (args.execution,)
    for execution in executions:
        seconds, memory = run(execution, args, device)
        rows.append((execution, seconds, memory))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    reference = rows[0][1]
    print(f"{'trunk':<10} {'s/step':>8} {'ratio':>7} {'peak GiB':>9}")
    for execution, seconds, memory in rows:
        print(f"{execution:<10} {seconds:8.3f} {seconds / reference:7.2f} {memory:9.2f}")


if __name__ == "__main__":
    main()
