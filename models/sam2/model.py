"""SAM 2 (Ravi et al., 2024): the whole model, built on unveil's HieraDet trunk.

One module holds the math of both uses: an image forward (prompt → masks, the SAM use) and the
per-frame tracking step of the video predictor (memory conditioning, heads, memory encoding).
The predictors in :mod:`unveil.models.sam2.predictor` and :mod:`unveil.models.sam2.video` keep
the state around it.

State-dict keys are those of the official SAM 2.1 checkpoints except the trunk's, which are
unveil's Hiera keys; :meth:`SAM2.load_official_state_dict` and :meth:`SAM2.official_state_dict`
convert the ``image_encoder.trunk.*`` part (``pos_embed_window`` ↔ ``pos_embed_win``,
``mlp.layers.0/1`` ↔ ``mlp.fc1/fc2``) and load strictly.

Fixed design choices of the SAM 2.1 releases (not options here): high-resolution features in the
decoder, object-score prediction with an MLP, fixed no-object pointer, object pointers in the
memory attention with projected signed temporal encodings (past frames only at inference), the
spatial no-object embedding, ``no_mem_embed`` added directly on prompt frames, and input masks used
as outputs without the decoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.init import trunc_normal_

from .. import hieradet
from ..convert import ConversionReport, convert_state_dict, unwrap_state_dict
from .heads import DecoderOutput, ImageEncoder, ImageFeatures, MaskDecoder, PromptEncoder
from .layers import MLP, sine_encoding_1d
from .memory import MemoryAttention, MemoryEncoder

__all__ = [
    "NO_OBJ_SCORE",
    "SAM2",
    "FrameOutput",
    "HeadsOutput",
    "SAM2Config",
    "TrackingConfig",
    "sam2_hiera_base_plus",
    "sam2_hiera_large",
    "sam2_hiera_small",
    "sam2_hiera_tiny",
]

NO_OBJ_SCORE = -1024.0
"""Mask logit written where the object-score head says the object is absent."""

_TRUNK = "image_encoder.trunk."


@dataclass(frozen=True)
class TrackingConfig:
    """How the video model uses its memory (SAM 2.1 values).

    Attributes:
        num_maskmem: memories attended to: the conditioning frames plus the ``num_maskmem - 1``
            most recent frames.
        max_obj_ptrs: object pointers from at most this many frames.
        mask_sigmoid_scale, mask_sigmoid_bias: the mask enters the memory encoder as
            ``sigmoid(logits) * scale + bias``.
        binarize_mask_from_points: on prompted frames, ``logits > 0`` instead of the sigmoid
            (the official video predictor's post-processing; on there by default).
        multimask_for_tracking, multimask_points: three candidate masks (the best one kept) when a
            frame has between ``multimask_points[0]`` and ``[1]`` clicks, on tracked frames too.
        max_cond_frames_in_attn: conditioning frames attended to (-1: all).
        memory_temporal_stride: stride between the recent memories.
    """

    num_maskmem: int = 7
    max_obj_ptrs: int = 16
    mask_sigmoid_scale: float = 20.0
    mask_sigmoid_bias: float = -10.0
    binarize_mask_from_points: bool = True
    multimask_for_tracking: bool = True
    multimask_points: tuple[int, int] = (0, 1)
    max_cond_frames_in_attn: int = -1
    memory_temporal_stride: int = 1


@dataclass(frozen=True)
class SAM2Config:
    """A SAM 2 model.

    Attributes:
        trunk: size of the HieraDet trunk (``unveil.models.hieradet.hieradet_<trunk>``).
        trunk_args: extra arguments of the trunk factory (e.g. a pretraining's ``global_pos_size``).
        image_size: input side; the stride-16 map is ``image_size // 16`` tokens across.
        d_model, mem_dim: widths of the heads and of the memories.
        dynamic_multimask: single-mask output falls back to the best multimask output when unstable
            (the official ``build_sam2`` post-processing, on by default).
        tracking: see :class:`TrackingConfig`.
    """

    trunk: str = "tiny"
    trunk_args: dict = field(default_factory=dict)
    image_size: int = 1024
    d_model: int = 256
    mem_dim: int = 64
    dynamic_multimask: bool = True
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


@dataclass
class HeadsOutput:
    """Prompt encoder + mask decoder on one frame (M = 3 candidates with multimask output, else 1).

    Attributes:
        low_res_multimasks: [B, M, S/4, S/4] logits (``NO_OBJ_SCORE`` where the object is absent).
        high_res_multimasks: [B, M, S, S].
        ious: [B, M].
        low_res_masks, high_res_masks: [B, 1, ...] the candidate with the best IoU.
        obj_ptr: [B, d_model] object pointer.
        object_score: [B, 1] object-presence logit.
    """

    low_res_multimasks: torch.Tensor
    high_res_multimasks: torch.Tensor
    ious: torch.Tensor
    low_res_masks: torch.Tensor
    high_res_masks: torch.Tensor
    obj_ptr: torch.Tensor
    object_score: torch.Tensor


@dataclass
class FrameOutput:
    """What the tracker keeps of one frame for one object (or a batch of B objects).

    Attributes:
        pred_masks: [B, 1, S/4, S/4] low-res logits.
        obj_ptr: [B, d_model].
        object_score: [B, 1].
        maskmem_features: [B, mem_dim, S/16, S/16] (stored in bfloat16, as the official predictor
            stores it), or None before the memory encoder has run.
        maskmem_pos_enc: [B, mem_dim, S/16, S/16] or None.
    """

    pred_masks: torch.Tensor
    obj_ptr: torch.Tensor
    object_score: torch.Tensor
    maskmem_features: torch.Tensor | None = None
    maskmem_pos_enc: torch.Tensor | None = None


@dataclass
class FrameFeatures:
    """One frame's image features as the tracker uses them.

    Attributes:
        high_res: [B, d/8, S/4, S/4] and [B, d/4, S/8, S/8] (after the decoder's conv_s0/conv_s1).
        feats: [B, d, S/16, S/16] stride-16 features; pos: their sine encoding.
    """

    high_res: list[torch.Tensor]
    feats: torch.Tensor
    pos: torch.Tensor

    def expand(self, batch: int) -> FrameFeatures:
        return FrameFeatures(
            [x.expand(batch, -1, -1, -1) for x in self.high_res],
            self.feats.expand(batch, -1, -1, -1),
            self.pos.expand(batch, -1, -1, -1),
        )


@dataclass
class ObjectMemory:
    """Per-object outputs by frame: prompted (conditioning) frames and tracked ones."""

    cond: dict[int, FrameOutput] = field(default_factory=dict)
    non_cond: dict[int, FrameOutput] = field(default_factory=dict)


def select_cond_frames(frame_idx: int, cond: dict, max_frames: int) -> tuple[dict, dict]:
    """Split conditioning frames into (attended, not attended): the nearest before and after, then
    the temporally closest, up to ``max_frames`` (-1: all)."""
    if max_frames == -1 or len(cond) <= max_frames:
        return cond, {}
    chosen = {}
    before = max((t for t in cond if t < frame_idx), default=None)
    if before is not None:
        chosen[before] = cond[before]
    after = min((t for t in cond if t >= frame_idx), default=None)
    if after is not None:
        chosen[after] = cond[after]
    rest = sorted((t for t in cond if t not in chosen), key=lambda t: abs(t - frame_idx))
    chosen.update((t, cond[t]) for t in rest[: max_frames - len(chosen)])
    return chosen, {t: v for t, v in cond.items() if t not in chosen}


class SAM2(nn.Module):
    """SAM 2.1: image encoder, prompt encoder, mask decoder, memory encoder and memory attention."""

    def __init__(self, config: SAM2Config = SAM2Config()):
        super().__init__()
        self.config = config
        self.tracking = config.tracking
        self.image_size = config.image_size
        d, mem = config.d_model, config.mem_dim
        self.hidden_dim, self.mem_dim = d, mem
        embed = config.image_size // 16
        self.feat_sizes = [(4 * embed, 4 * embed), (2 * embed, 2 * embed), (embed, embed)]

        trunk = getattr(hieradet, f"hieradet_{config.trunk}")(**config.trunk_args)
        self.image_encoder = ImageEncoder(trunk, d, scalp=1)
        self.sam_prompt_encoder = PromptEncoder(d, (embed, embed), (config.image_size, config.image_size))
        self.sam_mask_decoder = MaskDecoder(d, dynamic_multimask=config.dynamic_multimask)
        self.memory_attention = MemoryAttention(d, mem)
        self.memory_encoder = MemoryEncoder(d, mem)

        num_maskmem = config.tracking.num_maskmem
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(num_maskmem, 1, 1, mem))  # index 0: oldest
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, d))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, d))
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, d))
        self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, mem))
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.obj_ptr_proj = MLP(d, d, d, 3)
        self.obj_ptr_tpos_proj = nn.Linear(d, mem)
        for p in (self.maskmem_tpos_enc, self.no_mem_embed, self.no_mem_pos_enc, self.no_obj_ptr, self.no_obj_embed_spatial):
            trunc_normal_(p, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.no_mem_embed.device

    # ---- state dicts ---------------------------------------------------------------------------

    def load_official_state_dict(self, state_dict, strict: bool = True) -> ConversionReport:
        """Load a SAM 2 checkpoint (``{"model": ...}`` or the bare dict, official keys).

        Returns the trunk's conversion report; with ``strict`` a missing or left-over key raises.
        """
        state_dict = unwrap_state_dict(state_dict)
        trunk, report = convert_state_dict(
            {k: v for k, v in state_dict.items() if k.startswith(_TRUNK)}, "official", source="sam2"
        )
        rest = {k: v for k, v in state_dict.items() if not k.startswith(_TRUNK)}
        missing, unexpected = self.load_state_dict({**rest, **{_TRUNK + k: v for k, v in trunk.items()}}, strict=False)
        if strict and (missing or unexpected):
            raise ValueError(f"SAM 2 state dict does not fit: missing {missing}, unexpected {unexpected}")
        return report

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights with official SAM 2 keys (what ``build_sam2(..., ckpt_path)`` loads)."""
        own = self.state_dict()
        trunk = {k[len(_TRUNK) :]: v for k, v in own.items() if k.startswith(_TRUNK)}
        converted, _ = convert_state_dict(trunk, "sam2", source="official", keep_head=False)
        return {**{k: v for k, v in own.items() if not k.startswith(_TRUNK)}, **converted}

    # ---- image features ------------------------------------------------------------------------

    def forward_image(self, images: torch.Tensor) -> ImageFeatures:
        """[B, 3, S, S] → FPN features with the decoder's conv_s0 / conv_s1 applied to the two finest."""
        out = self.image_encoder(images)
        out.fpn[0] = self.sam_mask_decoder.conv_s0(out.fpn[0])
        out.fpn[1] = self.sam_mask_decoder.conv_s1(out.fpn[1])
        return out

    def frame_features(self, images: torch.Tensor) -> FrameFeatures:
        out = self.forward_image(images)
        return FrameFeatures(out.fpn[:2], out.fpn[2], out.pos[2])

    def image_embeddings(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """What the image predictor caches: ([B, d, S/16, S/16] with ``no_mem_embed`` added, high-res maps)."""
        out = self.forward_image(images)
        return out.fpn[2] + self.no_mem_embed.view(1, -1, 1, 1), out.fpn[:2]

    def decode(
        self,
        image_embed: torch.Tensor,
        high_res: list[torch.Tensor],
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> DecoderOutput:
        """Prompts in input pixels (coords [B, N, 2], labels [B, N], boxes [B, 4], mask_input
        [B, 1, S/4, S/4] logits) on one image's embeddings ([1, d, h, w]) → decoder output."""
        points = None
        if point_coords is not None:
            points = (point_coords, point_labels)
        if boxes is not None:
            # a box enters as two labelled corner points before any clicks
            corners = boxes.reshape(-1, 2, 2)
            corner_labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device).repeat(corners.shape[0], 1)
            if points is not None:
                points = (torch.cat([corners, points[0]], 1), torch.cat([corner_labels, points[1]], 1))
            else:
                points = (corners, corner_labels)
        sparse, dense = self.sam_prompt_encoder(points, None, mask_input)
        return self.sam_mask_decoder(
            image_embed,
            self.sam_prompt_encoder.get_dense_pe(),
            sparse,
            dense,
            high_res,
            multimask_output,
            repeat_image=points is not None and points[0].shape[0] > 1,
        )

    def forward(
        self,
        images: torch.Tensor,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> DecoderOutput:
        """Image-level SAM: one normalised [1, 3, S, S] image and B prompts → masks [B, M, S/4, S/4]."""
        embed, high_res = self.image_embeddings(images)
        return self.decode(embed, high_res, point_coords, point_labels, boxes, mask_input, multimask_output)

    # ---- tracking ------------------------------------------------------------------------------

    def forward_heads(
        self,
        feats: torch.Tensor,
        high_res: list[torch.Tensor],
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask_inputs: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> HeadsOutput:
        """The heads on (memory-conditioned) features [B, d, h, w]; points in input pixels."""
        batch = feats.shape[0]
        if points is None:
            # no clicks: one padding point, as SAM 2 was trained
            points = (feats.new_zeros(batch, 1, 2), -torch.ones(batch, 1, dtype=torch.int32, device=feats.device))
        if mask_inputs is not None and mask_inputs.shape[-2:] != self.sam_prompt_encoder.mask_input_size:
            mask_inputs = F.interpolate(
                mask_inputs.float(), self.sam_prompt_encoder.mask_input_size, mode="bilinear", antialias=True
            )
        sparse, dense = self.sam_prompt_encoder(points, None, mask_inputs)
        out = self.sam_mask_decoder(
            feats, self.sam_prompt_encoder.get_dense_pe(), sparse, dense, high_res, multimask_output
        )
        present = out.object_score > 0  # [B, 1]
        low_res = torch.where(present[:, None, None], out.masks, NO_OBJ_SCORE).float()  # [B, M, S/4, S/4]
        high_res_masks = F.interpolate(low_res, (self.image_size, self.image_size), mode="bilinear")
        token = out.tokens[:, 0]  # [B, d]
        if multimask_output:
            rows = torch.arange(batch, device=feats.device)
            best = out.iou.argmax(dim=-1)
            best_low, best_high = low_res[rows, best].unsqueeze(1), high_res_masks[rows, best].unsqueeze(1)
            if out.tokens.shape[1] > 1:
                token = out.tokens[rows, best]
        else:
            best_low, best_high = low_res, high_res_masks
        presence = present.float()
        obj_ptr = presence * self.obj_ptr_proj(token) + (1 - presence) * self.no_obj_ptr
        return HeadsOutput(low_res, high_res_masks, out.iou, best_low, best_high, obj_ptr, out.object_score)

    def mask_as_output(self, feats: torch.Tensor, high_res: list[torch.Tensor], mask: torch.Tensor) -> HeadsOutput:
        """A given mask [B, 1, S, S] becomes the output (logits ±10); the decoder only makes the pointer."""
        mask = mask.float()
        high = mask * 20.0 - 10.0
        low = F.interpolate(high, (high.shape[-2] // 4, high.shape[-1] // 4), mode="bilinear", antialias=True)
        obj_ptr = self.forward_heads(feats, high_res, mask_inputs=self.mask_downsample(mask)).obj_ptr
        presence = (mask.flatten(1) > 0).any(dim=1, keepdim=True).float()  # [B, 1]
        obj_ptr = presence * obj_ptr + (1 - presence) * self.no_obj_ptr
        ious = mask.new_ones(mask.shape[0], 1)
        return HeadsOutput(low, high, ious, low, high, obj_ptr, presence * 20.0 - 10.0)

    def condition_on_memory(
        self,
        frame_idx: int,
        is_init_cond_frame: bool,
        frame: FrameFeatures,
        memory: ObjectMemory,
        num_frames: int,
        reverse: bool = False,
    ) -> torch.Tensor:
        """The frame's stride-16 features [B, d, h, w] attended to the object's memory bank."""
        batch, d, h, w = frame.feats.shape
        if is_init_cond_frame:
            return frame.feats + self.no_mem_embed.view(1, -1, 1, 1)
        device, cfg = frame.feats.device, self.tracking
        num_maskmem = cfg.num_maskmem
        if not memory.cond:
            raise RuntimeError("tracking needs at least one prompted frame")
        cond, unselected = select_cond_frames(frame_idx, memory.cond, cfg.max_cond_frames_in_attn)
        # (temporal slot, output): prompted frames take slot 0, frame t-k slot num_maskmem - k
        slots: list[tuple[int, FrameOutput | None]] = [(0, out) for out in cond.values()]
        stride, sign = cfg.memory_temporal_stride, (-1 if reverse else 1)
        for slot in range(1, num_maskmem):
            back = num_maskmem - slot  # frames before the current one
            if back == 1:
                prev = frame_idx - sign
            elif not reverse:
                prev = ((frame_idx - 2) // stride) * stride - (back - 2) * stride
            else:
                prev = -(-(frame_idx + 2) // stride) * stride + (back - 2) * stride
            out = memory.non_cond.get(prev, unselected.get(prev))
            slots.append((slot, out))
        mems, mem_pos = [], []
        for slot, out in slots:
            if out is None:
                continue
            mems.append(out.maskmem_features.to(device).float().flatten(2).transpose(1, 2))  # [B, hw, mem]
            pos = out.maskmem_pos_enc.to(device).flatten(2).transpose(1, 2)
            mem_pos.append(pos + self.maskmem_tpos_enc[num_maskmem - slot - 1].view(1, 1, -1))

        # object pointers: prompted frames up to now, then the most recent tracked frames
        max_ptrs = min(num_frames, cfg.max_obj_ptrs)
        past = {t: o for t, o in cond.items() if (t >= frame_idx if reverse else t <= frame_idx)}
        ptrs = [((frame_idx - t) * sign, o.obj_ptr) for t, o in past.items()]
        for t_diff in range(1, max_ptrs):
            t = frame_idx - sign * t_diff
            if t < 0 or t >= num_frames:
                break
            out = memory.non_cond.get(t, unselected.get(t))
            if out is not None:
                ptrs.append((t_diff, out.obj_ptr))
        num_ptr_tokens = 0
        if ptrs:
            positions = torch.tensor([p for p, _ in ptrs], device=device) / max(max_ptrs - 1, 1)
            ptr_pos = self.obj_ptr_tpos_proj(sine_encoding_1d(positions, d))  # [N, mem]
            obj_ptrs = torch.stack([o for _, o in ptrs], dim=1)  # [B, N, d]
            split = d // self.mem_dim
            # each d-wide pointer becomes `split` mem_dim-wide tokens sharing its position
            mems.append(obj_ptrs.reshape(batch, -1, self.mem_dim))  # [B, N * split, mem]
            mem_pos.append(ptr_pos.repeat_interleave(split, dim=0).unsqueeze(0).expand(batch, -1, -1))
            num_ptr_tokens = len(ptrs) * split
        x = self.memory_attention(
            frame.feats.flatten(2).transpose(1, 2),  # [B, hw, d]
            frame.pos.flatten(2).transpose(1, 2),
            torch.cat(mems, dim=1),
            torch.cat(mem_pos, dim=1),
            num_ptr_tokens,
        )
        return x.transpose(1, 2).reshape(batch, d, h, w)

    def encode_memory(
        self, frame: FrameFeatures, high_res_masks: torch.Tensor, object_score: torch.Tensor, from_points: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A frame's raw stride-16 features and its mask logits [B, 1, S, S] → (memory, position
        encoding), [B, mem_dim, h, w] each."""
        cfg = self.tracking
        if cfg.binarize_mask_from_points and from_points and not self.training:
            mask = (high_res_masks > 0).float()
        else:
            mask = torch.sigmoid(high_res_masks)
        mask = mask * cfg.mask_sigmoid_scale + cfg.mask_sigmoid_bias
        features, pos = self.memory_encoder(frame.feats, mask)
        absent = (object_score <= 0).float()[..., None, None]  # [B, 1, 1, 1]
        features = features + absent * self.no_obj_embed_spatial[..., None, None]
        return features, pos

    def use_multimask(self, is_init_cond_frame: bool, num_points: int) -> bool:
        low, high = self.tracking.multimask_points
        return (is_init_cond_frame or self.tracking.multimask_for_tracking) and low <= num_points <= high

    def track_step(
        self,
        frame_idx: int,
        is_init_cond_frame: bool,
        frame: FrameFeatures,
        memory: ObjectMemory,
        num_frames: int,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask_inputs: torch.Tensor | None = None,
        reverse: bool = False,
        run_mem_encoder: bool = True,
        prev_mask_logits: torch.Tensor | None = None,
    ) -> tuple[FrameOutput, HeadsOutput]:
        """One frame for one object (batch of B): prompts and/or memory → masks, pointer, memory."""
        if mask_inputs is not None:
            heads = self.mask_as_output(frame.feats, frame.high_res, mask_inputs)
        else:
            feats = self.condition_on_memory(frame_idx, is_init_cond_frame, frame, memory, num_frames, reverse)
            num_points = 0 if points is None else points[1].shape[1]
            heads = self.forward_heads(
                feats,
                frame.high_res,
                points,
                prev_mask_logits,
                self.use_multimask(is_init_cond_frame, num_points),
            )
        out = FrameOutput(heads.low_res_masks, heads.obj_ptr, heads.object_score)
        if run_mem_encoder:
            out.maskmem_features, out.maskmem_pos_enc = self.encode_memory(
                frame, heads.high_res_masks, heads.object_score, points is not None
            )
        return out, heads


def _factory(size: str):
    def build(config: SAM2Config | None = None, **kwargs) -> SAM2:
        config = config or SAM2Config(trunk=size, **kwargs)
        return SAM2(config)

    build.__name__ = f"sam2_hiera_{size}"
    build.__doc__ = f"SAM 2.1 with the Hiera-{size} trunk (sam2 ``configs/sam2.1/sam2.1_hiera_*.yaml``)."
    return build


sam2_hiera_tiny = _factory("tiny")
sam2_hiera_small = _factory("small")
sam2_hiera_base_plus = _factory("base_plus")
sam2_hiera_large = _factory("large")
