"""Plain ViT pieces shared by the audio and video encoders of MAViL: fixed sin-cos position embeddings
(1-D, 2-D, 3-D), a tubelet patch embedding that plugs into timm's ``VisionTransformer``, and an encoder
whose parameter names are timm's, so that it exports as a timm ``VisionTransformer`` by stripping a prefix.

The transformer blocks are timm's ``Block`` (attention through ``scaled_dot_product_attention``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from .layers import drop_path_rates, keep_indices, keep_mask

__all__ = [
    "LAYER_NORM_EPS",
    "TubeletEmbed",
    "ViTEncoder",
    "gather_tokens",
    "init_mae_weights",
    "keep_indices",
    "keep_mask",
    "sincos_pos_embed_1d",
    "sincos_pos_embed_2d",
    "sincos_pos_embed_3d",
    "vit_blocks",
]

LAYER_NORM_EPS = 1e-6
"""LayerNorm epsilon of timm's ViT, MAE and the released MAViL model."""


# ---------------------------------------------------------------------------------------- position embeddings


def sincos_pos_embed_1d(dim: int, positions: torch.Tensor, temperature: float = 10000.0) -> torch.Tensor:
    """[N] positions → [N, dim]: the first half sines, the second half cosines, of ``position * omega_i``
    with ``omega_i = temperature ** (-i / (dim / 2))``, ``i = 0 .. dim/2 - 1`` (Vaswani et al. 2017)."""
    if dim % 2:
        raise ValueError(f"a sin-cos embedding needs an even dimension, got {dim}")
    omega = temperature ** (-torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]  # [N, dim/2]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def _axis_dims(dim: int, axes: int) -> list[int]:
    """Split ``dim`` channels over ``axes`` grid axes, each an even number; the first axis takes the rest."""
    if dim % 2:
        raise ValueError(f"a sin-cos embedding needs an even dimension, got {dim}")
    per_axis = 2 * (dim // (2 * axes))
    if per_axis == 0:
        raise ValueError(f"dimension {dim} is too small for a {axes}-D sin-cos embedding")
    return [dim - per_axis * (axes - 1)] + [per_axis] * (axes - 1)


def _sincos_pos_embed_nd(dim: int, grid: Sequence[int]) -> torch.Tensor:
    """[prod(grid), dim]: tokens in raster order over ``grid``; channels split over the axes, first axis first."""
    coords = torch.meshgrid(*[torch.arange(n) for n in grid], indexing="ij")  # each [*grid]
    parts = [sincos_pos_embed_1d(d, c.flatten()) for d, c in zip(_axis_dims(dim, len(grid)), coords)]
    return torch.cat(parts, dim=1)


def sincos_pos_embed_2d(dim: int, grid: Sequence[int]) -> torch.Tensor:
    """[H * W, dim] fixed 2-D embedding of an (H, W) token grid in raster order; half the channels encode the
    row, half the column (MAE, He et al. 2022)."""
    if len(grid) != 2:
        raise ValueError(f"expected a 2-D grid, got {tuple(grid)}")
    return _sincos_pos_embed_nd(dim, grid)


def sincos_pos_embed_3d(dim: int, grid: Sequence[int]) -> torch.Tensor:
    """[T * H * W, dim] fixed 3-D embedding of a (T, H, W) tubelet grid in raster order. About a third of the
    channels each encode time, row and column (time takes what does not divide evenly)."""
    if len(grid) != 3:
        raise ValueError(f"expected a 3-D grid, got {tuple(grid)}")
    return _sincos_pos_embed_nd(dim, grid)


# ---------------------------------------------------------------------------------------- patch embeddings


class TubeletEmbed(nn.Module):
    """Video [B, C, T, H, W] → tubelet tokens [B, T/t * H/p * W/p, D] (raster order over time, rows, columns).

    A ``Conv3d`` with kernel = stride = ``(tubelet_frames, p, p)``. The constructor takes the arguments timm's
    ``VisionTransformer`` passes to its ``embed_layer``, so ``VisionTransformer(embed_layer=partial(
    TubeletEmbed, num_frames=8, tubelet_frames=2), ...)`` runs video with the same weights.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int | Sequence[int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        bias: bool = True,
        num_frames: int = 8,
        tubelet_frames: int = 2,
        dynamic_img_pad: bool = False,
        **_timm_kwargs,  # device, dtype, norm_layer=None: what timm passes and a plain conv does not need
    ):
        super().__init__()
        if dynamic_img_pad or _timm_kwargs.get("norm_layer") is not None:
            raise ValueError("TubeletEmbed supports neither dynamic padding nor a norm layer")
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        patch = patch_size if isinstance(patch_size, int) else patch_size[-1]
        if num_frames % tubelet_frames or img_size[0] % patch or img_size[1] % patch:
            raise ValueError(
                f"video {num_frames}x{img_size[0]}x{img_size[1]} does not divide into tubelets "
                f"{tubelet_frames}x{patch}x{patch}"
            )
        self.img_size = img_size
        self.num_frames = num_frames
        self.patch_size = (tubelet_frames, patch, patch)
        self.grid_size = (num_frames // tubelet_frames, img_size[0] // patch, img_size[1] // patch)
        self.num_patches = math.prod(self.grid_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)

    def feat_ratio(self, as_scalar: bool = True) -> int | tuple[int, ...]:
        return self.patch_size[-1] if as_scalar else self.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != (self.num_frames, *self.img_size):
            raise ValueError(
                f"expected video [B, C, {self.num_frames}, {self.img_size[0]}, {self.img_size[1]}], "
                f"got {list(x.shape)}"
            )
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, D, T', H', W'] → [B, N, D]


# ---------------------------------------------------------------------------------------- masking helpers


def gather_tokens(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """x [B, N, D], indices [B, K] → [B, K, D]."""
    return torch.gather(x, 1, indices.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


# ---------------------------------------------------------------------------------------- encoder


def vit_blocks(dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0, drop_path_rate: float = 0.0):
    """``depth`` timm ViT blocks (qkv bias, LayerNorm eps 1e-6), stochastic depth rising linearly to
    ``drop_path_rate``."""
    rates = drop_path_rates(drop_path_rate, depth)
    norm = partial(nn.LayerNorm, eps=LAYER_NORM_EPS)
    return nn.ModuleList(
        Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=rate, norm_layer=norm) for rate in rates
    )


def init_mae_weights(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linear layers with zero bias, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ViTEncoder(nn.Module):
    """A ViT over the tokens of a patch embedding, with a CLS token and fixed sin-cos position embeddings.

    Parameter names are timm ``VisionTransformer``'s (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
    ``blocks.{i}``, ``norm``); ``pos_embed`` [1, 1 + N, D] is a buffer (fixed, zero at the CLS position) and
    is saved with the weights, as timm expects.

    Args:
        patch_embed: maps the input to [B, N, D] tokens in raster order of ``patch_embed.grid_size``.
        embed_dim, depth, num_heads, mlp_ratio, drop_path_rate: the transformer.
    """

    def __init__(
        self,
        patch_embed: nn.Module,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.patch_embed = patch_embed
        self.grid_size: tuple[int, ...] = tuple(patch_embed.grid_size)
        self.num_patches = math.prod(self.grid_size)
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        table = sincos_pos_embed_2d if len(self.grid_size) == 2 else sincos_pos_embed_3d
        pos = torch.cat([torch.zeros(1, embed_dim), table(embed_dim, self.grid_size)])  # [1 + N, D]
        self.register_buffer("pos_embed", pos.unsqueeze(0), persistent=True)
        self.blocks = vit_blocks(embed_dim, depth, num_heads, mlp_ratio, drop_path_rate)
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)

        self.apply(init_mae_weights)
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # like a linear layer on flattened patches (MAE)
        trunc_normal_(self.cls_token, std=0.02)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer groups for timm's layer-wise lr decay (the same as timm's ViT)."""
        return dict(
            stem=r"^cls_token|^pos_embed|^patch_embed",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Input → patch tokens with their position embeddings, [B, N, D] (no CLS token)."""
        return self.patch_embed(x) + self.pos_embed[:, 1:].to(x.dtype)

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens [B, K, D] (all, or the visible ones) → CLS + K normalised tokens [B, 1 + K, D]."""
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        x = torch.cat([cls, tokens], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_masked(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Encode only the visible patches: ``keep`` [B, N] bool (True = visible) or [B, K] indices → [B, 1 + K, D]."""
        return self.forward_tokens(gather_tokens(self.embed(x), keep_indices(keep)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """All patches → [B, 1 + N, D] (CLS first), the same as timm ``VisionTransformer.forward_features``."""
        return self.forward_tokens(self.embed(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)
