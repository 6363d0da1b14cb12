"""Classification from a pretrained backbone: end-to-end fine-tuning and the linear probe.

Both modules start from :func:`unveil.finetune.backbone.load_pretrained_backbone` (an ``unveil export``
file, a pretraining ``.ckpt`` or an official Hiera checkpoint; or ``random_init`` for a baseline), read the
batch keys of unveil's DataModules (``image`` or ``video`` for Hiera; ``fbank``, ``video`` or both for MAViL
encoders) and report:

- single-label (``multi_label: false``): ``val/top1``, ``val/top5`` (torchmetrics) and a confusion matrix
  picture (``val/confusion_matrix``) at the end of each validation;
- multi-label (AudioSet): ``val/mAP``, the mean over classes of the average precision (torchmetrics'
  macro ``MultilabelAveragePrecision``: what AudioMAE's ``util/stat.py`` averages), and a per-class AP bar
  picture (``val/per_class_ap``).

``unveil test`` (``trainer.test``) logs the same under ``test/``.

Scores of the several views of one video (``VideoDataModule(val_views=...)``: temporal clips × spatial crops,
as MAE-ST tests) arrive next to each other under one ``key`` and are averaged per video before the metrics.

Python use (the same as the recipes)::

    from unveil.finetune import FineTuneClassifier, LinearProbe
    module = FineTuneClassifier("exports/hiera_t_mae.pt", num_classes=8, optimizer={"lr": 1e-3})
    probe = LinearProbe("runs/quickstart/version_0/checkpoints/last.ckpt", num_classes=8, optimizer={"lr": 0.1})
    lightning.Trainer(max_steps=100).fit(module, datamodule=ImageDataModule("data/shapes", input_size=128))
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MultilabelAveragePrecision,
)
from unveil.common.config import as_options, plain_options
from unveil.common.schedule import OptimizerConfig
from unveil.finetune.backbone import PretrainedBackbone, load_pretrained_backbone

__all__ = ["ClassifierNet", "FineTuneClassifier", "LinearProbe", "average_views"]


# ---------------------------------------------------------------------------------------- the network


def _prefixed(matcher: dict, prefix: str) -> dict:
    """A timm ``group_matcher`` dict whose regexes match the same names under ``prefix``."""

    def fix(pattern: str) -> str:
        return pattern.replace("^", "^" + re.escape(prefix))

    out = {}
    for name, spec in matcher.items():
        if isinstance(spec, (list, tuple)):
            out[name] = [(fix(p), suffix) for p, suffix in spec]
        else:
            out[name] = fix(spec)
    return out


class ClassifierNet(nn.Module):
    """A backbone and its classifier: the math of both modules (a LightningModule holds the training).

    - Hiera: the model's own mean pool, final ``norm`` and ``head`` (the official classifier).
    - An audio or video ViT encoder (MAViL): mean of the patch tokens (CLS left out), LayerNorm, dropout,
      linear (AudioMAE's ``global_pool`` head). In training, ``mask_t_prob`` / ``mask_f_prob`` drop that
      share of whole time rows / frequency columns of audio patches before the encoder (AudioMAE's
      ``random_masking_2d``).
    - Both encoders and the fusion blocks: the audio and video means concatenated, LayerNorm, dropout, linear.

    ``features(inputs)`` gives the pooled [B, D] features (for the linear probe: Hiera's pool before its
    final norm), ``forward(inputs)`` the [B, num_classes] logits. ``inputs`` is the batch dict.
    """

    def __init__(
        self,
        backbone: PretrainedBackbone,
        num_classes: int,
        head_dropout: float = 0.0,
        head_init_std: float = 2e-5,
        mask_t_prob: float = 0.0,
        mask_f_prob: float = 0.0,
    ):
        super().__init__()
        self.kind = backbone.kind
        self.backbone = backbone.model
        self.mask_t_prob, self.mask_f_prob = mask_t_prob, mask_f_prob
        if self.kind != "audio" and (mask_t_prob or mask_f_prob):
            raise ValueError("mask_t_prob / mask_f_prob apply to audio encoders only")
        if self.kind == "hiera":
            self.num_features = self.backbone.num_features
            self.head = None  # Hiera's own head (built with num_classes by the loader)
        else:
            width = self.backbone.embed_dim * (2 if self.kind == "audio_video" else 1)
            self.num_features = width
            self.head = nn.Sequential(
                nn.LayerNorm(width, eps=1e-6), nn.Dropout(head_dropout), nn.Linear(width, num_classes)
            )
            trunc_normal_(self.head[-1].weight, std=head_init_std)  # AudioMAE: 2e-5
            nn.init.zeros_(self.head[-1].bias)

    # the input names each kind reads from a batch
    def input_keys(self, batch: dict) -> tuple[str, ...]:
        if self.kind == "hiera":
            return ("video",) if "video" in batch and "image" not in batch else ("image",)
        return {"audio": ("fbank",), "video": ("video",), "audio_video": ("fbank", "video")}[self.kind]

    def no_weight_decay(self) -> set[str]:
        names = getattr(self.backbone, "no_weight_decay", lambda: set())()
        return {f"backbone.{n}" for n in names}

    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer groups of the backbone under ``backbone.`` (the head, unmatched, gets the last: no decay)."""
        if self.kind == "audio_video":
            depth = self.backbone.depth
            blocks = [(r"^backbone\.(?:audio|video)_encoder\.blocks\.(\d+)", None)]
            blocks += [
                (rf"^backbone\.fusion_blocks\.{j}\.", (depth + j,))
                for j in range(len(self.backbone.fusion_blocks))
            ]
            blocks += [(r"^backbone\.(?:audio_encoder\.norm|video_encoder\.norm|fusion_norm)", (99999,))]
            return dict(
                stem=r"^backbone\.(?:audio|video)_encoder\.(?:cls_token|pos_embed|patch_embed)", blocks=blocks
            )
        return _prefixed(self.backbone.group_matcher(coarse), "backbone.")

    def _audio_tokens(self, fbank: torch.Tensor) -> torch.Tensor:
        """[B, 1, F, M] → encoder output [B, 1 + K, D], with time/frequency rows of patches dropped in training."""
        encoder = self.backbone
        if not (self.training and (self.mask_t_prob or self.mask_f_prob)):
            return encoder.forward_features(fbank)
        tokens = encoder.embed(fbank)  # [B, N, D], raster order over (time, frequency)
        batch, _, dim = tokens.shape
        rows, cols = encoder.grid_size
        grid = tokens.view(batch, rows, cols, dim)
        keep_rows = max(1, int(rows * (1 - self.mask_t_prob)))
        keep_cols = max(1, int(cols * (1 - self.mask_f_prob)))
        row_index = torch.rand(batch, rows, device=tokens.device).argsort(dim=1)[:, :keep_rows]  # [B, R']
        grid = grid.gather(1, row_index[:, :, None, None].expand(-1, -1, cols, dim))  # [B, R', C, D]
        col_index = torch.rand(batch, cols, device=tokens.device).argsort(dim=1)[:, :keep_cols]  # [B, C']
        grid = grid.gather(2, col_index[:, None, :, None].expand(-1, keep_rows, -1, dim))  # [B, R', C', D]
        return encoder.forward_tokens(grid.flatten(1, 2))

    def features(self, inputs: dict) -> torch.Tensor:
        """The pooled features [B, D] of a batch."""
        if self.kind == "hiera":
            (key,) = self.input_keys(inputs)
            return self.backbone.forward_features(inputs[key]).mean(dim=1)
        if self.kind == "audio":
            return self._audio_tokens(inputs["fbank"])[:, 1:].mean(dim=1)
        if self.kind == "video":
            return self.backbone.forward_features(inputs["video"])[:, 1:].mean(dim=1)
        audio, video = self.backbone(inputs["fbank"], inputs["video"])
        return torch.cat([audio[:, 1:].mean(dim=1), video[:, 1:].mean(dim=1)], dim=-1)  # [B, 2D]

    def forward(self, inputs: dict) -> torch.Tensor:
        if self.kind == "hiera":
            (key,) = self.input_keys(inputs)
            return self.backbone(inputs[key])
        return self.head(self.features(inputs))


# ---------------------------------------------------------------------------------------- shared training


def average_views(scores: torch.Tensor, labels: torch.Tensor, keys: Sequence[str] | None):
    """Average the scores [N, C] of consecutive rows with the same key (the views of one video) →
    ``(scores [V, C], labels [V, ...])``; rows without keys are their own group."""
    if keys is None or len(keys) != scores.shape[0]:
        return scores, labels
    ids, starts = [], []
    for i, key in enumerate(keys):
        if i == 0 or key != keys[i - 1]:
            starts.append(i)
        ids.append(len(starts) - 1)
    group = torch.tensor(ids, device=scores.device)
    sums = torch.zeros(len(starts), scores.shape[1], device=scores.device, dtype=scores.dtype)
    sums.index_add_(0, group, scores)
    counts = torch.bincount(group, minlength=len(starts)).to(scores.dtype)
    return sums / counts[:, None], labels[torch.tensor(starts, device=labels.device)]


def _heatmap(matrix: torch.Tensor, cell: int) -> torch.Tensor:
    """[R, C] values in [0, 1] → an RGB picture [3, R * cell, C * cell] in [0, 1] (white = 0, dark blue = 1)."""
    v = matrix.clamp(0, 1).float()
    rgb = torch.stack([1 - 0.9 * v, 1 - 0.7 * v, 1 - 0.3 * v])  # [3, R, C]
    return rgb.repeat_interleave(cell, 1).repeat_interleave(cell, 2)


def _bars(values: torch.Tensor, height: int = 128, width: int = 6) -> torch.Tensor:
    """Values in [0, 1], one per class → a bar chart [3, height, C * width] (bars rise from the bottom)."""
    v = values.nan_to_num(0.0).clamp(0, 1).float()
    rows = torch.arange(height, 0, -1, dtype=torch.float32)[:, None] / height  # [H, 1], 1 at the top
    filled = (rows <= v[None, :]).float()  # [H, C]
    filled = filled.repeat_interleave(width, 1)
    filled[:, width - 1 :: width] = 0  # a white gap between bars
    return torch.stack([1 - 0.8 * filled, 1 - 0.5 * filled, 1 - 0.1 * filled])


FINETUNE_OPTIMIZER = OptimizerConfig(
    base_lr=1e-3, weight_decay=0.05, betas=(0.9, 0.999), warmup_epochs=5.0, min_lr=1e-6
)
"""Fine-tuning's optimiser defaults (MAE ``main_finetune.py``: blr 1e-3 per 256, weight decay 0.05, AdamW
(0.9, 0.999), 5 warmup epochs, cosine to 1e-6); each recipe sets its paper's values."""

LINPROBE_OPTIMIZER = OptimizerConfig(base_lr=0.1, weight_decay=0.0, warmup_epochs=10.0, min_lr=0.0)
"""The linear probe's defaults (MAE ``main_linprobe.py``: blr 0.1 per 256, weight decay 0, 10 warmup epochs,
cosine to 0); LARS, so ``betas`` does not apply (the probe's ``momentum`` does)."""


class _ClassificationModule(pl.LightningModule):
    """What fine-tuning and the linear probe share: loading, metrics, per-video averaging, pictures, and the
    learning-rate rule (``lr``, else ``base_lr × effective batch / base_batch_size``) with a per-step warmup
    and cosine schedule."""

    def _init_common(
        self,
        checkpoint: str | None,
        model: str | None,
        modality: str | None,
        num_classes: int | None,
        multi_label: bool,
        random_init: bool,
        backbone_overrides: dict | None,
        optimizer,
        log_pictures: bool,
    ) -> None:
        """Check and keep the settings; build the model now when ``num_classes`` is known, else in
        :meth:`configure_model` from the DataModule's ``num_classes``."""
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.optimizer_config = as_options(
            type(self).__name__, "optimizer", optimizer, OptimizerConfig, self.default_optimizer
        )
        plain_options(self.hparams)
        self._backbone_args = dict(
            path=checkpoint,
            model=model,
            modality=modality,
            random_init=random_init,
            **dict(backbone_overrides or {}),
        )
        self.multi_label = multi_label
        self.log_pictures = log_pictures
        self.peak_lr: float | None = None
        self.num_classes: int | None = None
        # Loaded now, whatever num_classes is, so that a checkpoint that does not fit stops the run while the
        # module is built (one line from the CLI), not once training has started.
        from lightning.pytorch.utilities import rank_zero_info

        self.backbone_report = load_pretrained_backbone(
            num_classes=num_classes if num_classes and self._hiera_head else 0, **self._backbone_args
        )
        rank_zero_info(self.backbone_report.summary())
        if num_classes is not None:
            self._build(num_classes)

    def configure_model(self) -> None:
        if self.num_classes is not None:
            return
        num_classes = getattr(getattr(self.trainer, "datamodule", None), "num_classes", None)
        if not num_classes:
            raise ValueError(
                "set model.init_args.num_classes (the DataModule does not tell its number of classes)"
            )
        self._build(int(num_classes))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # num_classes may have come from the data: keep it, so that load_from_checkpoint builds the same model
        checkpoint.setdefault("hyper_parameters", {})["num_classes"] = self.num_classes

    def _build(self, num_classes: int) -> None:
        loaded = self.backbone_report
        hiera = loaded.model if loaded.kind == "hiera" else None
        if hiera is not None and self._hiera_head and hiera.num_classes != num_classes:
            # the number of classes came from the data: a new classifier, initialised as Hiera's own
            hiera.reset_classifier(num_classes)
            with torch.no_grad():
                trunc_normal_(hiera.head.projection.weight, std=0.02)
                hiera.head.projection.weight.mul_(hiera.config["head_init_scale"])
                hiera.head.projection.bias.zero_()
            loaded.new += [
                k for k in ("head.projection.weight", "head.projection.bias") if k not in loaded.new
            ]
        self.num_classes = num_classes
        if self.multi_label:
            self.val_metrics = MetricCollection(
                {"mAP": MultilabelAveragePrecision(num_classes, average="macro")}
            )
            self.val_class_ap = MultilabelAveragePrecision(num_classes, average=None)
        else:
            self.val_metrics = MetricCollection(
                {
                    "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
                    "top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
                }
            )
            self.val_confusion = MulticlassConfusionMatrix(num_classes, normalize="true")
        self._make_head(loaded, num_classes)

    default_optimizer = FINETUNE_OPTIMIZER  # the defaults a partial ``optimizer`` mapping is completed from
    _hiera_head = True  # Hiera's own classifier (fine-tuning) or none (the probe has its own head)

    def _make_head(self, loaded: PretrainedBackbone, num_classes: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- evaluation -------------------------------------------------------------------------------

    def _targets(self, labels: torch.Tensor) -> torch.Tensor:
        """Class indices for single-label tasks (one-hot rows, as audio DataModules give them, become indices);
        multi-hot float targets for multi-label ones."""
        if self.multi_label:
            return labels.float()
        return labels.argmax(dim=-1) if labels.ndim == 2 else labels

    def _scores(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid() if self.multi_label else logits.float().softmax(dim=-1)

    def _eval_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.multi_label:
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return F.cross_entropy(logits.float(), labels)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test")

    def _evaluate(self, batch: dict, stage: str) -> None:
        logits = self.logits(batch)
        labels = self._targets(batch["label"])
        self.log(
            f"{stage}/loss",
            self._eval_loss(logits, labels),
            prog_bar=True,
            sync_dist=True,
            batch_size=labels.shape[0],
        )
        scores, labels = average_views(self._scores(logits), labels, batch.get("key"))
        target = labels.long() if self.multi_label else labels
        self.val_metrics.update(scores, target)
        if self.multi_label:
            self.val_class_ap.update(scores, target)
        else:
            self.val_confusion.update(scores, target)

    def _finish_evaluation(self, stage: str) -> None:
        """Log the metrics of the epoch's evaluation (``val/`` or ``test/``) and its picture, then reset."""
        values = self.val_metrics.compute()
        self.log_dict({f"{stage}/{name}": value for name, value in values.items()}, prog_bar=True)
        self.val_metrics.reset()
        if self.multi_label:
            per_class = self.val_class_ap.compute()
            self.val_class_ap.reset()
            picture, tag = _bars(per_class), f"{stage}/per_class_ap"
        else:
            matrix = self.val_confusion.compute()
            self.val_confusion.reset()
            picture, tag = _heatmap(matrix, max(2, 256 // self.num_classes)), f"{stage}/confusion_matrix"
        self.last_picture = picture
        if self.log_pictures and not self.trainer.sanity_checking and self.trainer.is_global_zero:
            self._send_picture(tag, picture)

    def _send_picture(self, tag: str, picture: torch.Tensor) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

        pixels = picture.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).cpu()  # [3, H, W]
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=tag, images=[pixels.permute(1, 2, 0).numpy()], step=self.global_step)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(tag, pixels, global_step=self.global_step)

    # ---- optimisation -----------------------------------------------------------------------------

    def _peak_lr(self) -> float:
        self.peak_lr, _ = self.optimizer_config.peak_lr(self.trainer, type(self).__name__)
        return self.peak_lr

    def _scheduler(self, optimizer: torch.optim.Optimizer) -> dict:
        return self.optimizer_config.scheduled(optimizer, self.trainer, type(self).__name__)

    def lr_scheduler_step(self, scheduler, metric) -> None:
        scheduler.step_update(num_updates=self.global_step)  # timm schedulers count optimiser steps

    def _prepare_data(self) -> None:
        if self.trainer.train_dataloader is None:
            self.trainer.fit_loop.setup_data()


class FineTuneClassifier(_ClassificationModule):
    """End-to-end fine-tuning of a pretrained backbone for classification (MAE / Hiera / AudioMAE recipe).

    AdamW over timm's layer-decay parameter groups (``param_groups_layer_decay`` on the model's
    ``group_matcher``; no weight decay on norms, biases and position embeddings), warmup then cosine, timm
    ``Mixup`` / CutMix with label smoothing (``SoftTargetCrossEntropy``), or cross-entropy with label
    smoothing without them; multi-label: binary cross-entropy (AudioMAE), with mixup of the inputs and
    the multi-hot targets.

    Args:
        checkpoint: the starting point (see :func:`~unveil.finetune.backbone.load_pretrained_backbone`);
            None with ``model`` or ``random_init`` for training from scratch.
        model: factory name for plain state dicts (official Hiera) or for random init without a checkpoint.
        modality: MAViL checkpoints: ``audio``, ``video`` or ``audio_video``.
        num_classes: classes of the task; null: the DataModule's ``num_classes`` (the classifier is then built in
            ``configure_model``, and a checkpoint's own classifier is not kept: set it to keep one).
        multi_label: multi-hot labels (AudioSet): BCE and mAP; otherwise single-label: top-1/top-5.
        random_init: the checkpoint's architecture at random initialisation (a baseline).
        drop_path_rate, head_dropout: stochastic depth of the backbone, dropout before the classifier.
        backbone_overrides: other backbone arguments that do not change shapes (Hiera ``q_pool``).
        optimizer: AdamW and the schedule (:class:`~unveil.common.schedule.OptimizerConfig`): ``lr``
            absolute, else ``base_lr × effective batch / base_batch_size``; ``weight_decay``, ``betas``;
            ``warmup_epochs`` / ``warmup_steps``, then a cosine to ``min_lr``. Defaults: ``FINETUNE_OPTIMIZER``.
        layer_decay: per-layer learning-rate decay (1.0: none).
        mixup, cutmix, mixup_prob, mixup_switch_prob, label_smoothing: timm ``Mixup`` arguments (alpha 0: off).
        mask_t_prob, mask_f_prob: audio only: share of time / frequency patch rows dropped in training.
        log_pictures: log the confusion matrix / per-class AP picture at each validation end.
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        model: str | None = None,
        modality: str | None = None,
        num_classes: int | None = None,
        multi_label: bool = False,
        random_init: bool = False,
        drop_path_rate: float = 0.1,
        head_dropout: float = 0.0,
        backbone_overrides: dict[str, Any] | None = None,
        optimizer: OptimizerConfig = FINETUNE_OPTIMIZER,
        layer_decay: float = 0.75,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        mask_t_prob: float = 0.0,
        mask_f_prob: float = 0.0,
        log_pictures: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        if not 0 < layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
        overrides = dict(backbone_overrides or {})
        overrides["drop_path_rate"] = drop_path_rate
        self.head_dropout, self.mask_t_prob, self.mask_f_prob = head_dropout, mask_t_prob, mask_f_prob
        self.layer_decay = layer_decay
        self.label_smoothing = label_smoothing
        self._mixup_args = dict(
            mixup_alpha=mixup, cutmix_alpha=cutmix, prob=mixup_prob, switch_prob=mixup_switch_prob
        )
        self.mixup_fn = None
        self._init_common(
            checkpoint,
            model,
            modality,
            num_classes,
            multi_label,
            random_init,
            overrides,
            optimizer,
            log_pictures,
        )

    def _make_head(self, loaded: PretrainedBackbone, num_classes: int) -> None:
        if loaded.kind == "hiera":  # Hiera's own head: dropout before its projection (Hiera K400: 0.3 / 0.5)
            loaded.model.head.dropout = (
                nn.Dropout(self.head_dropout) if self.head_dropout > 0 else nn.Identity()
            )
        self.net = ClassifierNet(
            loaded, num_classes, self.head_dropout, mask_t_prob=self.mask_t_prob, mask_f_prob=self.mask_f_prob
        )
        if self._mixup_args["mixup_alpha"] > 0 or self._mixup_args["cutmix_alpha"] > 0:
            from timm.data import Mixup

            self.mixup_fn = Mixup(
                **self._mixup_args,
                mode="batch",
                label_smoothing=0.0 if self.multi_label else self.label_smoothing,
                num_classes=num_classes,
            )

    def logits(self, batch: dict) -> torch.Tensor:
        return self.net(batch)

    def _mix(self, batch: dict) -> tuple[dict, torch.Tensor]:
        """Mixup / CutMix of the inputs and targets of a training batch (timm ``Mixup``, batch mode)."""
        labels = self._targets(batch["label"])
        inputs = {key: batch[key] for key in self.net.input_keys(batch)}
        if self.mixup_fn is None:
            return inputs, labels
        if labels.shape[0] % 2:
            raise ValueError(f"mixup needs an even batch size, got {labels.shape[0]}")
        # timm mixes the last two dims (H, W): fold a video's time into its channels [B, 3*T, H, W]
        key, *others = inputs
        x = inputs[key]
        flat = x.flatten(1, 2).clone() if x.ndim == 5 else x.clone()
        lam = self.mixup_fn._mix_batch(flat)  # what Mixup.__call__ does: mixes in place (pairs b, B-1-b)
        inputs[key] = flat.view_as(x)
        for other in others:  # the other modality: the same pairs and weight
            inputs[other] = inputs[other] * lam + inputs[other].flip(0) * (1.0 - lam)
        if self.multi_label:
            target = labels.float() * lam + labels.float().flip(0) * (1.0 - lam)
        else:
            from timm.data.mixup import mixup_target

            target = mixup_target(labels, self.num_classes, lam, self.label_smoothing)
        return inputs, target

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        inputs, target = self._mix(batch)
        logits = self.net(inputs).float()
        if self.multi_label:
            loss = F.binary_cross_entropy_with_logits(logits, target.float())
        elif target.ndim == 2:  # soft targets from Mixup (label smoothing included)
            from timm.loss import SoftTargetCrossEntropy

            loss = SoftTargetCrossEntropy()(logits, target)
        else:
            loss = F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, batch_size=target.shape[0])
        self.log("train/lr", self.trainer.optimizers[0].param_groups[-1]["lr"], batch_size=target.shape[0])
        return loss

    def configure_optimizers(self):
        from timm.optim import param_groups_layer_decay

        self._prepare_data()
        lr = self._peak_lr()
        groups = param_groups_layer_decay(
            self.net,
            weight_decay=self.optimizer_config.weight_decay,
            no_weight_decay_list=self.net.no_weight_decay(),
            layer_decay=self.layer_decay,
        )
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=self.optimizer_config.betas)
        return self._scheduler(optimizer)


class LinearProbe(_ClassificationModule):
    """MAE's linear probe: frozen backbone, pooled features, ``BatchNorm1d(affine=False)`` + ``Linear``,
    trained with LARS (timm ``Lars``, momentum 0.9, trust coefficient 0.001 on the weight matrix, none on the
    bias: MAE's ``util/lars.py``), warmup then cosine.

    The backbone stays in eval mode (no dropout, drop path or statistics updates) and gets no gradient; only
    the head is in the optimiser. Features: Hiera's mean-pooled final tokens (before its final norm, which an
    MAE does not train); MAViL encoders: the mean of the patch tokens after the encoder's norm.

    Args: as :class:`FineTuneClassifier` where they apply; ``optimizer`` defaults to MAE's ``main_linprobe.py``
    (``LINPROBE_OPTIMIZER``: ``blr`` 0.1 per 256, weight decay 0, warmup 10 epochs, min lr 0), and
    ``momentum`` is LARS's.
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        model: str | None = None,
        modality: str | None = None,
        num_classes: int | None = None,
        multi_label: bool = False,
        random_init: bool = False,
        optimizer: OptimizerConfig = LINPROBE_OPTIMIZER,
        momentum: float = 0.9,
        log_pictures: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.momentum = momentum
        self._init_common(
            checkpoint,
            model,
            modality,
            num_classes,
            multi_label,
            random_init,
            None,
            optimizer,
            log_pictures,
        )

    default_optimizer = LINPROBE_OPTIMIZER
    _hiera_head = False

    def _make_head(self, loaded: PretrainedBackbone, num_classes: int) -> None:
        self.net = ClassifierNet(loaded, num_classes)
        self.net.requires_grad_(False)
        self.net.eval()
        width = self.net.num_features
        self.head = nn.Sequential(
            nn.BatchNorm1d(width, affine=False, eps=1e-6), nn.Linear(width, num_classes)
        )
        trunc_normal_(self.head[1].weight, std=0.01)  # MAE main_linprobe.py
        nn.init.zeros_(self.head[1].bias)

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "net", None) is not None:
            self.net.eval()  # frozen: never in training mode
        return self

    @torch.no_grad()
    def features(self, batch: dict) -> torch.Tensor:
        return self.net.features(batch).float()

    def logits(self, batch: dict) -> torch.Tensor:
        return self.head(self.features(batch))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self.logits(batch).float()
        labels = self._targets(batch["label"])
        if self.multi_label:
            loss = F.binary_cross_entropy_with_logits(logits, labels.float())
        else:
            loss = F.cross_entropy(logits, labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=labels.shape[0])
        return loss

    def configure_optimizers(self):
        from timm.optim import Lars

        self._prepare_data()
        lr = self._peak_lr()
        linear = self.head[1]
        groups = [
            {"params": [linear.weight], "weight_decay": self.optimizer_config.weight_decay, "always_adapt": True},
            {
                "params": [linear.bias],
                "weight_decay": 0.0,
                "always_adapt": False,
            },  # MAE: no trust ratio on 1-D
        ]
        optimizer = Lars(groups, lr=lr, momentum=self.momentum, trust_coeff=0.001)
        return self._scheduler(optimizer)
