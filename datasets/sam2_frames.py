"""Frames of a video as SAM 2's video predictor reads them, decoded one at a time when asked for.

The official predictor decodes and resizes every frame up front and keeps them all (3 x 1024 x 1024
float32, 12 MiB a frame); here a frame is decoded when the tracker reaches it and dropped after.
The decoding and resizing are those of the official loader, so the pixels are the same:
a JPEG folder through PIL (``resize`` with its default filter, then / 255), an mp4 through decord
resizing while it decodes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["SAM2Frames"]

_JPEG = (".jpg", ".jpeg")


class SAM2Frames:
    """``frames[i]`` → [3, size, size] float32, normalised; ``len``, ``video_height``, ``video_width``."""

    def __init__(
        self,
        source: str | Path,
        image_size: int,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
    ):
        """
        Args:
            source: a folder of JPEG frames named by frame number (``00000.jpg``, ...) or an mp4 file.
        """
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]
        path = Path(source)
        if path.is_dir():
            self.paths = sorted(
                (p for p in path.iterdir() if p.suffix.lower() in _JPEG and not p.name.startswith(".")),
                key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem,
            )
            if not self.paths:
                raise FileNotFoundError(f"no JPEG frames in '{path}'")
            from PIL import Image

            with Image.open(self.paths[0]) as first:
                self.video_width, self.video_height = first.size
            self._reader = None
        elif path.is_file() and path.suffix.lower() in (".mp4", ".mov", ".avi", ".mkv", ".webm"):
            import decord

            probe = decord.VideoReader(os.fspath(path), num_threads=1)
            self.video_height, self.video_width = probe[0].shape[:2]
            del probe
            self._reader = decord.VideoReader(os.fspath(path), width=image_size, height=image_size, num_threads=1)
            self.paths = None
        else:
            raise FileNotFoundError(f"'{source}' is neither a folder of JPEG frames nor a video file")

    def __len__(self) -> int:
        return len(self.paths) if self.paths is not None else len(self._reader)

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} out of range for {len(self)} frames")
        if self.paths is not None:
            from PIL import Image

            with Image.open(self.paths[index]) as image:
                pixels = torch.from_numpy(np.array(image.convert("RGB").resize((self.image_size, self.image_size))))
        else:
            pixels = self._reader[index]  # NDArray, or a tensor where decord's bridge is set to torch
            pixels = pixels if isinstance(pixels, torch.Tensor) else torch.from_numpy(pixels.asnumpy())
        # in float32 and in place: v / 255 rounds to the same float32 as the official float64 division
        x = pixels.permute(2, 0, 1).float()  # [3, size, size]
        return x.div_(255.0).sub_(self.mean).div_(self.std)
