"""Mask R-CNN fine-tuning from a pretrained Hiera: the training logic, COCO AP and pictures.

The detector is :class:`unveil.models.detection.HieraMaskRCNN`; its trunk starts from ``init_checkpoint``:
an ``unveil export`` file, a pretraining ``.ckpt``, an official Hiera checkpoint (``init_model`` names its
factory) or a SAM 2 checkpoint (its ``image_encoder.trunk.*``). The keys loaded, new and left out are
printed before training.

Optimisation follows ViTDet's detectron2 recipe (which the Hiera paper's COCO runs follow): AdamW,
linear warmup from ``warmup_factor`` over ``warmup_steps``, then the learning rate times ``gamma`` at each
of ``milestones`` (fractions of the run); no weight decay on norms, biases and position embeddings; an
optional layer-wise decay over the trunk's blocks (timm's ``group_matcher``).

Evaluation: COCO box and mask AP (AP, AP50, AP75, AP small/medium/large) with torchmetrics'
``MeanAveragePrecision`` on the faster-coco-eval backend; torchmetrics gathers every rank's predictions
before computing, so under DDP the AP covers the whole validation set.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid

__all__ = ["DetectionFineTune", "load_trunk_weights", "trunk_state_from_file", "warmup_step_lr"]

AP_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")


# ----------------------------------------------------------------------------------------- initialisation


def trunk_state_from_file(path: str | Path, model: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """A Hiera trunk's weights (official key names) from any file unveil can start from.

    Returns ``(state, ignored)``: ``ignored`` maps the file's keys left out (MAE decoder, mask token,
    SAM 2 parts outside the trunk, ...) to the reason.
    """
    from unveil.common.checkpoints import load_checkpoint_state
    from unveil.finetune.backbone import load_pretrained_backbone
    from unveil.models.convert import to_official

    try:
        loaded = load_pretrained_backbone(path, model=model, q_pool=3)
    except ValueError as error:
        if "plain state dict" not in str(error) and "not a Hiera" not in str(error):
            raise
        # official Hiera or SAM 2 weights with no architecture record: convert the keys only
        state, report = to_official(load_checkpoint_state(path))
        return state, dict(report.dropped)
    state = loaded.model.state_dict()
    return {k: state[k] for k in loaded.loaded}, dict(loaded.ignored)


def load_trunk_weights(trunk: nn.Module, state: dict[str, torch.Tensor], origin: str = "") -> dict[str, list]:
    """Load official-key Hiera weights into a detection trunk (``Hiera`` or ``HieraDet``).

    The final ``norm`` and classifier ``head`` are not part of a detection trunk and are left out.
    Raises ``ValueError`` when a trunk key is missing from ``state`` or has another shape (e.g. a
    windowed trunk from weights without absolute-win position embeddings).

    Returns ``{"loaded": [...], "unused": [...]}`` (trunk key names).
    """
    from unveil.common.checkpoints import describe_mismatch

    expected = trunk.state_dict()
    unused = sorted(k for k in state if k not in expected)
    problem = describe_mismatch({k: v for k, v in state.items() if k in expected}, expected)
    if problem:
        raise ValueError(f"{origin or 'weights'} do not fit the detection trunk: {problem}")
    trunk.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=True)
    return {"loaded": sorted(expected), "unused": unused}


# ------------------------------------------------------------------------------------------------ schedule


def warmup_step_lr(
    step: int, total_steps: int, warmup_steps: int, warmup_factor: float, milestones: Sequence[float], gamma: float
) -> float:
    """Learning-rate multiplier: linear warmup from ``warmup_factor`` to 1 over ``warmup_steps``, then
    ``gamma`` per milestone passed (milestones are fractions of ``total_steps``), as detectron2's
    ``WarmupParamScheduler`` over ``MultiStepParamScheduler``."""
    factor = gamma ** sum(step >= round(m * total_steps) for m in milestones)
    if step < warmup_steps:
        alpha = step / warmup_steps
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


# ---------------------------------------------------------------------------------------------- module


def compute_map(metric) -> dict:
    """COCO AP of a ``MeanAveragePrecision`` over the images of every rank, however many each evaluated.

    Under DDP each rank's accumulated detections and targets are gathered as objects into one fresh metric
    (torchmetrics' own sync all-gathers one tensor per image, which needs equal image counts on all ranks).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return metric.compute()
    cpu = lambda value: value.cpu() if torch.is_tensor(value) else value
    state = {name: [cpu(item) for item in getattr(metric, name)] for name in metric._defaults}
    states: list = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    merged = copy.deepcopy(metric)  # the same settings; its states replaced by every rank's
    merged.sync_on_compute = False
    for name in merged._defaults:
        setattr(merged, name, [item for rank_state in states for item in rank_state[name]])
    merged._update_count = 1  # compute() warns on a metric never updated
    return merged.compute()


class DetectionFineTune(L.LightningModule):
    """Fine-tunes a :class:`~unveil.models.detection.HieraMaskRCNN` on detection batches
    (``{"image": list, "target": list, "key": list}``, see :mod:`unveil.datasets.coco`).

    Args:
        model: the detector (drop path is its ``drop_path_rate``).
        init_checkpoint: weights for the trunk (see the module docstring); None: random trunk.
        init_model: factory name for plain official Hiera state dicts (``hiera_base_224``).
        lr, weight_decay, betas: AdamW.
        layer_decay: per-block learning-rate decay of the trunk (None or 1.0: none, as the Hiera paper).
        warmup_steps, warmup_factor, milestones, gamma: the step schedule (see :func:`warmup_step_lr`).
        log_images_every_n_steps: draw predictions on ``num_vis_images`` fixed validation images every so
            many training steps (0: never); saved under the run folder's ``detections/`` and sent to the loggers.
        vis_score_threshold: detections drawn have at least this score.
    """

    def __init__(
        self,
        model: nn.Module,
        init_checkpoint: str | None = None,
        init_model: str | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.999),
        layer_decay: float | None = None,
        warmup_steps: int = 250,
        warmup_factor: float = 0.001,
        milestones: Sequence[float] = (0.888889, 0.962963),
        gamma: float = 0.1,
        log_images_every_n_steps: int = 0,
        num_vis_images: int = 4,
        vis_score_threshold: float = 0.5,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        if layer_decay is not None and not 0 < layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1] or null, got {layer_decay}")
        if any(not 0 < m <= 1 for m in milestones):
            raise ValueError(f"milestones are fractions of the run in (0, 1], got {tuple(milestones)}")
        self.model = model
        self.init_report: dict = {}
        if init_checkpoint is not None:
            state, ignored = trunk_state_from_file(init_checkpoint, init_model)
            report = load_trunk_weights(model.trunk, state, origin=f"'{init_checkpoint}'")
            trunk_keys = {f"trunk.{k}" for k in report["loaded"]}
            new = [k for k in model.state_dict() if not k.startswith("backbone.body.trunk.")]
            self.init_report = {"loaded": sorted(trunk_keys), "new": new, "ignored": {**ignored}}
            print(
                f"init_checkpoint '{init_checkpoint}': {len(report['loaded'])} trunk keys loaded; "
                f"{len(new)} new (neck, RPN and RoI heads); {len(ignored) + len(report['unused'])} keys of the "
                f"file not used ({', '.join(list(ignored)[:4])}{', ...' if len(ignored) > 4 else ''})"
            )
        self.map_metric = self._new_metric()
        self.vis_batch: dict | None = None
        self._picture_root: Path | None = None

    def on_fit_start(self) -> None:
        # trainer.log_dir broadcasts, so every rank asks for it here; only rank 0 draws (log_pictures)
        self._picture_root = Path(self.trainer.log_dir or self.trainer.default_root_dir)

    @staticmethod
    def _new_metric():
        from torchmetrics.detection import MeanAveragePrecision

        # gathered by compute_map: torchmetrics' own sync needs the same number of images on every rank
        return MeanAveragePrecision(backend="faster_coco_eval", iou_type=("bbox", "segm"), sync_on_compute=False)

    # ---------------------------------------------------------------------------------------- training

    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        return self.model(images)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        targets = [{k: v for k, v in t.items() if k in ("boxes", "labels", "masks")} for t in batch["target"]]
        losses = self.model(batch["image"], targets)
        loss = sum(losses.values())
        size = len(batch["image"])
        for name, value in losses.items():
            self.log(f"train/{name}", value, batch_size=size)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        every = self.hparams.log_images_every_n_steps
        if every and self.global_step % every == 0 and self.trainer.is_global_zero:
            self.log_pictures()
        return loss

    # -------------------------------------------------------------------------------------- evaluation

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        predictions = self.model(batch["image"])
        self.map_metric.update(*metric_inputs(predictions, batch["target"]))

    def on_validation_epoch_end(self) -> None:
        result = compute_map(self.map_metric)  # every rank's images
        self.map_metric.reset()
        for iou_type in ("bbox", "segm"):
            for key in AP_KEYS:
                value = result.get(f"{iou_type}_{key}")
                if value is not None:
                    self.log(f"val/{iou_type}_{key.replace('map', 'AP')}", float(value), sync_dist=False)

    # ------------------------------------------------------------------------------------------ pictures

    def _vis_batch(self) -> dict | None:
        if self.vis_batch is None:
            loaders = self.trainer.val_dataloaders if self.trainer is not None else None
            loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
            dataset = getattr(loader, "dataset", None)
            if dataset is None or not hasattr(dataset, "__getitem__"):
                return None
            count = min(self.hparams.num_vis_images, len(dataset))
            samples = [dataset[i] for i in range(count)]  # fixed: the first validation images
            self.vis_batch = {"image": [s["image"] for s in samples], "key": [s["key"] for s in samples]}
        return self.vis_batch

    @torch.no_grad()
    def log_pictures(self) -> Path | None:
        """Draw the detections on the fixed validation images; save a PNG and send it to the loggers."""
        from unveil.pretrain.visualize import save_grid, send_to_loggers

        batch = self._vis_batch()
        if batch is None:
            return None
        was_training = self.model.training
        self.model.eval()
        images = [image.to(self.device) for image in batch["image"]]
        predictions = self.model(images)
        self.model.train(was_training)
        side = max(max(image.shape[-2:]) for image in images)
        panels = [draw_detections(image.cpu(), pred, self.hparams.vis_score_threshold) for image, pred in
                  zip(images, predictions)]
        panels = [nn.functional.pad(p, (0, side - p.shape[-1], 0, side - p.shape[-2])) for p in panels]
        grid = make_grid(torch.stack(panels).float() / 255, nrow=len(panels), padding=2)
        root = self._picture_root or Path(self.trainer.log_dir or self.trainer.default_root_dir)
        path = save_grid(grid, root / "detections" / f"step_{self.global_step:07d}.png")
        send_to_loggers(self.loggers, "val/detections", grid, self.global_step)
        return path

    # --------------------------------------------------------------------------------------- optimiser

    def configure_optimizers(self):
        groups = parameter_groups(self.model, self.hparams.weight_decay, self.hparams.layer_decay)
        for group in groups:
            group["lr"] = self.hparams.lr * group.get("lr_scale", 1.0)
        optimizer = torch.optim.AdamW(groups, lr=self.hparams.lr, betas=tuple(self.hparams.betas))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        hp = self.hparams

        def factor(step: int) -> float:
            return warmup_step_lr(step, total, hp.warmup_steps, hp.warmup_factor, hp.milestones, hp.gamma)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def parameter_groups(model: nn.Module, weight_decay: float, layer_decay: float | None) -> list[dict]:
    """AdamW groups: no weight decay on 1-D parameters (norms, biases) and the trunk's position
    embeddings; with ``layer_decay``, the trunk's blocks scaled by ``layer_decay ** (depth - layer)``
    (timm's ``group_matcher`` numbering: stem 0, block i → i + 1), neck and heads by 1."""
    no_decay = set(getattr(model, "no_weight_decay", lambda: set())())
    trunk = model.trunk
    prefix = "backbone.body.trunk."
    depth = len(trunk.blocks) + 1
    groups: dict[tuple[bool, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not (param.ndim <= 1 or name in no_decay)
        scale = 1.0
        if layer_decay is not None and layer_decay < 1 and name.startswith(prefix):
            local = name[len(prefix):]
            layer = int(local.split(".")[1]) + 1 if local.startswith("blocks.") else 0
            scale = layer_decay ** (depth - layer)
        key = (decay, scale)
        group = groups.setdefault(
            key, {"params": [], "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale}
        )
        group["params"].append(param)
    return list(groups.values())


def metric_inputs(predictions: list[dict], targets: list[dict]) -> tuple[list[dict], list[dict]]:
    """Detector outputs and targets → torchmetrics ``MeanAveragePrecision`` inputs (bool masks, crowd
    flags and COCO areas kept)."""
    preds = []
    for p in predictions:
        masks = p["masks"][:, 0] > 0.5 if p["masks"].ndim == 4 else p["masks"].bool()
        preds.append({"boxes": p["boxes"].float(), "scores": p["scores"].float(), "labels": p["labels"], "masks": masks})
    gts = []
    for t in targets:
        gt = {"boxes": t["boxes"].float(), "labels": t["labels"], "masks": t["masks"].bool()}
        if "iscrowd" in t:
            gt["iscrowd"] = t["iscrowd"]
        if "area" in t:
            gt["area"] = t["area"].float()
        gts.append(gt)
    return preds, gts


def draw_detections(image: torch.Tensor, prediction: dict, threshold: float = 0.5) -> torch.Tensor:
    """uint8 [3, H, W]: the image with the masks and boxes of detections scoring ``threshold`` or more."""
    pixels = (image.clamp(0, 1) * 255).to(torch.uint8)
    keep = prediction["scores"] >= threshold
    if keep.any():
        masks = prediction["masks"][keep][:, 0] > 0.5
        pixels = draw_segmentation_masks(pixels, masks, alpha=0.45)
        labels = [f"{int(c)}:{s:.2f}" for c, s in zip(prediction["labels"][keep], prediction["scores"][keep])]
        pixels = draw_bounding_boxes(pixels, prediction["boxes"][keep], labels=labels, width=2)
    return pixels
