"""Around a run started by the CLI: its resolved config (written as ``config.yaml`` and sent to every logger), and
the W&B run's end (closed when the command ends) or failure to start (one line naming the ways around it).

LightningCLI's own ``SaveConfigCallback`` only writes ``config.yaml`` into the run folder. A W&B run is then
missing the recipe it came from (Lightning logs only the LightningModule's and DataModule's constructor
arguments), so runs in the W&B table cannot be filtered or compared by trainer, data or model settings.
``SaveAndLogConfig`` also gives the same config, as a nested dict, to ``log_hyperparams`` of every logger:
W&B shows it as the run config (``trainer.max_epochs``, ``model.init_args.optimizer.base_lr``, ...), TensorBoard and CSV
keep it in their ``hparams.yaml``.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml
from lightning.pytorch.cli import SaveConfigCallback


def resolved_config(parser, config) -> dict[str, Any]:
    """The parsed config as plain YAML types: what ``config.yaml`` holds (all defaults filled in, overrides applied,
    paths as strings), minus jsonargparse's bookkeeping of which files were read."""
    return yaml.safe_load(parser.dump(config, skip_none=False))


class SaveAndLogConfig(SaveConfigCallback):
    """Writes ``config.yaml`` to the run folder, then logs the same resolved config to every logger.

    ``save_config`` runs on global rank 0 only (Lightning calls it there, after ``config.yaml`` is written), so
    no logger is asked to log from another rank and no collective call is made.
    """

    def save_config(self, trainer, pl_module, stage: str) -> None:
        if not trainer.loggers:
            return
        config = resolved_config(self.parser, self.config)
        for logger in trainer.loggers:
            logger.log_hyperparams(config)


def finish_wandb_runs(trainer, failed: bool) -> None:
    """Close the W&B runs that ``trainer``'s WandbLoggers started, flushing their files.

    A W&B run stays open until the process exits; a second ``unveil fit`` in the same process (a test, a
    notebook, a sweep driver) would otherwise log into the first run, because WandbLogger reuses an open run.
    Only runs that were actually started are closed (``_experiment`` is set on rank 0 once the run exists;
    asking for ``logger.experiment`` here would start one).
    """
    from lightning.pytorch.loggers import WandbLogger

    for logger in getattr(trainer, "loggers", None) or ():
        run = getattr(logger, "_experiment", None) if isinstance(logger, WandbLogger) else None
        if run is not None and hasattr(run, "finish"):
            run.finish(exit_code=1 if failed else 0)


def wandb_start_problem(error: BaseException) -> str | None:
    """A one-line message when ``error`` is W&B refusing to start a run (no API key, no network, a bad setting),
    naming the two ways to run without an account; None for any other error."""
    wandb = sys.modules.get("wandb")
    errors = getattr(wandb, "errors", None)
    kinds = tuple(kind for kind in (getattr(errors, "UsageError", None), getattr(errors, "CommError", None)) if kind)
    if not kinds or not isinstance(error, kinds):
        return None
    detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return (f"W&B could not start the run: {detail} (without an account: WANDB_MODE=offline, or another logger "
            "with --trainer.logger=CSVLogger)")
