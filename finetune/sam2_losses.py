"""SAM 2's training loss for promptable (video) segmentation.

The terms and weights are those of the official SAM 2.1 training recipe
(``sam2/configs/sam2.1_training/*.yaml``, ``training/loss_fns.py``):

- focal loss on the mask logits (alpha 0.25, gamma 2, averaged over pixels), weight 20;
- dice loss with +1 smoothing, weight 1;
- L1 between each predicted IoU and the IoU of its thresholded mask with the target, weight 1,
  supervising every predicted mask (``supervise_all_iou``);
- binary cross-entropy on the object-score logit (is the object in this frame?), weight 1.

With several candidate masks per prompt (multimask output), only the candidate with the lowest
``20·focal + dice`` is back-propagated, as SAM does. Mask and IoU terms count only in frames where the
object is present; the object-score term counts everywhere. Terms are summed over frames and
correction steps and divided by the number of objects, all-reduced across ranks and divided by the
world size (clamped to at least 1), so that every rank's gradient has the same scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from unveil.common.distributed import world_size

__all__ = ["SAM2Loss", "SAM2LossWeights", "StepPredictions", "mean_object_count"]


@dataclass(frozen=True)
class SAM2LossWeights:
    """Weights of the four terms (official SAM 2.1 values by default)."""

    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0
    object_score: float = 1.0


@dataclass
class StepPredictions:
    """What SAM 2 predicted for one frame, for each prompt/correction step on it.

    ``masks[s]``: [N, M, H, W] mask logits at the target's resolution (M = 1 or the multimask count);
    ``ious[s]``: [N, M] predicted IoUs; ``object_score_logits[s]``: [N, 1].
    """

    masks: list[Tensor]
    ious: list[Tensor]
    object_score_logits: list[Tensor]

    def __post_init__(self) -> None:
        if not (len(self.masks) == len(self.ious) == len(self.object_score_logits)) or not self.masks:
            raise ValueError(
                "StepPredictions: masks, ious and object_score_logits need the same, non-zero number of steps, "
                f"got {len(self.masks)}, {len(self.ious)}, {len(self.object_score_logits)}"
            )


def mean_object_count(local_objects: int, device: torch.device) -> float:
    """Objects per rank, averaged over ranks and at least 1: the loss normaliser."""
    count = torch.tensor(float(local_objects), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
    return max(count.item() / world_size(), 1.0)


def _focal_per_mask(logits: Tensor, target: Tensor, alpha: float, gamma: float) -> Tensor:
    """[N, M, H, W] logits, {0,1} target → [N, M] focal loss averaged over pixels."""
    prob = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    prob_of_truth = torch.where(target > 0.5, prob, 1.0 - prob)
    weight = torch.where(target > 0.5, alpha, 1.0 - alpha) if alpha >= 0 else 1.0
    return (weight * bce * (1.0 - prob_of_truth) ** gamma).flatten(2).mean(-1)


def _dice_per_mask(logits: Tensor, target: Tensor) -> Tensor:
    """[N, M, H, W] → [N, M] soft dice loss with +1 smoothing on both sides."""
    prob = logits.sigmoid().flatten(2)
    target = target.flatten(2)
    overlap = (prob * target).sum(-1)
    return 1.0 - (2.0 * overlap + 1.0) / (prob.sum(-1) + target.sum(-1) + 1.0)


def _mask_iou(logits: Tensor, target: Tensor) -> Tensor:
    """[N, M, H, W] → [N, M] IoU of the thresholded prediction with the target (0 on an empty union)."""
    pred = logits.flatten(2) > 0
    truth = target.flatten(2) > 0
    inter = (pred & truth).sum(-1).float()
    union = (pred | truth).sum(-1).float()
    return inter / union.clamp(min=1.0)


class SAM2Loss(nn.Module):
    """Multi-step, multi-mask SAM 2 loss. Returns a dict of the weighted total (``loss``) and the four
    unweighted, normalised terms (``focal``, ``dice``, ``iou``, ``object_score``)."""

    def __init__(
        self,
        weights: SAM2LossWeights = SAM2LossWeights(),
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        self.weights = weights
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def forward(self, frames: list[StepPredictions], targets: Tensor) -> dict[str, Tensor]:
        """``frames[t]``: predictions for frame t; ``targets``: [T, N, H, W] bool/{0,1} masks of the N objects."""
        if targets.dim() != 4 or len(frames) != targets.shape[0]:
            raise ValueError(
                f"SAM2Loss: targets must be [T, N, H, W] with T = {len(frames)} frames, got {tuple(targets.shape)}"
            )
        num_objects = mean_object_count(targets.shape[1], targets.device)
        dtype = frames[0].masks[0].dtype  # float64 predictions give a float64 loss (the parity tests use it)
        totals = {
            name: targets.new_zeros((), dtype=dtype) for name in ("focal", "dice", "iou", "object_score")
        }
        for preds, frame_target in zip(frames, targets):
            target = frame_target.to(dtype).unsqueeze(1)  # [N, 1, H, W]
            present = (frame_target.flatten(1) > 0).any(-1).to(dtype)  # [N]
            for masks, ious, score_logits in zip(preds.masks, preds.ious, preds.object_score_logits):
                if masks.shape[-2:] != target.shape[-2:] or masks.shape[0] != target.shape[0]:
                    raise ValueError(
                        f"SAM2Loss: masks {tuple(masks.shape)} do not match targets [N, 1, H, W] = {tuple(target.shape)}"
                    )
                full_target = target.expand_as(masks)
                focal = _focal_per_mask(masks, full_target, self.focal_alpha, self.focal_gamma)  # [N, M]
                dice = _dice_per_mask(masks, full_target)  # [N, M]
                iou_error = (ious - _mask_iou(masks, full_target)).abs()  # [N, M]
                # only the best candidate learns its mask; the IoU head learns about all of them
                best = (self.weights.focal * focal + self.weights.dice * dice).argmin(-1, keepdim=True)
                totals["focal"] = totals["focal"] + (focal.gather(1, best).squeeze(1) * present).sum()
                totals["dice"] = totals["dice"] + (dice.gather(1, best).squeeze(1) * present).sum()
                totals["iou"] = totals["iou"] + (iou_error.mean(-1) * present).sum()
                # object presence: plain BCE (the official focal with gamma 0 and no alpha)
                totals["object_score"] = totals["object_score"] + F.binary_cross_entropy_with_logits(
                    score_logits.squeeze(-1), present, reduction="sum"
                )
        terms = {name: value / num_objects for name, value in totals.items()}
        terms["loss"] = sum(getattr(self.weights, name) * value for name, value in terms.items())
        return terms
