"""SAM 2's memory: the encoder that turns a frame's features and predicted mask into a memory, and
the attention that conditions the current frame's features on the memory bank."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LayerNorm2d, RoPEAttention, SinePositionEncoding

__all__ = ["CXBlock", "MemoryAttention", "MemoryAttentionLayer", "MemoryEncoder"]


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise 7x7 conv, LayerNorm, MLP (x4) with layer scale, residual."""

    def __init__(self, dim: int = 256, kernel_size: int = 7, layer_scale: float = 1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = LayerNorm2d(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, dim, H, W] → same."""
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)  # [B, H, W, dim]
        y = self.gamma * self.pwconv2(F.gelu(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class _Fuser(nn.Module):
    def __init__(self, dim: int, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(CXBlock(dim) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class _MaskDownSampler(nn.Module):
    """Mask [B, 1, S, S] → [B, dim, S/16, S/16]: four stride-2 convs (x4 channels each), LayerNorm, GELU."""

    def __init__(self, dim: int = 256, num_halvings: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for _ in range(num_halvings):
            layers += [nn.Conv2d(channels, channels * 4, 3, stride=2, padding=1), LayerNorm2d(channels * 4), nn.GELU()]
            channels *= 4
        layers.append(nn.Conv2d(channels, dim, kernel_size=1))
        self.encoder = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class MemoryEncoder(nn.Module):
    """Fuses the stride-16 features of a frame with its (sigmoid-scaled) mask into a memory map."""

    def __init__(self, in_dim: int = 256, out_dim: int = 64, fuser_layers: int = 2):
        super().__init__()
        self.mask_downsampler = _MaskDownSampler(in_dim)
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = _Fuser(in_dim, fuser_layers)
        self.out_proj = nn.Conv2d(in_dim, out_dim, kernel_size=1)
        self.position_encoding = SinePositionEncoding(out_dim)

    def forward(self, pix_feat: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pix_feat [B, in_dim, h, w], mask [B, 1, 16h, 16w] (already scaled) → (memory, its position
        encoding), each [B, out_dim, h, w]."""
        x = self.pix_feat_proj(pix_feat.to(mask.device)) + self.mask_downsampler(mask)
        x = self.out_proj(self.fuser(x))
        return x, self.position_encoding(x)


class MemoryAttentionLayer(nn.Module):
    """Pre-norm: RoPE self-attention, RoPE cross-attention to the memories, ReLU FFN."""

    def __init__(self, dim: int = 256, mem_dim: int = 64, ffn_dim: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.self_attn = RoPEAttention(dim, 1, dropout=dropout)
        self.cross_attn_image = RoPEAttention(dim, 1, dropout=dropout, kv_dim=mem_dim, repeat_for_keys=True)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, memory_keys: torch.Tensor, num_k_exclude_rope: int
    ) -> torch.Tensor:
        """x [B, HW, dim]; memory [B, M, mem_dim] (the values) and memory_keys (memory plus its
        position encoding, the same for every layer) → [B, HW, dim]."""
        y = self.norm1(x)
        x = x + self.dropout(self.self_attn(y, y, y))
        y = self.norm2(x)
        x = x + self.dropout(self.cross_attn_image(y, memory_keys, memory, num_k_exclude_rope))
        y = self.linear2(self.dropout(F.relu(self.linear1(self.norm3(x)))))
        return x + self.dropout(y)


class MemoryAttention(nn.Module):
    """``num_layers`` memory-attention layers and a final LayerNorm."""

    def __init__(self, dim: int = 256, mem_dim: int = 64, num_layers: int = 4, ffn_dim: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.layers = nn.ModuleList(MemoryAttentionLayer(dim, mem_dim, ffn_dim, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        current: torch.Tensor,
        current_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_obj_ptr_tokens: int = 0,
    ) -> torch.Tensor:
        """
        Args:
            current, current_pos: [B, HW, dim] the frame's stride-16 features and their encoding.
            memory, memory_pos: [B, M, mem_dim]: spatial memories (rotated by RoPE), then
                ``num_obj_ptr_tokens`` object-pointer tokens (not rotated).

        Returns:
            [B, HW, dim].
        """
        x = current + 0.1 * current_pos
        memory_keys = memory + memory_pos  # [B, M, mem_dim], once for all layers
        for layer in self.layers:
            x = layer(x, memory, memory_keys, num_obj_ptr_tokens)
        return self.norm(x)
