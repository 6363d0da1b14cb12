"""Small-component clean-up of mask logits, in plain torch (any device, no compiled extension).

The official package finds connected components with a CUDA kernel and skips this step, with a
warning, where the kernel is missing (any CPU). Here the components are found by propagating the
largest pixel index through 8-connected neighbours with max-pooling. Only components of at most
``max_area`` pixels matter, and such a component has a geodesic diameter below ``max_area``, so
``max_area`` propagation steps settle it; a label group is then a whole component exactly when no
neighbour inside the mask carries another label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["fill_holes", "remove_sprinkles", "small_components"]


def small_components(region: torch.Tensor, max_area: float) -> torch.Tensor:
    """Pixels of ``region`` [N, C, H, W] (bool) whose 8-connected component has at most
    ``max_area`` pixels; same shape, bool."""
    n, c, h, w = region.shape
    flat = region.reshape(n * c, 1, h, w)
    dtype = torch.float32 if h * w < 2**24 else torch.float64
    inside = flat.to(dtype)
    index = torch.arange(1, h * w + 1, device=region.device, dtype=dtype).view(1, 1, h, w)
    labels = index * inside  # 0 outside the region
    for _ in range(max(1, int(max_area))):
        labels = F.max_pool2d(labels, 3, stride=1, padding=1) * inside
    top = F.max_pool2d(labels, 3, stride=1, padding=1)
    big = float(h * w + 1)
    bottom = -F.max_pool2d(-torch.where(flat, labels, big), 3, stride=1, padding=1)
    unsettled = flat & ((top != labels) | (bottom != labels))  # touches another label: not a whole component
    key = (labels.long() + (h * w + 1) * torch.arange(n * c, device=region.device).view(-1, 1, 1, 1)).flatten()
    size = (h * w + 1) * n * c
    counts = torch.bincount(key, minlength=size)
    open_groups = torch.bincount(key, weights=unsettled.flatten().to(dtype), minlength=size)
    small = (counts <= max_area) & (open_groups == 0)
    return (small[key].view(n * c, 1, h, w) & flat).view(n, c, h, w)


def fill_holes(masks: torch.Tensor, max_area: float, threshold: float = 0.0, fill_value: float = 0.1) -> torch.Tensor:
    """Set background components (logits <= threshold) of at most ``max_area`` pixels to ``fill_value``."""
    return torch.where(small_components(masks <= threshold, max_area), float(fill_value), masks)


def remove_sprinkles(masks: torch.Tensor, max_area: float, threshold: float = 0.0) -> torch.Tensor:
    """Set foreground islands (logits > threshold) of at most ``max_area`` pixels to ``threshold - 10``."""
    return torch.where(small_components(masks > threshold, max_area), float(threshold - 10.0), masks)
