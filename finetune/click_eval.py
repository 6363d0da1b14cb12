"""Interactive single-image evaluation of SAM 2: mIoU after k simulated clicks (mIoU@1, mIoU@5).

The protocol of SAM's and SAM 2's interactive image evaluation (the clicking robot of RITM, Sofiiuk et al.
2022), written anew:

- **First click**: a positive click on the ground-truth pixel farthest from the mask's boundary (the
  Euclidean distance transform of the mask, the image border counting as boundary).
- **Each next click**: the errors of the current prediction split into false negatives (missed pixels)
  and false positives; the click goes to the error pixel farthest from the boundary of its error region,
  so into the largest error region as measured by its depth: a positive click on a false negative, a
  negative click on a false positive (a tie goes to the negative click, as RITM's robot does). All clicks
  so far are given, with the previous low-res logits of the chosen mask as the mask input.
- **Masks**: the first click asks for three masks and keeps the one of highest predicted IoU; later
  clicks ask for one.
- **Score**: the IoU with the truth after each click (a prediction that is already exact takes no more
  clicks and keeps its IoU of 1), averaged over every object of every image (objects with an empty mask
  are left out): ``miou@1``, ``miou@5``.

Ties in the distance transform go to the first pixel in raster order, so every click is deterministic.

The predictor is anything with the official ``SAM2ImagePredictor`` API, its image already set:
``predict(point_coords, point_labels, mask_input=..., multimask_output=...)`` returning (masks [C, H, W],
predicted IoUs [C], low-res logits [C, h, w]); e.g. :class:`unveil.models.sam2.ImagePredictor`, or
:class:`TensorImagePredictor` for images already normalised as the model's input (validation batches).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from unveil.models.sam2 import ImagePredictor

__all__ = [
    "ClickScores",
    "TensorImagePredictor",
    "click_ious",
    "evaluate_clicks",
    "first_click",
    "interior_point",
    "next_click",
]


def _as_bool(mask) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask).astype(bool)


def interior_point(region) -> tuple[int, int, float]:
    """The pixel of ``region`` ([H, W] bool) farthest from its boundary: (x, y, distance in pixels).

    The region is padded with background first, so the image border is a boundary too; ties go to the
    first pixel in raster order. An empty region gives (0, 0, 0.0)."""
    region = _as_bool(region)
    if not region.any():
        return 0, 0, 0.0
    depth = distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    flat = int(np.argmax(depth))  # the first maximum in raster order
    y, x = divmod(flat, region.shape[1])
    return x, y, float(depth[y, x])


def first_click(truth) -> tuple[int, int, int]:
    """The first click on an object: (x, y, label 1) at its interior-most pixel."""
    x, y, _ = interior_point(truth)
    return x, y, 1


def next_click(truth, pred) -> tuple[int, int, int] | None:
    """The correction click for prediction ``pred`` of ``truth`` (both [H, W] bool): (x, y, label), with
    label 1 on a false negative and 0 on a false positive; None when the prediction is exact."""
    truth, pred = _as_bool(truth), _as_bool(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"next_click: truth {truth.shape} and prediction {pred.shape} differ in shape")
    fn_x, fn_y, fn_depth = interior_point(truth & ~pred)
    fp_x, fp_y, fp_depth = interior_point(pred & ~truth)
    if fn_depth == 0 and fp_depth == 0:
        return None
    if fn_depth > fp_depth:
        return fn_x, fn_y, 1
    return fp_x, fp_y, 0


def _iou(pred: np.ndarray, truth: np.ndarray) -> float:
    union = np.logical_or(pred, truth).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, truth).sum() / union)


def click_ious(predictor, truth, num_clicks: int = 5) -> list[float]:
    """IoU with ``truth`` ([H, W] bool, the image's size) after each of ``num_clicks`` simulated clicks on
    the predictor's current image (see the module docstring)."""
    if num_clicks < 1:
        raise ValueError(f"num_clicks must be at least 1, got {num_clicks}")
    truth = _as_bool(truth)
    click = first_click(truth)
    coords: list[list[float]] = []
    labels: list[int] = []
    mask_input = None
    ious: list[float] = []
    for step in range(num_clicks):
        if click is None:  # exact: no error left to click on
            ious.append(ious[-1])
            continue
        coords.append([float(click[0]), float(click[1])])
        labels.append(click[2])
        masks, scores, low_res = predictor.predict(
            point_coords=np.asarray(coords, dtype=np.float32),
            point_labels=np.asarray(labels, dtype=np.int32),
            mask_input=mask_input,
            multimask_output=step == 0,
        )
        best = int(np.argmax(np.asarray(scores))) if step == 0 else 0
        pred = np.asarray(masks[best]) > 0.5
        if pred.shape != truth.shape:
            raise ValueError(
                f"click_ious: the predictor's masks are {pred.shape}, the truth {truth.shape} "
                "(set the image the truth belongs to)"
            )
        mask_input = np.asarray(low_res[best : best + 1])  # [1, h, w]
        ious.append(_iou(pred, truth))
        click = next_click(truth, pred)
    return ious


class ClickScores:
    """Running sums of the IoU after each click, over objects (also summed across ranks by the caller)."""

    def __init__(self, num_clicks: int = 5) -> None:
        self.num_clicks = num_clicks
        self.sums = torch.zeros(num_clicks, dtype=torch.float64)
        self.count = 0

    def update(self, ious: list[float]) -> None:
        self.sums += torch.tensor(ious, dtype=torch.float64)
        self.count += 1

    def totals(self) -> torch.Tensor:
        """[num_clicks + 1] float64: the sums, then the object count (what an all-reduce adds up)."""
        return torch.cat([self.sums, torch.tensor([float(self.count)], dtype=torch.float64)])

    @staticmethod
    def means(totals: torch.Tensor) -> dict[str, float]:
        """``{"miou@k": ...}`` for k = 1..num_clicks from :meth:`totals` (summed over ranks); empty with no
        object."""
        count = float(totals[-1])
        if count == 0:
            return {}
        return {f"miou@{k + 1}": float(totals[k]) / count for k in range(totals.numel() - 1)}


def evaluate_clicks(predictor, images: Iterable[tuple[np.ndarray, np.ndarray]], num_clicks: int = 5) -> dict:
    """mIoU after each click over ``images``: pairs of an HxWx3 uint8 RGB image and its objects' masks
    (bool [O, H, W]); each image is set once, each non-empty object evaluated from scratch.

    Returns ``{"miou@1", ..., "miou@<num_clicks>", "objects", "images"}``."""
    scores = ClickScores(num_clicks)
    count = 0
    for image, masks in images:
        predictor.set_image(image)
        for mask in _as_bool(masks):
            if mask.any():
                scores.update(click_ious(predictor, mask, num_clicks))
        count += 1
    return {**ClickScores.means(scores.totals()), "objects": scores.count, "images": count}


class TensorImagePredictor(ImagePredictor):
    """:class:`~unveil.models.sam2.ImagePredictor` on an image that is already the model's input (a
    [3, S, S] ImageNet-normalised tensor, as training batches hold it); masks come back at S × S."""

    @torch.no_grad()
    def set_normalized(self, image: torch.Tensor) -> None:
        size = self.model.image_size
        if image.dim() != 3 or tuple(image.shape[1:]) != (size, size):
            raise ValueError(
                f"set_normalized: expected a [3, {size}, {size}] image, got {tuple(image.shape)}"
            )
        self.reset_predictor()
        self._orig_hw = [(size, size)]
        self._set(image[None].to(self.device, torch.float32))
