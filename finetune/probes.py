"""Online probes: how much a backbone has learned, measured while it pretrains (as solo-learn and lightly do).

``OnlineProbes`` is a Lightning callback for any pretraining recipe whose batches carry integer labels:

- a linear probe: BatchNorm without affine parameters plus a linear layer (MAE's linear-probe head) on
  detached, pooled backbone features of each training batch, trained by its own AdamW optimiser;
- a kNN probe: the features of the last ``bank_size`` training samples this rank saw are the neighbours of the
  validation samples, voted as dinov2 does (``unveil.finetune.knn``).

At the end of every validation run both are scored on the validation set and logged as ``probe/linear_top1``
and ``probe/knn_top1`` (``val_check_interval`` / ``check_val_every_n_epoch`` set how often).

It does not change pretraining: features come from a forward pass without gradients in eval mode (no drop
path, so no random numbers drawn), the head is initialised from its own seed with the global random state
untouched, it reads the batches the trainer already loaded, and its optimiser is not the module's. The
backbone's weights after N steps are bit-identical with and without it (``tests/test_probes.py``). The cost is
one forward pass of the unmasked batch per training step (``every_n_steps`` thins it out).

Recipe lines::

    trainer:
      callbacks:
        - class_path: unveil.finetune.OnlineProbes
          init_args: {backbone: model}      # the attribute of the LightningModule that holds the backbone
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from unveil.common.distributed import gather_uneven
from unveil.finetune.knn import DEFAULT_TEMPERATURE, batch_input, knn_predict, pooled_features


class OnlineProbes(pl.Callback):
    """Linear and kNN probes on a pretraining backbone's features, scored at every validation run.

    Args:
        backbone: dotted attribute path, from the LightningModule, of the module to probe (``model`` for the MAE
            module; MAViL: ``model.audio_encoder`` or ``model.video_encoder``).
        input_key: batch key of the backbone input; by default the first of ``video``, ``image``, ``fbank``.
        num_classes: classes of the labels; by default the datamodule's ``num_classes`` (when neither says, the
            probes are off, with a warning: they never stop a pretraining run).
        every_n_steps: train the linear head and add to the kNN bank on every this many training batches.
        lr: learning rate of the linear head's AdamW (no weight decay).
        k: neighbours of the kNN vote.
        temperature: temperature of the kNN vote (dinov2: 0.07).
        bank_size: training features kept per rank for the kNN bank (the most recent ones).
        seed: seed of the linear head's initialisation.
    """

    def __init__(
        self,
        backbone: str = "model",
        input_key: str | None = None,
        num_classes: int | None = None,
        every_n_steps: int = 1,
        lr: float = 1.0e-3,
        k: int = 20,
        temperature: float = DEFAULT_TEMPERATURE,
        bank_size: int = 4096,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if every_n_steps < 1 or k < 1 or bank_size < 1:
            raise ValueError(
                f"every_n_steps, k and bank_size must be >= 1, got {every_n_steps}, {k}, {bank_size}"
            )
        self.backbone_path = backbone
        self.input_key = input_key
        self.num_classes = num_classes
        self.every_n_steps = every_n_steps
        self.lr = lr
        self.k = k
        self.temperature = temperature
        self.bank_size = bank_size
        self.seed = seed
        self.head: nn.Sequential | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._bank_features: list[torch.Tensor] = []
        self._bank_labels: list[torch.Tensor] = []
        self._val_features: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []
        self._pending_state: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------------ pieces

    def _backbone(self, pl_module: pl.LightningModule) -> nn.Module:
        module: Any = pl_module
        for name in self.backbone_path.split("."):
            if not hasattr(module, name):
                raise AttributeError(
                    f"OnlineProbes: {type(pl_module).__name__} has no '{self.backbone_path}' (set backbone: to the "
                    f"attribute that holds the backbone)"
                )
            module = getattr(module, name)
        return module

    @torch.no_grad()
    def _features(self, pl_module: pl.LightningModule, batch) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Pooled features [B, C] (float32, detached) and labels [B] of a batch, or None without labels."""
        if not isinstance(batch, Mapping) or "label" not in batch:
            return None
        labels = batch["label"]
        if labels.dim() != 1 or labels.is_floating_point():
            rank_zero_warn(
                f"OnlineProbes: off, they need one integer label per sample (got {tuple(labels.shape)})"
            )
            self.num_classes = None
            return None
        backbone = self._backbone(pl_module)
        was_training = backbone.training
        backbone.eval()  # no drop path: nothing drawn from the random state
        try:
            features = pooled_features(backbone, batch_input(batch, self.input_key))
        finally:
            backbone.train(was_training)
        if features.shape[0] != labels.shape[0]:
            rank_zero_warn(
                f"OnlineProbes: off, {features.shape[0]} inputs but {labels.shape[0]} labels in a batch"
            )
            self.num_classes = None
            return None
        return features.detach().float(), labels.long()

    def _build_head(self, dim: int, device: torch.device) -> None:
        classes = self.num_classes
        with torch.random.fork_rng(devices=[]):  # the global random state stays as it was
            torch.manual_seed(self.seed)
            self.head = nn.Sequential(nn.BatchNorm1d(dim, affine=False), nn.Linear(dim, classes)).to(device)
        nn.init.zeros_(self.head[1].bias)
        self.optimizer = torch.optim.AdamW(self.head.parameters(), lr=self.lr, weight_decay=0.0)
        if self._pending_state is not None:
            self.head.load_state_dict(self._pending_state["head"])
            self.optimizer.load_state_dict(self._pending_state["optimizer"])
            self._pending_state = None

    # --------------------------------------------------------------------------------------- callbacks

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.num_classes is None:
            datamodule = getattr(trainer, "datamodule", None)
            try:
                self.num_classes = int(datamodule.num_classes) if datamodule is not None else None
            except (AttributeError, TypeError, ValueError, NotImplementedError):
                self.num_classes = None
            if self.num_classes is None:
                # a probe must never stop a pretraining run: say why it is off, once
                rank_zero_warn("OnlineProbes: off, the number of classes is unknown (set its num_classes)")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx % self.every_n_steps or self.num_classes is None:
            return
        found = self._features(pl_module, batch)
        if found is None:
            return
        features, labels = found
        if self.head is None:
            self._build_head(features.shape[1], features.device)
        with torch.enable_grad():
            self.head.train()
            loss = F.cross_entropy(self.head(features), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        pl_module.log("probe/linear_loss", loss.detach(), batch_size=labels.shape[0])
        self._bank_features.append(F.normalize(features, dim=1))
        self._bank_labels.append(labels)
        self._trim_bank()

    def _trim_bank(self) -> None:
        total = sum(f.shape[0] for f in self._bank_features)
        while self._bank_features and total - self._bank_features[0].shape[0] >= self.bank_size:
            total -= self._bank_features.pop(0).shape[0]
            self._bank_labels.pop(0)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._val_features, self._val_labels = [], []

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if trainer.sanity_checking or self.num_classes is None:
            return
        found = self._features(pl_module, batch)
        if found is not None:
            self._val_features.append(found[0])
            self._val_labels.append(found[1])

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self._val_features or self.head is None:
            return
        features, labels = torch.cat(self._val_features), torch.cat(self._val_labels)
        self._val_features, self._val_labels = [], []
        self.head.eval()
        with torch.no_grad():
            correct = (self.head(features).argmax(dim=1) == labels).float()
        linear_top1 = gather_uneven(correct).mean().item()
        bank = torch.cat(self._bank_features)[-self.bank_size :]
        bank_labels = torch.cat(self._bank_labels)[-self.bank_size :]
        queries, query_labels = gather_uneven(F.normalize(features, dim=1)), gather_uneven(labels)
        scores = knn_predict(
            bank, bank_labels, queries, self.num_classes, ks=(self.k,), temperature=self.temperature
        )
        knn_top1 = (scores[self.k].argmax(dim=1) == query_labels).float().mean().item()
        # the values are already the same on every rank
        pl_module.log("probe/linear_top1", linear_top1, rank_zero_only=True)
        pl_module.log("probe/knn_top1", knn_top1, rank_zero_only=True)

    # ------------------------------------------------------------------------------------------ resume

    def state_dict(self) -> dict[str, Any]:
        if self.head is None:
            return {}
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._pending_state = state_dict  # the head is built at the first batch, when its width is known
