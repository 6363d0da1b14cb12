"""Run by tests/test_sam2_losses.py: under a 2-process gloo group with different object counts per rank,
our loss normalises by the all-reduced mean object count exactly as the official loss does."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def worker(rank: int, init_file: str, queue) -> None:
    from test_sam2_losses import _case, _official_loss
    from unveil.finetune.sam2_losses import SAM2Loss, mean_object_count

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(rank)
    objects = (1, 4)[rank]  # mean 2.5 objects per rank
    ours_in, official_in, targets = _case(3, objects, [2, 1, 1], [3, 1, 1])
    ours = SAM2Loss()(ours_in, targets)["loss"].item()
    official = _official_loss()(official_in, targets)["core_loss"].item()
    queue.put((rank, mean_object_count(objects, targets.device), ours, official))
    dist.barrier()  # no rank tears gloo down while another still talks to it
    dist.destroy_process_group()


def main(folder: str) -> None:
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=worker, args=(rank, f"{folder}/init", queue)) for rank in range(2)]
    for process in processes:
        process.start()
    results = sorted(queue.get(timeout=200) for _ in processes)
    for process in processes:
        process.join()
        assert process.exitcode == 0, process.exitcode
    for rank, count, ours, official in results:
        assert count == 2.5, (rank, count)
        assert abs(ours - official) <= 1e-6 * max(1.0, abs(official)), (rank, ours, official)
    print("ddp sam2 loss ok", results)


if __name__ == "__main__":
    main(sys.argv[1])
