"""Progress in the units the papers count: effective epochs under repeated sampling.

With repeated sampling R (Hiera Table 11, MAE-ST: R = 4) each pass over the videos gives every video R clips, so
one Lightning epoch is R *effective* epochs: "Epochs are always reported as effective epochs, i.e. accounting for
repeated sampling" (Hiera, Appendix A.1). A recipe therefore sets ``max_epochs`` in passes (800 effective epochs
= 200 passes at R = 4), and this callback shows the paper's count beside Lightning's.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl


def repeated_sampling_of(trainer: pl.Trainer) -> int:
    """Clips per decoded sample in training: the datamodule's ``repeated_sampling``, 1 if it has none."""
    return int(getattr(getattr(trainer, "datamodule", None), "repeated_sampling", 1) or 1)


class EffectiveEpochs(pl.Callback):
    """Log ``train/effective_epoch`` (also on the progress bar) when the data uses repeated sampling.

    The value is ``(epoch + fraction of the epoch done) × repeated_sampling``; with no repeated sampling it is
    the epoch itself and nothing is logged.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        repeats = repeated_sampling_of(trainer)
        if repeats == 1:
            return
        batches = trainer.num_training_batches
        fraction = (batch_idx + 1) / batches if math.isfinite(batches) and batches > 0 else 0.0
        effective = (trainer.current_epoch + fraction) * repeats
        pl_module.log("train/effective_epoch", float(effective), prog_bar=True, on_step=True, on_epoch=False,
                      rank_zero_only=True)
