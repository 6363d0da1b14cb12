"""J&F, the video object segmentation score of DAVIS (Perazzi et al., CVPR 2016; davis2017-evaluation).

- **J** (region similarity): IoU of the predicted and true mask of an object in a frame; 1 when both are empty.
- **F** (contour accuracy): F-measure of the boundary pixels, a predicted boundary pixel counting as
  correct when it lies within ``ceil(0.008 · image diagonal)`` pixels (a disk) of a true boundary pixel,
  and the other way round for recall. Boundaries are the one-pixel maps of davis2017-evaluation's
  ``seg2bmap``: a pixel is on the boundary when it differs from its right, lower or lower-right neighbour.
- Semi-supervised evaluation drops the first frame (it is the prompt) and the last one.
- Per object, J and F are averaged over the evaluated frames; a score is the mean over every object of
  every video. J&F is the mean of the two. Values are fractions in [0, 1] (DAVIS tables print ×100).

Everything is computed with torch on the masks' device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "VOSScores",
    "boundary_map",
    "boundary_radius",
    "contour_accuracy",
    "region_similarity",
    "sequence_scores",
]


def boundary_map(mask: Tensor) -> Tensor:
    """[..., H, W] bool → [..., H, W] bool one-pixel boundary (davis2017-evaluation's seg2bmap at full size)."""
    mask = mask.bool()
    right = F.pad(mask[..., :, 1:], (0, 1, 0, 0))  # right[y, x] = mask[y, x+1], outside = background
    below = F.pad(mask[..., 1:, :], (0, 0, 0, 1))
    below_right = F.pad(mask[..., 1:, 1:], (0, 1, 0, 1))
    boundary = (mask ^ right) | (mask ^ below) | (mask ^ below_right)
    # the last row and column compare along the image edge only, and the corner never counts
    boundary[..., -1, :] = mask[..., -1, :] ^ right[..., -1, :]
    boundary[..., :, -1] = mask[..., :, -1] ^ below[..., :, -1]
    boundary[..., -1, -1] = False
    return boundary


def boundary_radius(height: int, width: int, fraction: float = 0.008) -> int:
    """Tolerance of F in pixels: ``ceil(fraction · diagonal)``."""
    return math.ceil(fraction * math.hypot(height, width))


def _dilate(mask: Tensor, radius: int) -> Tensor:
    """[N, H, W] bool dilated by a disk of ``radius`` (the points with dy² + dx² ≤ radius²)."""
    offsets = torch.arange(-radius, radius + 1, device=mask.device)
    disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).float()[None, None]
    hits = F.conv2d(mask.float().unsqueeze(1), disk, padding=radius)
    return hits.squeeze(1) > 0.5


def region_similarity(pred: Tensor, truth: Tensor) -> Tensor:
    """J: [..., H, W] bool masks → [...] IoU, 1 where both masks are empty."""
    inter = (pred.bool() & truth.bool()).flatten(-2).sum(-1).float()
    union = (pred.bool() | truth.bool()).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def contour_accuracy(pred: Tensor, truth: Tensor, radius: int | None = None) -> Tensor:
    """F: [..., H, W] bool masks → [...] boundary F-measure with DAVIS's tolerance (or ``radius``)."""
    height, width = pred.shape[-2:]
    radius = boundary_radius(height, width) if radius is None else radius
    lead = pred.shape[:-2]
    pred_edge = boundary_map(pred).reshape(-1, height, width)
    true_edge = boundary_map(truth).reshape(-1, height, width)
    pred_count = pred_edge.flatten(1).sum(-1).float()
    true_count = true_edge.flatten(1).sum(-1).float()
    pred_matched = (pred_edge & _dilate(true_edge, radius)).flatten(1).sum(-1).float()
    true_matched = (true_edge & _dilate(pred_edge, radius)).flatten(1).sum(-1).float()
    # an empty boundary has precision (or recall) 1; the other side then matches nothing and gets 0,
    # which is DAVIS's convention for a missing prediction (P 1, R 0) or a missing object (P 0, R 1)
    precision = torch.where(
        pred_count > 0, pred_matched / pred_count.clamp(min=1), torch.ones_like(pred_count)
    )
    recall = torch.where(true_count > 0, true_matched / true_count.clamp(min=1), torch.ones_like(true_count))
    denominator = precision + recall
    f_measure = torch.where(
        denominator > 0, 2 * precision * recall / denominator.clamp(min=1e-12), torch.zeros_like(denominator)
    )
    return f_measure.reshape(lead)


def sequence_scores(pred: Tensor, truth: Tensor, skip_first_and_last: bool = True) -> tuple[Tensor, Tensor]:
    """[T, O, H, W] predicted and true masks of O objects → (J [O], F [O]) averaged over the evaluated frames."""
    if pred.shape != truth.shape or pred.dim() != 4:
        raise ValueError(
            f"sequence_scores: pred and truth must both be [T, O, H, W], got {tuple(pred.shape)} and {tuple(truth.shape)}"
        )
    if skip_first_and_last:
        if pred.shape[0] < 3:
            raise ValueError(
                f"sequence_scores: {pred.shape[0]} frames leave none once the first and last are dropped"
            )
        pred, truth = pred[1:-1], truth[1:-1]
    return region_similarity(pred, truth).mean(0), contour_accuracy(pred, truth).mean(0)


class VOSScores:
    """Accumulates per-object J and F over videos; ``compute()`` gives the means over all objects."""

    def __init__(self, skip_first_and_last: bool = True) -> None:
        self.skip_first_and_last = skip_first_and_last
        self.j: list[Tensor] = []
        self.f: list[Tensor] = []

    def update(self, pred: Tensor, truth: Tensor) -> tuple[Tensor, Tensor]:
        """Add one video's [T, O, H, W] masks; returns its per-object (J, F)."""
        j, f = sequence_scores(pred, truth, self.skip_first_and_last)
        self.j.append(j.cpu())
        self.f.append(f.cpu())
        return j, f

    def compute(self) -> dict[str, float]:
        if not self.j:
            raise ValueError("VOSScores.compute: no video was added")
        j = torch.cat(self.j).mean().item()
        f = torch.cat(self.f).mean().item()
        return {"J": j, "F": f, "J&F": (j + f) / 2}
