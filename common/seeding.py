"""Seeds that every process of a run agrees on: mixing parts into one seed, the run's seed, and running a
block under seeded global generators. Shared by the data loaders (``unveil.datasets``) and the training
modules (``unveil.pretrain``, ``unveil.finetune``)."""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager

import torch

__all__ = ["derive_seed", "run_seed", "seeded_rng"]


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` (ints, strings), the same in every process, platform and Python version.

    Python's ``hash`` of a str changes per process, and mixing seeds by addition collides
    (``(1, 2)`` and ``(2, 1)``); a cryptographic digest of the parts' text does neither.
    """
    digest = hashlib.blake2b("/".join(str(part) for part in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def run_seed() -> int:
    """The run's seed: the value ``seed_everything`` exported (``PL_GLOBAL_SEED``, which Lightning passes on
    to DDP processes and which LightningCLI records in the saved config), else 0.

    Never a fresh random value: every DDP rank, and a resumed run, must agree on it.
    """
    value = os.environ.get("PL_GLOBAL_SEED")
    try:
        return int(value) if value is not None else 0
    except ValueError:
        raise ValueError(f"PL_GLOBAL_SEED must be an integer, got {value!r}") from None


@contextmanager
def seeded_rng(seed: int, device: torch.device):
    """Run the block with the global RNGs (CPU, and ``device`` if CUDA) seeded, restoring them afterwards.

    Used so that validation masks and picture masks are the same at every step without disturbing training,
    and so that each training step's randomness depends on the step only
    (``unveil.pretrain.resume.step_rng``).
    """
    cuda_devices = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        yield
