"""The ``unveil`` command.

    unveil fit --config RECIPE [--key value ...]     train (LightningCLI underneath)
    unveil validate --config RECIPE [...]            run the validation loop
    unveil test --config RECIPE [...]                run the test loop
    unveil recipes                                   list the shipped recipes
    unveil synth images --out DIR [...]              write a synthetic image dataset (ImageNet layout)
    unveil synth videos --out DIR [...]              write a synthetic video dataset (Kinetics layout)
    unveil export CKPT --format FORMAT --out PATH    write a checkpoint's backbone for another codebase
    unveil knn CKPT --data DIR [...]                 kNN top-1 of frozen features (image, audio, video, audio-video)
    unveil slurm --config RECIPE [--nodes N ...]     submit a recipe to SLURM (resumes after preemption)

RECIPE is a YAML path or the name of a shipped recipe (``unveil recipes``). Mistakes in a recipe or on the
command line (a missing file, an unknown key, a value of the wrong type) stop the command before anything is
built or trained, with one line on stderr and exit status 2. Errors raised while the classes are built (a missing
data folder, say) are reported the same way; set UNVEIL_DEBUG=1 to see their traceback instead.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from unveil.launch.recipes import RecipeNotFoundError, resolve_recipe, shipped_presets, shipped_recipes

EXIT_USAGE = 2
TRAINER_COMMANDS = ("fit", "validate", "test", "predict")
COMMANDS = (*TRAINER_COMMANDS, "recipes", "synth", "shards", "export", "knn", "slurm", "segment", "clicks")
SYNTH_KINDS = {
    "images": "make_image_folder",
    "videos": "make_video_folder",
    "audio": "make_audio_folder",
    "audiovideo": "make_audio_video_folder",
    "coco": "unveil.datasets.synth_coco:make_coco_folder",  # detection (issue 14): COCO instances JSON + JPEGs
    "vos": "unveil.datasets.synth_vos:make_vos_folder",  # video segmentation (issue 16): DAVIS layout
}


class UsageError(Exception):
    """A mistake in the command line or the recipe; ``main`` prints it as one line and exits with 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose mistakes raise ``UsageError`` (one line, exit status 2) instead of printing the usage;
    ``error_format`` wraps the message (``"slurm: {}"``)."""

    def __init__(self, *args, error_format: str = "{}", **kwargs):
        super().__init__(*args, **kwargs)
        self.error_format = error_format

    def error(self, message: str):
        raise UsageError(self.error_format.format(message))


# --------------------------------------------------------------------------------------- error messages


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].strip() if text.strip() else text


_PARSER_KEY = re.compile(r'^Parser key "(?P<key>[^"]+)":$')
_CLASS_PATH = re.compile(r"^Problem with given class_path '(?P<path>[^']+)':$")
_NOISE = (
    "Does not validate against", "Subtypes:", "Errors:", "Given value type:", "Given value:",
    "Subclass types expect one of", "- a class path", "- a dict ", "Not a valid subclass of",
    "Expected a <class 'NoneType'>",
)
_TOP_LEVEL_KEYS = {"trainer", "model", "data", "seed_everything", "ckpt_path", "config", "optimizer",
                   "lr_scheduler", "weights_only", "return_predictions", "verbose"}


def _display_path(path: str) -> str:
    """``path`` relative to the working directory when it is below it (shorter messages)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


_CONSTRAINED = {
    "PositiveInt": "int > 0",
    "NonNegativeInt": "int >= 0",
    "PositiveFloat": "float > 0",
    "NonNegativeFloat": "float >= 0",
    "ClosedUnitInterval": "float in [0, 1]",
    "OpenUnitInterval": "float in (0, 1)",
}
"""jsonargparse's constrained types, as an error line names them."""


def _type_name(text: str) -> str:
    """``<class 'int'>`` -> ``int``, ``NonNegativeFloat`` -> ``float >= 0``; other type reprs pass through."""
    text = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text)
    return _CONSTRAINED.get(text, text)


def _leaf_errors(message: str) -> list[tuple[list[str], str, str | None, int]]:
    """The innermost error lines of a nested jsonargparse message, each with the key path above it.

    Returns ``(key segments, line, class_path above it, line number)`` per candidate line.
    """
    stack: list[tuple[int, str, str | None]] = []  # (indent, key segment, class path)
    leaves = []
    for number, raw in enumerate(message.splitlines()):
        if not raw.strip():
            continue
        indent = len(raw) - len(raw.lstrip())
        content = raw.strip()
        if content.startswith("- "):
            content, indent = content[2:], indent + 2
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if match := _PARSER_KEY.match(content):
            stack.append((indent, match["key"], None))
        elif match := _CLASS_PATH.match(content):
            stack.append((indent, "init_args", match["path"]))
        elif not content.startswith(_NOISE) and not raw.strip().startswith(_NOISE):
            segments = [segment for _, segment, _ in stack]
            class_path = next((path for _, _, path in reversed(stack) if path), None)
            leaves.append((segments, content, class_path, number))
    return leaves


def condense_parser_error(message: str, config_files: Sequence[str] = (), argv: Sequence[str] = ()) -> str:
    """One line from a (long, nested) jsonargparse error message: what is wrong, which key, and where."""
    text = str(message).strip()

    def origin(key: str) -> str:
        if any(arg == f"--{key}" or arg.startswith(f"--{key}=") for arg in argv):
            return " on the command line"
        leaf = key.rsplit(".", 1)[-1]
        for path in config_files:
            try:
                with open(path, encoding="utf-8") as handle:
                    if re.search(rf"^\s*{re.escape(leaf)}\s*:", handle.read(), flags=re.MULTILINE):
                        return f" in {_display_path(path)}"
            except OSError:
                pass
        return ""

    if match := re.search(r"the following arguments are required: (?P<keys>.+)", text):
        keys = ", ".join(re.sub(r"^(fit|validate|test|predict)\.", "", k.strip()) for k in match["keys"].split(","))
        return f"missing required keys: {keys} (give a recipe with --config; see 'unveil recipes')"
    if match := re.search(r"Unrecognized arguments:\s*(?P<args>.+)", text, flags=re.IGNORECASE):
        first = match["args"].split()[0]
        if first.startswith("--"):
            return f"unknown key '{first[2:].split('=', 1)[0]}' on the command line"
        return f"unrecognized arguments: {_first_line(match['args'])}"
    if match := re.search(r"does not accept option '(?P<key>[^']+)'", text):
        key = match["key"]
        head = key.split(".", 1)[0]
        if head not in _TOP_LEVEL_KEYS:
            key = head
        return f"unknown key '{key}'{origin(key)}"
    if match := re.search(r'Key "(?P<key>[^"]+)" is required', text):
        key = re.sub(r"^(fit|validate|test|predict)\.", "", match["key"])
        return f"missing required key '{key}'" + (f" in {_display_path(config_files[-1])}" if config_files else "")
    if text.startswith("Problems parsing config"):
        where = re.search(r"line (\d+), column (\d+)", text)
        files = f" {_display_path(config_files[-1])}" if config_files else ""
        detail = _first_line(text.split(":", 1)[-1])
        return f"invalid YAML in{files}: {detail}" + (f" (line {where[1]}, column {where[2]})" if where else "")

    leaves = _leaf_errors(text)
    if not leaves:
        return _first_line(text)
    segments, line, class_path, number = max(leaves, key=lambda leaf: len(leaf[0]))
    key = ".".join(segments)
    if not key:
        return line

    if match := re.match(r"Option '(?P<option>[^']+)' is not accepted", line):
        key = f"{key}.{match['option']}"
        return f"unknown key '{key}'{origin(key)}"
    if re.search(r"has no attribute|No module named|[Uu]nable to (?:import|resolve)|[Ii]mport", line):
        owner = key.removesuffix(".init_args")
        return f"cannot import class_path '{class_path}' of '{owner}'{origin(owner)}: {line}"
    if match := re.match(r"Expected an? (?P<type>.+?)(?:\. Got value: (?P<got>.+))?$", line):
        got = match["got"]
        if got is None:  # the value is given further down, after the alternatives
            later = re.search(r"^\s*Given value: (.+)$", "\n".join(text.splitlines()[number:]), re.MULTILINE)
            got = later[1] if later and len(later[1]) <= 60 else None
        return (f"bad value for '{key}'{origin(key)}: expected {_type_name(match['type'])}"
                + (f", got {got}" if got is not None else ""))
    if match := re.match(r"Not of type (?P<type>\w+): (?P<why>.+)$", line):  # a constrained type
        got = re.search(r"(?:got|convert string to \w+:) (?P<got>.+)$", match["why"])
        return (f"bad value for '{key}'{origin(key)}: expected {_type_name(match['type'])}"
                + (f", got {got['got']}" if got else f" ({match['why']})"))
    return f"bad value for '{key}'{origin(key)}: {line}"


# --------------------------------------------------------------------------------------- trainer commands


def _resolve_config_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Replace recipe names after ``--config``/``-c`` with their paths; return (argv, config paths)."""
    resolved, configs = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "-c"):
            if i + 1 >= len(argv):
                raise UsageError(f"{arg} needs a recipe name or path (see 'unveil recipes')")
            path = str(_resolve(argv[i + 1]))
            resolved += [arg, path]
            configs.append(path)
            i += 2
            continue
        if arg.startswith("--config="):
            path = str(_resolve(arg.split("=", 1)[1]))
            resolved.append(f"--config={path}")
            configs.append(path)
        else:
            resolved.append(arg)
        i += 1
    return resolved, configs


def _resolve(value: str):
    try:
        return resolve_recipe(value)
    except RecipeNotFoundError as error:
        raise UsageError(str(error)) from None


def _make_cli_class():
    """The LightningCLI subclass (built lazily: importing Lightning takes seconds)."""
    from jsonargparse import ArgumentError
    from lightning.pytorch.cli import LightningCLI

    # The callbacks that recipes and the README name by their short class name (`--trainer.callbacks+=ExportBackbone`)
    # must be imported before parsing, or jsonargparse cannot resolve the name.
    import unveil.launch.export  # noqa: F401  (ExportBackbone)

    class UnveilCLI(LightningCLI):
        """LightningCLI whose parse and build errors become one-line ``UsageError``s, and which closes the W&B
        runs it started when the command ends (see ``unveil.launch.run_config.finish_wandb_runs``)."""

        config_files: Sequence[str] = ()
        raw_args: Sequence[str] = ()

        def __init__(self, *args, **kwargs) -> None:
            from unveil.launch.run_config import finish_wandb_runs, wandb_start_problem

            try:
                super().__init__(*args, **kwargs)  # parses, builds and runs the subcommand
            except BaseException as error:
                finish_wandb_runs(getattr(self, "trainer", None), failed=True)
                problem = None if os.environ.get("UNVEIL_DEBUG") else wandb_start_problem(error)
                if problem:
                    raise UsageError(problem) from None
                raise
            finish_wandb_runs(getattr(self, "trainer", None), failed=False)

        def add_arguments_to_parser(self, parser) -> None:
            # The run plumbing (run folder, W&B logger, checkpoints, skip counter) as defaults for a recipe that
            # sets neither trainer.logger nor trainer.callbacks: see unveil.launch.run_defaults.
            from unveil.launch.run_defaults import recipe_run_defaults

            defaults = recipe_run_defaults(self.config_files[0], self.raw_args) if self.config_files else None
            if defaults:
                parser.set_defaults({f"trainer.{key}": value for key, value in defaults.items()})

        def parse_arguments(self, parser, args) -> None:
            try:
                super().parse_arguments(parser, args)
            except ArgumentError as error:
                raise UsageError(condense_parser_error(str(error), self.config_files, self.raw_args)) from None

        def instantiate_classes(self) -> None:
            # Classes check their own arguments when built (a missing data folder, a bad size): the message of
            # the innermost error is the useful one. UNVEIL_DEBUG=1 shows the traceback instead.
            try:
                super().instantiate_classes()
            except (ArgumentError, FileNotFoundError, ValueError, TypeError) as error:
                if os.environ.get("UNVEIL_DEBUG"):
                    raise
                message = _innermost_message(error)
                raise UsageError(condense_parser_error(message, self.config_files, self.raw_args)) from None

    return UnveilCLI


def _innermost_message(error: BaseException) -> str:
    """The message of the exception that started a chain (jsonargparse wraps errors of __init__)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return str(error) or type(error).__name__


def _cli_kwargs() -> dict:
    from lightning.pytorch import LightningDataModule, LightningModule
    from unveil.launch.run_config import SaveAndLogConfig

    return {
        "model_class": LightningModule,
        "datamodule_class": LightningDataModule,
        "subclass_mode_model": True,
        "subclass_mode_data": True,
        # config.yaml in the run folder, and the same resolved config to every logger (the W&B run config)
        "save_config_callback": SaveAndLogConfig,
        "save_config_kwargs": {"overwrite": True},
        "parser_kwargs": {"exit_on_error": False, "prog": "unveil"},
        "auto_configure_optimizers": False,  # the pretraining modules configure their own optimiser and schedule
        # Checkpoints are written to a temporary file beside the target and renamed over it, so a crash while
        # writing never leaves a truncated last.ckpt. A recipe that sets trainer.plugins replaces this default
        # (add the writer to its list to keep it).
        "trainer_defaults": {"plugins": [{"class_path": "unveil.pretrain.resume.AtomicCheckpointIO"}]},
    }


class _ParsedOnly(Exception):
    """Raised by ``parse_recipe`` right after parsing, before anything is built."""


def parse_recipe(recipe: str, *overrides: str, subcommand: str = "fit"):
    """Parse and type-check a recipe exactly as ``unveil SUBCOMMAND --config RECIPE [overrides]`` would, but build
    nothing (no model, no data, no trainer). Returns the subcommand's config (a jsonargparse Namespace).

    Class paths are imported and every ``init_args`` is checked against its class's signature, so a recipe that
    parses here fails at run time only on things its classes check themselves (e.g. a data path that is missing).
    Raises ``UsageError`` with the same one-line message the command would print.
    """
    args, configs = _resolve_config_args([subcommand, "--config", recipe, *overrides])
    parsed = {}

    base = _make_cli_class()

    class ParseOnlyCLI(base):
        @staticmethod
        def subcommands() -> dict[str, set[str]]:
            return {subcommand: base.subcommands()[subcommand]}  # build only the parser that is needed

        def before_instantiate_classes(self) -> None:
            parsed["config"] = self.config[subcommand]
            raise _ParsedOnly

    ParseOnlyCLI.config_files, ParseOnlyCLI.raw_args = configs, args
    saved_argv = sys.argv
    sys.argv = [saved_argv[0], *args]
    try:
        ParseOnlyCLI(**_cli_kwargs())
    except _ParsedOnly:
        return parsed["config"]
    finally:
        sys.argv = saved_argv
    raise AssertionError("unreachable: the CLI did not reach the instantiation step")  # pragma: no cover


def run_trainer_command(argv: list[str]) -> None:
    """``unveil fit|validate|test|predict ...``: LightningCLI with recipe names resolved."""
    args, configs = _resolve_config_args(argv)
    cli_class = _make_cli_class()
    cli_class.config_files = configs
    cli_class.raw_args = args
    # LightningCLI reads sys.argv (passing args= as well makes it warn), so lend it ours for the call. sys.argv[0]
    # stays the program that was started (the `unveil` console script, or `python -m unveil.launch.cli`): with
    # several devices on one machine, Lightning starts every other rank by running `python sys.argv[0] ...` again.
    saved_argv = sys.argv
    sys.argv = [saved_argv[0], *args]
    try:
        cli_class(**_cli_kwargs())
    finally:
        sys.argv = saved_argv


# --------------------------------------------------------------------------------------- other commands


def list_recipes(out=None) -> None:
    """``unveil recipes``: one line per shipped recipe, name and description."""
    out = out or sys.stdout
    recipes = shipped_recipes()
    width = max((len(r.name) for r in recipes), default=0)
    for recipe in recipes:
        out.write(f"{recipe.name:<{width}}  {recipe.description}\n")
    presets = shipped_presets()
    if presets:
        out.write("\npresets (stack after a recipe: --config RECIPE --config presets/NAME)\n")
        width = max(len(p.name) for p in presets)
        for preset in presets:
            out.write(f"{preset.name:<{width}}  {preset.description}\n")


def run_synth(argv: list[str]) -> None:
    """``unveil synth images|videos --out DIR [...]``: the dataset generators, their arguments as options."""
    import importlib

    from jsonargparse import ArgumentError, ArgumentParser
    from unveil.datasets import synth

    parser = ArgumentParser(prog="unveil synth", description="Write a synthetic dataset in a real format.",
                            exit_on_error=False)
    subcommands = parser.add_subcommands(dest="kind")
    def synth_function(name: str):  # "function" in unveil.datasets.synth, or "module:function"
        module, _, function_name = name.rpartition(":")
        return getattr(importlib.import_module(module) if module else synth, function_name)

    for kind, function_name in SYNTH_KINDS.items():
        function = synth_function(function_name)
        sub = ArgumentParser(description=(function.__doc__ or "").strip().splitlines()[0], exit_on_error=False)
        sub.add_function_arguments(function, as_group=False)
        subcommands.add_subcommand(kind, sub, help=sub.description)
    try:
        config = parser.parse_args(argv)
    except ArgumentError as error:
        raise UsageError(condense_parser_error(str(error), argv=argv)) from None
    kind = config.kind
    function = synth_function(SYNTH_KINDS[kind])
    try:
        out = function(**dict(config[kind]))
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(str(error)) from None
    print(f"wrote {kind} to {out}")


USAGE = """usage: unveil {fit,validate,test,predict,recipes,synth,shards,export,knn,slurm} ...

  unveil fit --config RECIPE [--key value ...]   train with a recipe (a path, or a name from 'unveil recipes')
  unveil validate|test --config RECIPE [...]     run the validation / test loop of a recipe
  unveil recipes                                 list the shipped recipes
  unveil synth images --out DIR [--seed N ...]   write a synthetic image dataset (ImageNet layout)
  unveil synth videos --out DIR [--seed N ...]   write a synthetic video dataset (Kinetics layout)
  unveil synth audio|audiovideo --out DIR [...]  write synthetic audio (AudioSet style) or audio-video clips
  unveil synth coco --out DIR [...]              write a synthetic detection dataset (COCO instances JSON)
  unveil synth vos --out DIR [...]               write a synthetic video segmentation dataset (DAVIS layout)
  unveil shards make KIND --out DIR [...]        convert a folder/CSV source into WebDataset shards
  unveil shards info SHARDS                      list a shard set's index
  unveil export CKPT --format FORMAT --out PATH  write the backbone of a checkpoint (unveil, hiera, timm, sam2, ...)
  unveil knn CKPT --data DIR [--input-size N]    kNN top-1 of a backbone's frozen features (dinov2's protocol)
  unveil slurm --config RECIPE [--nodes N ...]   write an sbatch script for a recipe and submit it
  unveil segment image|video SRC --point ...     SAM 2 masks drawn over an image or a video
  unveil clicks CKPT --data DIR [--layout sa1b]  SAM 2 mIoU after 1 and 5 simulated clicks on single images

'unveil COMMAND --help' shows the options of a command.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unveil`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        sys.stderr.write(USAGE)
        return EXIT_USAGE
    if argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command in TRAINER_COMMANDS:
            run_trainer_command([command, *rest])
        elif command == "recipes":
            list_recipes()
        elif command == "synth":
            run_synth(rest)
        elif command == "shards":
            from unveil.launch import shards

            return shards.main(rest)
        elif command == "export":
            from unveil.launch import export

            return export.main(rest)
        elif command == "knn":
            from unveil.launch import knn

            return knn.main(rest)
        elif command == "slurm":
            from unveil.launch import slurm

            return slurm.main(rest)
        elif command == "segment":  # SAM 2 masks on an image or a video (issue 15)
            from unveil.launch import segment

            return segment.main(rest)
        elif command == "clicks":  # SAM 2 mIoU after simulated clicks (issue 16)
            from unveil.launch import clicks

            return clicks.main(rest)
        else:
            raise UsageError(
                f"unknown command '{command}' (choose from {', '.join(COMMANDS)})"
            )
    except UsageError as error:
        sys.stderr.write(f"unveil: error: {error}\n")
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
