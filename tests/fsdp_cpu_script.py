"""Helper of ``test_presets.py`` (not a test): a few steps of a tiny image MAE on 2 CPU processes (gloo) with the
FSDP strategy built from ``presets/fsdp``, pictures every step and a checkpoint every step; with CKPT, resumes
from it. Rank 0 prints one ``RESULT {json}`` line.

    python tests/fsdp_cpu_script.py IMAGES OUT STEPS [CKPT]

FSDP is meant for GPUs, and two guards stop it on the CPU; this script lifts both, only to check the preset's
wrapping, activation checkpointing, pictures and full checkpoints where no GPU is available:
- Lightning refuses ``accelerator="cpu"`` for the class ``FSDPStrategy`` itself (not for subclasses);
- torch's FSDP looks for an accelerator unless it is given ``device_id``, which Lightning passes as None on the
  CPU; here it gets the CPU device.
Lightning's DDP launcher starts rank 1 by running this script again, so it must stay a script.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp import FullyShardedDataParallel
from unveil.datasets import ImageDataModule
from unveil.launch.cli import parse_recipe
from unveil.models import MaskedAutoencoderHiera
from unveil.pretrain import MAEPretrainModule
from unveil.pretrain.resume import AtomicCheckpointIO

_fsdp_init = FullyShardedDataParallel.__init__


def _fsdp_init_on_cpu(self, module, *args, device_id=None, **kwargs):
    _fsdp_init(self, module, *args, device_id=torch.device("cpu") if device_id is None else device_id, **kwargs)


class CPUFSDPStrategy(FSDPStrategy):
    """``FSDPStrategy`` under another class, which Lightning lets run on the CPU."""


def preset_strategy() -> CPUFSDPStrategy:
    """The strategy of ``presets/fsdp`` as the CLI parses it (class paths resolved by jsonargparse)."""
    config = parse_recipe("quickstart", "--config", "presets/fsdp")
    init_args = dict(vars(config.trainer.strategy.init_args))
    return CPUFSDPStrategy(**{**init_args, "process_group_backend": "gloo"})


def main() -> None:
    images, out, steps = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    ckpt = sys.argv[4] if len(sys.argv) > 4 else None
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    FullyShardedDataParallel.__init__ = _fsdp_init_on_cpu
    strategy = preset_strategy()
    pl.seed_everything(0, verbose=False)
    model = MaskedAutoencoderHiera(input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 1, 1),
                                   decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=1)
    module = MAEPretrainModule(model, optimizer={"lr": 1e-3, "warmup_steps": 1}, pictures={"every_n_steps": 1})
    data = ImageDataModule(root=images, input_size=64, batch_size=2, val_split=None, loader={"num_workers": 0, "pin_memory": False})
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy=strategy, max_steps=steps, max_epochs=-1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=out, plugins=[AtomicCheckpointIO()],
        callbacks=[ModelCheckpoint(dirpath=out / "checkpoints", filename="{step}", every_n_train_steps=1,
                                   save_top_k=-1, save_last=True)],
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    if trainer.is_global_zero:
        wrapped = sorted({type(m.module).__name__ for m in module.modules() if isinstance(m, FullyShardedDataParallel)})
        checkpointed = sum(type(m).__name__ == "CheckpointWrapper" for m in module.modules())
        decayed = sum(len(group["params"]) for group in trainer.optimizers[0].param_groups
                      if group["weight_decay"] > 0)
        print("RESULT " + json.dumps({"global_step": trainer.global_step, "wrapped": wrapped,
                                      "checkpointed": checkpointed, "loss": float(trainer.callback_metrics["train/loss"]),
                                      "decayed": decayed}))


if __name__ == "__main__":
    main()
