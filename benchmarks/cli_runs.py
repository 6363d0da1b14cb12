"""What the proof scripts share: the ``unveil`` console script of this environment, and running a command as a
user types it (echoed, stopping the script with the command line when it fails)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def unveil_command() -> list[str]:
    """The ``unveil`` console script beside this interpreter (else the one on PATH)."""
    beside = Path(sys.executable).parent / "unveil"
    found = str(beside) if beside.is_file() else shutil.which("unveil")
    if found is None:
        raise SystemExit("the 'unveil' command is not installed (pip install -e .)")
    return [found]


def run(command: list[str]) -> None:
    """Run ``command``, echoed first; a failure stops the script with its exit status and command line."""
    print("$", " ".join(command), flush=True)
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise SystemExit(f"command failed ({result.returncode}): {' '.join(command)}")


def fit_command(recipe: str, root: Path, data: Path, seed: int, steps: int, eval_every: int) -> list[str]:
    """``unveil fit --config RECIPE`` for a proof run: its own run folder (``root``, the logger's too), seed,
    data folder, step budget and validation interval."""
    return [
        *unveil_command(),
        "fit",
        "--config",
        recipe,
        "--seed_everything",
        str(seed),
        "--trainer.max_steps",
        str(steps),
        "--trainer.val_check_interval",
        str(eval_every),
        "--trainer.default_root_dir",
        str(root),
        "--trainer.logger.init_args.save_dir",
        str(root),
        "--data.init_args.root",
        str(data),
    ]
