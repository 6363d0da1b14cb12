"""Helper of ``test_mavil_ddp.py``: MAViL stage-1 losses and gradients on 2 CPU processes (gloo).

    python tests/mavil_ddp_worker.py OUT_FILE

Every rank builds the same tiny model, batch and masks (fixed seeds), computes the stage-1 losses on its half of
the global batch and backpropagates; gradients are then averaged over ranks as DDP does. Rank 0 writes
``{"losses": [per-rank dict], "grads": {name: averaged grad}, "local_inter": [per-rank inter loss without
gathering]}`` to OUT_FILE with ``torch.save``.
"""

from __future__ import annotations

import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
GLOBAL_BATCH = 8


def build():
    """The module, global batch and masks, identical on every process (and in the test's own process)."""
    from unveil.models.mavil import MAViL
    from unveil.pretrain.mavil import MAViLPretrainModule

    torch.manual_seed(0)
    model = MAViL(audio_size=(64, 128), num_frames=4, image_size=32, patch_size=16, embed_dim=32, depth=1,
                  num_heads=2, fusion_depth=1, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
                  projection_dim=16, audio_mask_ratio=0.75, video_mask_ratio=0.5)
    contrastive = {"inter_weight": 0.5, "intra_weight": 0.3, "inter_temperature": 0.1, "intra_temperature": 0.2}
    module = MAViLPretrainModule(model, contrastive=contrastive)
    g = torch.Generator().manual_seed(1)
    batch = {"fbank": torch.randn(GLOBAL_BATCH, 1, 64, 128, generator=g),
             "video": torch.randn(GLOBAL_BATCH, 3, 4, 32, 32, generator=g)}
    torch.manual_seed(2)
    masks = model.sample_masks(GLOBAL_BATCH, second_view=True)
    return module, batch, masks


def run(rank: int, port: int, out_file: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        module, batch, masks = build()
        share = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)
        local = {k: v[share] for k, v in batch.items()}
        losses = module.compute_losses(local, masks=masks.select(share))
        losses["loss"].backward()
        grads = {}
        for name, param in module.named_parameters():
            grad = param.grad if param.grad is not None else torch.zeros_like(param)
            dist.all_reduce(grad)
            grads[name] = grad / WORLD  # DDP averages gradients over ranks
        module.gather_negatives = False
        with torch.no_grad():
            local_inter = float(module.compute_losses(local, masks=masks.select(share))["inter"])
        per_rank = [None] * WORLD
        dist.all_gather_object(per_rank, ({k: float(v.detach()) for k, v in losses.items()}, local_inter))
        if rank == 0:
            torch.save({"losses": [p[0] for p in per_rank], "local_inter": [p[1] for p in per_rank],
                        "grads": grads}, out_file)
        dist.barrier()  # no rank tears gloo down while another still talks to it
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    mp.spawn(run, args=(free_port(), sys.argv[1]), nprocs=WORLD, join=True)
