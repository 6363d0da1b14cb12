"""A callback the SLURM tests add to a recipe (``{class_path: slurm_probe.Probe, ...}`` among the trainer
callbacks); the job imports this file through PYTHONPATH, which sbatch passes on.

Each rank writes ``out/rank<R>-restart<N>.json`` when training starts: its rank, the world size, the SLURM
restart count and the global step it starts from (0 on a fresh start, the checkpoint's step after a resume).
``pace`` seconds of sleep after every step of the first start (not after a restart) keep a tiny run long
enough for a test to requeue it mid-way on any machine.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from lightning.pytorch import Callback


class Probe(Callback):
    def __init__(self, out: str, pace: float = 0.0):
        self.out = Path(out)
        self.pace = pace
        self.restart = 0

    def on_train_start(self, trainer, pl_module) -> None:
        restart = self.restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "restart": restart,
            "start_step": trainer.global_step,
            "job_id": os.environ.get("SLURM_JOB_ID"),
        }
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{trainer.global_rank}-restart{restart}.json").write_text(json.dumps(record))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.pace and self.restart == 0:
            time.sleep(self.pace)
