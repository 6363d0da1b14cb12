"""The run plumbing of the paper recipes, in one place: run folder, W&B logger, checkpoints, skip counter.

A recipe that sets neither ``trainer.logger`` nor ``trainer.callbacks`` gets these as trainer defaults, so the
recipe itself holds only the science (model, data, optimiser, schedule, each value with its source). Everything
is derived from the recipe's file name ``NAME`` (``mae_hiera_b_in1k``, or ``my_run`` for a copy saved as
``my_run.yaml``), so a copied recipe writes to its own folder:

- ``trainer.default_root_dir: runs/NAME`` (unless the recipe or ``--trainer.default_root_dir`` on the command
  line sets it; the other paths follow it);
- ``trainer.logger``: W&B, project ``unveil``, group ``NAME``, tags from the name (``mae, hiera-b, in1k``),
  files in the run folder, ``resume: allow`` so a fixed ``id`` continues a run;
- ``trainer.callbacks``: the best checkpoint by ``val/loss`` and ``last.ckpt`` (ModelCheckpoint), ``last.ckpt``
  every 1000 steps and at the end (``PeriodicCheckpoint``), both in ``<run folder>/checkpoints`` whatever the
  logger; the skip counter (``SkipCounterCallback``); effective epochs under repeated sampling
  (``EffectiveEpochs``); for the MAE recipes (labelled IN-1K and K400 data) the online linear and kNN probes
  (``OnlineProbes``, every 10th batch).

They are parser defaults: ``--print_config`` shows them resolved, ``--key value`` overrides them, and a recipe
that sets ``trainer.logger`` or ``trainer.callbacks`` (the quickstarts do) replaces that part. To get a
self-contained copy of a recipe, plumbing included: ``unveil fit --config NAME --print_config > my_run.yaml``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

PROJECT = "unveil"
CHECKPOINT_EVERY_N_STEPS = 1000
"""A preempted or crashed job loses at most this many optimiser steps."""
SKIP_COUNTER_EVERY_N_BATCHES = 50
ONLINE_PROBE_EVERY_N_STEPS = 10  # training batches between two online-probe updates (MAE recipes)


def recipe_tags(name: str) -> list[str]:
    """W&B tags from a recipe name: ``mae_hiera_b_in1k`` -> ``[mae, hiera-b, in1k]``."""
    parts = name.split("_")
    tags: list[str] = []
    for part in parts:
        if tags and tags[-1] == "hiera":
            tags[-1] = f"hiera-{part}"
        else:
            tags.append(part)
    return tags


def run_defaults(recipe: str | Path, default_root_dir: str | None = None) -> dict[str, Any]:
    """The trainer defaults for the recipe file ``recipe``: run folder, logger and callbacks (module docstring).

    ``default_root_dir``: the run folder the recipe sets, if any (default ``runs/<recipe name>``).
    """
    name = Path(recipe).stem
    run = default_root_dir or f"runs/{name}"
    checkpoints = f"{run}/checkpoints"
    return {
        "default_root_dir": run,
        "logger": {
            "class_path": "lightning.pytorch.loggers.WandbLogger",
            "init_args": {
                "save_dir": run,
                # stated, so that a switch to another logger (--trainer.logger=CSVLogger) carries it over and
                # writes <run folder>/version_N rather than <run folder>/lightning_logs/version_N
                "name": None,  # W&B picks a unique run name; the group gathers the recipe's runs
                "project": PROJECT,
                "entity": None,  # your default W&B entity (--trainer.logger.init_args.entity TEAM)
                "group": name,
                "tags": recipe_tags(name),
                "id": None,  # a fixed id continues that run (unveil slurm pins one for requeues)
                # stated: the CLI would pass resume=None, overriding WandbLogger's 'allow'
                "resume": "allow",
            },
        },
        "callbacks": [
            {
                "class_path": "unveil.datasets.SkipCounterCallback",
                "init_args": {"every_n_batches": SKIP_COUNTER_EVERY_N_BATCHES},
            },
            {
                # the lowest val/loss, and last.ckpt at each new best; one folder whatever the logger (W&B's
                # default is a folder per run id), so resuming, exporting and MAViL stage 2 find it
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {
                    "dirpath": checkpoints,
                    "filename": "best-{epoch}-{step}",
                    "monitor": "val/loss",
                    "mode": "min",
                    "save_top_k": 1,
                    "save_last": True,
                    "enable_version_counter": False,  # one last.ckpt, never last-v1.ckpt
                },
            },
            {
                "class_path": "unveil.pretrain.resume.PeriodicCheckpoint",
                "init_args": {
                    "dirpath": checkpoints,
                    "every_n_train_steps": CHECKPOINT_EVERY_N_STEPS,
                    "save_top_k": 0,  # no numbered copies: last.ckpt only
                    "save_last": True,
                    "enable_version_counter": False,
                },
            },
            {"class_path": "unveil.pretrain.progress.EffectiveEpochs"},
            *_online_probes(name),
        ],
    }


def _online_probes(name: str) -> list[dict[str, Any]]:
    """OnlineProbes for the MAE recipes, whose data are labelled (IN-1K, K400): ``probe/linear_top1`` and
    ``probe/knn_top1`` at each validation. The extra eval forward runs on every 10th batch only (a few per cent
    of a step's cost at these sizes)."""
    if not name.startswith("mae_hiera"):
        return []
    return [
        {
            "class_path": "unveil.finetune.probes.OnlineProbes",
            "init_args": {"backbone": "model", "every_n_steps": ONLINE_PROBE_EVERY_N_STEPS},
        }
    ]


def _command_line_root(argv: Sequence[str]) -> str | None:
    """The last ``--trainer.default_root_dir`` given on the command line, if any."""
    root = None
    for i, arg in enumerate(argv):
        if arg == "--trainer.default_root_dir" and i + 1 < len(argv):
            root = argv[i + 1]
        elif arg.startswith("--trainer.default_root_dir="):
            root = arg.split("=", 1)[1]
    return root or None


def recipe_run_defaults(recipe: str | Path, argv: Sequence[str] = ()) -> dict[str, Any] | None:
    """``run_defaults`` for a recipe file (one with a ``model``) that leaves both ``trainer.logger`` and
    ``trainer.callbacks`` out; None for any other recipe, or one that cannot be read or parsed (the parser then
    reports it). The run folder is ``--trainer.default_root_dir`` in ``argv`` (the command line), else the one
    the recipe sets, else ``runs/<recipe name>``."""
    try:
        config = yaml.safe_load(Path(recipe).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(config, dict) or "model" not in config:
        return None  # not a recipe (a preset, say)
    trainer = config.get("trainer") or {}
    if not isinstance(trainer, dict) or "logger" in trainer or "callbacks" in trainer:
        return None
    root = _command_line_root(argv) or trainer.get("default_root_dir")
    return run_defaults(recipe, str(root) if isinstance(root, str) and root else None)
