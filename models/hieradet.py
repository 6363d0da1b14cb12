"""HieraDet: Hiera weights run with windowed attention on channels-last maps (the SAM 2 trunk).

"Window Attention is Bugged" (Bolya et al., ICLR 2024) and SAM 2 (Ravi et al., 2024) run a Hiera
trunk at high resolution by replacing mask-unit attention over unrolled tokens with attention inside
non-overlapping windows of a [B, H, W, C] map, plus a few global-attention blocks. The parameters
are exactly those of :class:`unveil.models.hiera.Hiera` with ``abs_win_pos_embed=True`` (same names,
same shapes), without the final ``norm`` and the classifier ``head``::

    trunk.load_state_dict(hiera.state_dict(), strict=False)  # unexpected: norm.*, head.*

At 224 px with 8x8-token mask units and SAM 2's window sizes (8, 4, 14, 7) both ways of running the
weights compute the same function (stage 3 and 4 windows cover the whole 14x14 and 7x7 maps); at
higher resolution the windows stay the size of the pretraining mask units, which is the point.
(SAM 2's large configuration uses windows (8, 4, 16, 8): at 224 its 16-token stage-3 windows pad
the 14x14 map, so there the two ways differ by design.)

Converters to and from the SAM 2 checkpoint layout and timm's ``hieradet_sam2`` live in
:mod:`unveil.models.convert`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint
from unveil.common.config import records_config

from .hiera import Hiera, PatchEmbed, PreNormBlock, abs_win_pos_embed
from .layers import drop_path_rates

__all__ = [
    "HieraDet",
    "HieraDetBlock",
    "WindowedAttention",
    "hieradet_base",
    "hieradet_base_plus",
    "hieradet_large",
    "hieradet_small",
    "hieradet_tiny",
    "window_partition",
    "window_unpartition",
]


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Cut a map into non-overlapping square windows, zero-padding bottom and right.

    Args:
        x: [B, H, W, C].
        window: window side in tokens.

    Returns:
        ([B * nh * nw, window, window, C] with windows in raster order per image, (nh, nw)).
    """
    batch, height, width, channels = x.shape
    pad_h, pad_w = -height % window, -width % window
    if pad_h or pad_w:
        # SAM 2 pads after norm1 and lets the zero tokens take part in attention; so do we
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    nh, nw = (height + pad_h) // window, (width + pad_w) // window
    x = x.view(batch, nh, window, nw, window, channels).transpose(2, 3)  # [B, nh, nw, win, win, C]
    return x.reshape(-1, window, window, channels), (nh, nw)


def window_unpartition(
    windows: torch.Tensor, num_windows: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: [B * nh * nw, wh, ww, C] → [B, H, W, C] (padding cropped)."""
    nh, nw = num_windows
    _, wh, ww, channels = windows.shape
    x = windows.view(-1, nh, nw, wh, ww, channels).transpose(2, 3)  # [B, nh, wh, nw, ww, C]
    x = x.reshape(x.shape[0], nh * wh, nw * ww, channels)
    return x[:, : size[0], : size[1]]


def max_pool_nhwc(x: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """2-D max pool with kernel = stride (floor), channels last: [B, H, W, C] → [B, H//sh, W//sw, C]."""
    return F.max_pool2d(x.permute(0, 3, 1, 2), kernel_size=tuple(stride), stride=tuple(stride)).permute(
        0, 2, 3, 1
    )


class WindowedAttention(nn.Module):
    """Multi-head attention inside square windows of a [B, H, W, C] map, or over the whole map.

    With ``q_stride`` the queries are max-pooled inside each window, so a ``window``-sided window
    of keys produces a ``window // stride`` window of outputs: the output map is [B, H//s, W//s, C].
    Parameter names (``qkv``, ``proj``) are those of Hiera's mask-unit attention.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        heads: int,
        q_stride: Sequence[int] | None = None,
        window_size: int = 0,
    ):
        """
        Args:
            q_stride: pool the queries by this (sh, sw); None for no pooling.
            window_size: window side in input tokens; 0 for global attention.
        """
        super().__init__()
        if q_stride is not None and window_size and any(window_size % s for s in q_stride):
            raise ValueError(f"window_size {window_size} is not a multiple of q_stride {tuple(q_stride)}")
        self.dim = dim
        self.dim_out = dim_out
        self.heads = heads
        self.head_dim = dim_out // heads
        self.q_stride = tuple(q_stride) if q_stride is not None else None
        self.window_size = window_size
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, W, dim] (already normed) → [B, H', W', dim_out], H' = H // q_stride[0] (or H)."""
        height, width = x.shape[1:3]
        if self.window_size:
            x, num_windows = window_partition(x, self.window_size)  # [B * nW, win, win, dim]
        groups, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(groups, h * w, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [G, heads, h * w, head_dim]
        if self.q_stride is not None:
            # pooling is per channel, so heads can ride in the batch dim
            q = max_pool_nhwc(q.reshape(groups * self.heads, h, w, self.head_dim), self.q_stride)
            h, w = q.shape[1:3]
            # contiguous: the pool leaves channels strided, and fused SDPA kernels need a unit last stride
            q = q.contiguous().view(groups, self.heads, h * w, self.head_dim)
        x = F.scaled_dot_product_attention(q, k, v)  # [G, heads, h * w, head_dim]
        x = self.proj(x.transpose(1, 2).reshape(groups, h, w, self.dim_out))
        if self.window_size:
            out_size = (height, width)
            if self.q_stride is not None:
                out_size = (height // self.q_stride[0], width // self.q_stride[1])
            x = window_unpartition(x, num_windows, out_size)
        return x


class HieraDetBlock(PreNormBlock):
    """Hiera's pre-norm block on a [B, H, W, dim] map → [B, H', W', dim_out], with windowed or global
    attention.

    Same parameters as :class:`unveil.models.hiera.HieraBlock`: ``norm1``, ``attn.qkv``,
    ``attn.proj``, ``proj`` (only when the width changes), ``norm2``, ``mlp.fc1``, ``mlp.fc2``.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        q_stride: Sequence[int] | None = None,
        window_size: int = 0,
    ):
        super().__init__(
            dim,
            dim_out,
            lambda: WindowedAttention(dim, dim_out, heads, q_stride, window_size),
            mlp_ratio,
            drop_path,
        )
        self.q_stride = tuple(q_stride) if q_stride is not None else None
        self.window_size = window_size

    def pool_residual(self, x: torch.Tensor) -> torch.Tensor:
        """The residual map is max-pooled by ``q_stride``, as the queries are."""
        return max_pool_nhwc(x, self.q_stride) if self.q_stride is not None else x


class HieraDet(nn.Module):
    """Hiera trunk with windowed attention (HieraDet / SAM 2 image encoder trunk), images only.

    Input [B, in_chans, H, W] with H and W multiples of ``patch_stride * mask_unit_size`` (32 px by
    default). :meth:`forward` returns the four stage maps channels-first, like SAM 2's trunk:
    [B, C_i, H / 2**(i+2), W / 2**(i+2)] for i = 0..3 (with the default strides).

    The constructor mirrors :class:`unveil.models.hiera.Hiera` where the two share a meaning; the
    extra arguments are SAM 2's ``window_spec`` and ``global_att_blocks``.
    """

    @records_config
    def __init__(
        self,
        in_chans: int = 3,
        embed_dim: int = 96,
        num_heads: int = 1,
        stages: Sequence[int] = (2, 3, 16, 3),
        q_pool: int = 3,
        q_stride: Sequence[int] = (2, 2),
        mask_unit_size: Sequence[int] = (8, 8),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        patch_kernel: Sequence[int] = (7, 7),
        patch_stride: Sequence[int] = (4, 4),
        patch_padding: Sequence[int] = (3, 3),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        global_pos_size: Sequence[int] = (14, 14),
        window_spec: Sequence[int] = (8, 4, 14, 7),
        global_att_blocks: Sequence[int] = (12, 16, 20),
        pos_embed_antialias: bool = False,
    ):
        """
        Args:
            mask_unit_size: shape of the window position table ``pos_embed_win`` (the pretraining
                mask unit); ``window_spec[0]`` must be a multiple of it so that the tiled table
                lines up with the first-stage windows.
            global_pos_size: shape of the background table ``pos_embed``.
            window_spec: window side, in tokens, per stage. The first block of a stage pools, so
                it runs at the previous stage's resolution with the previous stage's window.
            global_att_blocks: indices of blocks with global attention.
            pos_embed_antialias: see :func:`unveil.models.hiera.abs_win_pos_embed` (SAM 2: False).
        """
        super().__init__()
        if len(window_spec) != len(stages):
            raise ValueError(f"window_spec {tuple(window_spec)} needs one entry per stage {tuple(stages)}")
        if not 0 <= q_pool < len(stages):
            raise ValueError(f"q_pool must be in [0, {len(stages) - 1}], got {q_pool}")
        if any(window_spec[0] % m for m in mask_unit_size):
            raise ValueError(
                f"window_spec[0]={window_spec[0]} is not a multiple of mask_unit_size "
                f"{tuple(mask_unit_size)}: "
                "the tiled window embedding would not line up with the windows"
            )
        depth = sum(stages)
        if any(not 0 <= b < depth for b in global_att_blocks):
            raise ValueError(f"global_att_blocks {tuple(global_att_blocks)} out of range for depth {depth}")
        self.patch_stride = tuple(patch_stride)
        self.q_stride = tuple(q_stride)
        self.q_pool = q_pool
        self.mask_unit_size = tuple(mask_unit_size)
        self.window_spec = tuple(window_spec)
        self.global_att_blocks = tuple(global_att_blocks)
        self.pos_embed_antialias = pos_embed_antialias
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_kernel, patch_stride, patch_padding)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *global_pos_size))
        self.pos_embed_win = nn.Parameter(torch.zeros(1, embed_dim, *mask_unit_size))

        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        q_pool_blocks = {end + 1 for end in self.stage_ends[:q_pool]}
        drop_rates = drop_path_rates(drop_path_rate, depth)  # plain floats: builds on the meta device
        stage = 0
        dim, heads = embed_dim, num_heads
        self.blocks = nn.ModuleList()
        self.feature_info = []
        for i in range(depth):
            dim_out = dim
            # the stage-opening block still sees the previous stage's map, hence its window
            window = 0 if i in self.global_att_blocks else window_spec[stage]
            if i - 1 in self.stage_ends:
                dim_out = int(dim * dim_mul)
                heads = int(heads * head_mul)
                stage += 1
            block = HieraDetBlock(
                dim=dim,
                dim_out=dim_out,
                heads=heads,
                mlp_ratio=mlp_ratio,
                drop_path=drop_rates[i],
                q_stride=q_stride if i in q_pool_blocks else None,
                window_size=window,
            )
            self.blocks.append(block)
            dim = dim_out
            if i in self.stage_ends:
                reduction = patch_stride[-1] * q_stride[-1] ** min(stage, q_pool)
                self.feature_info.append(dict(num_chs=dim, reduction=reduction, module=f"blocks.{i}"))
        self.num_features = dim
        # SAM 2's FpnNeck reads the stage widths coarsest first
        self.channel_list = [self.blocks[i].dim_out for i in self.stage_ends[::-1]]

        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.pos_embed_win, std=0.02)
        self.apply(Hiera._init_weights)

    # ---- timm-style surface -----------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "pos_embed_win"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise lr decay (timm's ``param_groups_layer_decay``)."""
        return dict(stem=r"^pos_embed|^pos_embed_win|^patch_embed", blocks=[(r"^blocks\.(\d+)", None)])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    # ---- forward ----------------------------------------------------------------------------

    def get_pos_embed(self, grid: Sequence[int]) -> torch.Tensor:
        """[1, H, W, C] absolute-win embedding for a token grid (H, W)."""
        pos = abs_win_pos_embed(self.pos_embed, self.pos_embed_win, grid, self.pos_embed_antialias)
        return pos.permute(0, 2, 3, 1)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in_chans, H, W] → [B, H/4, W/4, C] with position embedding added."""
        x = self.patch_embed.proj(x).permute(0, 2, 3, 1)  # [B, h, w, C]
        return x + self.get_pos_embed(x.shape[1:3])

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in_chans, H, W] → final stage map [B, H/32, W/32, C] (channels last)."""
        x = self._embed(x)
        for block in self.blocks:
            x = self._run_block(block, x)
        return x

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = True,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-stage maps, in timm's convention.

        Args:
            indices: stages to return: the last n if int, all if None, else the listed ones.
            norm: unsupported (the trunk has no norms on its outputs); must be False.
            output_fmt: "NCHW" ([B, C, H, W]) or "NHWC" ([B, H, W, C]).
            stop_early: skip the blocks after the last requested stage.

        Returns:
            (last map computed, [B, H, W, C], maps), or maps alone.
        """
        if norm:
            raise ValueError("HieraDet.forward_intermediates: norm=True is not supported (no output norms)")
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(
                f"HieraDet.forward_intermediates: output_fmt must be NCHW or NHWC, not {output_fmt!r}"
            )
        take, max_stage = feature_take_indices(len(self.stage_ends), indices)
        take_blocks = {self.stage_ends[i] for i in take}
        last = self.stage_ends[max_stage] if stop_early else len(self.blocks) - 1
        x = self._embed(x)
        maps = []
        for i, block in enumerate(self.blocks[: last + 1]):
            x = self._run_block(block, x)
            if i in take_blocks:
                maps.append(x.permute(0, 3, 1, 2) if output_fmt == "NCHW" else x)
        if intermediates_only:
            return maps
        return x, maps

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[B, in_chans, H, W] → the four stage maps, channels first, finest first (as SAM 2's trunk)."""
        return self.forward_intermediates(x, intermediates_only=True)


# --------------------------------------------------------------------------------------------
# Factories: SAM 2's trunk configurations (sam2_hiera_{t,s,b+,l}.yaml); `hieradet_base` is the
# Hiera-B trunk with SAM 2's default windows, for MAE hiera_base checkpoints.
# --------------------------------------------------------------------------------------------

CONFIGS = {
    "tiny": dict(
        embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9), global_pos_size=(7, 7)
    ),
    "small": dict(
        embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13), global_pos_size=(7, 7)
    ),
    "base": dict(
        embed_dim=96,
        num_heads=1,
        stages=(2, 3, 16, 3),
        global_att_blocks=(12, 16, 20),
        global_pos_size=(14, 14),
    ),
    "base_plus": dict(
        embed_dim=112,
        num_heads=2,
        stages=(2, 3, 16, 3),
        global_att_blocks=(12, 16, 20),
        global_pos_size=(14, 14),
    ),
    "large": dict(
        embed_dim=144,
        num_heads=2,
        stages=(2, 6, 36, 4),
        global_att_blocks=(23, 33, 43),
        global_pos_size=(7, 7),
        window_spec=(8, 4, 16, 8),
    ),
}


def hieradet_tiny(**kwargs) -> HieraDet:
    return HieraDet(**{**CONFIGS["tiny"], **kwargs})


def hieradet_small(**kwargs) -> HieraDet:
    return HieraDet(**{**CONFIGS["small"], **kwargs})


def hieradet_base(**kwargs) -> HieraDet:
    return HieraDet(**{**CONFIGS["base"], **kwargs})


def hieradet_base_plus(**kwargs) -> HieraDet:
    return HieraDet(**{**CONFIGS["base_plus"], **kwargs})


def hieradet_large(**kwargs) -> HieraDet:
    return HieraDet(**{**CONFIGS["large"], **kwargs})
