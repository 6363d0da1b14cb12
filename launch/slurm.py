"""``unveil slurm``: submit a recipe to SLURM as one resumable job folder.

    unveil slurm --config mae_hiera_b_in1k --nodes 4 --gpus-per-node 8 --time 48:00:00 --partition gpu
    unveil slurm --config quickstart --gpus-per-node 0 --tasks-per-node 2 --trainer.max_steps 50   # CPU DDP
    unveil slurm --config mae_hiera_b_in1k --dry-run       # print the sbatch script; write, submit nothing

The recipe (with any ``--key value`` overrides) is parsed and type-checked first, so a bad recipe stops here,
before anything is written or submitted. Then the run folder ``RUN`` (``--run-dir``; default
``<trainer.default_root_dir or runs/<recipe>>/<job name>``) receives:

- ``config.yaml``: the resolved recipe, with what the job needs to resume pinned: ``trainer.num_nodes``,
  ``trainer.devices``, ``trainer.accelerator``, the strategy (``ddp`` unless the recipe chose one),
  ``trainer.default_root_dir: RUN``, every ModelCheckpoint's ``dirpath: RUN/checkpoints`` (and ``save_last``),
  the loggers' folders fixed to RUN (no ``version_N``), a W&B run id chosen once, and ``ckpt_path: last``.
- ``job.sbatch``: one task per GPU (or ``--tasks-per-node`` CPU processes), ``--signal=SIGUSR1@90`` and
  ``--requeue``, logs in ``RUN/slurm-<job id>.out|err``, then ``srun unveil fit --config RUN/config.yaml``.

Preemption and time limits: 90 s before the end SLURM sends SIGUSR1; Lightning's SLURMEnvironment saves
``RUN/hpc_ckpt_<n>.ckpt`` and requeues the job (``scontrol requeue``). The script restarts from the newer of
that file and ``RUN/checkpoints/last.ckpt`` (it passes ``--ckpt_path``: with ``ckpt_path`` set, Lightning
itself would not look at the hpc file); with no checkpoint yet, ``ckpt_path: last`` starts afresh. Submitting
again with the same run folder (``unveil slurm`` with the same options, or ``sbatch RUN/job.sbatch``)
continues the same way and keeps the W&B run id.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shlex
import shutil
import string
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from unveil.launch.cli import OneLineParser, UsageError, parse_recipe

SIGNAL_LEAD_S = 90  # seconds before the time limit: enough for rank 0 to write a checkpoint of a large model
CONFIG_NAME = "config.yaml"
SCRIPT_NAME = "job.sbatch"
CHECKPOINTS = "checkpoints"
WANDB_LOGGER = "WandbLogger"
FOLDER_LOGGERS = ("TensorBoardLogger", "CSVLogger")  # loggers whose folder is save_dir/name/version
_ID_ALPHABET = string.ascii_lowercase + string.digits  # W&B run ids: 8 of these, as wandb makes them

# SLURM's --time formats: minutes, minutes:seconds, hours:minutes:seconds, days-hours[:minutes[:seconds]].
_TIME = re.compile(r"(?:(?P<days>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"
                   r"|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)")
FREE_PORT = "import socket; s = socket.socket(); s.bind((\"\", 0)); print(s.getsockname()[1])"
_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


# --------------------------------------------------------------------------------------- command line


def check_time(text: str) -> str:
    """A SLURM time limit, e.g. ``48:00:00``, ``2-00:00:00``, ``90`` (minutes); returned unchanged."""
    match = _TIME.fullmatch(text.strip())
    if match is not None:
        # the field after an hour (or a minute) is below 60: 1:75:00 is a typo, not 2:15:00
        below_60 = [match[k] for k in ("dm", "ds") if match[k]]
        below_60 += [match[k] for k in ("b", "c") if match[k]]
        if all(int(value) < 60 for value in below_60) and (match["days"] is None or int(match["dh"]) < 24):
            return text.strip()
    raise argparse.ArgumentTypeError(
        f"'{text}' is not a SLURM time limit (HH:MM:SS, D-HH:MM:SS or minutes, e.g. 48:00:00)")


def _job_name(text: str) -> str:
    if not _JOB_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a job name (letters, digits, '.', '_', '-'; it names the run folder)")
    return text


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        error_format="slurm: {}",
        prog="unveil slurm",
        description="Write an sbatch script for a recipe in a run folder and submit it; the job resumes from "
        "its checkpoints after preemption, a time limit or a resubmission. Any other --key value is a recipe "
        "override, as for 'unveil fit'.",
        allow_abbrev=False,
    )
    parser.add_argument("--config", "-c", required=True, help="recipe: a shipped name or a YAML path")
    parser.add_argument("--nodes", type=_count(1), help="nodes (default: the recipe's trainer.num_nodes)")
    parser.add_argument(
        "--gpus-per-node", type=_count(0),
        help="GPUs per node, one task each (default: the recipe's trainer.devices when it trains on GPUs, "
        "0 when its accelerator is cpu); 0 runs --tasks-per-node CPU processes with DDP")
    parser.add_argument(
        "--tasks-per-node", type=_count(1),
        help="processes per node without GPUs (default: the recipe's trainer.devices, or 1)")
    parser.add_argument(
        "--cpus-per-task", type=_count(1),
        help="CPUs per task (default: the recipe's data loader.num_workers + 1: the loader workers and the trainer)")
    parser.add_argument("--time", type=check_time,
                        help="time limit, HH:MM:SS or D-HH:MM:SS (default: the partition's)")
    parser.add_argument("--partition", help="partition (default: the cluster's default)")
    parser.add_argument("--account", help="account to charge")
    parser.add_argument("--job-name", type=_job_name,
                        help="job name and run folder name (default: the recipe's name)")
    parser.add_argument("--run-dir",
                        help="run folder (default: <trainer.default_root_dir or runs/<recipe>>/<job name>)")
    parser.add_argument(
        "--sbatch", action="append", default=[], metavar="OPTION",
        help="any other sbatch option, written as an #SBATCH line (repeatable), e.g. --sbatch=--qos=high")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the sbatch script; write nothing and submit nothing")
    return parser


def split_argv(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate this command's options from recipe overrides (every other ``--key [value]``), keeping order.

    argparse's ``parse_known_args`` would do this too, but it guesses where an unknown option's value ends;
    here only the options declared on ``parser`` are taken, with their values, and the rest passes through as
    it is.
    """
    takes_value = {}
    for action in parser._actions:
        for flag in action.option_strings:
            takes_value[flag] = action.nargs != 0
    ours, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag = arg.split("=", 1)[0] if arg.startswith("--") else arg
        if flag in takes_value:
            ours.append(arg)
            if takes_value[flag] and "=" not in arg and i + 1 < len(argv):
                ours.append(argv[i + 1])
                i += 1
        else:
            overrides.append(arg)
        i += 1
    return ours, overrides


# --------------------------------------------------------------------------------------- the run's config


def plain(value):
    """The parsed config as YAML-safe data (tuples as lists, paths as strings, restricted numbers as numbers).

    Values that only a Python default can give (an object from LightningCLI's ``trainer_defaults``, say) are
    dropped, so the same default applies again when ``unveil fit`` reads the file.
    """
    if hasattr(value, "as_dict"):  # a jsonargparse Namespace
        value = value.as_dict()
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            item = plain(item)
            if item is not _DROP:
                out[str(key)] = item
        return out
    if isinstance(value, (list, tuple)):
        return [item for item in (plain(v) for v in value) if item is not _DROP]
    if isinstance(value, Enum):
        return plain(value.value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or type(value) in (str, bool, int, float):
        return value
    for kind in (str, int, float):  # subclasses (jsonargparse's PositiveInt, ...), which yaml.safe_dump refuses
        if isinstance(value, kind):
            return kind(value)
    return _DROP


_DROP = object()


def _class_name(entry) -> str:
    return str(entry.get("class_path", "")).rsplit(".", 1)[-1] if isinstance(entry, dict) else ""


def _is_model_checkpoint(entry) -> bool:
    """Whether a ``class_path`` entry is Lightning's ModelCheckpoint or a subclass (the parse imported it)."""
    if not isinstance(entry, dict) or "class_path" not in entry:
        return False
    import importlib

    from lightning.pytorch.callbacks import ModelCheckpoint

    module, _, name = entry["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, ModelCheckpoint)


def _as_list(value) -> list:
    if value is None or value is False:
        return []
    return list(value) if isinstance(value, list) else [value]


def new_wandb_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def saved_wandb_id(config_path: Path) -> str | None:
    """The W&B run id in a run folder's saved config (None: no such file, or no WandbLogger in it)."""
    import yaml

    if not config_path.is_file():
        return None
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        first_line = str(error).splitlines()[0]
        raise UsageError(f"cannot read the saved config {config_path}: {first_line}") from None
    trainer = (config.get("trainer") if isinstance(config, dict) else None) or {}
    for entry in _as_list(trainer.get("logger") if isinstance(trainer, dict) else None):
        if _class_name(entry) == WANDB_LOGGER:
            init = entry.get("init_args") or {}
            if init.get("id") or init.get("version"):
                return str(init.get("id") or init.get("version"))
    return None


def pin_config(config: dict, run_dir: Path, *, num_nodes: int, devices: int, accelerator: str,
               wandb_id: str | None = None) -> dict:
    """Pin in ``config`` (plain data, the parsed ``fit`` config) what must stay fixed across restarts.

    Returns the same dict. ``wandb_id`` is the W&B run id to keep (a new one is made when a WandbLogger has
    none; an id in the recipe itself wins).
    Raises ``UsageError`` when the recipe turns checkpointing off (the job could not resume).
    """
    run = str(run_dir)
    trainer = config.setdefault("trainer", {})
    if trainer.get("enable_checkpointing") is False:
        raise UsageError("trainer.enable_checkpointing is false: a SLURM job needs checkpoints to resume")
    trainer["num_nodes"] = num_nodes
    trainer["devices"] = devices
    trainer["accelerator"] = accelerator
    if trainer.get("strategy") in (None, "auto"):
        trainer["strategy"] = "ddp"  # also at one device, so the launch path is the same at every scale
    trainer["default_root_dir"] = run  # where Lightning writes hpc_ckpt_<n>.ckpt on SIGUSR1 and looks for it

    # Loggers: one fixed folder. Lightning's default logger (None / True) would count version_0, version_1,
    # ... and start a new folder at every restart; it becomes an explicit TensorBoardLogger in the run folder.
    logger = trainer.get("logger")
    if logger is None or logger is True:
        logger = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {}}
    loggers = _as_list(logger)
    folder_loggers = 0
    for entry in loggers:
        name = _class_name(entry)
        init = entry.setdefault("init_args", {}) if isinstance(entry, dict) else {}
        if name in FOLDER_LOGGERS:
            init["save_dir"], init["name"] = run, ""
            # the first writes in the run folder itself (trainer.log_dir); any further one in a sub-folder
            init["version"] = "" if folder_loggers == 0 else name.removesuffix("Logger").lower()
            folder_loggers += 1
        elif name == WANDB_LOGGER:
            init["save_dir"] = run
            init["id"] = str(init.get("id") or init.get("version") or wandb_id or new_wandb_id())
            init["version"] = None  # WandbLogger takes version over id; keep one source
            if "resume" in init:  # a wandb.init argument; WandbLogger's default is already "allow"
                init["resume"] = "allow"
    if loggers:
        trainer["logger"] = loggers if isinstance(logger, list) else loggers[0]

    # Checkpoints: one folder, and a last.ckpt for `ckpt_path: last`.
    callbacks = _as_list(trainer.get("callbacks"))
    checkpoints = [entry for entry in callbacks if _is_model_checkpoint(entry)]
    if not checkpoints:
        entry = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"save_last": True}}
        callbacks.append(entry)
        checkpoints = [entry]
    for entry in checkpoints:
        entry.setdefault("init_args", {})["dirpath"] = str(run_dir / CHECKPOINTS)
    if not any(entry["init_args"].get("save_last") for entry in checkpoints):
        checkpoints[0]["init_args"]["save_last"] = True
    trainer["callbacks"] = callbacks

    config["ckpt_path"] = "last"  # no checkpoint yet: Lightning warns and starts afresh
    return config


# --------------------------------------------------------------------------------------- the sbatch script


@dataclass
class Resources:
    """What the job asks SLURM for. ``gpus_per_node`` 0: CPU processes (``tasks_per_node``) with DDP."""

    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    cpus_per_task: int
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    job_name: str = "unveil"
    extra: tuple[str, ...] = ()


def unveil_command() -> list[str]:
    """The ``unveil`` that runs this command: the console script beside this Python, else ``python -m``.

    sys.executable is not resolved: in a virtual environment it is a link, and resolving it would leave the
    environment.
    """
    python = Path(os.path.abspath(sys.executable))
    script = python.with_name("unveil")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [str(python), "-m", "unveil.launch.cli"]


def sbatch_script(resources: Resources, run_dir: Path, workdir: Path, recipe: str,
                  overrides: Sequence[str] = ()) -> str:
    """The text of ``RUN/job.sbatch``."""
    r = resources
    run = str(run_dir)
    lines = [
        "#!/bin/bash",
        f"# Written by `unveil slurm` for recipe {recipe}"
        + (f" with {' '.join(shlex.quote(o) for o in overrides)}" if overrides else "") + ".",
        f"# Submit again with `sbatch {shlex.quote(str(run_dir / SCRIPT_NAME))}`: it resumes.",
        f"#SBATCH --job-name={r.job_name}",
        f"#SBATCH --nodes={r.nodes}",
        f"#SBATCH --ntasks-per-node={r.tasks_per_node}",
    ]
    if r.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={r.gpus_per_node}")
    lines.append(f"#SBATCH --cpus-per-task={r.cpus_per_task}")
    lines += [f"#SBATCH --{key}={value}" for key, value in
              (("time", r.time), ("partition", r.partition), ("account", r.account)) if value]
    lines += [
        f"#SBATCH --chdir={workdir}",
        f"#SBATCH --output={run}/slurm-%j.out",
        f"#SBATCH --error={run}/slurm-%j.err",
        "#SBATCH --open-mode=append",  # a requeued job keeps its id: append to its logs, do not truncate
        f"#SBATCH --signal=SIGUSR1@{SIGNAL_LEAD_S}",
        "#SBATCH --requeue",
    ]
    lines += [f"#SBATCH {option}" for option in r.extra]
    unveil = " ".join(shlex.quote(part) for part in unveil_command())
    python = shlex.quote(os.path.abspath(sys.executable))
    lines += [
        "",
        "set -eo pipefail",
        f"RUN={shlex.quote(run)}",
        "# Rank 0's host, the first of the allocation (what Lightning's SLURMEnvironment would derive).",
        'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        "# A port free on this node, where rank 0 runs. Lightning's default (15000 + the job id's last four",
        "# digits) is taken when two jobs whose ids end alike share a node.",
        f"export MASTER_PORT=\"$({python} -c '{FREE_PORT}')\"",
        "# A thread per CPU of the task: torch would otherwise start one per core of the node in each task.",
        'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
        "",
        "# Resume from the newest checkpoint: the one Lightning wrote on SIGUSR1 before its requeue",
        "# (RUN/hpc_ckpt_N.ckpt) if newer than checkpoints/last*.ckpt, else 'last' (none yet: fresh start).",
        'CKPT=last',
        'HPC="$(ls -t "$RUN"/hpc_ckpt_*.ckpt 2>/dev/null | head -n 1 || true)"',
        f'LAST="$(ls -t "$RUN"/{CHECKPOINTS}/last*.ckpt 2>/dev/null | head -n 1 || true)"',
        'if [ -n "$HPC" ] && { [ -z "$LAST" ] || [ "$HPC" -nt "$LAST" ]; }; then CKPT="$HPC"; fi',
        ('echo "unveil slurm: job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST},'
         ' MASTER_ADDR=${MASTER_ADDR}:${MASTER_PORT}, ckpt_path=${CKPT}"'),
        "",
        f'srun --kill-on-bad-exit=1 {unveil} fit --config "$RUN/{CONFIG_NAME}" --ckpt_path "$CKPT"',
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- putting it together


@dataclass
class Job:
    """A prepared submission: what goes into the run folder."""

    run_dir: Path
    config: dict
    script: str
    resources: Resources
    resumed: bool  # the run folder already held a config (a resubmission)

    @property
    def config_path(self) -> Path:
        return self.run_dir / CONFIG_NAME

    @property
    def script_path(self) -> Path:
        return self.run_dir / SCRIPT_NAME


def _parse(recipe: str, *overrides: str):
    """``parse_recipe`` without Lightning's "Seed set to N" line: nothing is trained here, so nothing is seeded
    that matters, and the command's output stays its own."""
    import logging

    seed_log = logging.getLogger("lightning.fabric.utilities.seed")
    level = seed_log.level
    seed_log.setLevel(logging.WARNING)
    try:
        return parse_recipe(recipe, *overrides)
    finally:
        seed_log.setLevel(level)


def _recipe_name(recipe: str) -> str:
    return Path(recipe).name.removesuffix(".yaml").removesuffix(".yml") or "unveil"


def _resources(args: argparse.Namespace, trainer: dict, data: dict, job_name: str) -> tuple[Resources, str]:
    """The job's resources and the trainer's accelerator: from the options, else from the recipe."""
    accelerator = trainer.get("accelerator")
    devices = trainer.get("devices")
    counted = isinstance(devices, int) and not isinstance(devices, bool) and devices > 0
    recipe_devices = devices if counted else None
    gpus = args.gpus_per_node
    if gpus is None:
        if accelerator == "cpu":
            gpus = 0
        elif recipe_devices is None:
            raise UsageError(f"give --gpus-per-node: the recipe's trainer.devices is {devices!r}, not a GPU "
                             "count (or --gpus-per-node 0 --tasks-per-node N for CPU processes)")
        else:
            gpus = recipe_devices
    if gpus > 0:
        if args.tasks_per_node not in (None, gpus):
            raise UsageError(f"--tasks-per-node {args.tasks_per_node} with --gpus-per-node {gpus}: "
                             "the job runs one task per GPU (leave --tasks-per-node out)")
        tasks, accelerator = gpus, "gpu"
    else:
        tasks, accelerator = args.tasks_per_node or recipe_devices or 1, "cpu"
    recipe_nodes = trainer.get("num_nodes")
    nodes = args.nodes or (recipe_nodes if isinstance(recipe_nodes, int) and recipe_nodes > 0 else 1)
    init = (data.get("init_args") or {}) if isinstance(data, dict) else {}
    workers = (init.get("loader") or {}).get("num_workers", init.get("num_workers"))  # SAM2DataModule: flat
    cpus = args.cpus_per_task or 1 + (workers if isinstance(workers, int) and workers > 0 else 0)
    resources = Resources(nodes=nodes, tasks_per_node=tasks, gpus_per_node=gpus, cpus_per_task=cpus,
                          time=args.time, partition=args.partition, account=args.account, job_name=job_name,
                          extra=tuple(args.sbatch))
    return resources, accelerator


def _no_spaces(path: Path, what: str) -> Path:
    if any(c.isspace() for c in str(path)):
        raise UsageError(f"{what} '{path}' contains white space, which #SBATCH lines cannot hold")
    return path


def prepare(argv: Sequence[str], workdir: Path | None = None) -> tuple[Job, argparse.Namespace]:
    """Parse the command line and the recipe and build the job (nothing is written). Raises ``UsageError``."""
    parser = build_parser()
    ours, overrides = split_argv(parser, argv)
    args = parser.parse_args(ours)
    for option in args.sbatch:
        if not option.startswith("-") or "\n" in option:
            raise UsageError(f"--sbatch '{option}' is not an sbatch option (e.g. --sbatch=--qos=high)")

    config = plain(_parse(args.config, *overrides))  # a bad recipe or override stops here
    config.pop("config", None)  # the recipe files it was read from; the saved config stands alone
    workdir = _no_spaces(Path(workdir or os.getcwd()).absolute(), "the working directory")
    trainer = config.setdefault("trainer", {})
    recipe = _recipe_name(args.config)
    job_name = args.job_name or recipe
    if args.run_dir:
        run_dir = Path(args.run_dir).expanduser()
    else:
        run_dir = Path(trainer.get("default_root_dir") or Path("runs") / recipe) / job_name
    run_dir = _no_spaces(run_dir if run_dir.is_absolute() else workdir / run_dir, "the run folder")

    resources, accelerator = _resources(args, trainer, config.get("data") or {}, job_name)
    config_path = run_dir / CONFIG_NAME
    pin_config(config, run_dir, num_nodes=resources.nodes, devices=resources.tasks_per_node,
               accelerator=accelerator, wandb_id=saved_wandb_id(config_path))
    script = sbatch_script(resources, run_dir, workdir, recipe=args.config, overrides=overrides)
    return Job(run_dir, config, script, resources, resumed=config_path.is_file()), args


def config_text(job: Job) -> str:
    import yaml

    header = (f"# Resolved by `unveil slurm` (config pinned for resuming); the job runs\n"
              f"#   unveil fit --config {job.config_path}\n")
    return header + yaml.safe_dump(job.config, sort_keys=False, default_flow_style=None)


def check_saved_config(path: Path) -> None:
    """Parse the written config as ``unveil fit`` will on the cluster: a pin that the recipe's classes reject
    fails here, not after the job has waited in the queue."""
    _parse(str(path))


def write(job: Job) -> None:
    """Write ``config.yaml`` and ``job.sbatch`` into the run folder (and make ``checkpoints/``)."""
    # makes the run folder too: SLURM does not make the folder of its log files
    (job.run_dir / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    job.config_path.write_text(config_text(job), encoding="utf-8")
    job.script_path.write_text(job.script, encoding="utf-8")
    job.script_path.chmod(0o755)


def submit(script_path: Path, workdir: Path) -> str:
    """``sbatch SCRIPT``; returns the job id. Raises ``UsageError`` when there is no sbatch or it refuses."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise UsageError("sbatch not found: run this on a SLURM login node (see the script with --dry-run)")
    result = subprocess.run([sbatch, "--parsable", str(script_path)], cwd=workdir, capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        message = (result.stderr.strip() or result.stdout.strip() or f"exit status {result.returncode}")
        raise UsageError(f"sbatch {script_path} failed: {message.splitlines()[-1]}")
    return result.stdout.strip().split(";")[0]


def main(argv: Sequence[str] | None = None) -> int:
    """``unveil slurm ...``: returns the exit status; mistakes raise ``UsageError`` (printed as one line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help") for arg in argv):
        build_parser().print_help()
        return 0
    job, args = prepare(argv)
    if args.dry_run:
        sys.stdout.write(job.script)
        sys.stderr.write(f"dry run: nothing written or submitted (run folder would be {job.run_dir})\n")
        return 0
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        trial = Path(scratch) / CONFIG_NAME
        trial.write_text(config_text(job), encoding="utf-8")
        check_saved_config(trial)
    write(job)
    job_id = submit(job.script_path, Path(os.getcwd()))
    if job.resumed:
        print(f"resubmitted job {job_id} (it resumes from the run's checkpoints): run folder {job.run_dir}")
    else:
        print(f"submitted job {job_id}: run folder {job.run_dir}")
    print(f"  logs: {job.run_dir}/slurm-{job_id}.out, .err   checkpoints: {job.run_dir / CHECKPOINTS}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UsageError as error:
        sys.stderr.write(f"unveil: error: {error}\n")
        sys.exit(2)
