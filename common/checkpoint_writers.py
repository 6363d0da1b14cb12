"""Lightning checkpoint writers that pretraining and fine-tuning share: ``AtomicCheckpointIO``, whose files are
either the old checkpoint or the complete new one, and ``PeriodicCheckpoint``, a step-periodic
``ModelCheckpoint`` that also saves the final state. Recipes name them by their older path,
``unveil.pretrain.resume.<name>``, which still resolves."""

from __future__ import annotations

import glob
import os
import secrets
from contextlib import suppress
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO", "PeriodicCheckpoint"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint writer whose files are either the old checkpoint or the complete new one, never a part.

    Lightning's own writer serialises into memory, then, inside an fsspec transaction, writes a temporary
    file in the system temp folder and moves it onto the target. When that folder is on another file
    system than the checkpoints (``/tmp`` on a node's local disk, checkpoints on a shared one), the move is
    a copy, and a crash during the copy leaves a truncated ``last.ckpt``; nothing is flushed to disk, so a
    node crash can also leave a renamed but empty file. This writer streams ``torch.save`` into a hidden
    temporary file in the target's own folder (``.last.ckpt.<pid>.<random>.tmp``), ``fsync``s it, renames it over the
    target with ``os.replace`` (atomic on POSIX and Windows within one file system) and ``fsync``s the
    folder. A failed write removes its temporary file; one left by a killed process is removed by the next
    save of the same file. Paths on remote file systems (``s3://``, ...) go to Lightning's writer, whose
    object uploads are all-or-nothing already.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint does not take storage_options")
        if not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        # A temporary file left by a process killed mid-write.
        for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
            with suppress(OSError):
                stale.unlink()
        temporary = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        # Mode 0o666 minus the umask, like any file the user writes (tempfile.mkstemp would make it 0600).
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        except BaseException:
            with suppress(OSError):
                os.unlink(temporary)
            raise
        _fsync_folder(target.parent)


def _fsync_folder(folder: Path) -> None:
    """Persist a rename (the folder entry) to disk; folders cannot be opened this way on Windows."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


# ------------------------------------------------------------------------------------------ the final state


class PeriodicCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` for step-periodic saves that also writes ``last.ckpt`` when training ends.

    Lightning's ``save_last`` only follows a save made by the same callback, so a run whose final step is not
    a multiple of ``every_n_train_steps`` would end with a ``last.ckpt`` up to that many steps old (and MAViL
    stage 2 would start from a stale teacher). Here the end of training saves the final state unless this
    callback already saved at that step.
    """

    def on_train_end(self, trainer, pl_module) -> None:
        if (
            self.save_last
            and not self._should_skip_saving_checkpoint(trainer)
            and self._last_global_step_saved != trainer.global_step
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        else:
            super().on_train_end(trainer, pl_module)
