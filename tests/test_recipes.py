"""Every shipped recipe parses with the ``unveil`` parser; the MAE recipes build their model; paper recipes cite
their sources, log to W&B and keep the best and the last checkpoints.

Parsing imports every class_path and checks every init_arg against its class's signature. Building stops at the
model (on the meta device, so Hiera-H costs no memory): the paper recipes point to dataset paths that do not
exist here, and the DataModules check their paths when built, so for data the class is resolved and its
arguments type-checked (by the parse) but it is not built.
"""

from __future__ import annotations

import functools
import re
import shlex
from unittest import mock

import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningDataModule, LightningModule
from unveil.launch.cli import parse_recipe
from unveil.launch.recipes import recipes_dir, shipped_recipes
from unveil.models import MaskedAutoencoderHiera
from unveil.pretrain import MAEPretrainModule

RECIPES = [recipe.name for recipe in shipped_recipes()]
PAPER_RECIPES = [name for name in RECIPES if name.startswith("mae_hiera_")]
GPU_RECIPES = PAPER_RECIPES + [name for name in RECIPES if name.startswith("mavil_stage")]
QUICKSTARTS = [name for name in RECIPES if name.startswith("quickstart")]
PAPER_SIZES = ["t", "s", "b", "bplus", "l", "h"]

# Keys whose numbers run the job but are no paper hyperparameter (hardware, logging, bookkeeping).
INFRASTRUCTURE_KEYS = {
    "seed_everything", "devices", "num_nodes", "num_workers", "log_every_n_steps", "check_val_every_n_epoch",
    "val_check_interval", "num_sanity_val_steps", "every_n_epochs", "every_n_train_steps", "save_top_k",
    "log_images_every_n_steps", "num_vis_samples", "vis_frames", "vis_seed", "accumulate_grad_batches",
    "limit_val_batches", "val_batch_size", "every_n_batches",
}
SOURCE = re.compile(r"Hiera (Table \d+|Sec\. \d)|official code|MAE-ST|MAE\b")
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


@functools.cache
def parsed(name: str):
    """``parse_recipe(name)``, once per recipe for this module (parsing imports and checks every class: ~0.5 s)."""
    return parse_recipe(name)


def build_model(config) -> LightningModule:
    """Instantiate the recipe's LightningModule (and its nn.Module) on the meta device: no memory, no init cost."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningModule, "model")
    parsed = parser.parse_object({"model": config.model.as_dict()})
    linspace = torch.linspace
    # Hiera computes its drop-path rates with .item(), which meta tensors cannot answer: keep that on the CPU.
    with torch.device("meta"), mock.patch("torch.linspace", lambda *a, **k: linspace(*a, **{**k, "device": "cpu"})):
        return parser.instantiate(parsed).model


def test_expected_recipes_are_shipped():
    expected = {"quickstart", "quickstart_video"}
    expected |= {f"mae_hiera_{size}_in1k" for size in PAPER_SIZES}
    expected |= {f"mae_hiera_{size}_16x224_k400" for size in ["b", "bplus", "l", "h"]}
    assert expected <= set(RECIPES)
    for recipe in shipped_recipes():
        first = recipe.path.read_text().splitlines()[0]
        assert first.startswith("# ") and len(first) > 20, recipe.name


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_parses_and_its_classes_resolve(name):
    """Every shipped recipe, whoever owns it: parsed by the CLI's parser, model and data classes importable."""
    from jsonargparse._util import import_object

    config = parsed(name)
    assert issubclass(import_object(config.model.class_path), LightningModule)
    assert issubclass(import_object(config.data.class_path), LightningDataModule)


MAE_RECIPES = [name for name in RECIPES if name.startswith("mae_hiera_") or name in ("quickstart", "quickstart_video")]


@pytest.mark.parametrize("name", MAE_RECIPES)
def test_mae_recipe_builds_its_model_and_agrees_with_its_data(name):
    config = parsed(name)
    assert config.model.class_path == "unveil.pretrain.MAEPretrainModule"
    module = build_model(config)
    assert isinstance(module, MAEPretrainModule) and isinstance(module.model, MaskedAutoencoderHiera)
    assert next(module.parameters()).device.type == "meta"
    video = "video" in name or "k400" in name
    assert config.data.class_path == ("unveil.datasets.VideoDataModule" if video else "unveil.datasets.ImageDataModule")
    assert module.model.is_video == video
    model = config.model.init_args.model.init_args
    assert list(model.input_size)[-1] == config.data.init_args.input_size  # crops fit the model
    if video:
        assert model.input_size[0] == config.data.init_args.num_frames


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_paper_recipe_targets_gpus_and_real_data(name):
    config = parsed(name)
    assert config.trainer.accelerator == "gpu" and config.trainer.precision == "bf16-mixed"
    assert config.trainer.strategy == "ddp"
    data = config.data.init_args
    assert (data.root or "").startswith("/datasets/")
    model = config.model.init_args.model.init_args
    assert model.mask_ratio == (0.9 if "k400" in name else 0.6)
    assert model.norm_pix_loss is True and model.q_pool == 2


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_every_paper_hyperparameter_cites_its_source(name):
    lines = (recipes_dir() / f"{name}.yaml").read_text().splitlines()
    assert any("Hiera Table" in line for line in lines[:12]), "the header names the paper table"
    missing = []
    for number, line in enumerate(lines, start=1):
        code, _, comment = line.partition("#")
        match = re.match(r"^\s*-?\s*(?P<key>[\w.]+)\s*:\s*(?P<value>.+?)\s*$", code)
        if not match or match["key"] in INFRASTRUCTURE_KEYS:
            continue
        value = match["value"]
        numeric = NUMBER.fullmatch(value) or re.fullmatch(r"\[[\d.,\s eE+-]+\]", value)
        if numeric and not SOURCE.search(comment):
            missing.append(f"{name}.yaml:{number}: {line.strip()}")
    assert not missing, "numeric values without a cited source:\n" + "\n".join(missing)


def test_source_check_can_fail(tmp_path):
    """The citation check above flags a bare number."""
    line = "    base_lr: 8.0e-4"
    code, _, comment = line.partition("#")
    match = re.match(r"^\s*-?\s*(?P<key>[\w.]+)\s*:\s*(?P<value>.+?)\s*$", code)
    assert match and NUMBER.fullmatch(match["value"]) and not SOURCE.search(comment)


def test_quickstart_recipes_say_they_are_not_paper_values():
    for name in ("quickstart", "quickstart_video"):
        text = (recipes_dir() / f"{name}.yaml").read_text()
        assert "not paper values" in text.splitlines()[0]
        assert "WandbLogger" in text  # how to switch loggers
        config = parsed(name)
        assert config.trainer.accelerator == "cpu" and config.trainer.devices == 1
        assert config.trainer.logger.class_path.endswith("TensorBoardLogger")
        assert config.trainer.default_root_dir == f"runs/{name}"
        size = config.model.init_args.model.init_args.input_size[-1]
        assert size % 32 == 0, "the token grid (size / 4) must divide into 8x8-token mask units"


# --------------------------------------------------------------------------------------- logging and checkpoints


def checkpoint_callbacks(config) -> list:
    return [callback.init_args for callback in config.trainer.callbacks
            if callback.class_path in ("lightning.pytorch.callbacks.ModelCheckpoint",
                                       "unveil.pretrain.resume.PeriodicCheckpoint")]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_keeps_the_best_and_the_last_checkpoint(name):
    """Every recipe validates, so each keeps the checkpoint of lowest val/loss (the key both pretraining modules log)
    and last.ckpt, with a periodic save of last.ckpt; the callbacks share one folder and one last.ckpt."""
    config = parsed(name)
    data = config.data.init_args
    assert config.trainer.limit_val_batches != 0 and (data.get("csv_val") or data.get("val_split"))
    checkpoints = checkpoint_callbacks(config)
    best = [c for c in checkpoints if c.monitor is not None]
    periodic = [c for c in checkpoints if c.every_n_train_steps]
    assert len(best) == 1 and len(periodic) == 1 and len(checkpoints) == 2
    # the periodic one also saves the final state when training ends (Lightning's save_last alone does not)
    assert [c.class_path for c in config.trainer.callbacks if c.init_args in periodic] == [
        "unveil.pretrain.resume.PeriodicCheckpoint"]
    (best,), (periodic,) = best, periodic
    assert (best.monitor, best.mode, best.save_top_k, best.save_last) == ("val/loss", "min", 1, True)
    assert "/" not in best.filename  # a metric name with '/' in the file name would make a sub-folder
    assert periodic.save_last is True and periodic.save_top_k == 0 and periodic.monitor is None
    assert best.dirpath == periodic.dirpath
    assert not best.enable_version_counter and not periodic.enable_version_counter  # one last.ckpt, no last-v1
    if name in GPU_RECIPES:
        assert periodic.every_n_train_steps == 1000
        assert best.dirpath == f"{config.trainer.default_root_dir}/checkpoints"
    else:  # quickstarts save at their final step anyway
        assert config.trainer.max_steps % periodic.every_n_train_steps == 0


@pytest.mark.parametrize("name", GPU_RECIPES)
def test_paper_recipe_logs_to_wandb(name):
    config = parsed(name)
    logger = config.trainer.logger
    assert logger.class_path == "lightning.pytorch.loggers.WandbLogger"
    args = logger.init_args
    assert args.project == "unveil" and args.group == name and args.save_dir == f"runs/{name}"
    assert config.trainer.default_root_dir == args.save_dir
    assert args.resume == "allow" and args.id is None and args.entity is None and args.name is None
    assert args.tags and args.tags[0] == name.split("_")[0] and all(tag in name.replace("hiera_", "hiera-")
                                                                    for tag in args.tags)
    header = (recipes_dir() / f"{name}.yaml").read_text().split("\nseed_everything:")[0]
    assert "WANDB_MODE=offline" in header and "--trainer.logger=CSVLogger" in header and "--ckpt_path last" in header


@pytest.mark.parametrize("name", QUICKSTARTS)
def test_quickstart_comment_switches_to_wandb_with_one_setting(name):
    """Quickstarts log to TensorBoard (no account needed); the command in their comment switches to W&B, keeping the
    TensorBoard folder as the W&B save_dir."""
    config = parsed(name)
    assert config.trainer.logger.class_path == "lightning.pytorch.loggers.TensorBoardLogger"
    lines = [line for line in (recipes_dir() / f"{name}.yaml").read_text().splitlines()
             if line.startswith(f"#   unveil fit --config {name} --trainer.logger=")]
    assert len(lines) == 1, "the comment shows the switch to W&B"
    words = shlex.split(lines[0].lstrip("# "))
    assert words[:4] == ["unveil", "fit", "--config", name] and len(words) == 5
    switched = parse_recipe(name, words[4]).trainer.logger
    assert switched.class_path == "lightning.pytorch.loggers.WandbLogger"
    assert switched.init_args.project == "unveil"
    assert switched.init_args.save_dir == config.trainer.logger.init_args.save_dir
