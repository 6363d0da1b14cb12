"""Reading checkpoint files safely (models/ holds the math and the key converters, never file I/O)."""

from __future__ import annotations

from pathlib import Path

import torch

from unveil.models.convert import unwrap_state_dict

__all__ = ["load_checkpoint_state"]


def load_checkpoint_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint's state dict safely: safetensors, or ``torch.load(weights_only=True)``
    (never an arbitrary pickle); wrappers are removed with :func:`unwrap_state_dict`."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return unwrap_state_dict(load_file(str(path), device="cpu"))
    return unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True))
