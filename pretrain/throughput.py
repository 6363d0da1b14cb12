"""Training throughput as a logged metric, shared by the pretraining modules."""

from __future__ import annotations

import time

import lightning.pytorch as pl


class SamplesPerSecond:
    """Logs ``train/samples_per_sec``: the global batch (per-rank batch × world size) over the wall time since
    the previous training step. The first step after (re)starting has no previous step and logs nothing, so
    start-up and the first batch's data loading do not enter the figure."""

    def __init__(self) -> None:
        self._last: float | None = None

    def reset(self) -> None:
        self._last = None

    def log(self, module: pl.LightningModule, batch_size: int) -> None:
        now = time.perf_counter()
        if self._last is not None and now > self._last:
            samples = batch_size * module.trainer.world_size
            module.log("train/samples_per_sec", samples / (now - self._last), batch_size=batch_size)
        self._last = now
