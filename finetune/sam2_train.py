"""SAM 2 fine-tuning: the official training recipe's logic on Lightning, for clips and images alike.

The model is :class:`unveil.models.sam2.SAM2`. It starts from one of:

- an official SAM 2 / 2.1 checkpoint given by path (``init_checkpoint``, loaded strictly);
- an unveil backbone with absolute-win position embeddings (``init_trunk``: an ``unveil export`` file or a
  pretraining ``.ckpt``), loaded into the image-encoder trunk, every other part new;
- random weights (neither).

Each step draws one prompt plan for the batch (:mod:`unveil.finetune.prompts`), runs the prompted frames,
then tracks the others through the memory, adds correction clicks on the frames to correct (feeding the
previous low-res logits back as the mask input), and sums :class:`~unveil.finetune.sam2_losses.SAM2Loss`
over frames and correction steps, divided by the object count all-reduced across ranks.

Optimisation (the official ``sam2.1_hiera_b+_MOSE_finetune.yaml``): AdamW with ``vision_lr`` on the image
encoder and ``lr`` on the rest, both cosine down to ``min_lr_ratio`` of their value with no warmup; weight
decay except on biases and ``nn.LayerNorm`` weights; layer decay over the trunk's blocks (the patch
embedding is layer 0, block i layer i + 1, the heads the last layer), position embeddings exempt. Gradient
clipping is the Trainer's (``gradient_clip_val``), bf16 the Trainer's precision, drop path the trunk's.

Validation: J&F on whole validation videos, each object prompted by its mask on the first annotated frame
and tracked by :class:`~unveil.models.sam2.VideoPredictor` (:func:`unveil.finetune.vos_eval.predict_video`),
logged as ``val/J``, ``val/F`` and ``val/J&F``. Single images among the validation batches (one-frame
samples ``{"frames": [1, 3, S, S], "masks": [1, O, S, S]}``, the DataModule's ``val_images``) are scored by
simulated clicks instead (:mod:`unveil.finetune.click_eval`), logged as ``val/miou@1`` and ``val/miou@5``
(``val_clicks``). A picture of the first validation video (truth above, prediction below, over its first
``vis_frames`` annotated frames) is saved under the run folder's ``masks/`` and sent to the loggers as
``val/masks``.

The prompt generator's state is saved in the checkpoint and restored with it, so a resumed run draws the
prompts the uninterrupted run would have drawn.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from unveil.finetune.prompts import PromptConfig, PromptPlan, plan_prompts, sample_box, sample_clicks
from unveil.finetune.sam2_losses import SAM2Loss, SAM2LossWeights, StepPredictions
from unveil.models.sam2 import SAM2, FrameOutput, SAM2Config
from unveil.models.sam2.model import FrameFeatures, HeadsOutput, ObjectMemory

__all__ = ["SAM2FineTune", "build_sam2", "cosine_to_fraction", "forward_clip", "parameter_groups"]

OFFICIAL_PROMPTS = PromptConfig()
OFFICIAL_LOSS_WEIGHTS = SAM2LossWeights()


# ----------------------------------------------------------------------------------------- model


def build_sam2(
    size: str = "tiny",
    image_size: int = 1024,
    trunk_args: dict | None = None,
    drop_path_rate: float = 0.0,
    init_checkpoint: str | None = None,
    init_trunk: str | None = None,
) -> tuple[SAM2, str]:
    """A SAM 2 model and a line saying where its weights come from (see the module docstring).

    With ``init_trunk``, the background and window position tables' shapes come from the file unless
    ``trunk_args`` sets them.
    """
    from unveil.common.checkpoints import load_checkpoint_state
    from unveil.models.sam2.loading import load_trunk, official_trunk_state, trunk_size

    if init_checkpoint is not None and init_trunk is not None:
        raise ValueError("give init_checkpoint (a whole SAM 2) or init_trunk (an unveil trunk), not both")
    trunk_args = dict(trunk_args or {})
    trunk_args.setdefault("drop_path_rate", drop_path_rate)
    origin = "random weights"
    state = None
    if init_trunk is not None:
        state = load_checkpoint_state(init_trunk)
        try:
            trunk_state, _ = official_trunk_state(state)
            file_size = trunk_size(trunk_state)
        except ValueError as error:
            raise ValueError(f"init_trunk '{init_trunk}': {error}") from None
        if file_size != size:
            raise ValueError(f"init_trunk '{init_trunk}' holds a {file_size} trunk, but size is {size!r}")
        trunk_args.setdefault("global_pos_size", tuple(trunk_state["pos_embed"].shape[2:]))
        trunk_args.setdefault("mask_unit_size", tuple(trunk_state["pos_embed_win"].shape[2:]))
    model = SAM2(SAM2Config(trunk=size, trunk_args=trunk_args, image_size=image_size))
    if init_trunk is not None:
        report = load_trunk(model, state)
        origin = f"trunk from '{init_trunk}'; " + report.summary().replace("\n", ";")
    elif init_checkpoint is not None:
        state = load_checkpoint_state(init_checkpoint)
        own = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.image_encoder.")}
        try:
            if own:  # a SAM2FineTune .ckpt: unveil keys under the module's `model.`
                own = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
                model.load_state_dict(own, strict=True)
            else:
                model.load_official_state_dict(state, strict=True)
        except (RuntimeError, ValueError) as error:
            raise ValueError(
                f"init_checkpoint '{init_checkpoint}' does not fit sam2 {size}: {str(error)[:300]}"
            ) from None
        origin = f"every weight from '{init_checkpoint}'"
    return model, origin


# ---------------------------------------------------------------------------------------- prompts


def _frame(features: FrameFeatures, rows: torch.Tensor) -> FrameFeatures:
    return FrameFeatures([x[rows] for x in features.high_res], features.feats[rows], features.pos[rows])


def _concat(points, new):
    if points is None:
        return new
    return torch.cat([points[0], new[0]], 1), torch.cat([points[1], new[1]], 1)


def forward_clip(
    model: SAM2,
    frames: torch.Tensor,
    masks: torch.Tensor,
    object_clip: torch.Tensor,
    plan: PromptPlan,
    config: PromptConfig = OFFICIAL_PROMPTS,
    generator: torch.Generator | None = None,
) -> list[StepPredictions]:
    """SAM 2's training forward on a batch of clips under one prompt plan.

    Args:
        frames: [B, T, 3, S, S] normalised clips (T = 1: images).
        masks: [T, N, S, S] bool, the N objects of all clips; ``object_clip`` [N]: the clip of each.

    Returns:
        Per frame, the predictions of every step (the first prompt or the tracked prediction, then each
        correction click): high-res mask logits [N, M, S, S], IoUs [N, M] and object scores [N, 1].
    """
    batch, num_frames = frames.shape[:2]
    if masks.shape[0] != num_frames or object_clip.shape[0] != masks.shape[1]:
        raise ValueError(
            f"forward_clip: masks must be [T={num_frames}, N, S, S] with N = len(object_clip), "
            f"got {tuple(masks.shape)} and {tuple(object_clip.shape)}"
        )
    features = model.frame_features(frames.transpose(0, 1).flatten(0, 1))  # row t * B + b
    memory = ObjectMemory()  # batched over the N objects
    outputs: dict[int, StepPredictions] = {}
    for t in plan.order:
        frame = _frame(features, t * batch + object_clip)
        truth = masks[t]  # [N, S, S]
        is_init = t in plan.init_cond_frames
        points = None
        if is_init and not plan.use_points:
            heads = model.mask_as_output(frame.feats, frame.high_res, truth.unsqueeze(1).float())
            conditioned = None
        else:
            if is_init:
                if t in plan.box_frames:
                    points = sample_box(truth, config.box_noise, config.box_noise_bound, generator)
                else:
                    points = sample_clicks(truth, None, generator)
            conditioned = model.condition_on_memory(t, is_init, frame, memory, num_frames)
            num_points = 0 if points is None else points[1].shape[1]
            heads = model.forward_heads(
                conditioned, frame.high_res, points, None, model.use_multimask(is_init, num_points)
            )
        steps: list[HeadsOutput] = [heads]
        if t in plan.frames_to_correct:
            for _ in range(config.num_correction_clicks):
                from_truth = torch.rand((), generator=generator).item() < config.prob_clicks_from_gt
                predicted = None if from_truth else heads.high_res_masks[:, 0] > 0
                points = _concat(points, sample_clicks(truth, predicted, generator))
                multimask = model.use_multimask(is_init, points[1].shape[1])
                # the last low-res logits go back in with the new click
                heads = model.forward_heads(
                    conditioned, frame.high_res, points, heads.low_res_masks, multimask
                )
                steps.append(heads)
        out = FrameOutput(heads.low_res_masks, heads.obj_ptr, heads.object_score)
        out.maskmem_features, out.maskmem_pos_enc = model.encode_memory(
            frame, heads.high_res_masks, heads.object_score, points is not None
        )
        if is_init or (config.add_corrected_as_cond and t in plan.frames_to_correct):
            memory.cond[t] = out
        else:
            memory.non_cond[t] = out
        outputs[t] = StepPredictions(
            [h.high_res_multimasks for h in steps], [h.ious for h in steps], [h.object_score for h in steps]
        )
    return [outputs[t] for t in range(num_frames)]


# -------------------------------------------------------------------------------------- optimiser


def parameter_groups(
    model: SAM2, lr: float, vision_lr: float, weight_decay: float, layer_decay: float | None
) -> list[dict]:
    """AdamW groups with the official rules (see the module docstring); each group's ``lr`` is final."""
    no_decay = {
        id(p)
        for module in model.modules()
        if isinstance(module, nn.LayerNorm)
        for p in module.parameters(recurse=False)
    }
    trunk_prefix = "image_encoder.trunk."
    depth = len(model.image_encoder.trunk.blocks) + 1  # the heads are layer `depth`
    groups: dict[tuple[float, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        base = vision_lr if name.startswith("image_encoder.") else lr
        scale = 1.0
        if layer_decay is not None and name.startswith(trunk_prefix) and "pos_embed" not in name:
            local = name[len(trunk_prefix) :]
            layer = int(local.split(".")[1]) + 1 if local.startswith("blocks.") else 0
            scale = layer_decay ** (depth - layer)
        decay = 0.0 if ("bias" in name or id(param) in no_decay) else weight_decay
        key = (base * scale, decay)
        groups.setdefault(key, {"params": [], "lr": key[0], "weight_decay": decay})["params"].append(param)
    return list(groups.values())


def cosine_to_fraction(step: int, total_steps: int, fraction: float, warmup_steps: int = 0) -> float:
    """Learning-rate factor: cosine from 1 at step 0 to ``fraction`` at ``total_steps`` (the official schedule has
    no warmup); with ``warmup_steps``, also a linear ramp from 0 over the first steps."""
    progress = min(step / max(total_steps, 1), 1.0)
    ramp = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return ramp * (fraction + (1.0 - fraction) * 0.5 * (1.0 + math.cos(math.pi * progress)))


# ----------------------------------------------------------------------------------------- module


class SAM2FineTune(L.LightningModule):
    """Trains SAM 2 on clips and images with SAM 2's prompt simulation and loss.

    Batches are :func:`unveil.datasets.sam2_data.collate_clips` dicts (``frames`` [B, T, 3, S, S], ``masks``
    [T, N, S, S], ``object_clip`` [N]); validation batches are single videos of
    :class:`unveil.datasets.sam2_data.VOSValVideos`.

    Args:
        size: SAM 2 size (``tiny``, ``small``, ``base_plus``, ``large``).
        image_size: input side (the DataModule's ``image_size``).
        trunk_args: extra arguments of the trunk (``window_spec``, ``global_pos_size``, ...).
        drop_path_rate: the trunk's stochastic depth (SAM 2.1 fine-tuning: 0.1).
        init_checkpoint, init_trunk: where the weights come from (see the module docstring).
        freeze_image_encoder: the image encoder is not trained.
        train_only_decoder: only the mask decoder is trained.
        lr, vision_lr: peak learning rates of the rest and of the image encoder.
        min_lr_ratio: the cosine ends at this fraction of them.
        warmup_steps: a linear warmup first (0, as the official recipe: none).
        weight_decay, betas, layer_decay: AdamW and the trunk's layer decay (None: none).
        prompts: the prompt simulation; ``prompt_seed`` seeds its generator (the same on every rank).
        loss_weights: of the four loss terms.
        val_max_frames: track this many frames of each validation video (None: all).
        val_clicks: simulated clicks per object on validation images (``val/miou@1`` and ``val/miou@<this>``).
        vis_frames: frames in the validation picture (0: no picture).
    """

    def __init__(
        self,
        size: str = "base_plus",
        image_size: int = 1024,
        trunk_args: dict | None = None,
        drop_path_rate: float = 0.1,
        init_checkpoint: str | None = None,
        init_trunk: str | None = None,
        freeze_image_encoder: bool = False,
        train_only_decoder: bool = False,
        lr: float = 5e-6,
        vision_lr: float = 3e-6,
        min_lr_ratio: float = 0.1,
        warmup_steps: int = 0,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.999),
        layer_decay: float | None = 0.9,
        prompts: PromptConfig = OFFICIAL_PROMPTS,
        prompt_seed: int = 42,
        loss_weights: SAM2LossWeights = OFFICIAL_LOSS_WEIGHTS,
        val_max_frames: int | None = None,
        vis_frames: int = 8,
        val_clicks: int = 5,
    ) -> None:
        super().__init__()
        # plain dicts in the checkpoint (torch.load(weights_only=True) refuses dataclass instances)
        prompts = PromptConfig(**prompts) if isinstance(prompts, dict) else prompts
        loss_weights = SAM2LossWeights(**loss_weights) if isinstance(loss_weights, dict) else loss_weights
        self.save_hyperparameters(ignore=["prompts", "loss_weights"])
        self.hparams.update(prompts=asdict(prompts), loss_weights=asdict(loss_weights))
        if layer_decay is not None and not 0 < layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1] or null, got {layer_decay}")
        if val_clicks < 1:
            raise ValueError(f"val_clicks must be at least 1, got {val_clicks}")
        if not 0 <= min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.model, self.init_origin = build_sam2(
            size, image_size, trunk_args, drop_path_rate, init_checkpoint, init_trunk
        )
        print(f"SAM2FineTune: {self.init_origin}")
        if train_only_decoder:
            for name, param in self.model.named_parameters():
                param.requires_grad = name.startswith("sam_mask_decoder.")
        elif freeze_image_encoder:
            for param in self.model.image_encoder.parameters():
                param.requires_grad = False
        self.prompt_config = prompts
        self.generator = torch.Generator().manual_seed(prompt_seed)
        self.loss = SAM2Loss(loss_weights)
        self._val_scores: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._vis: tuple[dict, torch.Tensor] | None = None
        self._predictor = None
        self._image_predictor = None
        self._click_scores = None

    # the prompt generator's state travels with the checkpoint, so a resumed run draws the same prompts

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["prompt_generator_state"] = self.generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("prompt_generator_state")
        if state is not None:  # checkpoints written before it was saved have none
            self.generator.set_state(state)

    # ---------------------------------------------------------------------------------------- training

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        frames, masks, object_clip = batch["frames"], batch["masks"], batch["object_clip"]
        plan = plan_prompts(frames.shape[1], self.prompt_config, self.generator)
        predictions = forward_clip(
            self.model, frames, masks, object_clip, plan, self.prompt_config, self.generator
        )
        terms = self.loss(predictions, masks)
        objects = masks.shape[1]
        for name, value in terms.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=objects)
        return terms["loss"]

    # -------------------------------------------------------------------------------------- validation

    @property
    def predictor(self):
        if self._predictor is None:
            from unveil.models.sam2 import VideoPredictor

            self._predictor = VideoPredictor(self.model)
        return self._predictor

    @property
    def image_predictor(self):
        if self._image_predictor is None:
            from unveil.finetune.click_eval import TensorImagePredictor

            self._image_predictor = TensorImagePredictor(self.model)
        return self._image_predictor

    def on_validation_epoch_start(self) -> None:
        from unveil.finetune.click_eval import ClickScores

        self._val_scores = []
        self._vis = None
        self._click_scores = ClickScores(self.hparams.val_clicks)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        if "frames" in batch:  # a single image: simulated clicks
            self._click_step(batch)
            return
        from unveil.finetune.vos_eval import predict_video
        from unveil.finetune.vos_metrics import sequence_scores

        pred, truth = predict_video(
            self.predictor,
            batch["folder"],
            batch["stems"],
            batch["ids"],
            batch["masks"],
            self.hparams.val_max_frames,
        )
        self._val_scores.append(sequence_scores(pred, truth))
        if self._vis is None:
            self._vis = (batch, pred)

    @torch.no_grad()
    def _click_step(self, sample: dict) -> None:
        from unveil.finetune.click_eval import click_ious

        frames, masks = sample["frames"], sample["masks"]
        if frames.dim() != 4 or frames.shape[0] != 1:
            raise ValueError(
                f"SAM2FineTune: a validation image is one frame [1, 3, S, S], got frames {tuple(frames.shape)}"
                f" ({sample.get('key', '')})"
            )
        predictor = self.image_predictor
        predictor.set_normalized(frames[0])
        for truth in masks[0]:
            if truth.any():
                self._click_scores.update(click_ious(predictor, truth, self.hparams.val_clicks))
        predictor.reset_predictor()

    def _log_clicks(self) -> None:
        from unveil.finetune.click_eval import ClickScores

        scores = self._click_scores or ClickScores(self.hparams.val_clicks)
        totals = scores.totals().to(self.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)
        means = ClickScores.means(totals.cpu())
        for k in sorted({1, self.hparams.val_clicks}):
            if f"miou@{k}" in means:
                self.log(f"val/miou@{k}", means[f"miou@{k}"], prog_bar=k == self.hparams.val_clicks)

    def on_validation_epoch_end(self) -> None:
        self._log_clicks()  # every rank joins its all-reduce, also one without images
        # every rank joins the all-reduce, also one that got no video
        j = (
            torch.cat([s[0] for s in self._val_scores]).double()
            if self._val_scores
            else torch.zeros(0).double()
        )
        f = (
            torch.cat([s[1] for s in self._val_scores]).double()
            if self._val_scores
            else torch.zeros(0).double()
        )
        count = torch.tensor(float(j.numel()), dtype=torch.float64)
        totals = torch.stack([j.sum(), f.sum(), count]).to(self.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)
        if totals[2] == 0:
            return
        j_mean, f_mean = (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()
        self.log("val/J", j_mean)
        self.log("val/F", f_mean)
        self.log("val/J&F", (j_mean + f_mean) / 2, prog_bar=True)
        # trainer.log_dir broadcasts, so every rank asks for it; only rank 0 draws
        root = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        if self.hparams.vis_frames and self._vis is not None and self.trainer.is_global_zero:
            self.log_pictures(*self._vis, root=root)

    @torch.no_grad()
    def log_pictures(self, video: dict, pred: torch.Tensor, root: Path | None = None) -> Path | None:
        """Truth (top) and prediction (bottom) over the first frames of a validation video."""
        from PIL import Image
        from torchvision.utils import draw_segmentation_masks, make_grid
        from unveil.pretrain.visualize import save_grid, send_to_loggers

        count = min(self.hparams.vis_frames, pred.shape[0])
        colours = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0"]
        rows = [[], []]
        for t in range(count):
            with Image.open(Path(video["folder"]) / f"{video['stems'][t]}.jpg") as image:
                pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
            for row, masks in zip(rows, (video["masks"][t], pred[t])):
                # the objects present in the frame
                shown = [o for o in range(masks.shape[0]) if masks[o].any()]
                colour = [colours[o % len(colours)] for o in shown]
                drawn = (
                    draw_segmentation_masks(pixels, masks[shown].bool(), alpha=0.55, colors=colour)
                    if shown
                    else pixels
                )
                row.append(drawn)
        grid = make_grid(torch.stack(rows[0] + rows[1]).float() / 255, nrow=count, padding=2)
        root = root if root is not None else Path(self.trainer.log_dir or self.trainer.default_root_dir)
        path = save_grid(grid, root / "masks" / f"step_{self.global_step:07d}.png")
        send_to_loggers(self.loggers, "val/masks", grid, self.global_step)
        return path

    # --------------------------------------------------------------------------------------- optimiser

    def configure_optimizers(self):
        hp = self.hparams
        groups = parameter_groups(self.model, hp.lr, hp.vision_lr, hp.weight_decay, hp.layer_decay)
        if not groups:
            raise ValueError("SAM2FineTune: no parameter is trained (everything frozen)")
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_to_fraction(step, total, hp.min_lr_ratio, hp.warmup_steps)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
