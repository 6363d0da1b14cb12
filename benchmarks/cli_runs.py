"""What the proof scripts share: the ``unveil`` console script of this environment, and running a command as a
user types it (echoed, stopping the script with the command line when it fails)."""

from __future__ import annotations

import argparse
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


def proof_arguments(
    argv: list[str] | None, description: str, start: tuple[str, str], data: str, steps: int, work: str,
    more=None,
) -> tuple[argparse.Namespace, list[str]]:
    """The command line every pretrained-vs-random proof takes: ``start`` (its flag and help: the pretrained
    file; absent means random), ``--data``, ``--steps``, ``--eval-every``, ``--seed``, ``--work``, plus what
    ``more(parser)`` adds; everything after ``--`` is returned apart, for ``unveil fit``. Bad values stop the
    script with a one-line message."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(start[0], type=Path, default=None, help=start[1])
    parser.add_argument("--data", type=Path, default=Path(data))
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path(work))
    if more is not None:
        more(parser)
    args = parser.parse_args(argv)
    pretrained = getattr(args, start[0].lstrip("-").replace("-", "_"))
    if pretrained is not None and not pretrained.is_file():
        raise SystemExit(f"{start[0]} {pretrained}: no such file")
    if args.eval_every < 1 or args.steps < args.eval_every:
        raise SystemExit(f"--eval-every must be in [1, --steps], got {args.eval_every} for {args.steps} steps")
    return args, extra
