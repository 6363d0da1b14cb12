"""MAViL pretraining (Huang et al., NeurIPS 2023): the training logic around ``unveil.models.MAViL``.

Stage 1, :class:`MAViLPretrainModule`, trains from scratch with

- masked reconstruction of audio and video (per-patch normalised MSE on the hidden patches),
- inter-modal contrast: symmetric InfoNCE between the audio and video clip embeddings of the masked inputs,
- intra-modal contrast: symmetric InfoNCE between two masked views of the same modality (audio-audio and
  video-video),

with negatives from every DDP rank (``unveil.pretrain.contrastive``).

Stage 2, :class:`MAViLSelfTrainModule`, trains a new student to reconstruct, at its hidden positions, the
contextualised features of a frozen stage-1 teacher: the teacher's fusion-encoder outputs on the unmasked
inputs (averaged over ``target_layers``, normalised by a LayerNorm without parameters). The teacher comes from
``teacher_checkpoint`` (a stage-1 Lightning ``.ckpt`` or a plain state dict), is read with
``torch.load(weights_only=True)`` when the module is built, so that a wrong path or a mismatched checkpoint
stops the run before training, and stays out of the optimiser and out of the module's ``state_dict``.

Both stages log every loss term, and audio→video / video→audio retrieval recall on the validation split
(clip embeddings of the unmasked inputs). Stage 1 also draws the spectrogram and video-frame reconstructions
of a fixed set of samples under fixed masks (logger + ``reconstructions/*.png`` in the run folder).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from torchvision.utils import make_grid
from unveil.common.checkpoints import describe_mismatch, read_checkpoint, record_architecture
from unveil.common.config import as_options
from unveil.common.distributed import gather_uneven
from unveil.common.schedule import OptimizerConfig
from unveil.common.seeding import derive_seed, seeded_rng
from unveil.models.convert import unwrap_state_dict
from unveil.models.mavil import MAViL, MAViLMasks, MAViLOutput, masked_mse
from unveil.pretrain.compiled import CompiledTraining
from unveil.pretrain.contrastive import ContrastiveConfig, retrieval_recall, symmetric_info_nce
from unveil.pretrain.optim import WarmupCosineAdamW
from unveil.pretrain.resume import restore_train_loader_position, step_rng
from unveil.pretrain.throughput import SamplesPerSecond
from unveil.pretrain.visualize import (
    PictureOptions,
    ReconstructionPictures,
    reconstruction_grid,
    save_grid,
    send_to_loggers,
    validation_samples,
)

__all__ = ["MAViLPretrainModule", "MAViLSelfTrainModule", "load_mavil_state_dict", "spectrogram_grid"]


# ---------------------------------------------------------------------------------------- helpers


def spectrogram_grid(panels: Mapping[str, torch.Tensor], padding: int = 2) -> torch.Tensor:
    """A [3, H', W'] grid in [0, 1] of spectrogram pictures: per sample, one row each for ``input``,
    ``masked`` and ``reconstruction`` (each [B, 1, frames, mel]), time left to right and low frequencies at the
    bottom; the grey scale spans each sample's input range."""
    keys = ("input", "masked", "reconstruction")
    x = torch.stack([panels[k].detach().float().cpu()[:, 0] for k in keys], dim=1)  # [B, 3, frames, mel]
    low = x[:, :1].amin(dim=(2, 3), keepdim=True)
    high = x[:, :1].amax(dim=(2, 3), keepdim=True)
    x = ((x - low) / (high - low).clamp_min(1e-6)).clamp(0, 1)
    x = x.transpose(2, 3).flip(2)  # [B, 3, mel, frames], low mel at the bottom
    tiles = x.flatten(0, 1).unsqueeze(1).expand(-1, 3, -1, -1)  # grey → RGB, rows: (sample, panel)
    return make_grid(tiles, nrow=1, padding=padding, pad_value=1.0)


def load_mavil_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The MAViL weights in a checkpoint: a Lightning ``.ckpt`` of either stage (its ``state_dict`` under
    ``model.``), a ``{"model": state_dict}`` wrapper, or a plain state dict. Read with ``weights_only=True``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for anything that is not such a
    checkpoint, with the path in the message.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"MAViL teacher checkpoint not found: '{path}' (set teacher_checkpoint to the stage-1 run's .ckpt, "
            "e.g. runs/mavil_stage1_as2m/checkpoints/last.ckpt)"
        )
    checkpoint, metadata = read_checkpoint(path)
    try:
        state = dict(checkpoint) if metadata is not None else unwrap_state_dict(checkpoint)
    except (ValueError, AttributeError):
        state = {}
    if not state:
        raise ValueError(f"'{path}' holds no state dict of tensors (expected a stage-1 Lightning .ckpt)")
    if any(k.startswith("model.") for k in state):  # a LightningModule's state: the model is under "model."
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    return state


def _load_teacher(teacher: MAViL, path: str | Path) -> None:
    """Load ``path`` into ``teacher`` strictly; a mismatch raises ``ValueError`` naming the differences."""
    state = load_mavil_state_dict(path)
    problem = describe_mismatch(state, teacher.state_dict())
    if problem:
        raise ValueError(
            f"teacher checkpoint '{path}' does not match the teacher architecture ({problem}); "
            "it must be a stage-1 MAViL checkpoint of the architecture given by `teacher` (default: the "
            "student's, predicting pixels)"
        )
    teacher.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------------------- shared base

STAGE2_CONTRASTIVE = ContrastiveConfig(inter_weight=0.0, intra_weight=0.0)
"""Stage 2's default: feature reconstruction only, no contrastive terms."""

MAVIL_OPTIMIZER = OptimizerConfig(base_lr=2e-4, weight_decay=1e-4, betas=(0.9, 0.95), warmup_epochs=3.0)
"""Both stages' optimiser defaults (AdamW, base_lr per 256 samples); the recipes set their sources' values."""



class _MAViLModule(CompiledTraining, WarmupCosineAdamW, pl.LightningModule):
    """What both stages share: the optimiser and schedule, batch parsing, contrastive terms, retrieval."""

    model: MAViL

    def _init_training(
        self,
        model: MAViL,
        *,
        optimizer,
        contrastive,
        retrieval_ks: Sequence[int],
        vis_seed: int,
        compile: bool,
        **stage_arguments,
    ) -> None:
        """Check and keep what both stages share: the optimiser and schedule, the contrastive terms, retrieval
        and the compiled step. Each stage calls it with its saved hyperparameters (``**self.hparams``); the
        arguments of its own (``stage_arguments``) are left to it."""
        contrastive = as_options(
            type(self).__name__, "contrastive", contrastive, ContrastiveConfig, self.default_contrastive
        )
        self._init_optimizer(model, optimizer, MAVIL_OPTIMIZER)
        self._init_compile(compile)
        self.inter_weight, self.intra_weight = contrastive.inter_weight, contrastive.intra_weight
        self.inter_temperature, self.intra_temperature = contrastive.inter_temperature, contrastive.intra_temperature
        self.gather_negatives = contrastive.gather_negatives
        self.samples_per_sec = SamplesPerSecond()
        self.retrieval_ks = tuple(sorted(set(retrieval_ks)))
        self.vis_seed = vis_seed
        self._val_embeddings: list[tuple[torch.Tensor, torch.Tensor]] = []

    # ---- batches ----------------------------------------------------------------------------------

    @staticmethod
    def unpack(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(fbank, video, audio_valid)``; ``audio_valid`` [B] bool is None when no clip lacks audio."""
        missing = batch.get("audio_missing")
        valid = None
        if missing is not None:
            missing = torch.as_tensor(missing, device=batch["fbank"].device).bool().view(-1)
            valid = None if not bool(missing.any()) else ~missing
        return batch["fbank"], batch["video"], valid

    @property
    def wants_second_view(self) -> bool:
        return self.intra_weight > 0

    def contrastive_losses(self, out: MAViLOutput, audio_valid: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The inter- and intra-modal InfoNCE terms that have a positive weight."""
        losses = {}
        if self.inter_weight > 0:
            losses["inter"] = symmetric_info_nce(
                out.audio_embedding, out.video_embedding, self.inter_temperature, audio_valid, self.gather_negatives
            )
        if self.intra_weight > 0:
            losses["intra_audio"] = symmetric_info_nce(
                out.audio_embedding, out.audio_embedding_view2, self.intra_temperature, audio_valid,
                self.gather_negatives,
            )
            losses["intra_video"] = symmetric_info_nce(
                out.video_embedding, out.video_embedding_view2, self.intra_temperature, None, self.gather_negatives
            )
        return losses

    def weighted_contrastive(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor | float:
        total = 0.0
        if "inter" in losses:
            total = total + self.inter_weight * losses["inter"]
        if "intra_audio" in losses:
            total = total + self.intra_weight * (losses["intra_audio"] + losses["intra_video"])
        return total

    def run_model(self, fbank: torch.Tensor, video: torch.Tensor, masks: MAViLMasks | None = None) -> MAViLOutput:
        """The model's forward, with random masks drawn here (the draw the model would make) as visible-token
        indices, so that the forward has static shapes; compiled in training when ``compile`` is set."""
        if masks is None:
            masks = self.model.sample_masks(fbank.shape[0], fbank.device, second_view=self.wants_second_view,
                                            as_indices=True)
        model = self.train_model if self.training else self.model
        return model(fbank, video, masks=masks, second_view=self.wants_second_view)

    def compute_losses(self, batch: Mapping[str, torch.Tensor], masks: MAViLMasks | None = None) -> dict:
        raise NotImplementedError

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The model's class and constructor arguments, so that `unveil export` can rebuild it from the file alone.
        record_architecture(checkpoint, self.model)

    # ---- steps ------------------------------------------------------------------------------------

    def on_train_start(self) -> None:
        restore_train_loader_position(self.trainer)  # before the first batch (Lightning issue #20550)
        self.samples_per_sec.reset()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if self.skips_batch(batch["fbank"].shape[0]):  # compile: a partial batch would recompile
            return None
        # Masks and drop path depend on (run seed, epoch, batch, rank) only, so a resumed run draws the same.
        with step_rng(self, batch_idx, batch["fbank"].device):
            losses = self.compute_losses(batch)
        size = batch["fbank"].shape[0]
        # rank-local per step (no all-reduce on the step's critical path); the epoch mean is reduced once
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), prog_bar=name == "loss", batch_size=size)
        self.log("train/loss_epoch", losses["loss"].detach(), on_step=False, on_epoch=True, sync_dist=True,
                 batch_size=size)
        if self._trainer is not None and self.trainer.optimizers:
            self.log("train/lr", float(self.trainer.optimizers[0].param_groups[0]["lr"]), batch_size=size)
        if self._trainer is not None:
            self.samples_per_sec.log(self, size)
        return losses["loss"]

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, batch_idx, "test")

    @property
    def evaluates_retrieval(self) -> bool:
        """Retrieval needs trained projection heads: stage 1 always, stage 2 with the inter-modal term."""
        return self.inter_weight > 0

    def _eval_step(self, batch, batch_idx: int, stage: str) -> torch.Tensor:
        fbank, video, valid = self.unpack(batch)
        # the same masks at every evaluation
        with seeded_rng(derive_seed(self.vis_seed, "eval", batch_idx), fbank.device):
            losses = self.compute_losses(batch)
        for name, value in losses.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "loss", sync_dist=True, batch_size=fbank.shape[0])
        if self.evaluates_retrieval:
            audio_emb, video_emb = self.model.clip_embeddings(fbank, video)
            if valid is not None:
                audio_emb, video_emb = audio_emb[valid], video_emb[valid]
            self._val_embeddings.append((audio_emb.float(), video_emb.float()))
        return losses["loss"]

    def on_validation_epoch_start(self) -> None:
        self._val_embeddings = []

    def on_test_epoch_start(self) -> None:
        self._val_embeddings = []

    def on_validation_epoch_end(self) -> None:
        self._log_retrieval("val")

    def on_test_epoch_end(self) -> None:
        self._log_retrieval("test")

    def _log_retrieval(self, stage: str) -> None:
        if not self.evaluates_retrieval:
            return
        dim = self.model.audio_projection.out_features
        parts = self._val_embeddings
        audio = torch.cat([a for a, _ in parts]) if parts else torch.zeros(0, dim, device=self.device)
        video = torch.cat([v for _, v in parts]) if parts else torch.zeros(0, dim, device=self.device)
        self._val_embeddings = []
        audio, video = gather_uneven(audio), gather_uneven(video)  # clips without audio make ranks uneven
        if audio.shape[0] < 2:
            return
        for name, (query, keys) in (("a2v", (audio, video)), ("v2a", (video, audio))):
            for k, recall in retrieval_recall(query, keys, self.retrieval_ks).items():
                self.log(f"{stage}/{name}_R@{k}", recall, batch_size=audio.shape[0])
        self.log(f"{stage}/retrieval_clips", float(audio.shape[0]), batch_size=audio.shape[0])


# ---------------------------------------------------------------------------------------- stage 1


class MAViLPretrainModule(ReconstructionPictures, _MAViLModule):
    """MAViL stage 1: masked reconstruction of audio and video, plus inter- and intra-modal contrast.

    ``loss = audio_reconstruction_weight * recon_audio + video_reconstruction_weight * recon_video
    + inter_weight * inter + intra_weight * (intra_audio + intra_video)``, each term logged under
    ``train/`` and ``val/``. Clips flagged ``audio_missing`` are left out of the audio reconstruction and, as
    queries, out of the terms that involve audio.

    Args:
        model: the ``MAViL`` model (``target_dim`` None: it predicts pixels).
        optimizer: AdamW (no weight decay on norms, biases, CLS/mask tokens, position embeddings) and its
            warmup + half cosine (:class:`~unveil.common.schedule.OptimizerConfig`: ``lr``, or ``base_lr``
            per ``base_batch_size`` samples scaled to the effective batch). Defaults: ``MAVIL_OPTIMIZER``.
        audio_reconstruction_weight, video_reconstruction_weight: weights of the reconstruction terms.
        contrastive: the inter- and intra-modal InfoNCE terms (``ContrastiveConfig``: ``inter_weight``,
            ``intra_weight``, their temperatures, ``gather_negatives``; weight 0 turns a term off). Stage 1
            defaults: both weights 0.1, temperatures 0.1.
        retrieval_ks: the k of the validation recall R@k.
        pictures: the reconstruction pictures, as for ``MAEPretrainModule`` (``PictureOptions``; ``frames`` per
            video, ``display_mean`` / ``display_std`` undo the video normalisation).
        vis_seed: seed of the picture masks and the validation masks.
        compile: run the training forward through ``torch.compile`` (static shapes, one graph; see
            ``unveil.pretrain.compiled``).
    """

    default_contrastive = ContrastiveConfig()  # completes a partial ``contrastive`` mapping

    def __init__(
        self,
        model: MAViL,
        optimizer: OptimizerConfig = MAVIL_OPTIMIZER,
        audio_reconstruction_weight: float = 1.0,
        video_reconstruction_weight: float = 1.0,
        contrastive: ContrastiveConfig = ContrastiveConfig(),  # noqa: B008 - never mutated
        retrieval_ks: tuple[int, ...] = (1, 5),
        pictures: PictureOptions = PictureOptions(),  # noqa: B008 - never mutated
        vis_seed: int = 0,
        compile: bool = False,
    ):
        super().__init__()
        if model.target_dim is not None:
            raise ValueError("stage 1 reconstructs pixels: build the model with target_dim=None")
        if audio_reconstruction_weight < 0 or video_reconstruction_weight < 0:
            raise ValueError("loss weights must be >= 0")
        self.save_hyperparameters(ignore=["model"])
        self._init_picture_options(pictures)
        self._init_training(model, **self.hparams)
        self.audio_reconstruction_weight = audio_reconstruction_weight
        self.video_reconstruction_weight = video_reconstruction_weight
        self._vis_dir: Path | None = None
        self._vis_batch: dict[str, torch.Tensor] | None = None
        self._vis_masks: MAViLMasks | None = None
        self._last_vis_step: int | None = None

    def forward(self, fbank: torch.Tensor, video: torch.Tensor, masks: MAViLMasks | None = None) -> MAViLOutput:
        return self.model(fbank, video, masks=masks, second_view=self.wants_second_view)

    def compute_losses(self, batch: Mapping[str, torch.Tensor], masks: MAViLMasks | None = None) -> dict:
        """Every loss term and their weighted sum ``loss``, for a batch (``masks`` overrides random masks)."""
        fbank, video, audio_valid = self.unpack(batch)
        out = self.run_model(fbank, video, masks)
        audio_target, video_target = self.model.pixel_targets(fbank, video)
        losses = {
            "recon_audio": masked_mse(out.audio_pred, audio_target, out.masks.audio, audio_valid),
            "recon_video": masked_mse(out.video_pred, video_target, out.masks.video),
        }
        losses.update(self.contrastive_losses(out, audio_valid))
        losses["loss"] = (self.audio_reconstruction_weight * losses["recon_audio"]
                          + self.video_reconstruction_weight * losses["recon_video"]
                          + self.weighted_contrastive(losses))
        return losses

    # ---- pictures ---------------------------------------------------------------------------------

    def on_train_start(self) -> None:
        super().on_train_start()
        self._set_picture_dir()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if self._pictures_enabled() and self._vis_batch is None:
            self._init_pictures(batch)
        return super().training_step(batch, batch_idx)

    def _vis_samples_from_val(self) -> dict[str, torch.Tensor] | None:
        """``num_vis_samples`` validation clips (from any source, see ``validation_samples``), or None."""
        return validation_samples(getattr(self.trainer, "datamodule", None), self.num_vis_samples,
                                  lambda batch: {"fbank": batch["fbank"], "video": batch["video"]})

    def _init_pictures(self, batch: Mapping[str, torch.Tensor]) -> None:
        samples = self._vis_samples_from_val() if self.trainer.is_global_zero else None
        if samples is None:
            samples = {k: batch[k][: self.num_vis_samples] for k in ("fbank", "video")}
        self._vis_batch = {k: v.detach().to(self.device) for k, v in samples.items()}
        if self.global_step == 0:
            self.log_reconstructions()

    def _has_vis_samples(self) -> bool:
        return self._vis_batch is not None

    @torch.no_grad()
    def reconstruction_pictures(self, fbank: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The spectrogram grid and the video grid ([3, H, W] in [0, 1]) of the samples under fixed masks."""
        was_training = self.model.training
        self.model.eval()
        try:
            if self._vis_masks is None or self._vis_masks.audio.shape[0] != fbank.shape[0]:
                with seeded_rng(self.vis_seed, fbank.device):
                    self._vis_masks = self.model.sample_masks(fbank.shape[0], fbank.device)
            out = self.model(fbank, video, masks=self._vis_masks)
            audio_images, video_images = self.model.reconstruction_images(fbank, video, out)
        finally:
            self.model.train(was_training)
        mean, std = self._display_stats()
        return spectrogram_grid(audio_images), reconstruction_grid(video_images, mean, std, max_frames=self.vis_frames)

    def log_reconstructions(self) -> list[Path] | None:
        """Draw the fixed samples; save ``reconstructions/{spectrogram,video}_step_XXXXXX.png`` and log them.
        Every rank runs the forward pass (with FSDP each holds a shard of the weights, and all must take part);
        only global rank 0 saves; returns the PNG paths there (None elsewhere, or if this step is drawn)."""
        step = self.global_step
        if self._vis_batch is None or step == self._last_vis_step:
            return None
        self._last_vis_step = step
        spectrogram, frames = self.reconstruction_pictures(self._vis_batch["fbank"], self._vis_batch["video"])
        if not self.trainer.is_global_zero:
            return None
        vis_dir = self._vis_dir or Path(self.trainer.default_root_dir) / "reconstructions"
        paths = []
        for name, grid in (("spectrogram", spectrogram), ("video", frames)):
            paths.append(save_grid(grid, vis_dir / f"{name}_step_{step:06d}.png"))
            send_to_loggers(self.trainer.loggers, f"reconstructions/{name}", grid, step)
        return paths


# ---------------------------------------------------------------------------------------- stage 2


class MAViLSelfTrainModule(_MAViLModule):
    """MAViL stage 2: a new student reconstructs a frozen stage-1 teacher's contextualised features.

    Targets: the teacher's fusion-encoder outputs on the unmasked audio and video, at ``target_layers``
    (averaged), normalised per token by a LayerNorm without parameters, split per modality. The student
    (``model``, built with ``target_dim`` = the teacher's width) predicts them at its hidden positions:
    ``loss = audio_feature_weight * feature_audio + video_feature_weight * feature_video`` (MSE over hidden
    tokens), plus the contrastive terms when their weights are positive (off by default).

    The teacher is built with ``teacher``'s architecture (default: the student's, predicting pixels), loaded
    from ``teacher_checkpoint`` when this module is built, and frozen: eval mode, no gradients, not a
    submodule (so it is neither in the optimiser nor in ``state_dict()``/checkpoints; a resumed run reloads it
    from ``teacher_checkpoint``). It follows the module across devices and dtypes.

    Args:
        model: the student ``MAViL``.
        teacher_checkpoint: path of the stage-1 checkpoint (Lightning ``.ckpt`` or a state dict).
        teacher: the teacher's architecture, if it differs from the student's.
        target_layers: fusion blocks whose outputs are averaged into the targets (0-based, negative from the
            end); default: all of them.
        audio_feature_weight, video_feature_weight: weights of the two feature-reconstruction terms.
        contrastive: as for :class:`MAViLPretrainModule`, both terms off by default (``STAGE2_CONTRASTIVE``).
        The other arguments are those of :class:`MAViLPretrainModule`.
    """

    default_contrastive = STAGE2_CONTRASTIVE

    def __init__(
        self,
        model: MAViL,
        teacher_checkpoint: str,
        teacher: MAViL | None = None,
        target_layers: tuple[int, ...] | None = None,
        optimizer: OptimizerConfig = MAVIL_OPTIMIZER,
        audio_feature_weight: float = 1.0,
        video_feature_weight: float = 1.0,
        contrastive: ContrastiveConfig = STAGE2_CONTRASTIVE,
        retrieval_ks: tuple[int, ...] = (1, 5),
        vis_seed: int = 0,
        compile: bool = False,
    ):
        super().__init__()
        if audio_feature_weight < 0 or video_feature_weight < 0:
            raise ValueError("loss weights must be >= 0")
        if teacher is None:
            teacher = MAViL(**{**model.config, "target_dim": None})
        if teacher.target_dim is not None:
            raise ValueError("the teacher is a stage-1 model: build it with target_dim=None")
        if target_layers is None:
            target_layers = tuple(range(teacher.num_fusion_layers)) or (-1,)
        if not target_layers:
            raise ValueError("target_layers needs at least one fusion layer")
        for layer in target_layers:
            if teacher.num_fusion_layers and not -teacher.num_fusion_layers <= layer < teacher.num_fusion_layers:
                raise ValueError(f"target layer {layer} out of range: the teacher has "
                                 f"{teacher.num_fusion_layers} fusion blocks")
        if model.target_dim != teacher.embed_dim:
            raise ValueError(
                f"the student predicts {model.target_dim}-d targets but the teacher's fusion features are "
                f"{teacher.embed_dim}-d: build the student with target_dim={teacher.embed_dim}"
            )
        if (model.num_audio_tokens, model.num_video_tokens) != (teacher.num_audio_tokens, teacher.num_video_tokens):
            raise ValueError("student and teacher must see the same token grids (audio_size, num_frames, "
                             "image_size, patch_size, tubelet_frames)")
        _load_teacher(teacher, teacher_checkpoint)
        teacher.eval().requires_grad_(False)

        self.save_hyperparameters(ignore=["model", "teacher"])
        # Not a submodule: kept out of parameters(), the optimiser, DDP and state_dict().
        object.__setattr__(self, "_teacher", teacher)
        self.teacher_checkpoint = str(teacher_checkpoint)
        self.target_layers = tuple(target_layers)
        self.audio_feature_weight = audio_feature_weight
        self.video_feature_weight = video_feature_weight
        self._init_training(model, **self.hparams)

    @property
    def teacher(self) -> MAViL:
        """The frozen stage-1 model (eval mode, no gradients)."""
        return self._teacher

    def _apply(self, fn, *args, **kwargs):
        # .to(device) / .half() / .cuda() reach submodules through _apply: take the teacher along.
        super()._apply(fn, *args, **kwargs)
        if "_teacher" in self.__dict__:
            self._teacher._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        if "_teacher" in self.__dict__:
            self._teacher.eval()  # the teacher never trains (no dropout / drop path)
        return self

    @torch.no_grad()
    def teacher_targets(self, fbank: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, Na, D] and [B, Nv, D] targets from the frozen teacher on the unmasked inputs."""
        return self._teacher.contextual_targets(fbank, video, self.target_layers)

    def compute_losses(self, batch: Mapping[str, torch.Tensor], masks: MAViLMasks | None = None) -> dict:
        fbank, video, audio_valid = self.unpack(batch)
        audio_target, video_target = self.teacher_targets(fbank, video)
        out = self.run_model(fbank, video, masks)
        losses = {
            "feature_audio": masked_mse(out.audio_pred, audio_target, out.masks.audio, audio_valid),
            "feature_video": masked_mse(out.video_pred, video_target, out.masks.video),
        }
        losses.update(self.contrastive_losses(out, audio_valid))
        losses["loss"] = (self.audio_feature_weight * losses["feature_audio"]
                          + self.video_feature_weight * losses["feature_video"]
                          + self.weighted_contrastive(losses))
        return losses
