"""SAM 2's prompt simulation for training (the facts of the official ``SAM2Train``, written anew).

Per clip (all objects of a batch share one plan, as in the official trainer):

- **First prompt**: the ground-truth mask with probability ``1 - prob_points`` (0.5); otherwise points,
  which on each initial conditioning frame are a noisy box with probability ``prob_box`` (0.5), else one
  click drawn uniformly inside the object. A single frame (an image) always takes points (box or click).
- **Initial conditioning frames**: the first frame, plus up to ``num_init_cond_frames - 1`` other frames
  drawn without replacement; their number is uniform in 1..``num_init_cond_frames`` (1-2).
- **Frames to correct** (only with points): the conditioning frames plus extra frames drawn from the others;
  their number is uniform between the conditioning count and ``num_frames_to_correct`` (2). A corrected
  frame becomes a conditioning frame (``add_corrected_as_cond``).
- **Correction clicks**: ``num_correction_clicks`` (7) per corrected frame, one at a time, each drawn
  uniformly from the error region of the current prediction (a positive click on a missed pixel, a negative
  one on a false positive; a negative background click when the prediction is exact), or, with probability
  ``prob_clicks_from_gt`` (0.1), from the ground truth as if nothing were predicted. The previous step's
  low-res logits enter the decoder as the mask input with each new click.

Every random choice takes a ``torch.Generator`` (a CPU one; the draws move to the masks' device), so a
plan and its clicks are reproducible from a seed on any device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["PromptConfig", "PromptPlan", "mask_to_box", "plan_prompts", "sample_box", "sample_clicks"]


@dataclass(frozen=True)
class PromptConfig:
    """Probabilities and counts of the simulation (defaults: sam2 ``configs/sam2.1_training/*.yaml``).

    Attributes:
        prob_points: first prompt by points (box or click) instead of the mask (``prob_to_use_pt_input_for_train``).
        prob_box: a box rather than a click, given points (``prob_to_use_box_input_for_train``).
        num_init_cond_frames: initial conditioning frames at most; ``rand_init_cond_frames``: uniform in 1..that.
        num_frames_to_correct: frames that get correction clicks at most; ``rand_frames_to_correct``: uniform
            between the conditioning count and that.
        add_corrected_as_cond: a corrected frame joins the conditioning frames.
        num_correction_clicks: clicks added one by one on each corrected frame.
        prob_clicks_from_gt: a correction click comes from the ground truth instead of the error region.
        box_noise, box_noise_bound: each box coordinate moves uniformly by up to ``box_noise`` times the box
            side, and at most ``box_noise_bound`` pixels (SAM's box jitter).
    """

    prob_points: float = 0.5
    prob_box: float = 0.5
    num_init_cond_frames: int = 2
    rand_init_cond_frames: bool = True
    num_frames_to_correct: int = 2
    rand_frames_to_correct: bool = True
    add_corrected_as_cond: bool = True
    num_correction_clicks: int = 7
    prob_clicks_from_gt: float = 0.1
    box_noise: float = 0.1
    box_noise_bound: float = 20.0

    def __post_init__(self) -> None:
        for name in ("prob_points", "prob_box", "prob_clicks_from_gt"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"PromptConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.num_init_cond_frames < 1:
            raise ValueError(
                f"PromptConfig.num_init_cond_frames must be at least 1, got {self.num_init_cond_frames}"
            )
        if self.num_frames_to_correct < self.num_init_cond_frames:
            raise ValueError(
                "PromptConfig.num_frames_to_correct must be at least num_init_cond_frames "
                f"({self.num_frames_to_correct} < {self.num_init_cond_frames})"
            )
        if self.num_correction_clicks < 0:
            raise ValueError(
                f"PromptConfig.num_correction_clicks must be >= 0, got {self.num_correction_clicks}"
            )


@dataclass
class PromptPlan:
    """One clip's prompts.

    Attributes:
        num_frames: frames of the clip.
        use_points: points (boxes or clicks) on the initial conditioning frames; else their masks.
        init_cond_frames: the first frame, then the other initial conditioning frames.
        box_frames: the initial conditioning frames prompted by a box (the rest of them by one click).
        frames_to_correct: frames that get correction clicks (empty with mask prompts).
    """

    num_frames: int
    use_points: bool
    init_cond_frames: list[int]
    box_frames: list[int]
    frames_to_correct: list[int]

    @property
    def order(self) -> list[int]:
        """Frames in processing order: the initial conditioning frames first, then the rest in time order."""
        return self.init_cond_frames + [t for t in range(self.num_frames) if t not in self.init_cond_frames]


def _uniform(generator: torch.Generator | None) -> float:
    return torch.rand((), generator=generator).item()


def _integer(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform in [low, high] (both included)."""
    return int(torch.randint(low, high + 1, (), generator=generator).item())


def _choose(population: list[int], count: int, generator: torch.Generator | None) -> list[int]:
    """``count`` of ``population`` without replacement, in drawn order."""
    order = torch.randperm(len(population), generator=generator)[:count]
    return [population[i] for i in order.tolist()]


def plan_prompts(
    num_frames: int, config: PromptConfig = PromptConfig(), generator: torch.Generator | None = None
) -> PromptPlan:
    """Draw the prompts of a clip of ``num_frames`` frames (1: an image)."""
    if num_frames < 1:
        raise ValueError(f"plan_prompts: num_frames must be at least 1, got {num_frames}")
    prob_points, num_init, num_correct = (
        config.prob_points,
        config.num_init_cond_frames,
        config.num_frames_to_correct,
    )
    if num_frames == 1:  # an image: points, one frame, corrected
        prob_points, num_init, num_correct = 1.0, 1, 1
    use_points = _uniform(generator) < prob_points
    num_init = min(num_init, num_frames)
    if config.rand_init_cond_frames and num_init > 1:
        num_init = _integer(1, num_init, generator)
    num_correct = min(num_correct, num_frames)
    if use_points and config.rand_frames_to_correct and num_correct > num_init:
        num_correct = _integer(num_init, num_correct, generator)
    init_cond = [0] + _choose(list(range(1, num_frames)), num_init - 1, generator)
    box_frames = []
    if use_points:
        box_frames = [t for t in init_cond if _uniform(generator) < config.prob_box]
    if not use_points:
        frames_to_correct = []
    else:
        others = [t for t in range(num_frames) if t not in init_cond]
        frames_to_correct = init_cond + _choose(others, max(num_correct - num_init, 0), generator)
    return PromptPlan(num_frames, use_points, init_cond, box_frames, frames_to_correct)


def mask_to_box(masks: Tensor) -> Tensor:
    """[N, H, W] bool → [N, 4] float XYXY of the pixels' extent (pixel indices, both ends included).

    An empty mask gives ``(W, H, -1, -1)``, an inverted box that the clamp in :func:`sample_box` folds onto
    the image corner, as the official sampler does with an absent object."""
    n, h, w = masks.shape
    cols, rows = masks.any(1), masks.any(2)  # [N, W], [N, H]
    xs = torch.arange(w, device=masks.device).expand(n, w)
    ys = torch.arange(h, device=masks.device).expand(n, h)
    x0 = torch.where(cols, xs, w).min(1).values
    x1 = torch.where(cols, xs, -1).max(1).values
    y0 = torch.where(rows, ys, h).min(1).values
    y1 = torch.where(rows, ys, -1).max(1).values
    return torch.stack([x0, y0, x1, y1], dim=1).float()


def sample_box(
    masks: Tensor, noise: float = 0.1, noise_bound: float = 20.0, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """A jittered box around each mask, as SAM 2 prompts: [N, H, W] bool → corners [N, 2, 2] (x, y pixels)
    and labels [N, 2] int32 (2 top-left, 3 bottom-right), inside the image."""
    n, h, w = masks.shape
    box = mask_to_box(masks)  # [N, 4]
    if noise > 0:
        size = torch.stack([box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]], dim=1)  # [N, 2]
        reach = (
            torch.minimum(size * noise, torch.full_like(size, noise_bound)).clamp(min=0).repeat(1, 2)
        )  # [N, 4]
        jitter = torch.rand(n, 4, generator=generator).to(masks.device) * 2 - 1
        box = box + jitter * reach
    limit = torch.tensor([w - 1, h - 1, w - 1, h - 1], device=masks.device, dtype=box.dtype)
    box = torch.minimum(box.clamp(min=0), limit)
    labels = torch.tensor([[2, 3]], dtype=torch.int32, device=masks.device).repeat(n, 1)
    return box.view(n, 2, 2), labels


def sample_clicks(
    truth: Tensor, pred: Tensor | None = None, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """One click per object, uniform over the error region: [N, H, W] bool truth and prediction (None:
    nothing predicted, so the click lands uniformly inside the object) → coords [N, 1, 2] (x, y pixels) and
    labels [N, 1] int32 (1 on a missed pixel, 0 on a false positive). An exact prediction gets a negative
    click on the background; an object covering the whole image (nothing to click) gets a negative click
    at (0, 0)."""
    n, h, w = truth.shape
    truth = truth.bool()
    pred = torch.zeros_like(truth) if pred is None else pred.bool()
    false_pos = pred & ~truth
    false_neg = truth & ~pred
    exact = ~(false_pos | false_neg).flatten(1).any(1)  # [N]
    negative_region = false_pos | (exact.view(n, 1, 1) & ~truth)
    region = (negative_region | false_neg).flatten(1).float()  # [N, HW], the two parts are disjoint
    # inverse-CDF draw: one uniform per object from the generator, the search on the masks' device
    cdf = region.cumsum(1)
    total = cdf[:, -1:]
    u = torch.rand(n, 1, generator=generator).to(truth.device)
    index = torch.searchsorted(cdf, (u * total).clamp(max=total - 0.5), right=True).clamp(
        max=h * w - 1
    )  # [N, 1]
    index = torch.where(total > 0, index, torch.zeros_like(index))
    labels = false_neg.flatten(1).gather(1, index).to(torch.int32)  # [N, 1]
    coords = torch.stack([index % w, index // w], dim=-1).float()  # [N, 1, 2]
    return coords, labels
