"""Masked autoencoder on Hiera (Hiera paper, Sec. 3 and Appendix), for images and video.

Masking works on mask units (8x8 tokens, i.e. 32x32 pixels at 224). Masked units are zeroed in
pixel space before the overlapping patch conv and dropped after it, so the encoder sees only the
visible units. The outputs of the pooled stages are fused onto the final grid, and a plain
transformer decoder predicts per-patch-normalised pixels of every final-grid patch (16x16 pixels
with the MAE setting ``q_pool=2``; for video, one frame of each temporal patch). The loss covers the
masked units only.

Parameter names match the official ``MaskedAutoencoderHiera``, so its checkpoints load unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from timm.layers import resample_abs_pos_embed, trunc_normal_
from torch import nn
from unveil.common.config import records_config

from .hiera import Hiera, HieraBlock, LayerNorm, hiera_config, undo_windowing, unit_indices, unit_mask
from .layers import normalize_patches, patch_mean_std
from .vit import init_mae_weights

__all__ = [
    "MAEOutput",
    "MaskedAutoencoderHiera",
    "mae_hiera_base_16x224",
    "mae_hiera_base_224",
    "mae_hiera_base_plus_16x224",
    "mae_hiera_base_plus_224",
    "mae_hiera_huge_16x224",
    "mae_hiera_huge_224",
    "mae_hiera_large_16x224",
    "mae_hiera_large_224",
    "mae_hiera_small_224",
    "mae_hiera_tiny_224",
]


# Hiera arguments that MaskedAutoencoderHiera does not take: it has no classifier head, and it interpolates
# absolute-win embeddings as SAM 2 does (pos_embed_antialias=False)


class MAEOutput(NamedTuple):
    """What :meth:`MaskedAutoencoderHiera.forward` returns.

    loss: scalar, mean squared error over the masked patches.
    pred: [B, N, P] predictions for all N final-grid patches (raster order), P pixels each.
    target: [B, N, P] the targets (per-patch normalised when ``norm_pix_loss``).
    mask: [B, #mask units] bool, True = visible (kept).
    """

    loss: torch.Tensor
    pred: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor


class MaskedAutoencoderHiera(Hiera):
    """Hiera encoder + multi-scale fusion + transformer decoder, trained to reconstruct masked units."""

    @records_config
    def __init__(
        self,
        input_size: Sequence[int] = (224, 224),
        in_chans: int = 3,
        embed_dim: int = 96,
        num_heads: int = 1,
        stages: Sequence[int] = (2, 3, 16, 3),
        q_pool: int = 2,
        q_stride: Sequence[int] = (2, 2),
        mask_unit_size: Sequence[int] = (8, 8),
        mask_unit_attn: Sequence[bool] = (True, True, False, False),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        patch_kernel: Sequence[int] = (7, 7),
        patch_stride: Sequence[int] = (4, 4),
        patch_padding: Sequence[int] = (3, 3),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        sep_pos_embed: bool = False,
        abs_win_pos_embed: bool = False,
        global_pos_size: Sequence[int] = (14, 14),
        mask_ratio: float = 0.6,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        norm_pix_loss: bool = True,
    ):
        """
        Args:
            q_pool: pooling transitions in the encoder; 2 in the paper's MAE, which leaves a 14x14
                final grid at 224, i.e. 16x16-pixel prediction patches.
            mask_ratio: fraction of mask units dropped (Hiera Tables 14a and 11a: 0.6 images, 0.9 video).
            decoder_embed_dim, decoder_depth, decoder_num_heads: the decoder. Hiera Table 14a (images): 8 blocks,
                16 heads; Table 11a (video): 8 blocks, 8 heads. The width, 512, is the official code's default
                (the tables do not give it). The defaults here are the image settings.
            norm_pix_loss: regress per-patch normalised pixels (paper and official code: on).
        Other arguments are :class:`~unveil.models.hiera.Hiera`'s.
        """
        super().__init__(
            input_size=input_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            num_heads=num_heads,
            num_classes=0,
            stages=stages,
            q_pool=q_pool,
            q_stride=q_stride,
            mask_unit_size=mask_unit_size,
            mask_unit_attn=mask_unit_attn,
            dim_mul=dim_mul,
            head_mul=head_mul,
            patch_kernel=patch_kernel,
            patch_stride=patch_stride,
            patch_padding=patch_padding,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
            sep_pos_embed=sep_pos_embed,
            abs_win_pos_embed=abs_win_pos_embed,
            global_pos_size=global_pos_size,
        )
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        del self.norm, self.head  # the MAE encoder ends in encoder_norm after fusion
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.in_chans = in_chans
        encoder_dim = self.blocks[-1].dim_out
        pool = [s**q_pool for s in q_stride]
        # one mask unit on the final grid, e.g. 8x8 tokens → 2x2 after two 2x2 poolings
        self.mask_unit_spatial_shape_final = [m // p for m, p in zip(mask_unit_size, pool)]
        self.tokens_spatial_shape_final = [n // p for n, p in zip(self.tokens_spatial_shape, pool)]

        # Strided convs bring each pooled stage's mask units down to the final unit shape; stages
        # after the last pooling are already at the final resolution and only the last is used.
        conv = nn.Conv2d if len(q_stride) == 2 else nn.Conv3d
        self.multi_scale_fusion_heads = nn.ModuleList()
        unit = list(mask_unit_size)
        for end in self.stage_ends[:q_pool]:
            kernel = [u // f for u, f in zip(unit, self.mask_unit_spatial_shape_final)]
            self.multi_scale_fusion_heads.append(
                conv(self.blocks[end].dim_out, encoder_dim, kernel_size=kernel, stride=kernel)
            )
            unit = [u // s for u, s in zip(unit, q_stride)]
        self.multi_scale_fusion_heads.append(nn.Identity())
        self.encoder_norm = LayerNorm(encoder_dim)

        self.decoder_embed = nn.Linear(encoder_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, math.prod(self.tokens_spatial_shape_final), decoder_embed_dim)
        )
        self.decoder_blocks = nn.ModuleList(
            HieraBlock(decoder_embed_dim, decoder_embed_dim, decoder_num_heads, mlp_ratio=mlp_ratio)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = LayerNorm(decoder_embed_dim)
        # pixels per prediction patch side, e.g. 4 * 2**2 = 16
        self.pred_stride = patch_stride[-1] * q_stride[-1] ** q_pool
        self.decoder_pred = nn.Linear(decoder_embed_dim, self.pred_stride ** min(2, len(q_stride)) * in_chans)

        trunc_normal_(self.mask_token, std=0.02)
        trunc_normal_(self.decoder_pos_embed, std=0.02)
        self.apply(init_mae_weights)
        # the patch conv starts like a linear layer on flattened patches (as in MAE)
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"mask_token", "decoder_pos_embed"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        matcher = super().group_matcher(coarse)
        # the decoder side trains at the last layer's rate under layer decay
        matcher["blocks"] = [
            (r"^blocks\.(\d+)", None),
            (r"^multi_scale_fusion_heads|^encoder_norm|^decoder|^mask_token", (99999,)),
        ]
        return matcher

    # ---- geometry ---------------------------------------------------------------------------

    @property
    def is_video(self) -> bool:
        return len(self.q_stride) == 3

    def final_grid(self, x: torch.Tensor) -> list[int]:
        """Prediction grid of an input: the token grid after q_pool poolings."""
        return self.stage_grid(self.token_grid(x), len(self.stage_ends) - 1)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels of every prediction patch, in the official layout.

        Images: [B, C, H, W] → [B, N, C * s * s] (channel-major within a patch).
        Video: [B, C, T, H, W] → every ``patch_stride[0]``-th frame → [B, N, s * s * C].
        """
        s = self.pred_stride
        if self.is_video:
            x = x[:, :, :: self.patch_stride[0]]
            patches = x.unfold(3, s, s).unfold(4, s, s)  # [B, C, T', H/s, W/s, s, s]
            return patches.permute(0, 2, 3, 4, 5, 6, 1).flatten(1, 3).flatten(2)
        patches = x.permute(0, 2, 3, 1).unfold(1, s, s).unfold(2, s, s)  # [B, H/s, W/s, C, s, s]
        return patches.flatten(1, 2).flatten(2)

    def unpatchify(self, patches: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """Inverse of :meth:`patchify`: [B, N, P] on ``grid`` → [B, C, H, W] or [B, C, T', H, W]."""
        s, c, b = self.pred_stride, self.in_chans, patches.shape[0]
        if self.is_video:
            t, h, w = grid
            x = patches.view(b, t, h, w, s, s, c).permute(0, 6, 1, 2, 4, 3, 5)  # [B, C, T', h, s, w, s]
            return x.reshape(b, c, t, h * s, w * s)
        h, w = grid
        x = patches.view(b, h, w, c, s, s).permute(0, 3, 1, 4, 2, 5)  # [B, C, h, s, w, s]
        return x.reshape(b, c, h * s, w * s)

    def patch_mask(self, mask: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """[B, #units] unit mask → [B, N] mask of the prediction patches (raster order on ``grid``)."""
        units = [n // u for n, u in zip(grid, self.mask_unit_spatial_shape_final)]
        m = mask.view(mask.shape[0], *units)
        for dim, size in enumerate(self.mask_unit_spatial_shape_final):
            m = m.repeat_interleave(size, dim=dim + 1)
        return m.flatten(1)

    # ---- forward ----------------------------------------------------------------------------

    def forward_encoder(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encode the visible units and fuse the stages: → [B, #visible, *final unit, C_enc].

        ``mask``: [B, #units] bool (True = keep) or [B, #kept] kept-unit indices."""
        maps = self.forward_intermediates(x, mask=mask, intermediates_only=True)
        # stages after the last pooling share its resolution: only the final one is fused
        maps = maps[: self.q_pool] + maps[-1:]
        fused = 0.0
        for head, feat in zip(self.multi_scale_fusion_heads, maps):
            if not isinstance(head, nn.Identity):
                b, units = feat.shape[:2]
                feat = head(feat.flatten(0, 1).movedim(-1, 1))  # [B * units, C_enc, *final unit]
                feat = feat.movedim(1, -1).unflatten(0, (b, units))
            fused = fused + feat
        return self.encoder_norm(fused)

    def forward_decoder(self, latent: torch.Tensor, mask: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """Decode visible latents plus mask tokens on the final grid → [B, N, P] predictions.

        ``mask``: [B, #units] bool (True = keep) or [B, #kept] kept-unit indices (see ``unit_indices``).
        """
        latent = self.decoder_embed(latent)  # [B, #visible, *final unit, C_dec]
        b, channels = latent.shape[0], latent.shape[-1]
        units = math.prod([n // u for n, u in zip(grid, self.mask_unit_spatial_shape_final)])
        kept = unit_indices(mask)  # [B, #visible]
        tokens = self.mask_token.expand(b, units, *latent.shape[2:-1], channels)
        # a scatter with static shapes (boolean-mask assignment would make the graph data-dependent)
        index = kept.view(b, -1, *[1] * (latent.dim() - 2)).expand(latent.shape)
        tokens = tokens.scatter(1, index, latent.to(tokens.dtype))  # [B, #units, *final unit, C_dec]
        x = undo_windowing(tokens, grid, self.mask_unit_spatial_shape_final).flatten(1, -2)
        pos = self.decoder_pos_embed
        if list(grid) != self.tokens_spatial_shape_final:
            if self.is_video:
                raise ValueError(f"video MAE runs at its pretraining size only, got final grid {tuple(grid)}")
            pos = resample_abs_pos_embed(pos, list(grid), self.tokens_spatial_shape_final, num_prefix_tokens=0)
        x = x + pos
        for block in self.decoder_blocks:
            x = self._run_block(block, x)
        return self.decoder_pred(self.decoder_norm(x))

    def make_target(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, P] regression targets: pixels of each patch, normalised per patch if configured."""
        target = self.patchify(x)
        return normalize_patches(target) if self.norm_pix_loss else target

    def forward(
        self, x: torch.Tensor, mask_ratio: float | None = None, mask: torch.Tensor | None = None
    ) -> MAEOutput:
        """x [B, C, H, W] or [B, C, T, H, W] → :class:`MAEOutput`.

        ``mask`` overrides the ratio: a [B, #units] bool keep mask (True = keep), or [B, #kept] ascending
        indices of the kept units (``Hiera.get_random_unit_indices``, ``unit_indices``). With indices, or with
        no mask, the forward has static shapes and no host sync, so ``torch.compile`` captures it as one graph
        (a bool mask costs one sync to count its kept units).
        """
        if mask is None:
            kept = self.get_random_unit_indices(x, self.mask_ratio if mask_ratio is None else mask_ratio)
        else:
            kept = unit_indices(mask)
        keep = mask if mask is not None and mask.dtype == torch.bool else unit_mask(kept, self.num_mask_units(x))
        grid = self.final_grid(x)
        pred = self.forward_decoder(self.forward_encoder(x, kept), kept, grid)
        target = self.make_target(x)
        # mean over the hidden patches' values, as a weighted sum (boolean indexing is data-dependent)
        hidden = (~self.patch_mask(keep, grid)).unsqueeze(-1).float()  # [B, N, 1]
        error = (pred.float() - target.float()).pow(2)
        loss = (error * hidden).sum() / (hidden.sum() * error.shape[-1])
        return MAEOutput(loss, pred, target, keep)

    @torch.no_grad()
    def reconstruction_images(self, x: torch.Tensor, out: MAEOutput) -> dict[str, torch.Tensor]:
        """Pictures of a forward pass, in the input's (normalised) pixel space.

        Returns ``input``, ``masked`` (hidden patches zeroed), ``reconstruction`` (predictions
        un-normalised with each patch's true mean and std, visible patches from the input) and
        ``target`` (the pixels the loss compares against). Each is [B, C, H, W] for images and
        [B, C, T', H, W] (every ``patch_stride[0]``-th frame) for video.
        """
        grid = self.final_grid(x)
        pixels = self.patchify(x)
        pred = out.pred.to(pixels.dtype)
        if self.norm_pix_loss:
            mean, std = patch_mean_std(pixels)
            pred = pred * std + mean
        visible = self.patch_mask(out.mask, grid).unsqueeze(-1)
        images = dict(
            input=pixels,
            masked=pixels * visible,
            reconstruction=torch.where(visible, pixels, pred),
            target=pixels * ~visible,
        )
        return {k: self.unpatchify(v, grid) for k, v in images.items()}


def _mae(size: str, video: bool, kwargs: dict) -> MaskedAutoencoderHiera:
    config = hiera_config(size, video=video)
    config.pop("num_classes", None)
    if video:
        config["mask_ratio"] = 0.9  # Hiera paper, video MAE
    return MaskedAutoencoderHiera(**{**config, **kwargs})


def mae_hiera_tiny_224(**kwargs) -> MaskedAutoencoderHiera:
    return _mae("tiny", False, kwargs)


def mae_hiera_small_224(**kwargs) -> MaskedAutoencoderHiera:
    return _mae("small", False, kwargs)


def mae_hiera_base_224(**kwargs) -> MaskedAutoencoderHiera:
    return _mae("base", False, kwargs)


def mae_hiera_base_plus_224(**kwargs) -> MaskedAutoencoderHiera:
    return _mae("base_plus", False, kwargs)


def mae_hiera_large_224(**kwargs) -> MaskedAutoencoderHiera:
    return _mae("large", False, kwargs)


def mae_hiera_huge_224(**kwargs) -> MaskedAutoencoderHiera:
    return _mae("huge", False, kwargs)


def mae_hiera_base_16x224(**kwargs) -> MaskedAutoencoderHiera:
    return _mae("base", True, kwargs)


def mae_hiera_base_plus_16x224(**kwargs) -> MaskedAutoencoderHiera:
    return _mae("base_plus", True, kwargs)


def mae_hiera_large_16x224(**kwargs) -> MaskedAutoencoderHiera:
    return _mae("large", True, kwargs)


def mae_hiera_huge_16x224(**kwargs) -> MaskedAutoencoderHiera:
    return _mae("huge", True, kwargs)
