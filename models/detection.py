"""Mask R-CNN on a Hiera trunk, built from torchvision's own detection classes.

Two ways to run one set of Hiera weights (see ``ARCHITECTURE.md``):

- ``maskunit``: :class:`unveil.models.hiera.Hiera` with mask-unit attention in stages 1-2 and global
  attention in stages 3-4, its position embedding interpolated to the input's token grid: the Hiera
  paper's COCO setting (Ryali et al., ICML 2023, Appendix A.2, Table 10).
- ``windowed``: :class:`unveil.models.hieradet.HieraDet`, absolute-win position embeddings, windows
  per stage and a few global blocks (Bolya et al., ICLR 2024; SAM 2's image-encoder trunk).

Either returns the four stage maps (strides 4, 8, 16, 32). A neck turns them into P2-P6 with 256
channels: an FPN whose convolutions are followed by LayerNorm (ViTDet's choice for hierarchical
backbones, the default) or ViTDet's simple feature pyramid built from the stride-16 map alone.
The detector is torchvision's :class:`~torchvision.models.detection.MaskRCNN` with ViTDet's
LayerNorm heads: an RPN with two convolutions, a 4-conv + 1-fc box head and a 4-conv mask head,
RoIAlign with half-pixel alignment (detectron2's ``ROIAlignV2``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import torch
from timm.layers import LayerNorm2d
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

from .hiera import Hiera, hiera_config
from .hieradet import CONFIGS as HIERADET_CONFIGS
from .hieradet import HieraDet

__all__ = [
    "AlignedMultiScaleRoIAlign",
    "FPNLayerNorm",
    "HieraBackbone",
    "HieraMaskRCNN",
    "SimpleFeaturePyramid",
    "build_trunk",
]

Execution = Literal["maskunit", "windowed"]
FEATURE_NAMES = ("0", "1", "2", "3")  # P2..P5, the names torchvision's RoI poolers select


def build_trunk(
    size: str = "base",
    execution: Execution = "windowed",
    drop_path_rate: float = 0.0,
    overrides: dict | None = None,
) -> nn.Module:
    """A Hiera trunk without classifier, run as ``execution``.

    Args:
        size: tiny, small, base, base_plus, large (and huge for ``maskunit``).
        execution: ``maskunit`` builds :class:`Hiera` (q_pool 3, so the last stage has stride 32;
            the MAE encoder's q_pool 2 only changes pooling, not the weights); ``windowed`` builds
            :class:`HieraDet` with SAM 2's windows and global blocks for that size.
        overrides: constructor arguments replacing the size's (e.g. ``global_pos_size``,
            ``window_spec``, ``abs_win_pos_embed``, ``input_size`` of the pretraining).
    """
    overrides = dict(overrides or {})
    if execution == "maskunit":
        config = {**hiera_config(size), "q_pool": 3, "num_classes": 0, "drop_path_rate": drop_path_rate}
        trunk = Hiera(**{**config, **overrides})
        # the classification parts are unused here; dropping them keeps DDP free of unused parameters
        trunk.norm = nn.Identity()
        trunk.head = nn.Identity()
        return trunk
    if execution == "windowed":
        if size not in HIERADET_CONFIGS:
            raise ValueError(f"windowed execution: size must be one of {sorted(HIERADET_CONFIGS)}, not {size!r}")
        return HieraDet(**{**HIERADET_CONFIGS[size], "drop_path_rate": drop_path_rate, **overrides})
    raise ValueError(f"execution must be 'maskunit' or 'windowed', not {execution!r}")


class HieraBackbone(nn.Module):
    """Hiera trunk → the four stage maps, channels first.

    Input [B, 3, H, W] with H, W multiples of 32. Output: ``OrderedDict`` "0".."3" of
    [B, C_i, H / 2**(i+2), W / 2**(i+2)], finest first. ``channels`` lists the C_i.
    The trunk's parameters keep their Hiera names under ``trunk.``, so a Hiera state dict loads
    into ``backbone.trunk`` unchanged.
    """

    def __init__(
        self,
        size: str = "base",
        execution: Execution = "windowed",
        drop_path_rate: float = 0.0,
        overrides: dict | None = None,
    ):
        super().__init__()
        self.execution = execution
        self.trunk = build_trunk(size, execution, drop_path_rate, overrides)
        self.channels = [info["num_chs"] for info in self.trunk.feature_info]
        self.strides = [info["reduction"] for info in self.trunk.feature_info]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = self.trunk.forward_intermediates(x, intermediates_only=True)  # 4 × [B, C_i, h_i, w_i]
        return OrderedDict(zip(FEATURE_NAMES, maps))


class FPNLayerNorm(nn.Module):
    """FPN over the four stage maps, each 1×1 lateral and 3×3 output conv followed by LayerNorm
    (ViTDet's FPN for hierarchical backbones), plus P6 by stride-2 subsampling of P5.

    [B, C_i, h_i, w_i] × 4 → OrderedDict "0".."3", "pool" of [B, out_channels, ·, ·] (P2–P6).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256):
        super().__init__()
        self.fpn = FeaturePyramidNetwork(
            list(in_channels), out_channels, extra_blocks=LastLevelMaxPool(), norm_layer=LayerNorm2d
        )

    def forward(self, maps: OrderedDict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(maps)


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid (Li et al., ECCV 2022) from the stride-16 map alone.

    Scales 4× and 2× by stride-2 transposed convolutions (with LayerNorm and GELU between the two
    of the 4× branch), 1× as is, ½× by 2×2 max pooling; each branch then a 1×1 and a 3×3 conv, each
    followed by LayerNorm; P6 by stride-2 subsampling of P5.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, source: int = 2):
        super().__init__()
        self.source = FEATURE_NAMES[source]
        dim = in_channels[source]
        self.branches = nn.ModuleList()
        for scale in (4.0, 2.0, 1.0, 0.5):
            if scale == 4.0:
                layers = [
                    nn.ConvTranspose2d(dim, dim // 2, 2, stride=2),
                    LayerNorm2d(dim // 2),
                    nn.GELU(),
                    nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2),
                ]
                width = dim // 4
            elif scale == 2.0:
                layers, width = [nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)], dim // 2
            elif scale == 1.0:
                layers, width = [], dim
            else:
                layers, width = [nn.MaxPool2d(2, stride=2)], dim
            layers += [
                nn.Conv2d(width, out_channels, 1, bias=False),
                LayerNorm2d(out_channels),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                LayerNorm2d(out_channels),
            ]
            self.branches.append(nn.Sequential(*layers))

    def forward(self, maps: OrderedDict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        x = maps[self.source]  # [B, C, H/16, W/16]
        out = OrderedDict((name, branch(x)) for name, branch in zip(FEATURE_NAMES, self.branches))
        out["pool"] = nn.functional.max_pool2d(out[FEATURE_NAMES[-1]], kernel_size=1, stride=2)
        return out


class _BackboneWithNeck(nn.Module):
    """What torchvision's detectors call ``backbone``: image → named P2–P6 maps, ``out_channels``."""

    def __init__(self, body: HieraBackbone, neck: nn.Module, out_channels: int):
        super().__init__()
        self.body = body
        self.neck = neck
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.neck(self.body(x))


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` with ``aligned=True`` (the half-pixel offset of
    detectron2's ROIAlignV2); torchvision's class fixes ``aligned=False``. Same FPN level mapping
    (canonical box 224 px at level 4)."""

    def forward(
        self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        features = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = _convert_to_roi_format(boxes)  # [K, 5]: batch index, x1, y1, x2, y2
        levels = self.map_levels(boxes)  # [K] level of each box
        result = features[0].new_zeros((rois.shape[0], features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            index = torch.where(levels == level)[0]
            pooled = roi_align(
                feature, rois[index], self.output_size, scale, self.sampling_ratio, aligned=True
            )
            result[index] = pooled.to(result.dtype)
        return result


class HieraMaskRCNN(MaskRCNN):
    """Mask R-CNN with a Hiera backbone and ViTDet's LayerNorm heads.

    Input: a list of [3, H, W] float images in [0, 1] (normalised here with ImageNet statistics),
    and in training a list of targets (``boxes`` [N, 4] XYXY, ``labels`` [N] in 1..num_classes,
    ``masks`` [N, H, W] uint8). Training returns torchvision's loss dict; evaluation a list of
    ``boxes``, ``labels``, ``scores`` and ``masks`` [N, 1, H, W] (probabilities) in input pixels.

    Args:
        num_classes: object classes, background excluded (COCO: 80).
        size, execution, drop_path_rate, trunk_overrides: see :func:`build_trunk`.
        neck: ``fpn`` (LayerNorm FPN over the four stages) or ``simple`` (ViTDet simple pyramid).
        image_size: the inference resize (longest side to ``image_size``, as ViTDet's test-time
            ResizeShortestEdge(1024, max 1024) does for COCO). Training images are taken as they
            come: the LSJ pipeline already made them ``image_size`` square.
        rpn_post_nms_top_n_train: proposals kept per image in training (ViTDet: 1000).
        box_batch_size_per_image: RoIs sampled per image for the box and mask losses (512).
        head_channels, box_fc_channels: widths of the heads' convolutions (256) and of the box
            head's fully connected layer (1024); smaller values only for CPU smoke runs.
    """

    def __init__(
        self,
        num_classes: int = 80,
        size: str = "base",
        execution: Execution = "windowed",
        neck: Literal["fpn", "simple"] = "fpn",
        drop_path_rate: float = 0.0,
        trunk_overrides: dict | None = None,
        image_size: int = 1024,
        out_channels: int = 256,
        rpn_post_nms_top_n_train: int = 1000,
        rpn_post_nms_top_n_test: int = 1000,
        box_detections_per_img: int = 100,
        box_batch_size_per_image: int = 512,
        head_channels: int = 256,
        box_fc_channels: int = 1024,
    ):
        body = HieraBackbone(size, execution, drop_path_rate, trunk_overrides)
        if neck == "fpn":
            neck_module: nn.Module = FPNLayerNorm(body.channels, out_channels)
        elif neck == "simple":
            neck_module = SimpleFeaturePyramid(body.channels, out_channels)
        else:
            raise ValueError(f"neck must be 'fpn' or 'simple', not {neck!r}")
        backbone = _BackboneWithNeck(body, neck_module, out_channels)
        # detectron2's anchors: one size per level P2..P6, three aspect ratios
        anchors = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
        rpn_head = RPNHead(out_channels, anchors.num_anchors_per_location()[0], conv_depth=2)
        box_head = FastRCNNConvFCHead(
            (out_channels, 7, 7), [head_channels] * 4, [box_fc_channels], norm_layer=LayerNorm2d
        )
        mask_head = MaskRCNNHeads(out_channels, [head_channels] * 4, 1, norm_layer=LayerNorm2d)
        super().__init__(
            backbone,
            num_classes=None,
            min_size=image_size,
            max_size=image_size,
            rpn_anchor_generator=anchors,
            rpn_head=rpn_head,
            rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
            rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
            box_roi_pool=AlignedMultiScaleRoIAlign(list(FEATURE_NAMES), 7, sampling_ratio=0),
            box_head=box_head,
            box_predictor=FastRCNNPredictor(box_fc_channels, num_classes + 1),
            box_batch_size_per_image=box_batch_size_per_image,
            box_detections_per_img=box_detections_per_img,
            mask_roi_pool=AlignedMultiScaleRoIAlign(list(FEATURE_NAMES), 14, sampling_ratio=0),
            mask_head=mask_head,
            mask_predictor=MaskRCNNPredictor(head_channels, head_channels, num_classes + 1),
            _skip_resize=True,  # training inputs are already LSJ's image_size square
        )
        self.num_classes = num_classes
        self.image_size = image_size

    @property
    def trunk(self) -> nn.Module:
        return self.backbone.body.trunk

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Trunk position embeddings (ViTDet: ``pos_embed`` without weight decay), full names."""
        return {f"backbone.body.trunk.{name}" for name in self.trunk.no_weight_decay()}
