"""Small model configurations that several test files build, and the pretraining-checkpoint writer they share
(import as ``from tiny_configs import ...``)."""

from pathlib import Path

import lightning.pytorch as pl
import torch
from unveil.common.checkpoints import ARCHITECTURE_KEY, architecture_of

TINY_MAVIL = dict(
    audio_size=(64, 128),
    num_frames=4,
    image_size=32,
    patch_size=16,
    tubelet_frames=2,
    embed_dim=32,
    depth=2,
    num_heads=2,
    fusion_depth=1,
    decoder_embed_dim=32,
    decoder_depth=1,
    decoder_num_heads=2,
    projection_dim=16,
)
"""A MAViL small enough for CPU tests: 2-block encoders of width 32, one fusion block, a 1-block decoder."""


def lightning_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """What a pretraining module saves: ``model.*`` weights, the loop counters and the architecture record."""
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "global_step": 1,
            "pytorch-lightning_version": pl.__version__,
            ARCHITECTURE_KEY: architecture_of(model).as_dict(),
        },
        path,
    )
    return path
