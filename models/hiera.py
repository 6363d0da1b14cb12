"""Hiera: a hierarchical vision transformer for images and video (Ryali et al., ICML 2023).

One N-dimensional implementation serves images (D=2) and video (D=3). Tokens are kept in
*unrolled* order so that mask-unit attention, q-pooling and the dropping of masked units are all
plain reshapes; :func:`unroll` and :func:`reroll` convert between unrolled and spatial order.

Parameter names are the official facebookresearch/hiera ones, so an official checkpoint (or its
``model_state`` wrapper) loads with no key mapping. With ``abs_win_pos_embed=True`` the position
embedding is the absolute-win one of "Window Attention is Bugged" (Bolya et al., ICLR 2024): a
background table interpolated to the token grid plus one mask unit's table tiled over it, the form
that the SAM 2 image-encoder trunk uses (see :mod:`unveil.models.hieradet`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, resample_abs_pos_embed, trunc_normal_
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint
from unveil.common.config import records_config

from .layers import drop_path_rates, keep_indices, keep_mask, random_keep_indices

__all__ = [
    "Hiera",
    "HieraBlock",
    "PreNormBlock",
    "MaskUnitAttention",
    "abs_win_pos_embed",
    "hiera_base_16x224",
    "hiera_base_224",
    "hiera_base_plus_16x224",
    "hiera_base_plus_224",
    "hiera_huge_16x224",
    "hiera_huge_224",
    "hiera_large_16x224",
    "hiera_large_224",
    "hiera_small_224",
    "hiera_tiny_224",
    "load_hiera_state_dict",
    "reroll",
    "undo_windowing",
    "unit_indices",
    "unit_mask",
    "unroll",
]

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


# --------------------------------------------------------------------------------------------
# Token order
# --------------------------------------------------------------------------------------------


def unroll(x: torch.Tensor, size: Sequence[int], schedule: Sequence[Sequence[int]]) -> torch.Tensor:
    """Reorder tokens from raster order to Hiera's unrolled order.

    Args:
        x: [B, prod(size), C] tokens in raster order over the grid ``size`` (e.g. [T, H, W]).
        size: the token grid.
        schedule: the q-pooling strides, finest first, e.g. ``[(2, 2)] * 3``.

    Returns:
        [B, prod(size), C]. The token index reads ``(o_1, ..., o_k, cell)``: ``o_j`` is the offset
        inside the j-th stride block (``o_1`` the finest) and ``cell`` runs in raster order over the
        grid left after all strides, i.e. over mask units. Pooling by the first remaining stride is
        then a max over the leading offset, and a mask unit's tokens are ``cell``-strided.
    """
    batch, num_tokens, channels = x.shape
    dims = len(size)
    grid = list(size)
    x = x.view(batch, *grid, channels)
    for strides in schedule:
        grid = [n // s for n, s in zip(grid, strides)]
        # [B', n_1 // s_1, s_1, n_2 // s_2, s_2, ..., C]
        x = x.view(x.shape[0], *[v for pair in zip(grid, strides) for v in pair], channels)
        last = x.dim() - 1
        offsets, coarse = list(range(2, last, 2)), list(range(1, last, 2))
        # offsets join the batch dim as its fastest-varying part: [B' * prod(s), *grid, C]
        x = x.permute(0, *offsets, *coarse, last).flatten(0, dims)
    return x.reshape(batch, num_tokens, channels)


def undo_windowing(x: torch.Tensor, size: Sequence[int], unit_shape: Sequence[int]) -> torch.Tensor:
    """[B, #units, *unit_shape, C] (units in raster order) → [B, *size, C] spatial map."""
    dims = len(size)
    batch, channels = x.shape[0], x.shape[-1]
    units = [n // u for n, u in zip(size, unit_shape)]
    x = x.view(batch, *units, *unit_shape, channels)
    # interleave (units_d, unit_shape_d) per dim
    order = [0] + [v for d in range(dims) for v in (1 + d, 1 + dims + d)] + [1 + 2 * dims]
    return x.permute(order).reshape(batch, *size, channels)


def reroll(
    x: torch.Tensor, size: Sequence[int], schedule: Sequence[Sequence[int]], masked: bool = False
) -> torch.Tensor:
    """Inverse of :func:`unroll` for the tokens of one stage.

    Args:
        x: [B, N, C] unrolled tokens whose remaining (not yet pooled) strides are ``schedule``.
        size: the stage's full token grid.
        schedule: the strides not yet consumed by q-pooling, finest first.
        masked: the tokens are only the visible mask units, so no full map can be built.

    Returns:
        [B, *size, C], or [B, #visible units, *unit_shape, C] when ``masked``.
    """
    dims = len(size)
    batch, num_tokens, channels = x.shape
    k = len(schedule)
    unit_shape = [math.prod([s[d] for s in schedule]) for d in range(dims)]
    num_units = num_tokens // math.prod(unit_shape)
    # [B, *o_1, ..., *o_k, units, C]; o_j[d] sits at dim 1 + j * D + d
    x = x.view(batch, *[v for s in schedule for v in s], num_units, channels)
    # inside a unit, along each dim, the coarsest offset is the most significant
    order = [0, 1 + k * dims] + [1 + j * dims + d for d in range(dims) for j in reversed(range(k))]
    x = x.permute(*order, 2 + k * dims).reshape(batch, num_units, *unit_shape, channels)
    if masked:
        return x
    return undo_windowing(x, size, unit_shape)


def abs_win_pos_embed(
    background: torch.Tensor, window: torch.Tensor, grid: Sequence[int], antialias: bool = False
) -> torch.Tensor:
    """Absolute-win position embedding on a token grid.

    Args:
        background: [1, C, h, w] table, interpolated bicubically to ``grid``.
        window: [1, C, wh, ww] table of one window, tiled over ``grid`` (each grid side must be a
            multiple of the window side), so every window gets exactly the same window component at
            any resolution.
        grid: the token grid (H, W).
        antialias: SAM 2 interpolates without antialias (the default); timm's Hiera with
            ``abs_win_pos_embed=True`` uses ``antialias=True``, which is a different bicubic kernel.

    Returns:
        [1, C, H, W].
    """
    grid = tuple(int(g) for g in grid)
    tiles = [g // w for g, w in zip(grid, window.shape[2:])]
    if any(g % w for g, w in zip(grid, window.shape[2:])):
        raise ValueError(f"token grid {grid} is not a multiple of the window {tuple(window.shape[2:])}")
    if tuple(background.shape[2:]) == grid:
        bg = background
    else:
        bg = F.interpolate(background, size=grid, mode="bicubic", antialias=antialias)
    return bg + window.tile(1, 1, *tiles)


# Kept mask units as indices and as a bool mask: the token helpers of ``unveil.models.layers`` under the names
# this module has always exported.
unit_indices = keep_indices
unit_mask = keep_mask


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


class MaskUnitAttention(nn.Module):
    """Multi-head attention over unrolled tokens, within mask units or globally.

    The token index of the input is ``(within-unit position, unit)`` with the unit fastest (see
    :func:`unroll`), so windows are a reshape. With ``q_stride > 1`` the queries are max-pooled
    over the leading offset, which shrinks the output to ``N // q_stride`` tokens.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        heads: int,
        q_stride: int = 1,
        window_size: int = 0,
        use_mask_unit_attn: bool = False,
    ):
        """
        Args:
            window_size: tokens per mask unit *after* this layer's pooling.
            use_mask_unit_attn: attend within mask units; otherwise globally.
        """
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out
        self.heads = heads
        self.q_stride = q_stride
        self.head_dim = dim_out // heads
        self.window_size = window_size
        self.use_mask_unit_attn = use_mask_unit_attn
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, dim] → [B, N // q_stride, dim_out]."""
        batch, num_tokens, _ = x.shape
        windows = num_tokens // (self.q_stride * self.window_size) if self.use_mask_unit_attn else 1
        qkv = self.qkv(x).reshape(batch, -1, windows, 3, self.heads, self.head_dim)
        # Windows fold into the batch: every fused SDPA kernel (flash, memory-efficient, cuDNN; flash on the
        # CPU) takes 4-D q/k/v only, and a 5-D call silently runs the unfused math path.
        qkv = qkv.permute(3, 0, 2, 4, 1, 5).reshape(3, batch * windows, self.heads, -1, self.head_dim)
        q, k, v = qkv.unbind(0)  # each [B * windows, heads, tokens, head_dim]
        if self.q_stride > 1:
            q = q.view(batch * windows, self.heads, self.q_stride, -1, self.head_dim).max(dim=2).values
        x = F.scaled_dot_product_attention(q, k, v)  # [B * windows, heads, tokens', head_dim]
        x = x.view(batch, windows, self.heads, -1, self.head_dim).permute(0, 3, 1, 2, 4)
        x = x.reshape(batch, -1, self.dim_out)  # [B, tokens' * windows, heads * head_dim], windows fastest
        return self.proj(x)


class PreNormBlock(nn.Module):
    """The pre-norm transformer block that Hiera and HieraDet share: ``norm1``, ``attn``, ``proj`` (only when
    the width changes: the residual is widened from the normed input), ``norm2``, ``mlp`` and drop path.

    ``attention`` builds the attention module (called where it is built, so parameters are made in the same
    order). Subclasses say how the residual is pooled when the attention pools its queries
    (:meth:`pool_residual`).
    """

    def __init__(
        self, dim: int, dim_out: int, attention: Callable[[], nn.Module], mlp_ratio: float, drop_path: float
    ):
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out
        self.norm1 = LayerNorm(dim)
        self.attn = attention()
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else None
        self.norm2 = LayerNorm(dim_out)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio), act_layer=nn.GELU)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def pool_residual(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_norm = self.norm1(x)
        if self.proj is not None:
            x = self.proj(x_norm)
        x = self.pool_residual(x)
        x = x + self.drop_path(self.attn(x_norm))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class HieraBlock(PreNormBlock):
    """Hiera's block over unrolled tokens [B, N, dim] → [B, N // q_stride, dim_out]; the first block of a
    stage pools and widens the residual."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        q_stride: int = 1,
        window_size: int = 0,
        use_mask_unit_attn: bool = False,
    ):
        super().__init__(
            dim,
            dim_out,
            lambda: MaskUnitAttention(dim, dim_out, heads, q_stride, window_size, use_mask_unit_attn),
            mlp_ratio,
            drop_path,
        )

    def pool_residual(self, x: torch.Tensor) -> torch.Tensor:
        """The widened residual is pooled like the queries: the max over the ``q_stride`` unrolled groups."""
        if self.proj is None:
            return x
        return x.view(x.shape[0], self.attn.q_stride, -1, x.shape[-1]).max(dim=1).values


class PatchEmbed(nn.Module):
    """Overlapping patch convolution; masked mask units are zeroed in pixel space first."""

    def __init__(self, dim_in: int, dim_out: int, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int]):
        super().__init__()
        conv = nn.Conv2d if len(kernel) == 2 else nn.Conv3d
        self.proj = conv(dim_in, dim_out, kernel_size=tuple(kernel), stride=tuple(stride), padding=tuple(padding))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C, *spatial], mask [B, 1, *mask_units] (True = keep) → [B, N, dim_out] raster order."""
        if mask is not None:
            # without this, the 7x7 kernel would see pixels of masked neighbours at unit borders
            x = x * F.interpolate(mask.to(x.dtype), size=x.shape[2:])
        return self.proj(x).flatten(2).transpose(1, 2)


class ClassifierHead(nn.Module):
    """Dropout and a linear projection to logits (no softmax: losses and metrics want logits)."""

    def __init__(self, dim: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.projection = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.dropout(x))


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


class Hiera(nn.Module):
    """Hiera for images (2-D ``input_size``) or video (3-D ``input_size``, [T, H, W]).

    Input: [B, in_chans, *input_size]. The model also runs at other resolutions whose token grid is
    a multiple of the mask unit; position embeddings are then resampled (absolute-win: background
    interpolated, window tiled).
    """

    @records_config  # self.config: the arguments, so Hiera(**model.config) rebuilds the architecture
    def __init__(
        self,
        input_size: Sequence[int] = (224, 224),
        in_chans: int = 3,
        embed_dim: int = 96,
        num_heads: int = 1,
        num_classes: int = 1000,
        stages: Sequence[int] = (2, 3, 16, 3),
        q_pool: int = 3,
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
        head_dropout: float = 0.0,
        head_init_scale: float = 0.001,
        sep_pos_embed: bool = False,
        abs_win_pos_embed: bool = False,
        global_pos_size: Sequence[int] = (14, 14),
        pos_embed_antialias: bool = False,
    ):
        """
        Args:
            input_size: the pretraining resolution, [H, W] or [T, H, W].
            stages: blocks per stage.
            q_pool: number of stage transitions that pool (MAE uses 2, classification 3).
            q_stride: pooling stride per dim at each pooling transition.
            mask_unit_size: tokens per mask unit per dim.
            mask_unit_attn: per stage, attend within mask units (True) or globally.
            sep_pos_embed: separate spatial and temporal tables (video).
            abs_win_pos_embed: absolute-win embedding (images): background ``global_pos_size`` +
                one mask unit's window table.
            pos_embed_antialias: interpolate the absolute-win background with antialias, as timm's
                Hiera does (SAM 2 does not; the default follows SAM 2).
        """
        super().__init__()
        dims = len(input_size)
        if not (len(q_stride) == len(mask_unit_size) == len(patch_kernel) == len(patch_stride) == dims):
            raise ValueError(
                f"input_size {tuple(input_size)}: q_stride, mask_unit_size, patch_kernel and patch_stride "
                f"must all have {dims} entries"
            )
        tokens = [i // s for i, s in zip(input_size, patch_stride)]
        if any(t % m for t, m in zip(tokens, mask_unit_size)):
            raise ValueError(
                f"input_size {tuple(input_size)} gives a token grid {tuple(tokens)} that is not a multiple of "
                f"mask_unit_size {tuple(mask_unit_size)}"
            )
        if any(m % s**q_pool for m, s in zip(mask_unit_size, q_stride)):
            raise ValueError(f"mask_unit_size {tuple(mask_unit_size)} does not divide by q_stride**q_pool")
        if sep_pos_embed and abs_win_pos_embed:
            raise ValueError("sep_pos_embed and abs_win_pos_embed are exclusive")
        self.input_size = tuple(input_size)
        self.patch_stride = tuple(patch_stride)
        self.q_stride = tuple(q_stride)
        self.q_pool = q_pool
        self.mask_unit_size = tuple(mask_unit_size)
        self.mu_size = math.prod(mask_unit_size)
        self.tokens_spatial_shape = [i // s for i, s in zip(input_size, patch_stride)]
        self.mask_spatial_shape = [i // m for i, m in zip(self.tokens_spatial_shape, mask_unit_size)]
        self.sep_pos_embed = sep_pos_embed
        self.pos_embed_antialias = pos_embed_antialias
        self.num_classes = num_classes
        self.grad_checkpointing = False
        # strides consumed, finest first, by the unroll; pooling eats them from the front
        self.unroll_schedule = [tuple(q_stride)] * (len(stages) - 1)

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_kernel, patch_stride, patch_padding)

        self.pos_embed = self.pos_embed_win = self.pos_embed_spatial = self.pos_embed_temporal = None
        if sep_pos_embed:
            self.pos_embed_spatial = nn.Parameter(
                torch.zeros(1, math.prod(self.tokens_spatial_shape[1:]), embed_dim)
            )
            self.pos_embed_temporal = nn.Parameter(torch.zeros(1, self.tokens_spatial_shape[0], embed_dim))
        elif abs_win_pos_embed:
            self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *global_pos_size))
            self.pos_embed_win = nn.Parameter(torch.zeros(1, embed_dim, *mask_unit_size))
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, math.prod(self.tokens_spatial_shape), embed_dim))

        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        q_pool_blocks = [end + 1 for end in self.stage_ends[:q_pool]]
        depth = sum(stages)
        drop_rates = drop_path_rates(drop_path_rate, depth)
        flat_q_stride = math.prod(q_stride)
        window = self.mu_size
        stage = 0
        dim, heads = embed_dim, num_heads
        self.blocks = nn.ModuleList()
        self.feature_info = []
        for i in range(depth):
            dim_out = dim
            # The first block of a stage still uses the previous stage's attention kind: it runs
            # before pooling, at the previous resolution.
            use_mask_unit_attn = mask_unit_attn[stage]
            if i - 1 in self.stage_ends:
                dim_out = int(dim * dim_mul)
                heads = int(heads * head_mul)
                stage += 1
                if i in q_pool_blocks:
                    window //= flat_q_stride
            block = HieraBlock(
                dim=dim,
                dim_out=dim_out,
                heads=heads,
                mlp_ratio=mlp_ratio,
                drop_path=drop_rates[i],
                q_stride=flat_q_stride if i in q_pool_blocks else 1,
                window_size=window,
                use_mask_unit_attn=use_mask_unit_attn,
            )
            self.blocks.append(block)
            dim = dim_out
            if i in self.stage_ends:
                reduction = patch_stride[-1] * q_stride[-1] ** min(stage, q_pool)
                self.feature_info.append(dict(num_chs=dim, reduction=reduction, module=f"blocks.{i}"))
        self.num_features = self.head_hidden_size = dim

        self.norm = LayerNorm(dim)
        self.head = ClassifierHead(dim, num_classes, dropout=head_dropout)

        for p in (self.pos_embed, self.pos_embed_win, self.pos_embed_spatial, self.pos_embed_temporal):
            if p is not None:
                trunc_normal_(p, std=0.02)
        self.apply(self._init_weights)
        if isinstance(self.head.projection, nn.Linear):
            self.head.projection.weight.data.mul_(head_init_scale)
            self.head.projection.bias.data.mul_(head_init_scale)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ---- timm-style surface -----------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        names = ("pos_embed", "pos_embed_win", "pos_embed_spatial", "pos_embed_temporal")
        return {n for n in names if getattr(self, n, None) is not None}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise lr decay (timm's ``param_groups_layer_decay``)."""
        return dict(
            stem=r"^pos_embed|^pos_embed_win|^pos_embed_spatial|^pos_embed_temporal|^patch_embed",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head.projection

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head.projection = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    # ---- geometry ---------------------------------------------------------------------------

    def token_grid(self, x: torch.Tensor) -> list[int]:
        """Token grid of an input [B, C, *spatial] (the patch conv keeps ceil-free sizes)."""
        return [n // s for n, s in zip(x.shape[2:], self.patch_stride)]

    def stage_grid(self, grid: Sequence[int], stage: int) -> list[int]:
        """Token grid after ``stage`` stages' worth of pooling."""
        pools = min(stage, self.q_pool)
        return [n // s**pools for n, s in zip(grid, self.q_stride)]

    def num_mask_units(self, x: torch.Tensor) -> int:
        """Mask units of an input [B, C, *spatial]."""
        return math.prod([n // m for n, m in zip(self.token_grid(x), self.mask_unit_size)])

    def get_random_unit_indices(self, x: torch.Tensor, mask_ratio: float) -> torch.Tensor:
        """[B, #kept] ascending indices of the kept mask units, ``#kept = keep_count(#units, ratio)``.

        Static shapes throughout (no host sync), so it may run inside a compiled graph; it draws the same
        numbers as :meth:`get_random_mask` from the same RNG state.
        """
        return random_keep_indices(x.shape[0], self.num_mask_units(x), mask_ratio, x.device)

    def get_random_mask(self, x: torch.Tensor, mask_ratio: float) -> torch.Tensor:
        """[B, #mask units] bool, True = keep; ``keep_count(#units, ratio)`` kept per sample (see
        ``unveil.models.layers``)."""
        return unit_mask(self.get_random_unit_indices(x, mask_ratio), self.num_mask_units(x))

    def get_pos_embed(self, grid: Sequence[int]) -> torch.Tensor:
        """[1, prod(grid), C] position embedding for a token grid."""
        if self.pos_embed_win is not None:
            pos = abs_win_pos_embed(self.pos_embed, self.pos_embed_win, grid, self.pos_embed_antialias)
            return pos.flatten(2).transpose(1, 2)
        if self.sep_pos_embed:
            spatial, temporal = self.pos_embed_spatial, self.pos_embed_temporal
            if list(grid[1:]) != self.tokens_spatial_shape[1:]:
                spatial = resample_abs_pos_embed(
                    spatial, list(grid[1:]), self.tokens_spatial_shape[1:], num_prefix_tokens=0
                )
            if grid[0] != temporal.shape[1]:
                temporal = F.interpolate(temporal.transpose(1, 2), size=grid[0], mode="linear").transpose(1, 2)
            hw = math.prod(grid[1:])
            return spatial.repeat(1, grid[0], 1) + temporal.repeat_interleave(hw, dim=1)
        if list(grid) != self.tokens_spatial_shape:
            if len(grid) != 2:
                raise ValueError(f"cannot resample a joint 3-D position embedding to {tuple(grid)}")
            return resample_abs_pos_embed(self.pos_embed, list(grid), self.tokens_spatial_shape, num_prefix_tokens=0)
        return self.pos_embed

    # ---- forward ----------------------------------------------------------------------------

    def _embed(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, list[int]]:
        """Patch embed, position embed, unroll, and drop masked units → ([B, N_visible, C], grid)."""
        grid = self.token_grid(x)
        if any(n % m for n, m in zip(grid, self.mask_unit_size)):
            raise ValueError(
                f"input {tuple(x.shape[2:])} gives a token grid {tuple(grid)} that is not a multiple of "
                f"mask_unit_size {self.mask_unit_size}"
            )
        units = [n // m for n, m in zip(grid, self.mask_unit_size)]
        patch_mask = None
        if mask is not None:
            kept = unit_indices(mask)  # [B, #kept] ascending unit indices
            keep = mask if mask.dtype == torch.bool else unit_mask(kept, math.prod(units))
            patch_mask = keep.view(x.shape[0], 1, *units)
        x = self.patch_embed(x, mask=patch_mask)
        x = x + self.get_pos_embed(grid)
        x = unroll(x, grid, self.unroll_schedule)
        if mask is not None:
            # units are the fastest-varying part of the unrolled index: keep whole units, in order
            batch, num_tokens, channels = x.shape
            units = math.prod(units)
            x = x.view(batch, num_tokens // units, units, channels)
            index = kept[:, None, :, None].expand(-1, num_tokens // units, -1, channels)
            x = x.gather(2, index).reshape(batch, -1, channels)  # gather: its backward is a cheap scatter
        return x, grid

    def _reroll(self, x: torch.Tensor, grid: list[int], block: int, masked: bool) -> torch.Tensor:
        stage = self.stage_ends.index(block)
        pools = min(stage, self.q_pool)
        return reroll(x, self.stage_grid(grid, stage), self.unroll_schedule[pools:], masked=masked)

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final-stage tokens.

        Args:
            mask: None, a [B, #mask units] bool keep mask (True = keep), or [B, #kept] ascending indices of
                the kept units (:func:`unit_indices`); indices keep the forward free of host syncs.

        Returns:
            [B, N_final, C] in raster order over the final grid when ``mask`` is None; with a mask
            [B, #kept units * tokens per unit, C] in unrolled order (units fastest).
        """
        x, grid = self._embed(x, mask)
        for block in self.blocks:
            x = self._run_block(block, x)
        if mask is None and self.q_pool < len(self.unroll_schedule):
            # pooling stopped early (MAE's q_pool=2): tokens are still partly unrolled
            x = self._reroll(x, grid, self.stage_ends[-1], masked=False).flatten(1, -2)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """[B, N, C] tokens → mean pool → norm → [B, C] (pre_logits) or [B, num_classes] logits."""
        x = self.norm(x.mean(dim=1))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, C, *spatial] → [B, num_classes] logits (pooled over the kept units when masked)."""
        return self.forward_head(self.forward_features(x, mask))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = True,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-stage feature maps, in timm's convention.

        Args:
            indices: stages to return: the last n if int, all if None, else the listed ones.
            norm: unsupported (Hiera has no per-stage norms); must be False.
            output_fmt: "NCHW" ([B, C, *grid], channels first) or "NHWC" ([B, *grid, C]).
                With a mask, maps are [B, #kept units, *unit_shape, C] whatever the format.

        Returns:
            (final tokens as from :meth:`forward_features`, maps), or maps alone.
        """
        if norm:
            raise ValueError("Hiera.forward_intermediates: norm=True is not supported (no per-stage norms)")
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"Hiera.forward_intermediates: output_fmt must be NCHW or NHWC, not {output_fmt!r}")
        take, max_stage = feature_take_indices(len(self.stage_ends), indices)
        take_blocks = {self.stage_ends[i] for i in take}
        last = self.stage_ends[max_stage] if stop_early else len(self.blocks) - 1
        x, grid = self._embed(x, mask)
        maps = []
        for i, block in enumerate(self.blocks[: last + 1]):
            x = self._run_block(block, x)
            if i in take_blocks:
                feat = self._reroll(x, grid, i, masked=mask is not None)
                if mask is None and output_fmt == "NCHW":
                    feat = feat.movedim(-1, 1)
                maps.append(feat)
        if intermediates_only:
            return maps
        if mask is None and self.q_pool < len(self.unroll_schedule) and last == len(self.blocks) - 1:
            x = self._reroll(x, grid, self.stage_ends[-1], masked=False).flatten(1, -2)
        return x, maps


# --------------------------------------------------------------------------------------------
# Checkpoints and factories
# --------------------------------------------------------------------------------------------


def load_hiera_state_dict(model: nn.Module, state_dict: dict, strict: bool = True):
    """Load an official facebookresearch/hiera state dict (``model_state`` wrapper accepted)."""
    from .convert import unwrap_state_dict

    return model.load_state_dict(unwrap_state_dict(state_dict), strict=strict)


IMAGE = dict(input_size=(224, 224))
VIDEO = dict(
    input_size=(16, 224, 224),
    q_stride=(1, 2, 2),
    mask_unit_size=(1, 8, 8),
    patch_kernel=(3, 7, 7),
    patch_stride=(2, 4, 4),
    patch_padding=(1, 3, 3),
    sep_pos_embed=True,
    num_classes=400,  # the official video models are Kinetics-400 classifiers
)
# name: (embed_dim, num_heads, stages); the official sizes
SIZES = {
    "tiny": (96, 1, (1, 2, 7, 2)),
    "small": (96, 1, (1, 2, 11, 2)),
    "base": (96, 1, (2, 3, 16, 3)),
    "base_plus": (112, 2, (2, 3, 16, 3)),
    "large": (144, 2, (2, 6, 36, 4)),
    "huge": (256, 4, (2, 6, 36, 4)),
}


def hiera_config(size: str, video: bool = False) -> dict:
    """Constructor arguments of an official Hiera size, e.g. ``hiera_config("base", video=True)``."""
    embed_dim, num_heads, stages = SIZES[size]
    return dict(**(VIDEO if video else IMAGE), embed_dim=embed_dim, num_heads=num_heads, stages=stages)


def hiera_tiny_224(**kwargs) -> Hiera:
    return Hiera(**{**hiera_config("tiny"), **kwargs})


def hiera_small_224(**kwargs) -> Hiera:
    return Hiera(**{**hiera_config("small"), **kwargs})


def hiera_base_224(**kwargs) -> Hiera:
    return Hiera(**{**hiera_config("base"), **kwargs})


def hiera_base_plus_224(**kwargs) -> Hiera:
    return Hiera(**{**hiera_config("base_plus"), **kwargs})


def hiera_large_224(**kwargs) -> Hiera:
    return Hiera(**{**hiera_config("large"), **kwargs})


def hiera_huge_224(**kwargs) -> Hiera:
    return Hiera(**{**hiera_config("huge"), **kwargs})


def hiera_base_16x224(**kwargs) -> Hiera:
    return Hiera(**{**hiera_config("base", video=True), **kwargs})


def hiera_base_plus_16x224(**kwargs) -> Hiera:
    return Hiera(**{**hiera_config("base_plus", video=True), **kwargs})


def hiera_large_16x224(**kwargs) -> Hiera:
    return Hiera(**{**hiera_config("large", video=True), **kwargs})


def hiera_huge_16x224(**kwargs) -> Hiera:
    return Hiera(**{**hiera_config("huge", video=True), **kwargs})
