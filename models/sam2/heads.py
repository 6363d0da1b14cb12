"""SAM 2's image encoder (unveil's HieraDet trunk + FPN neck), prompt encoder and mask decoder."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..hieradet import HieraDet
from .layers import MLP, Attention, LayerNorm2d, RandomFourierEncoding, SinePositionEncoding

__all__ = ["FpnNeck", "ImageEncoder", "ImageFeatures", "MaskDecoder", "PromptEncoder", "TwoWayTransformer"]


@dataclass
class ImageFeatures:
    """What the image encoder gives the heads, finest level first.

    Attributes:
        fpn: [B, d_model, H/4, W/4], [B, d_model, H/8, W/8], [B, d_model, H/16, W/16] (``scalp`` 1
            drops the stride-32 level).
        pos: the sine position encodings of those maps, same shapes.
    """

    fpn: list[torch.Tensor]
    pos: list[torch.Tensor]


class FpnNeck(nn.Module):
    """1x1 lateral convolutions to ``d_model`` plus a nearest-neighbour top-down path into the
    levels listed in ``top_down_levels`` (SAM 2: only the stride-16 and stride-32 ones)."""

    def __init__(
        self, channels_coarse_first: list[int], d_model: int = 256, top_down_levels: tuple[int, ...] = (2, 3)
    ):
        super().__init__()
        self.backbone_channel_list = list(channels_coarse_first)
        self.d_model = d_model
        self.top_down_levels = tuple(top_down_levels)
        # convs[0] reads the coarsest trunk stage, as in SAM 2's checkpoints ("convs.N.conv")
        self.convs = nn.ModuleList(
            nn.Sequential(OrderedDict(conv=nn.Conv2d(c, d_model, kernel_size=1))) for c in channels_coarse_first
        )
        self.position_encoding = SinePositionEncoding(d_model)

    def forward(self, stages: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Trunk stage maps, finest first → (FPN maps, position encodings), finest first."""
        last = len(stages) - 1
        out: list[torch.Tensor] = [None] * len(stages)  # type: ignore[list-item]
        previous = None
        for level in range(last, -1, -1):
            lateral = self.convs[last - level](stages[level])  # [B, d_model, h_level, w_level]
            if previous is not None and level in self.top_down_levels:
                top_down = F.interpolate(previous.float(), scale_factor=2.0, mode="nearest")
                lateral = lateral + top_down
            previous = out[level] = lateral
        return out, [self.position_encoding(x) for x in out]


class ImageEncoder(nn.Module):
    """Trunk → FPN neck; ``scalp`` drops that many of the coarsest levels."""

    def __init__(self, trunk: HieraDet, d_model: int = 256, scalp: int = 1):
        super().__init__()
        self.trunk = trunk
        self.neck = FpnNeck(trunk.channel_list, d_model)
        self.scalp = scalp

    def forward(self, images: torch.Tensor) -> ImageFeatures:
        """[B, 3, S, S] normalised images → :class:`ImageFeatures`."""
        fpn, pos = self.neck(self.trunk(images))
        if self.scalp:
            fpn, pos = fpn[: -self.scalp], pos[: -self.scalp]
        return ImageFeatures(fpn, pos)


class PromptEncoder(nn.Module):
    """Embeds points, boxes (as two labelled corner points) and low-res masks.

    Point labels: 1 foreground, 0 background, 2 box top-left, 3 box bottom-right, -1 padding.
    """

    def __init__(self, embed_dim: int, embedding_size: tuple[int, int], image_size: tuple[int, int], mask_channels: int = 16):
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(embedding_size)
        self.input_image_size = tuple(image_size)
        self.pe_layer = RandomFourierEncoding(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * embedding_size[0], 4 * embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_channels // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_channels // 4),
            nn.GELU(),
            nn.Conv2d(mask_channels // 4, mask_channels, kernel_size=2, stride=2),
            LayerNorm2d(mask_channels),
            nn.GELU(),
            nn.Conv2d(mask_channels, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """[1, embed_dim, h, w] encoding of the image-embedding grid."""
        return self.pe_layer.grid(*self.image_embedding_size).unsqueeze(0)

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """coords [B, N, 2] (x, y) in input pixels, labels [B, N] → [B, N (+1 if pad), embed_dim]."""
        coords = coords + 0.5  # pixel centres
        if pad:
            # a padding point stands in for the absent box, as SAM was trained
            coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)
        emb = self.pe_layer.points(coords, self.input_image_size)  # [B, N, embed_dim]
        labels = labels.unsqueeze(-1)
        emb = torch.where(labels == -1, torch.zeros_like(emb) + self.not_a_point_embed.weight, emb)
        for label, table in enumerate(self.point_embeddings):
            emb = torch.where(labels == label, emb + table.weight, emb)
        return emb

    def embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """[B, 4] or [B, 2, 2] XYXY in input pixels → [B, 2, embed_dim]."""
        corners = self.pe_layer.points(boxes.reshape(-1, 2, 2) + 0.5, self.input_image_size)
        bias = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])  # [2, embed_dim]
        return corners + bias

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (sparse [B, N, embed_dim], dense [B, embed_dim, h, w]); masks are [B, 1, 4h, 4w] logits."""
        batch = next((t.shape[0] for t in (points[0] if points else None, boxes, masks) if t is not None), 1)
        device = self.no_mask_embed.weight.device
        sparse = [torch.empty(batch, 0, self.embed_dim, device=device)]
        if points is not None:
            sparse.append(self.embed_points(*points, pad=boxes is None))
        if boxes is not None:
            sparse.append(self.embed_boxes(boxes))
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, *self.image_embedding_size)
        return torch.cat(sparse, dim=1), dense


class TwoWayBlock(nn.Module):
    """Token self-attention, token→image cross-attention, token MLP, image→token cross-attention."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, downsample_rate: int = 2, skip_first_pe: bool = False):
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, heads, downsample_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim, dim, 2)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, heads, downsample_rate)
        self.skip_first_pe = skip_first_pe

    def forward(self, queries, keys, query_pe, key_pe):
        """queries [B, Nt, dim], keys [B, HW, dim] → both updated."""
        if self.skip_first_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, queries + query_pe, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """SAM's decoder transformer: tokens and image attend to each other ``depth`` times."""

    def __init__(self, depth: int = 2, dim: int = 256, heads: int = 8, mlp_dim: int = 2048):
        super().__init__()
        self.layers = nn.ModuleList(TwoWayBlock(dim, heads, mlp_dim, skip_first_pe=i == 0) for i in range(depth))
        self.final_attn_token_to_image = Attention(dim, heads, downsample_rate=2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor):
        """image, image_pe [B, dim, h, w]; tokens [B, Nt, dim] → (tokens [B, Nt, dim], image [B, hw, dim])."""
        keys = image.flatten(2).transpose(1, 2)  # [B, hw, dim]
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        queries = queries + self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries), keys


@dataclass
class DecoderOutput:
    """Mask decoder outputs (M = 3 with multimask output, else 1).

    Attributes:
        masks: [B, M, 4h, 4w] low-res mask logits.
        iou: [B, M] predicted IoU.
        tokens: [B, M or 1, dim] mask tokens of the returned masks (object-pointer source).
        object_score: [B, 1] object-presence logit.
    """

    masks: torch.Tensor
    iou: torch.Tensor
    tokens: torch.Tensor
    object_score: torch.Tensor


class MaskDecoder(nn.Module):
    """SAM 2's mask decoder: object-score, IoU and 4 mask tokens through a two-way transformer,
    then hypernetwork MLPs over upscaled features that add the stride-4 and stride-8 FPN maps."""

    def __init__(
        self,
        dim: int = 256,
        num_multimask: int = 3,
        dynamic_multimask: bool = True,
        stability_delta: float = 0.05,
        stability_thresh: float = 0.98,
        multimask_token_for_obj_ptr: bool = True,
    ):
        """
        Args:
            dynamic_multimask: with single-mask output, fall back to the best of the multimask
                outputs when the single mask is unstable (SAM 2's post-processing; on by default in
                the official ``build_sam2``).
            multimask_token_for_obj_ptr: with multimask output, return all three mask tokens.
        """
        super().__init__()
        self.transformer = TwoWayTransformer(dim=dim)
        self.num_mask_tokens = num_multimask + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.obj_score_token = nn.Embedding(1, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.conv_s0 = nn.Conv2d(dim, dim // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(dim, dim // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(dim, 256, self.num_mask_tokens, 3, sigmoid_output=True)
        self.pred_obj_score_head = MLP(dim, dim, 1, 3)
        self.dynamic_multimask = dynamic_multimask
        self.stability_delta = stability_delta
        self.stability_thresh = stability_thresh
        self.multimask_token_for_obj_ptr = multimask_token_for_obj_ptr

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        high_res: list[torch.Tensor],
        multimask_output: bool,
        repeat_image: bool = False,
    ) -> DecoderOutput:
        """
        Args:
            image_embeddings: [B or 1, dim, h, w] stride-16 features (1 with ``repeat_image``).
            image_pe: [1, dim, h, w].
            sparse: [B, N, dim]; dense: [B, dim, h, w] prompt embeddings.
            high_res: stride-4 and stride-8 features already through ``conv_s0`` / ``conv_s1``:
                [B or 1, dim/8, 4h, 4w], [B or 1, dim/4, 2h, 2w].
        """
        batch = sparse.shape[0]
        output_tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight])
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse], dim=1)  # [B, 6 + N, dim]
        src = image_embeddings
        if repeat_image:
            src = src.repeat_interleave(batch, dim=0)
        src = src + dense
        pos = image_pe.repeat_interleave(batch, dim=0)
        _, dim, h, w = src.shape
        hs, src = self.transformer(src, pos, tokens)
        mask_tokens = hs[:, 2 : 2 + self.num_mask_tokens]  # [B, 4, dim]

        feat_s0, feat_s1 = high_res
        up1, norm, act1, up2, act2 = self.output_upscaling
        src = src.transpose(1, 2).reshape(batch, dim, h, w)
        upscaled = act1(norm(up1(src) + feat_s1))  # [B, dim/4, 2h, 2w]
        upscaled = act2(up2(upscaled) + feat_s0)  # [B, dim/8, 4h, 4w]
        hyper = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], 1)
        masks = (hyper @ upscaled.flatten(2)).view(batch, -1, 4 * h, 4 * w)  # [B, 4, 4h, 4w]
        iou = self.iou_prediction_head(hs[:, 1])  # [B, 4]
        object_score = self.pred_obj_score_head(hs[:, 0])  # [B, 1]

        if multimask_output:
            masks, iou = masks[:, 1:], iou[:, 1:]
        elif self.dynamic_multimask and not self.training:
            masks, iou = self._stable_single_mask(masks, iou)
        else:
            masks, iou = masks[:, :1], iou[:, :1]
        tokens_out = mask_tokens[:, 1:] if multimask_output and self.multimask_token_for_obj_ptr else mask_tokens[:, :1]
        return DecoderOutput(masks, iou, tokens_out, object_score)

    def _stable_single_mask(self, masks: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 4, ...] → [B, 1, ...]: the single-mask output, or the best multimask output where the
        single mask's area changes too much between logit thresholds ±delta."""
        rows = torch.arange(masks.shape[0], device=masks.device)
        best = iou[:, 1:].argmax(dim=-1) + 1
        single = masks[:, 0].flatten(1)
        inner = (single > self.stability_delta).sum(-1).float()
        outer = (single > -self.stability_delta).sum(-1).float()
        stability = torch.where(outer > 0, inner / outer, 1.0)
        stable = stability >= self.stability_thresh  # [B]
        out_masks = torch.where(stable[:, None, None], masks[:, 0], masks[rows, best]).unsqueeze(1)
        out_iou = torch.where(stable, iou[:, 0], iou[rows, best]).unsqueeze(1)
        return out_masks, out_iou
