"""Helper of ``test_ddp_equivalence.py`` (not a test): one optimiser step of a tiny image MAE-Hiera, through
Lightning and ``ImageDataModule``, on ``--devices`` CPU processes (DDP over gloo when 2) with ``--batch-size``
images per process. Each rank writes ``OUT/rank<r>.pt``: the batch's sample keys, the loss of its
training_step, the gradients the optimiser steps with (after DDP's averaging) and the weights after the step.

    python tests/ddp_equivalence_script.py IMAGES OUT --devices {1,2} --batch-size B

Lightning's DDP launcher starts rank 1 by running this script again, so it must stay a script.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from unveil.datasets import ImageDataModule
from unveil.models import MaskedAutoencoderHiera
from unveil.pretrain import MAEPretrainModule

TINY = {"input_size": (64, 64), "embed_dim": 16, "num_heads": 1, "stages": (1, 1, 1, 1), "decoder_embed_dim": 16,
        "decoder_depth": 1, "decoder_num_heads": 1, "drop_path_rate": 0.0,
        # stride-2 patches: 32 x 32 tokens, 16 mask units, so masks of different seeds rarely coincide
        "patch_kernel": (3, 3), "patch_stride": (2, 2), "patch_padding": (1, 1)}


class Record(pl.Callback):
    def __init__(self, out: Path) -> None:
        self.out = out
        self.record: dict = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.record["keys"] = list(batch["key"])

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        # DDP has all-reduced (averaged) the gradients during backward: these are what the optimiser uses.
        self.record["grads"] = {name: p.grad.detach().clone() for name, p in module.named_parameters()
                                if p.grad is not None}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.record["loss"] = outputs["loss"].detach().clone()
        self.record["weights"] = {name: p.detach().clone() for name, p in module.named_parameters()}
        self.record["world_size"] = trainer.world_size
        torch.save(self.record, self.out / f"rank{trainer.global_rank}.pt")


def run(images: str, out: str, devices: int, batch_size: int) -> None:
    pl.seed_everything(0, workers=True, verbose=False)
    model = MaskedAutoencoderHiera(**TINY)  # the same initial weights on every rank: seeded above
    module = MAEPretrainModule(model, optimizer={"lr": 1e-3, "warmup_steps": 0}, pictures={"every_n_steps": 0})
    data = ImageDataModule(root=images, input_size=64, batch_size=batch_size, val_split=None,
                           crop_scale=(0.3, 1.0),
                           loader={"num_workers": 0, "pin_memory": False})
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_steps=1,
        max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[Record(Path(out))],
    )
    trainer.fit(module, datamodule=data)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("images")
    parser.add_argument("out")
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    run(args.images, args.out, args.devices, args.batch_size)


if __name__ == "__main__":
    main()
