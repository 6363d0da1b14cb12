"""MAViL: Masked Audio-Video Learners (Huang et al., NeurIPS 2023), the model.

Two ViT encoders, one per modality, then a small fusion encoder over the concatenated tokens of both, then one
decoder per modality::

    fbank [B, 1, frames, mel] ─ AudioEncoder (16x16 patches) ─┐                  ┌─ audio decoder → [B, Na, P_a]
                                                              ├─ fusion blocks ──┤
    video [B, 3, T, H, W] ──── VideoEncoder (2x16x16 tubelets)┘                  └─ video decoder → [B, Nv, P_v]

With masking, each encoder sees only its visible patches and the fusion encoder only the visible tokens of
both; each decoder puts mask tokens back at the hidden positions and predicts every patch. Clip embeddings for
the contrastive terms are the mean of an encoder's visible patch tokens (CLS excluded) through a linear
projection head.

The same module serves both stages: in stage 1 the decoders predict pixels (``target_dim=None``); in stage 2 a
new model with ``target_dim`` = the teacher's width predicts the teacher's contextualised fusion features
(:meth:`MAViL.contextual_targets`).

Masks are bool [B, N] with **True = visible** (the convention of ``MaskedAutoencoderHiera``).

Each encoder is a timm-style ViT (``forward_features``, ``no_weight_decay``, ``group_matcher``) and exports as a
timm ``VisionTransformer``: :func:`mavil_encoder_to_timm` and :func:`create_timm_encoder`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, trunc_normal_
from torch import nn
from unveil.common.config import records_config

from .layers import normalize_patches, patch_mean_std, random_keep_indices, random_keep_mask
from .vit import (
    LAYER_NORM_EPS,
    TubeletEmbed,
    ViTEncoder,
    gather_tokens,
    init_mae_weights,
    keep_indices,
    keep_mask,
    sincos_pos_embed_2d,
    sincos_pos_embed_3d,
    vit_blocks,
)

__all__ = [
    "AudioEncoder",
    "MAViL",
    "MAViLMasks",
    "MAViLOutput",
    "MaskedTokenDecoder",
    "VideoEncoder",
    "create_timm_encoder",
    "masked_mse",
    "mavil_encoder_to_timm",
    "mavil_vit_base_patch16",
    "mavil_vit_large_patch16",
    "mavil_vit_small_patch16",
    "random_keep_indices",
    "random_keep_mask",
]


# ---------------------------------------------------------------------------------------- encoders


class AudioEncoder(ViTEncoder):
    """ViT over a log-mel fbank [B, 1, frames, mel]: ``patch_size`` square patches, raster order over (time,
    frequency); 1024x128 with 16x16 patches gives 64x8 = 512 tokens (AudioMAE)."""

    @records_config
    def __init__(
        self,
        audio_size: Sequence[int] = (1024, 128),
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
    ):
        audio_size = tuple(audio_size)
        if audio_size[0] % patch_size or audio_size[1] % patch_size:
            raise ValueError(f"fbank size {audio_size} does not divide into {patch_size}x{patch_size} patches")
        embed = PatchEmbed(img_size=audio_size, patch_size=patch_size, in_chans=1, embed_dim=embed_dim)
        super().__init__(embed, embed_dim, depth, num_heads, mlp_ratio, drop_path_rate)
        self.audio_size = audio_size
        self.patch_size = patch_size

    def patchify(self, fbank: torch.Tensor) -> torch.Tensor:
        """[B, 1, frames, mel] → [B, N, p * p] in token order."""
        p = self.patch_size
        patches = fbank.unfold(2, p, p).unfold(3, p, p)  # [B, 1, F/p, M/p, p, p]
        return patches.permute(0, 2, 3, 4, 5, 1).flatten(1, 2).flatten(2)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`patchify`: [B, N, p * p] → [B, 1, frames, mel]."""
        p, (h, w) = self.patch_size, self.grid_size
        x = patches.reshape(patches.shape[0], h, w, p, p).permute(0, 1, 3, 2, 4)  # [B, h, p, w, p]
        return x.reshape(patches.shape[0], 1, h * p, w * p)


class VideoEncoder(ViTEncoder):
    """ViT over video [B, 3, T, H, W] in ``tubelet_frames x patch x patch`` tubelets, raster order over (time,
    rows, columns); 8x224x224 with 2x16x16 tubelets gives 4x14x14 = 784 tokens."""

    @records_config
    def __init__(
        self,
        num_frames: int = 8,
        image_size: int = 224,
        patch_size: int = 16,
        tubelet_frames: int = 2,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
    ):
        embed = TubeletEmbed(image_size, patch_size, 3, embed_dim, num_frames=num_frames, tubelet_frames=tubelet_frames)
        super().__init__(embed, embed_dim, depth, num_heads, mlp_ratio, drop_path_rate)
        self.num_frames = num_frames
        self.image_size = image_size
        self.patch_size = patch_size
        self.tubelet_frames = tubelet_frames

    def patchify(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] → [B, N, t * p * p * 3] in token order (channels last within a tubelet)."""
        t, p = self.tubelet_frames, self.patch_size
        patches = video.unfold(2, t, t).unfold(3, p, p).unfold(4, p, p)  # [B, 3, T', H', W', t, p, p]
        return patches.permute(0, 2, 3, 4, 5, 6, 7, 1).flatten(1, 3).flatten(2)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`patchify`: [B, N, t * p * p * 3] → [B, 3, T, H, W]."""
        t, p, (gt, gh, gw) = self.tubelet_frames, self.patch_size, self.grid_size
        b = patches.shape[0]
        x = patches.reshape(b, gt, gh, gw, t, p, p, 3).permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, 3, T', t, H', p, W', p]
        return x.reshape(b, 3, gt * t, gh * p, gw * p)


# ---------------------------------------------------------------------------------------- decoder


class MaskedTokenDecoder(nn.Module):
    """MAE decoder for one modality: encoder tokens (CLS + visible) → a prediction for every patch.

    The visible tokens go back to their positions, mask tokens fill the hidden ones, fixed sin-cos position
    embeddings are added and a plain transformer runs over all of them.

    Args:
        grid: the modality's token grid (2-D for audio, 3-D for video).
        in_dim: width of the incoming tokens.
        embed_dim, depth, num_heads, mlp_ratio: the decoder transformer.
        out_dim: size of each prediction (pixels per patch, or the width of stage-2 feature targets).
    """

    def __init__(
        self,
        grid: Sequence[int],
        in_dim: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        out_dim: int,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        self.grid = tuple(grid)
        table = sincos_pos_embed_2d if len(self.grid) == 2 else sincos_pos_embed_3d
        pos = torch.cat([torch.zeros(1, embed_dim), table(embed_dim, self.grid)])
        self.register_buffer("pos_embed", pos.unsqueeze(0), persistent=True)  # [1, 1 + N, D_dec]
        self.embed = nn.Linear(in_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.blocks = vit_blocks(embed_dim, depth, num_heads, mlp_ratio)
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.pred = nn.Linear(embed_dim, out_dim)
        self.apply(init_mae_weights)
        trunc_normal_(self.mask_token, std=0.02)

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """tokens [B, 1 + K, D_in] (CLS first), keep [B, N] bool or [B, K] visible indices → [B, N, out_dim]."""
        x = self.embed(tokens)  # [B, 1 + K, D]
        b, n, d = x.shape[0], math.prod(self.grid), x.shape[-1]
        full = self.mask_token.to(x.dtype).expand(b, n, d)
        index = keep_indices(keep).unsqueeze(-1).expand(-1, -1, d)
        full = full.scatter(1, index, x[:, 1:])  # [B, N, D]: visible tokens back in place
        x = torch.cat([x[:, :1], full], dim=1) + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, 1:]


# ---------------------------------------------------------------------------------------- masking and loss


def masked_mse(
    pred: torch.Tensor, target: torch.Tensor, keep: torch.Tensor, sample_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error over the hidden tokens (``keep`` False), averaged over channels then tokens.

    ``sample_weight`` [B] (e.g. 0 for clips without audio) weights each sample's hidden tokens; a batch whose
    weights are all zero gives 0 (with a graph, so every rank still runs the same backward).
    """
    per_token = (pred.float() - target.float()).pow(2).mean(dim=-1)  # [B, N]
    hidden = (~keep).float()
    if sample_weight is not None:
        hidden = hidden * sample_weight.float().view(-1, 1)
    return (per_token * hidden).sum() / hidden.sum().clamp_min(1.0)


class MAViLMasks(NamedTuple):
    """Masks of one forward pass, each [B, N] bool with True = visible. The second view (for the intra-modal
    contrastive term) is optional. As an input to :meth:`MAViL.forward` each may instead be [B, K] ascending
    indices of the visible tokens (``as_indices`` of :meth:`MAViL.sample_masks`), which keeps the forward
    graph-safe; the forward always returns bool masks."""

    audio: torch.Tensor
    video: torch.Tensor
    audio_view2: torch.Tensor | None = None
    video_view2: torch.Tensor | None = None

    def select(self, index: slice | torch.Tensor) -> MAViLMasks:
        """The masks of a subset of the batch (e.g. one rank's share of a global batch)."""
        return MAViLMasks(*(None if m is None else m[index] for m in self))


class MAViLOutput(NamedTuple):
    """What :meth:`MAViL.forward` returns.

    audio_pred: [B, Na, P_a] decoder predictions for every audio patch (pixels, or stage-2 features).
    video_pred: [B, Nv, P_v] likewise for video.
    masks: the masks used.
    audio_embedding, video_embedding: [B, E] projected clip embeddings of the (first) masked view.
    audio_embedding_view2, video_embedding_view2: [B, E] of the second view, or None.
    """

    audio_pred: torch.Tensor
    video_pred: torch.Tensor
    masks: MAViLMasks
    audio_embedding: torch.Tensor
    video_embedding: torch.Tensor
    audio_embedding_view2: torch.Tensor | None
    video_embedding_view2: torch.Tensor | None


# ---------------------------------------------------------------------------------------- the model


class MAViL(nn.Module):
    """Audio and video encoders, a fusion encoder and two decoders (see the module docstring).

    Args:
        audio_size: fbank size (frames, mel bins); 1024x128 is 10.24 s at a 10 ms hop (AudioMAE).
        num_frames: video frames per clip (8 = 4 s at 2 fps, as the released MAViL model takes).
        image_size: frame size (square).
        patch_size: patch side, for audio patches and video tubelets.
        tubelet_frames: frames per video tubelet.
        embed_dim, depth, num_heads, mlp_ratio: each encoder (ViT-S/B/L: the factories).
        fusion_depth: transformer blocks over the concatenated audio and video tokens (MAViL pretrains "a
            2-layer Transformer"; its released, fine-tuned model has 3).
        decoder_embed_dim, decoder_depth, decoder_num_heads: each of the two decoders.
        projection_dim: width of the clip embeddings of the contrastive terms (linear heads).
        audio_mask_ratio, video_mask_ratio: share of hidden patches when masks are drawn at random.
        norm_pix_loss: normalise every target patch (MAE); used by :meth:`pixel_targets`.
        target_dim: None to predict pixels (stage 1); the teacher's width to predict features (stage 2).
        drop_path_rate: stochastic depth of the encoders.
    """

    @records_config
    def __init__(
        self,
        audio_size: tuple[int, int] = (1024, 128),
        num_frames: int = 8,
        image_size: int = 224,
        patch_size: int = 16,
        tubelet_frames: int = 2,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        fusion_depth: int = 2,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        projection_dim: int = 256,
        audio_mask_ratio: float = 0.8,
        video_mask_ratio: float = 0.9,
        norm_pix_loss: bool = True,
        target_dim: int | None = None,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        for name, ratio in (("audio_mask_ratio", audio_mask_ratio), ("video_mask_ratio", video_mask_ratio)):
            if not 0.0 <= ratio < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {ratio}")
        self.audio_mask_ratio = audio_mask_ratio
        self.video_mask_ratio = video_mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.target_dim = target_dim
        self.embed_dim = embed_dim

        self.audio_encoder = AudioEncoder(audio_size, patch_size, embed_dim, depth, num_heads, mlp_ratio,
                                          drop_path_rate)
        self.video_encoder = VideoEncoder(num_frames, image_size, patch_size, tubelet_frames, embed_dim, depth,
                                          num_heads, mlp_ratio, drop_path_rate)
        self.fusion_blocks = vit_blocks(embed_dim, fusion_depth, num_heads, mlp_ratio)
        self.fusion_norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)

        audio_out = target_dim or patch_size * patch_size
        video_out = target_dim or tubelet_frames * patch_size * patch_size * 3
        self.audio_decoder = MaskedTokenDecoder(self.audio_encoder.grid_size, embed_dim, decoder_embed_dim,
                                                decoder_depth, decoder_num_heads, audio_out, mlp_ratio)
        self.video_decoder = MaskedTokenDecoder(self.video_encoder.grid_size, embed_dim, decoder_embed_dim,
                                                decoder_depth, decoder_num_heads, video_out, mlp_ratio)
        self.audio_projection = nn.Linear(embed_dim, projection_dim)
        self.video_projection = nn.Linear(embed_dim, projection_dim)
        for module in (self.fusion_blocks, self.fusion_norm, self.audio_projection, self.video_projection):
            module.apply(init_mae_weights)

    # ---- timm-style surface ---------------------------------------------------------------------

    @property
    def num_audio_tokens(self) -> int:
        return self.audio_encoder.num_patches

    @property
    def num_video_tokens(self) -> int:
        return self.video_encoder.num_patches

    @property
    def num_fusion_layers(self) -> int:
        return len(self.fusion_blocks)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {
            "audio_encoder.cls_token", "video_encoder.cls_token", "audio_encoder.pos_embed",
            "video_encoder.pos_embed", "audio_decoder.mask_token", "video_decoder.mask_token",
            "audio_decoder.pos_embed", "video_decoder.pos_embed",
        }

    # ---- masks ----------------------------------------------------------------------------------

    def sample_masks(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        second_view: bool = False,
        audio_mask_ratio: float | None = None,
        video_mask_ratio: float | None = None,
        as_indices: bool = False,
    ) -> MAViLMasks:
        """Random masks for a batch: independent per sample, per modality and per view.

        ``as_indices``: [B, K] visible-token indices instead of [B, N] bool masks (the same draw), the form a
        compiled forward takes without a host sync.
        """
        ra = self.audio_mask_ratio if audio_mask_ratio is None else audio_mask_ratio
        rv = self.video_mask_ratio if video_mask_ratio is None else video_mask_ratio

        def draw(n: int, ratio: float) -> torch.Tensor:
            # at least one visible token: the contrastive terms pool each encoder's visible tokens
            indices = random_keep_indices(batch_size, n, ratio, device, min_keep=1)
            return indices if as_indices else keep_mask(indices, n)

        audio, video = draw(self.num_audio_tokens, ra), draw(self.num_video_tokens, rv)
        if not second_view:
            return MAViLMasks(audio, video)
        return MAViLMasks(audio, video, draw(self.num_audio_tokens, ra), draw(self.num_video_tokens, rv))

    # ---- pieces ---------------------------------------------------------------------------------

    def fuse(
        self, audio_tokens: torch.Tensor, video_tokens: torch.Tensor, return_layers: Sequence[int] = ()
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Joint attention over both modalities.

        audio_tokens [B, 1 + Ka, D] and video_tokens [B, 1 + Kv, D] (CLS first) → the normalised fused audio
        and video tokens (same shapes), and the outputs [B, 1 + Ka + 1 + Kv, D] of the fusion blocks listed in
        ``return_layers`` (0-based, negative from the end), before the final norm.
        """
        n_audio = audio_tokens.shape[1]
        x = torch.cat([audio_tokens, video_tokens], dim=1)
        wanted = {i % len(self.fusion_blocks) for i in return_layers} if len(self.fusion_blocks) else set()
        hidden = []
        for i, block in enumerate(self.fusion_blocks):
            x = block(x)
            if i in wanted:
                hidden.append(x)
        x = self.fusion_norm(x)
        return x[:, :n_audio], x[:, n_audio:], hidden

    def clip_embedding(self, tokens: torch.Tensor, modality: str) -> torch.Tensor:
        """Encoder tokens [B, 1 + K, D] → projected clip embedding [B, E]: the mean of the patch tokens."""
        head = self.audio_projection if modality == "audio" else self.video_projection
        return head(tokens[:, 1:].mean(dim=1))

    def _encode(self, encoder: ViTEncoder, x: torch.Tensor, keeps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Encode the visible tokens of each mask in ``keeps`` (one batched pass); [B, 1 + K, D] per mask."""
        tokens = encoder.embed(x)  # patch embedding once, shared by the views
        visible = torch.cat([gather_tokens(tokens, keep_indices(keep)) for keep in keeps])
        return list(encoder.forward_tokens(visible).chunk(len(keeps)))

    # ---- forward --------------------------------------------------------------------------------

    def forward(
        self,
        audio: torch.Tensor,
        video: torch.Tensor,
        masks: MAViLMasks | None = None,
        second_view: bool = False,
    ) -> MAViLOutput:
        """audio [B, 1, frames, mel], video [B, 3, T, H, W] → predictions and clip embeddings.

        ``masks`` overrides the random masks; ``second_view`` also encodes a second masked view of each modality
        (from ``masks.*_view2`` or drawn) for the intra-modal contrastive term. Only the first view is fused and
        decoded.
        """
        if masks is None:
            masks = self.sample_masks(audio.shape[0], audio.device, second_view=second_view, as_indices=True)
        two_views = second_view or masks.audio_view2 is not None
        if two_views and (masks.audio_view2 is None or masks.video_view2 is None):
            second = self.sample_masks(audio.shape[0], audio.device, as_indices=True)
            masks = MAViLMasks(masks.audio, masks.video, *second[:2])
        audio_keeps = [masks.audio] + ([masks.audio_view2] if two_views else [])
        video_keeps = [masks.video] + ([masks.video_view2] if two_views else [])
        audio_views = self._encode(self.audio_encoder, audio, audio_keeps)
        video_views = self._encode(self.video_encoder, video, video_keeps)

        fused_audio, fused_video, _ = self.fuse(audio_views[0], video_views[0])
        # bool masks out, whatever came in (a static scatter for indices)
        sizes = (self.num_audio_tokens, self.num_video_tokens) * 2
        bool_masks = MAViLMasks(*[None if m is None else keep_mask(m, n) for m, n in zip(masks, sizes)])
        return MAViLOutput(
            audio_pred=self.audio_decoder(fused_audio, masks.audio),
            video_pred=self.video_decoder(fused_video, masks.video),
            masks=bool_masks,
            audio_embedding=self.clip_embedding(audio_views[0], "audio"),
            video_embedding=self.clip_embedding(video_views[0], "video"),
            audio_embedding_view2=self.clip_embedding(audio_views[1], "audio") if two_views else None,
            video_embedding_view2=self.clip_embedding(video_views[1], "video") if two_views else None,
        )

    @torch.no_grad()
    def clip_embeddings(self, audio: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected clip embeddings [B, E] of the unmasked inputs (for retrieval)."""
        audio_tokens = self.audio_encoder.forward_features(audio)
        video_tokens = self.video_encoder.forward_features(video)
        return self.clip_embedding(audio_tokens, "audio"), self.clip_embedding(video_tokens, "video")

    def contextual_targets(
        self, audio: torch.Tensor, video: torch.Tensor, layers: Sequence[int] = (-1,)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage-2 targets from unmasked inputs: the fusion encoder's outputs at ``layers`` (averaged), normalised
        per token by a LayerNorm without parameters, split into audio [B, Na, D] and video [B, Nv, D] (no CLS).

        With no fusion blocks the encoders' outputs are used.
        """
        audio_tokens = self.audio_encoder.forward_features(audio)
        video_tokens = self.video_encoder.forward_features(video)
        if len(self.fusion_blocks) == 0:
            joint = torch.cat([audio_tokens, video_tokens], dim=1)
        else:
            for layer in layers:
                if not -len(self.fusion_blocks) <= layer < len(self.fusion_blocks):
                    raise ValueError(f"fusion layer {layer} out of range for {len(self.fusion_blocks)} blocks")
            if len({i % len(self.fusion_blocks) for i in layers}) != len(layers):
                raise ValueError(f"fusion layers repeat: {list(layers)}")
            _, _, hidden = self.fuse(audio_tokens, video_tokens, return_layers=layers)
            joint = torch.stack(hidden).mean(dim=0)
        joint = F.layer_norm(joint.float(), joint.shape[-1:])  # [B, 1 + Na + 1 + Nv, D]
        n_audio = audio_tokens.shape[1]
        return joint[:, 1:n_audio], joint[:, n_audio + 1 :]

    # ---- targets and pictures -------------------------------------------------------------------

    def pixel_targets(self, audio: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage-1 regression targets [B, Na, P_a] and [B, Nv, P_v]: the patches, normalised per patch when
        ``norm_pix_loss``."""
        audio_patches = self.audio_encoder.patchify(audio.float())
        video_patches = self.video_encoder.patchify(video.float())
        if self.norm_pix_loss:
            return normalize_patches(audio_patches), normalize_patches(video_patches)
        return audio_patches, video_patches

    @torch.no_grad()
    def reconstruction_images(
        self, audio: torch.Tensor, video: torch.Tensor, out: MAViLOutput
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Pictures of a stage-1 forward pass, in the (normalised) input space.

        Audio: ``input``, ``masked`` (hidden patches at the input's minimum), ``reconstruction`` (predictions
        un-normalised with each patch's true mean and std, visible patches from the input), each
        [B, 1, frames, mel]. Video: ``input``, ``masked`` (hidden patches zeroed), ``reconstruction`` and
        ``target`` (the hidden pixels the loss compares against), each [B, 3, T, H, W].
        """
        if self.target_dim is not None:
            raise ValueError("a model that predicts features (target_dim set) has no pixel reconstructions")
        pictures = []
        for encoder, x, pred, keep in (
            (self.audio_encoder, audio, out.audio_pred, out.masks.audio),
            (self.video_encoder, video, out.video_pred, out.masks.video),
        ):
            patches = encoder.patchify(x.float())
            pred = pred.float()
            if self.norm_pix_loss:
                mean, std = patch_mean_std(patches)
                pred = pred * std + mean
            visible = keep.unsqueeze(-1)
            fill = patches.amin(dim=(1, 2), keepdim=True) if encoder is self.audio_encoder else 0.0
            images = dict(
                input=patches,
                masked=torch.where(visible, patches, fill),
                reconstruction=torch.where(visible, patches, pred),
                target=patches * ~visible,
            )
            pictures.append({k: encoder.unpatchify(v) for k, v in images.items()})
        audio_pictures, video_pictures = pictures
        del audio_pictures["target"]
        return audio_pictures, video_pictures


# ---------------------------------------------------------------------------------------- factories


def _mavil(embed_dim: int, depth: int, num_heads: int, kwargs: dict) -> MAViL:
    return MAViL(**{"embed_dim": embed_dim, "depth": depth, "num_heads": num_heads, **kwargs})


def mavil_vit_small_patch16(**kwargs) -> MAViL:
    """MAViL with ViT-S/16 encoders (384 wide, 12 deep, 6 heads)."""
    return _mavil(384, 12, 6, kwargs)


def mavil_vit_base_patch16(**kwargs) -> MAViL:
    """MAViL with ViT-B/16 encoders (768 wide, 12 deep, 12 heads): the paper's main model."""
    return _mavil(768, 12, 12, kwargs)


def mavil_vit_large_patch16(**kwargs) -> MAViL:
    """MAViL with ViT-L/16 encoders (1024 wide, 24 deep, 16 heads)."""
    return _mavil(1024, 24, 16, kwargs)


# ---------------------------------------------------------------------------------------- timm export

_MODALITIES = ("audio", "video")


def _encoder_of(model: MAViL | ViTEncoder, modality: str | None) -> ViTEncoder:
    if isinstance(model, ViTEncoder):
        return model
    if modality not in _MODALITIES:
        raise ValueError(f"modality must be one of {_MODALITIES} when exporting from a MAViL model, got {modality!r}")
    return model.audio_encoder if modality == "audio" else model.video_encoder


def mavil_encoder_to_timm(
    model: MAViL | ViTEncoder, modality: str | None = None, global_pool: str = "avg"
) -> tuple[dict[str, torch.Tensor], dict]:
    """One MAViL encoder as a timm ``VisionTransformer``: ``(state_dict, kwargs)``.

    ``timm.models.vision_transformer.VisionTransformer(**kwargs)`` then loads ``state_dict`` strictly and its
    ``forward_features`` equals the encoder's. The keys are the encoder's own (``cls_token``, ``pos_embed``,
    ``patch_embed.proj.*``, ``blocks.{i}.*``, ``norm.*``); the video encoder needs ``TubeletEmbed`` as timm's
    ``embed_layer`` (set in ``kwargs``). ``num_classes=0``: add a head for fine-tuning. ``global_pool="avg"``
    (mean of patch tokens, as MAViL fine-tunes) keeps ``norm`` before pooling (``fc_norm=False``).
    """
    encoder = _encoder_of(model, modality)
    state = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    kwargs = dict(
        patch_size=encoder.patch_size,
        embed_dim=encoder.embed_dim,
        depth=len(encoder.blocks),
        num_heads=encoder.num_heads,
        mlp_ratio=encoder.mlp_ratio,
        qkv_bias=True,
        class_token=True,
        global_pool=global_pool,
        fc_norm=False,
        num_classes=0,
        norm_layer=partial(nn.LayerNorm, eps=LAYER_NORM_EPS),
    )
    if isinstance(encoder, VideoEncoder) or isinstance(encoder.patch_embed, TubeletEmbed):
        embed = encoder.patch_embed
        kwargs.update(
            img_size=encoder.patch_embed.img_size,
            in_chans=3,
            embed_layer=partial(TubeletEmbed, num_frames=embed.num_frames, tubelet_frames=embed.patch_size[0]),
        )
    else:
        kwargs.update(img_size=tuple(encoder.patch_embed.img_size), in_chans=1)
    return state, kwargs


def create_timm_encoder(model: MAViL | ViTEncoder, modality: str | None = None, **overrides) -> nn.Module:
    """A timm ``VisionTransformer`` holding one MAViL encoder's weights (see :func:`mavil_encoder_to_timm`);
    ``overrides`` change the timm arguments (e.g. ``num_classes=527``; a new head starts untrained)."""
    from timm.models.vision_transformer import VisionTransformer

    state, kwargs = mavil_encoder_to_timm(model, modality, overrides.pop("global_pool", "avg"))
    vit = VisionTransformer(**{**kwargs, **overrides})
    missing, unexpected = vit.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise ValueError(f"timm ViT does not match the encoder: missing {missing}, unexpected {unexpected}")
    return vit
