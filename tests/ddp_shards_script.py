"""Helper of ``test_ddp_shards.py`` (not a test): Lightning DDP training on image shards with 2 CPU
processes (gloo). Each rank writes what it trained on to ``OUT/rank<r>.json``: the sample keys, the number
of batches per epoch and ``len()`` of its loader.

    python tests/ddp_shards_script.py SHARDS OUT --mode {disjoint,resampled} [--epochs N] [--workers N]

Lightning's DDP launcher starts rank 1 by running this script again, so it must stay a script.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import lightning as L
import torch
from unveil.datasets import ImageDataModule, ShardOptions
from unveil.datasets.skips import SkipCounterCallback


class Recorder(L.LightningModule):
    def __init__(self, out: str) -> None:
        super().__init__()
        self.out = out
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.keys: list[str] = []
        self.batches: dict[int, int] = {}

    def training_step(self, batch, batch_idx):
        self.keys += list(batch["key"])
        self.batches[self.current_epoch] = self.batches.get(self.current_epoch, 0) + 1
        return (self.weight * batch["image"].mean()) ** 2 + self.weight**2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_train_end(self) -> None:
        record = {
            "rank": self.global_rank,
            "world_size": self.trainer.world_size,
            "keys": self.keys,
            "batches": self.batches,
            "len": self.trainer.num_training_batches,
        }
        (Path(self.out) / f"rank{self.global_rank}.json").write_text(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("shards")
    parser.add_argument("out")
    parser.add_argument("--mode", choices=("disjoint", "resampled"), required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--epoch-samples", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    data = ImageDataModule(
        shards=args.shards,
        input_size=16,
        batch_size=4,
        val_split=None,
        shard_options=ShardOptions(
            resampled=args.mode == "resampled", epoch_samples=args.epoch_samples, shuffle_buffer=8
        ),
        loader={"num_workers": args.workers},
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=args.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[SkipCounterCallback(every_n_batches=1)],  # a collective every batch: must not hang
    )
    trainer.fit(Recorder(args.out), datamodule=data)


if __name__ == "__main__":
    main()
