"""MAE train-step throughput of Hiera-B at 224: unveil beside the official implementation.

Both models get the same weights, the same batches and the same masks, and are timed in the same
process, alternating, so the machine's state affects both alike. Each is also reported as achieved
FLOP/s (FLOPs of one step counted by torch's FlopCounterMode) over the FLOP/s of a large fp32 matmul
measured in the same run.

    python benchmarks/mae_throughput.py [--batch 8] [--steps 5] [--rounds 3] [--model base]

Needs the official package (``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode

import unveil.models as unveil_models


def official_module():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import hiera
    return hiera


def matmul_flops_per_sec(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def train_step(model, optimizer, x, mask):
    out = model(x, mask=mask)
    loss = out[0]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def step_flops(model, x, mask) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        model(x, mask=mask)[0].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def time_steps(model, optimizer, batches) -> float:
    start = time.perf_counter()
    for x, mask in batches:
        train_step(model, optimizer, x, mask)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="base", help="tiny | small | base | base_plus | large | huge")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best round counts")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    name = f"mae_hiera_{args.model}_224"
    reference = getattr(official_module(), name)(pretrained=False).train()
    ours = getattr(unveil_models, name)().train()
    ours.load_state_dict(reference.state_dict())
    models = {"unveil": ours, "official": reference}
    optimizers = {
        k: torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05) for k, m in models.items()
    }
    batches = []
    for _ in range(args.steps):
        x = torch.randn(args.batch, 3, 224, 224)
        batches.append((x, ours.get_random_mask(x, 0.6)))

    flops = {k: step_flops(m, *batches[0]) for k, m in models.items()}
    for k, m in models.items():  # warm-up (allocator, oneDNN primitives)
        train_step(m, optimizers[k], *batches[0])
    peak = matmul_flops_per_sec()
    best = {k: float("inf") for k in models}
    for round_index in range(args.rounds):
        # alternate who goes first, so a load that comes and goes hits both alike
        order = list(models) if round_index % 2 == 0 else list(reversed(models))
        for k in order:
            best[k] = min(best[k], time_steps(models[k], optimizers[k], batches))
    peak = max(peak, matmul_flops_per_sec())

    print(f"MAE {name}, batch {args.batch}, {args.steps} steps x {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads, fp32 on {torch.device('cpu')}")
    print(f"large matmul: {peak / 1e9:.1f} GFLOP/s")
    print(f"{'impl':<10}{'samples/s':>12}{'GFLOP/step':>12}{'GFLOP/s':>10}{'of matmul':>11}")
    rate = {}
    for k in models:
        rate[k] = args.batch * args.steps / best[k]
        achieved = flops[k] * args.steps / best[k]
        print(f"{k:<10}{rate[k]:>12.2f}{flops[k] / 1e9:>12.1f}{achieved / 1e9:>10.1f}{achieved / peak:>11.1%}")
    print(f"ratio unveil / official: {rate['unveil'] / rate['official']:.3f}x")


if __name__ == "__main__":
    main()
