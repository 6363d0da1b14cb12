"""Building blocks shared by SAM 2's heads: position encodings, attention (plain and rotary), MLPs.

Parameter names follow the SAM 2 checkpoints (``q_proj``, ``layers.0``, ...), so official weights
load without a key map.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MLP",
    "Attention",
    "LayerNorm2d",
    "RandomFourierEncoding",
    "RoPEAttention",
    "SinePositionEncoding",
    "axial_rope_angles",
    "sine_encoding_1d",
]


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a [B, C, H, W] map."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (``layers.0`` ... ``layers.{n-1}``)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, num_layers: int, sigmoid_output: bool = False):
        super().__init__()
        dims = [dim_in] + [hidden] * (num_layers - 1) + [dim_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


# ---- position encodings ------------------------------------------------------------------------


def _sine_frequencies(num_feats: int, temperature: float, device) -> torch.Tensor:
    """[num_feats] divisors: temperature ** (2 * (i // 2) / num_feats)."""
    index = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / num_feats)


def _interleave_sin_cos(angles: torch.Tensor) -> torch.Tensor:
    """[..., F] angles → [..., F]: sin of the even entries and cos of the odd ones, interleaved."""
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


class SinePositionEncoding(nn.Module):
    """DETR's normalised 2-D sine encoding of a map's grid; no parameters, cached per size.

    ``channels`` / 2 channels encode y, then as many encode x.
    """

    def __init__(self, channels: int, temperature: float = 10000.0):
        super().__init__()
        if channels % 2:
            raise ValueError(f"SinePositionEncoding needs an even channel count, got {channels}")
        self.channels = channels
        self.temperature = temperature
        self._cache: dict[tuple, torch.Tensor] = {}

    @torch.no_grad()
    def encode(self, height: int, width: int, device) -> torch.Tensor:
        """[1, channels, height, width]."""
        key = (height, width, str(device))
        if key not in self._cache:
            eps, scale = 1e-6, 2 * math.pi
            y = torch.arange(1, height + 1, dtype=torch.float32, device=device)
            x = torch.arange(1, width + 1, dtype=torch.float32, device=device)
            y = y / (y[-1:] + eps) * scale
            x = x / (x[-1:] + eps) * scale
            freqs = _sine_frequencies(self.channels // 2, self.temperature, device)
            pos_y = _interleave_sin_cos(y[:, None] / freqs)  # [H, C/2]
            pos_x = _interleave_sin_cos(x[:, None] / freqs)  # [W, C/2]
            pos = torch.cat(
                (pos_y[:, None, :].expand(-1, width, -1), pos_x[None, :, :].expand(height, -1, -1)), dim=-1
            )  # [H, W, C]
            self._cache[key] = pos.permute(2, 0, 1)[None].contiguous()
        return self._cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, *, H, W] → [B, channels, H, W] in x's dtype."""
        pos = self.encode(x.shape[-2], x.shape[-1], x.device)
        return pos.expand(x.shape[0], -1, -1, -1).to(x.dtype)


def sine_encoding_1d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """[N] positions → [N, dim]: dim / 2 sines, then dim / 2 cosines."""
    freqs = _sine_frequencies(dim // 2, temperature, positions.device)
    angles = positions.unsqueeze(-1) / freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class RandomFourierEncoding(nn.Module):
    """SAM's position encoding with random Gaussian spatial frequencies (a buffer of the checkpoint)."""

    def __init__(self, num_feats: int = 128, scale: float = 1.0):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn(2, num_feats))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        """[..., 2] coordinates in [0, 1] → [..., 2 * num_feats]."""
        angles = 2 * math.pi * ((2 * coords - 1) @ self.positional_encoding_gaussian_matrix)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    def grid(self, height: int, width: int) -> torch.Tensor:
        """[2 * num_feats, H, W] encoding of the pixel centres of a grid."""
        device = self.positional_encoding_gaussian_matrix.device
        ones = torch.ones(height, width, device=device)
        y = (ones.cumsum(0) - 0.5) / height
        x = (ones.cumsum(1) - 0.5) / width
        return self._encode(torch.stack([x, y], dim=-1)).permute(2, 0, 1)

    def points(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """[B, N, 2] (x, y) in pixels of an image of ``image_size`` (H, W) → [B, N, 2 * num_feats]."""
        scale = coords.new_tensor([1.0 / image_size[1], 1.0 / image_size[0]])
        return self._encode((coords * scale).float())


# ---- attention ---------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections, optionally to a narrower inner width."""

    def __init__(
        self,
        dim: int,
        heads: int,
        downsample_rate: int = 1,
        dropout: float = 0.0,
        kv_dim: int | None = None,
    ):
        super().__init__()
        self.inner_dim = dim // downsample_rate
        if self.inner_dim % heads:
            raise ValueError(f"heads {heads} must divide the inner width {self.inner_dim}")
        self.heads = heads
        kv_dim = kv_dim or dim
        self.q_proj = nn.Linear(dim, self.inner_dim)
        self.k_proj = nn.Linear(kv_dim, self.inner_dim)
        self.v_proj = nn.Linear(kv_dim, self.inner_dim)
        self.out_proj = nn.Linear(self.inner_dim, dim)
        self.dropout = dropout

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, inner] → [B, heads, N, inner / heads]."""
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(x.transpose(1, 2).flatten(2))  # [B, Nq, dim]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [B, Nq, dim], k and v [B, Nk, kv_dim] → [B, Nq, dim]."""
        return self._attend(self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v)))


def axial_rope_angles(head_dim: int, width: int, height: int, theta: float = 10000.0, device=None) -> torch.Tensor:
    """Rotation angles of 2-D axial RoPE for a raster-ordered (height x width) grid.

    Returns:
        [height * width, head_dim / 2]: the first head_dim / 4 pairs turn with x, the rest with y.
    """
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 4, device=device)[: head_dim // 4].float() / head_dim))
    index = torch.arange(width * height, dtype=torch.float32, device=device)
    t_x = index % width
    t_y = torch.div(index, width, rounding_mode="floor")
    return torch.cat([torch.outer(t_x, freqs), torch.outer(t_y, freqs)], dim=-1)


def _rotate(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of x [..., N, D] by unit complex numbers rotation [N, D/2]
    (each pair read as one complex number: one complex multiply, no intermediate tensors)."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # [..., N, D/2] complex view
    return torch.view_as_real(pairs * rotation).flatten(-2).type_as(x)


def _rotate_keys(k: torch.Tensor, rotation: torch.Tensor, num_rope: int) -> torch.Tensor:
    """Keys [B, heads, M, D]: the first ``num_rope`` are maps of ``N = len(rotation)`` tokens each,
    every map rotated alike; the rest pass unchanged.

    The maps are a free view [B, heads, num_rope / N, N, D/2] that broadcasts against rotation, so
    the rotation is never repeated. Without autograd, the rotated keys and the unrotated tail are
    written into one new tensor (no concatenation)."""
    n = rotation.shape[0]
    maps = k[:, :, :num_rope].unflatten(2, (num_rope // n, n))  # [B, heads, maps, N, D]
    if k.dtype != torch.float32 or (torch.is_grad_enabled() and k.requires_grad):
        return torch.cat([_rotate(maps, rotation).flatten(2, 3), k[:, :, num_rope:]], dim=2)
    out = torch.empty(k.shape, dtype=k.dtype, device=k.device)  # [B, heads, M, D]
    rotated = torch.view_as_complex(out[:, :, :num_rope].unflatten(2, maps.shape[2:4]).unflatten(-1, (-1, 2)))
    torch.mul(torch.view_as_complex(maps.unflatten(-1, (-1, 2))), rotation, out=rotated)
    out[:, :, num_rope:] = k[:, :, num_rope:]
    return out


class RoPEAttention(Attention):
    """Attention with 2-D axial rotary encoding of queries and keys (SAM 2's memory attention).

    Queries are a square feature map in raster order. Keys are ``n`` such maps one after another
    (memories of ``n`` frames; the same rotation repeats per map, ``repeat_for_keys``) followed by
    ``num_k_exclude_rope`` tokens that are not rotated (object pointers).
    """

    def __init__(self, *args, theta: float = 10000.0, repeat_for_keys: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.theta = theta
        self.repeat_for_keys = repeat_for_keys
        self._rotations: dict[tuple, torch.Tensor] = {}

    def _rotation(self, num_tokens: int, device) -> torch.Tensor:
        """[num_tokens, head_dim / 2] unit complex numbers, computed once per map size and device
        (as a plain tensor even inside ``inference_mode``, so that autograd can use it later)."""
        key = (num_tokens, str(device))
        if key not in self._rotations:
            side = math.isqrt(num_tokens)
            if side * side != num_tokens:
                raise ValueError(f"RoPEAttention expects a square map of queries, got {num_tokens} tokens")
            with torch.inference_mode(False), torch.no_grad():
                angles = axial_rope_angles(self.inner_dim // self.heads, side, side, self.theta, device)
                self._rotations[key] = torch.polar(torch.ones_like(angles), angles)
        return self._rotations[key]

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_k_exclude_rope: int = 0
    ) -> torch.Tensor:
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        rotation = self._rotation(q.shape[-2], q.device)
        q = _rotate(q, rotation)
        num_rope = k.shape[-2] - num_k_exclude_rope
        if num_rope > 0:
            if num_rope != q.shape[-2] and not self.repeat_for_keys:
                raise ValueError("keys and queries differ in length: RoPE on keys needs repeat_for_keys=True")
            if num_rope % q.shape[-2]:
                raise ValueError(
                    f"RoPEAttention: {num_rope} rotated keys are not whole maps of {q.shape[-2]} tokens"
                )
            k = _rotate_keys(k, rotation, num_rope)
        return self._attend(q, k, v)
