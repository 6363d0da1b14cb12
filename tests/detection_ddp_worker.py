"""One rank of the DDP evaluation test in tests/test_detection.py (run as a subprocess per rank, gloo, CPU).

    python tests/detection_ddp_worker.py RANK WORLD_SIZE INIT_FILE INPUTS.pt OUT.json

INPUTS.pt (``torch.save``, plain tensors in dicts and lists) holds ``preds`` and ``targets``, one entry per
image in ``metric_inputs`` form, and ``shares``: for each rank, the indices of the images it evaluates. The
rank updates the metric of :class:`unveil.finetune.detection.DetectionFineTune` with its own images, two per
update like a validation batch, then calls ``compute()`` as ``on_validation_epoch_end`` does; rank 0 writes
every scalar of the result to OUT.json.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist


def main() -> None:
    rank, world_size = int(sys.argv[1]), int(sys.argv[2])
    init_file, inputs_path, out_path = sys.argv[3], sys.argv[4], sys.argv[5]
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        from unveil.finetune.detection import DetectionFineTune, compute_map

        inputs = torch.load(inputs_path, weights_only=True)
        mine = inputs["shares"][rank]
        metric = DetectionFineTune._new_metric()
        for start in range(0, len(mine), 2):
            indices = mine[start : start + 2]
            metric.update([inputs["preds"][i] for i in indices], [inputs["targets"][i] for i in indices])
        result = compute_map(metric)
        if rank == 0:
            scalars = {k: float(v) for k, v in result.items() if torch.is_tensor(v) and v.numel() == 1}
            with open(out_path, "w") as handle:
                json.dump(scalars, handle)
        dist.barrier()  # no rank tears gloo down while another still talks to it
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
