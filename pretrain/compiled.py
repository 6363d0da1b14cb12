"""``torch.compile`` for the training forward of a pretraining LightningModule, shared by the MAE and MAViL modules.

The compiled callable wraps ``self.model`` but is not a submodule: parameter names, checkpoints, exports and the
optimiser groups are those of the bare model. Only the training step runs compiled; validation, pictures and
exports run the eager model, so that an evaluation in another mode or at another batch size never recompiles
the training graph. The compiled graph has static shapes (``dynamic=False``): the models take their masks as
index tensors drawn outside the compiled region, and a training batch whose size differs from the first one
(a partial last batch) is skipped rather than compiled again.
"""

from __future__ import annotations

import torch
from torch import nn


class CompiledTraining:
    """Mixin for a LightningModule with ``self.model``: the ``compile`` option.

    The module's constructor calls ``_init_compile(compile)``; ``configure_model`` builds the compiled callable;
    ``training_step`` runs ``self.train_model`` and returns None (Lightning then skips the step) when
    ``self.skips_batch(batch_size)`` says so.
    """

    def _init_compile(self, compile: bool) -> None:
        self.use_compile = bool(compile)
        self._compiled_model: nn.Module | None = None
        self._compiled_batch_size: int | None = None
        self._skipped_batches = 0

    def configure_model(self) -> None:
        if self.use_compile and self._compiled_model is None:
            # object.__setattr__: not registered as a submodule, so no '_orig_mod.' copy in the state dict
            object.__setattr__(self, "_compiled_model", torch.compile(self.model, dynamic=False))

    @property
    def train_model(self) -> nn.Module:
        """The callable the training step runs: the compiled model with ``compile``, else ``self.model``."""
        if self.use_compile and self._compiled_model is None:
            self.configure_model()  # a module used outside a Trainer (tests, benchmarks)
        return self._compiled_model if self._compiled_model is not None else self.model

    def skips_batch(self, batch_size: int) -> bool:
        """With ``compile``, whether to skip a training batch: one whose size differs from the first batch's
        would compile the graph again (minutes for a large model). Data modules drop partial last batches
        already (``drop_last=True``); this guards any other loader."""
        if not self.use_compile:
            return False
        if self._compiled_batch_size is None:
            self._compiled_batch_size = batch_size
        if batch_size == self._compiled_batch_size:
            return False
        if self._skipped_batches == 0:
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(
                f"compile: skipping a training batch of {batch_size} samples (the compiled step takes "
                f"{self._compiled_batch_size}); use drop_last=True to avoid partial batches"
            )
        self._skipped_batches += 1
        return True
