"""Every shipped recipe parses with the ``unveil`` parser; the MAE recipes build their model; the paper recipes hold
the values of the tables they cite (the learning rate the optimiser gets at the recipe's global batch, drop path,
decoder heads, clips per step and effective epochs on K400, MAViL's fusion depth); the abs-win recipes export a
trunk that loads into the SAM 2-shaped HieraDet of its size; the run plumbing (run folder, W&B, checkpoints, skip
counter) comes from one place, ``unveil.launch.run_defaults``.

Parsing imports every class_path and checks every init_arg against its class's signature. Building stops at the
model (on the meta device, so Hiera-H costs no memory): the paper recipes point to dataset paths that do not
exist here, and the DataModules check their paths when built, so for data the class is resolved and its
arguments type-checked (by the parse) but it is not built.
"""

from __future__ import annotations

import functools
import re
import shlex
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningDataModule, LightningModule
from unveil.launch.cli import main, parse_recipe
from unveil.launch.recipes import recipes_dir, shipped_recipes
from unveil.launch.run_defaults import recipe_run_defaults, recipe_tags
from unveil.models import MaskedAutoencoderHiera
from unveil.pretrain import MAEPretrainModule

RECIPES = [recipe.name for recipe in shipped_recipes()]
MAE_PAPER = [name for name in RECIPES if name.startswith("mae_hiera_")]
IN1K = [name for name in MAE_PAPER if name.endswith("_in1k")]
K400 = [name for name in MAE_PAPER if name.endswith("_k400")]
ABSWIN = [name for name in MAE_PAPER if "_abswin_" in name]
MAVIL = [name for name in RECIPES if name.startswith("mavil_stage")]
PAPER_RECIPES = MAE_PAPER + MAVIL
# the pretraining quickstarts (other quickstarts, for fine-tuning, are tested with their modules)
QUICKSTARTS = [name for name in ("quickstart", "quickstart_video", "quickstart_mavil", "quickstart_mavil_stage2")
               if name in RECIPES]
PAPER_SIZES = ["t", "s", "b", "bplus", "l", "h"]
ABSWIN_SIZES = ["t", "s", "b", "bplus", "l"]

# Keys whose numbers run the job but are no paper hyperparameter (hardware, logging, bookkeeping).
INFRASTRUCTURE_KEYS = {
    "seed_everything", "devices", "num_nodes", "num_workers", "log_every_n_steps", "check_val_every_n_epoch",
    "val_check_interval", "num_sanity_val_steps", "every_n_epochs", "every_n_train_steps", "save_top_k",
    "log_images_every_n_steps", "every_n_steps", "num_samples", "frames", "vis_seed", "accumulate_grad_batches",
    "limit_val_batches", "val_batch_size", "every_n_batches", "retrieval_ks",
    # MAViL's loss weights of 1: the unweighted sum of the terms
    "audio_reconstruction_weight", "video_reconstruction_weight", "audio_feature_weight", "video_feature_weight",
}
SOURCE = re.compile(r"Hiera (Table \d+|Sec\. \d|Appendix)|official code|MAE-ST|MAE\b|sam2 configs|"
                    r"\[(AudioMAE|MAE-ST|MAViL|released|open)\]")
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")

# ------------------------------------------------------------------- the paper's values (checked against the text)
# Hiera, Appendix A, Table 14a (ImageNet-1K pretraining): lr 8e-4, batch 4096, 400 / 1600 epochs, 40 warmup, decoder
# 8 blocks of 16 heads, mask 0.6, drop path 0.0 (T, S); 0.2 (B, B+, L); 0.3 (H).
# Table 11a (Kinetics pretraining, columns 800 / 1600 / 3200 effective epochs): lr 8e-4 (B, B+, L), - / 8e-4 / 3.2e-4
# (H), batch 512, repeated sampling 4, 120 warmup, decoder 8 blocks of 8 heads, mask 0.9, drop path 0.1 (B);
# 0.2 (B+, L); - / 0.3 / 0.4 (H). The H recipe is the 1600 column.
IN1K_DROP_PATH = {"t": 0.0, "s": 0.0, "b": 0.2, "bplus": 0.2, "l": 0.2, "h": 0.3}
K400_DROP_PATH = {"b": 0.1, "bplus": 0.2, "l": 0.2, "h": 0.3}
# AudioMAE's AS-2M script: blr 2e-4 per 256 at 512 clips.
MAVIL_LR, MAVIL_BATCH = 2e-4 * 512 / 256, 512


def size_of(name: str) -> str:
    return name.split("_")[2]


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
    expected |= {f"mae_hiera_{size}_abswin_in1k" for size in ABSWIN_SIZES}
    expected |= {f"mae_hiera_{size}_16x224_k400" for size in ["b", "bplus", "l", "h"]}
    expected |= {f"mavil_stage{stage}_{data}" for stage in (1, 2) for data in ("as2m", "vggsound")}
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


MAE_RECIPES = MAE_PAPER + ["quickstart", "quickstart_video"]


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


@pytest.mark.parametrize("name", MAE_PAPER)
def test_mae_paper_recipe_follows_its_table(name):
    """Table 14a (images) or 11a (video), value by value, beside the learning rate (tested below)."""
    config = parsed(name)
    assert config.trainer.accelerator == "gpu" and config.trainer.precision == "bf16-mixed"
    assert config.trainer.strategy == "ddp"
    data, model = config.data.init_args, config.model.init_args.model.init_args
    optim = config.model.init_args.optimizer
    assert (data.root or "").startswith("/datasets/")
    assert model.norm_pix_loss is True and model.q_pool == 2
    assert (optim.weight_decay, tuple(optim.betas), optim.min_lr) == (0.05, (0.9, 0.95), 0.0)
    assert (model.decoder_embed_dim, model.decoder_depth) == (512, 8)
    assert data.hflip == 0.5
    size = size_of(name)
    if name in K400:
        assert model.mask_ratio == 0.9 and model.decoder_num_heads == 8
        assert model.drop_path_rate == K400_DROP_PATH[size]
        assert tuple(data.crop_scale) == (0.5, 1.0) and (data.num_frames, data.sampling_rate) == (16, 4)
    else:
        assert model.mask_ratio == 0.6 and model.decoder_num_heads == 16
        assert model.drop_path_rate == IN1K_DROP_PATH[size]
        assert tuple(data.crop_scale) == (0.2, 1.0)
        assert config.trainer.max_epochs == 1600 and optim.warmup_epochs == 40
        assert config.trainer.gradient_clip_val is None
        assert bool(model.abs_win_pos_embed) == (name in ABSWIN)


def global_batch(config) -> int:
    """Samples per optimiser step: per-GPU batch x repeated sampling x GPUs x nodes x accumulation."""
    data, trainer = config.data.init_args, config.trainer
    return (data.batch_size * (data.get("repeated_sampling") or 1) * trainer.devices * trainer.num_nodes
            * trainer.accumulate_grad_batches)


def optimiser_lr(name: str, devices: int | None = None) -> tuple[float, int]:
    """The learning rate the optimiser gets from the recipe's module: ``configure_optimizers`` of the recipe's
    class with the recipe's optimiser settings, on a trainer that has the recipe's GPUs, nodes, accumulation and
    data batch (a tiny model stands in for the recipe's: the rate does not depend on it)."""
    from jsonargparse._util import import_object
    from unveil.models import MAViL

    config = parsed(name)
    init = config.model.init_args
    settings = {"optimizer": init.optimizer.as_dict()}
    cls = import_object(config.model.class_path)
    if name in MAVIL:
        tiny = MAViL(audio_size=(32, 16), num_frames=2, image_size=16, patch_size=8, tubelet_frames=2, embed_dim=32,
                     depth=1, num_heads=2, fusion_depth=1, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2,
                     projection_dim=8)
        if name.startswith("mavil_stage2"):
            pytest.skip("stage 2 needs a teacher file; it shares stage 1's optimiser code and settings (tested)")
        module = cls(tiny, **settings)
    else:
        module = cls(MaskedAutoencoderHiera(input_size=(32, 32), embed_dim=8, stages=(1, 1), q_pool=1,
                                            decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=1), **settings)
    data, trainer = config.data.init_args, config.trainer
    fake = SimpleNamespace(
        datamodule=SimpleNamespace(batch_size=data.batch_size, repeated_sampling=data.get("repeated_sampling") or 1),
        num_devices=devices or trainer.devices, num_nodes=trainer.num_nodes,
        accumulate_grad_batches=trainer.accumulate_grad_batches, estimated_stepping_batches=10_000,
        train_dataloader=object(), num_training_batches=100,
    )
    module._trainer = fake
    optimiser = module.configure_optimizers()["optimizer"]
    rates = {group["initial_lr"] for group in optimiser.param_groups}
    assert len(rates) == 1
    return rates.pop(), module.effective_batch_size


@pytest.mark.parametrize("name", MAE_PAPER + MAVIL)
def test_optimiser_gets_the_tables_learning_rate_at_the_tables_batch(name):
    """Hiera's tables give absolute rates at their own batch: 8e-4 at 4096 images (14a), 8e-4 at 512 clips (11a);
    AudioMAE's AS-2M script gives 2e-4 per 256, so 4e-4 at its 512 clips."""
    config = parsed(name)
    table_lr, table_batch = (MAVIL_LR, MAVIL_BATCH) if name in MAVIL else (8e-4, 512 if name in K400 else 4096)
    assert global_batch(config) == table_batch
    lr, batch = optimiser_lr(name)
    assert batch == table_batch
    assert lr == table_lr  # exactly: the rate is not rebuilt from a rounded per-256 value
    # and linearly from there: half the GPUs, half the batch, half the rate
    half_lr, half_batch = optimiser_lr(name, devices=config.trainer.devices // 2)
    assert half_batch == table_batch // 2 and half_lr == pytest.approx(table_lr / 2, rel=1e-12)


@pytest.mark.parametrize("name", K400)
def test_k400_counts_clips_and_effective_epochs(name):
    """Table 11a counts its batch of 512 in clips and its epochs as effective epochs (repeated sampling 4)."""
    config = parsed(name)
    data, trainer, optim = config.data.init_args, config.trainer, config.model.init_args.optimizer
    assert data.repeated_sampling == 4
    clips_per_step = data.batch_size * data.repeated_sampling * trainer.devices * trainer.num_nodes
    assert clips_per_step * trainer.accumulate_grad_batches == 512
    effective_epochs = 1600 if size_of(name) == "h" else 800  # H: the 1600 column (no H setting at 800)
    assert trainer.max_epochs * data.repeated_sampling == effective_epochs
    assert optim.warmup_epochs * data.repeated_sampling == 120
    assert trainer.gradient_clip_val == 0.02  # MAE-ST PRETRAIN.md (cited as such: Table 11a has none)
    callbacks = [c.class_path for c in config.trainer.callbacks]
    assert "unveil.pretrain.progress.EffectiveEpochs" in callbacks


def test_effective_epochs_are_logged_under_repeated_sampling():
    from unveil.pretrain.progress import EffectiveEpochs

    logged = []
    module = SimpleNamespace(log=lambda key, value, **kwargs: logged.append((key, value, kwargs.get("prog_bar"))))
    trainer = SimpleNamespace(datamodule=SimpleNamespace(repeated_sampling=4), num_training_batches=10,
                              current_epoch=2)
    EffectiveEpochs().on_train_batch_end(trainer, module, None, None, batch_idx=4)
    assert logged == [("train/effective_epoch", (2 + 5 / 10) * 4, True)]
    trainer.datamodule.repeated_sampling = 1  # images: the epoch is the effective epoch, nothing to add
    EffectiveEpochs().on_train_batch_end(trainer, module, None, None, batch_idx=4)
    assert len(logged) == 1


@pytest.mark.parametrize("name", MAVIL)
def test_mavil_recipe_values(name):
    """MAViL pretrains a 2-block fusion encoder; stage 2's targets are fusion blocks that exist; the audio front end
    is AudioMAE's pretraining one (no SpecAugment, the gain of --roll_mag_aug, no time shift)."""
    config = parsed(name)
    model, data = config.model.init_args.model.init_args, config.data.init_args
    assert model.fusion_depth == 2
    assert (model.audio_mask_ratio, model.decoder_embed_dim, model.decoder_depth) == (0.8, 512, 8)
    assert (data.fbank.freqm, data.fbank.timem, data.fbank.gain) == (0, 0, True)
    optim = config.model.init_args.optimizer
    assert optim.weight_decay == 1e-4 and tuple(optim.betas) == (0.9, 0.95)
    if "stage2" in name:
        layers = config.model.init_args.target_layers
        assert layers and all(-model.fusion_depth <= layer < model.fusion_depth for layer in layers)
        assert sorted(layer % model.fusion_depth for layer in layers) == list(range(model.fusion_depth))
        stage1 = parsed(name.replace("stage2", "stage1")).model.init_args.model.init_args
        assert {k: v for k, v in model.items() if k != "target_dim"} == {
            k: v for k, v in stage1.items() if k != "target_dim"}, "the student must match its teacher"


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_every_paper_hyperparameter_cites_its_source(name):
    lines = (recipes_dir() / f"{name}.yaml").read_text().splitlines()
    header = [line for line in lines if line.startswith("#")]
    assert any(re.search(r"Hiera Table 1[14]a|\[AudioMAE\]", line) for line in header[:30]), "the header names it"
    assert not any("unverified" in line for line in lines)
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


def test_source_check_can_fail():
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


# --------------------------------------------------------------------------------------- abs-win → SAM 2 trunk


@pytest.mark.parametrize("size", ["t", "bplus", *(pytest.param(s, marks=pytest.mark.slow) for s in ("s", "b", "l"))])
def test_abswin_recipe_exports_a_trunk_that_loads_into_hieradet(size, tmp_path, capsys):
    """The recipe's model, exported with ``unveil export --format sam2``, loads strictly into the windowed trunk of
    the same size (SAM 2's background and window tables: no interpolation)."""
    from unveil.models import hieradet
    from unveil.models.convert import sam2_to_official
    from unveil.pretrain.checkpoints import record_architecture

    name = f"mae_hiera_{size}_abswin_in1k"
    init = parsed(name).model.init_args.model.init_args
    # The values do not matter here, only names and shapes: skip the truncated-normal initialisation (most of the
    # time of building these models on a CPU).
    no_init = [mock.patch(f"unveil.models.{module}.trunc_normal_", lambda tensor, *a, **k: tensor)
               for module in ("hiera", "mae", "hieradet")]
    with no_init[0], no_init[1], no_init[2]:
        model = MaskedAutoencoderHiera(**init.as_dict())
        checkpoint = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "global_step": 0}
        record_architecture(checkpoint, model)
        torch.save(checkpoint, tmp_path / "last.ckpt")
        out = tmp_path / "trunk.pt"
        assert main(["export", str(tmp_path / "last.ckpt"), "--format", "sam2", "--out", str(out)]) == 0
        capsys.readouterr()
        saved = torch.load(out, weights_only=True)["model"]
        factory = {"t": "tiny", "s": "small", "b": "base", "bplus": "base_plus", "l": "large"}[size]
        trunk = getattr(hieradet, f"hieradet_{factory}")()
    state, _ = sam2_to_official(saved)
    trunk.load_state_dict(state, strict=True)
    window = saved["image_encoder.trunk.pos_embed_window"]
    background = saved["image_encoder.trunk.pos_embed"]
    assert tuple(window.shape[-2:]) == (8, 8)
    assert tuple(background.shape[-2:]) == tuple(init.global_pos_size) == ((14, 14) if "b" in size else (7, 7))


# ------------------------------------------------------------------------------------ run folder, logging, checkpoints


def checkpoint_callbacks(config) -> list:
    return [callback.init_args for callback in config.trainer.callbacks
            if callback.class_path in ("lightning.pytorch.callbacks.ModelCheckpoint",
                                       "unveil.pretrain.resume.PeriodicCheckpoint")]


@pytest.mark.parametrize("name", MAE_PAPER + MAVIL + QUICKSTARTS)
def test_recipe_keeps_the_best_and_the_last_checkpoint(name):
    """Every pretraining recipe validates, so each keeps the checkpoint of lowest val/loss (the key both pretraining
    modules log) and last.ckpt, with a periodic save of last.ckpt; the callbacks share one folder and one last.ckpt."""
    config = parsed(name)
    data = config.data.init_args
    assert config.trainer.limit_val_batches != 0 and (data.get("csv_val") or data.get("val_split"))
    checkpoints = checkpoint_callbacks(config)
    best = [c for c in checkpoints if c.monitor is not None]
    periodic = [c for c in checkpoints if c.every_n_train_steps]
    assert len(best) == 1 and len(periodic) == 1 and len(checkpoints) == 2
    # the periodic one also saves the final state when training ends (Lightning's save_last alone does not)
    assert [c.class_path for c in config.trainer.callbacks if c.get("init_args") in periodic] == [
        "unveil.pretrain.resume.PeriodicCheckpoint"]
    (best,), (periodic,) = best, periodic
    assert (best.monitor, best.mode, best.save_top_k, best.save_last) == ("val/loss", "min", 1, True)
    assert "/" not in best.filename  # a metric name with '/' in the file name would make a sub-folder
    assert periodic.save_last is True and periodic.save_top_k == 0 and periodic.monitor is None
    assert best.dirpath == periodic.dirpath
    assert not best.enable_version_counter and not periodic.enable_version_counter  # one last.ckpt, no last-v1
    if name in PAPER_RECIPES:
        assert periodic.every_n_train_steps == 1000
        assert best.dirpath == f"runs/{name}/checkpoints" == f"{config.trainer.default_root_dir}/checkpoints"
    else:  # quickstarts save at their final step anyway
        assert config.trainer.max_steps % periodic.every_n_train_steps == 0


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_paper_recipe_holds_only_the_science(name):
    """The plumbing comes from unveil.launch.run_defaults: the recipe file names no logger, callback or run folder,
    and the parsed config has them, derived from the recipe's name."""
    text = (recipes_dir() / f"{name}.yaml").read_text()
    code = "\n".join(line.partition("#")[0] for line in text.splitlines())
    for plumbing in ("logger:", "callbacks:", "dirpath", "default_root_dir", "WandbLogger", "ModelCheckpoint"):
        assert plumbing not in code, plumbing
    assert recipe_run_defaults(recipes_dir() / f"{name}.yaml") is not None
    config = parsed(name)
    logger = config.trainer.logger
    assert logger.class_path == "lightning.pytorch.loggers.WandbLogger"
    args = logger.init_args
    assert args.project == "unveil" and args.group == name and args.save_dir == f"runs/{name}"
    assert config.trainer.default_root_dir == args.save_dir
    assert args.resume == "allow" and args.id is None and args.entity is None and args.name is None
    assert args.tags == recipe_tags(name) and args.tags[0] == name.split("_")[0]
    assert [c.class_path for c in config.trainer.callbacks][0] == "unveil.datasets.SkipCounterCallback"


def test_recipe_tags():
    assert recipe_tags("mae_hiera_b_in1k") == ["mae", "hiera-b", "in1k"]
    assert recipe_tags("mae_hiera_bplus_16x224_k400") == ["mae", "hiera-bplus", "16x224", "k400"]
    assert recipe_tags("mavil_stage1_as2m") == ["mavil", "stage1", "as2m"]


def test_a_copied_recipe_runs_in_its_own_folder_and_print_config_shows_the_plumbing(tmp_path, capsys):
    copy = tmp_path / "my_run.yaml"
    copy.write_text((recipes_dir() / "mae_hiera_t_in1k.yaml").read_text())
    config = parse_recipe(str(copy))
    assert config.trainer.default_root_dir == "runs/my_run"
    assert config.trainer.logger.init_args.group == "my_run"
    assert {c.dirpath for c in checkpoint_callbacks(config)} == {"runs/my_run/checkpoints"}
    # a run folder set in the recipe moves everything with it; a command-line override wins over the defaults
    copy.write_text(copy.read_text().replace("trainer:\n", "trainer:\n  default_root_dir: /scratch/exp1\n", 1))
    config = parse_recipe(str(copy), "--trainer.logger.init_args.project=mine")
    assert config.trainer.logger.init_args.save_dir == "/scratch/exp1"
    assert config.trainer.logger.init_args.project == "mine"
    assert {c.dirpath for c in checkpoint_callbacks(config)} == {"/scratch/exp1/checkpoints"}
    config = parse_recipe(str(copy), "--trainer.default_root_dir", "/scratch/exp2")  # the command line moves it too
    assert config.trainer.logger.init_args.save_dir == config.trainer.default_root_dir == "/scratch/exp2"
    assert {c.dirpath for c in checkpoint_callbacks(config)} == {"/scratch/exp2/checkpoints"}
    # --print_config prints the plumbing resolved: the same config a run saves as config.yaml
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "mae_hiera_t_in1k", "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "dirpath: runs/mae_hiera_t_in1k/checkpoints" in printed and "group: mae_hiera_t_in1k" in printed
    assert "unveil.pretrain.resume.PeriodicCheckpoint" in printed and "base_batch_size: 4096" in printed


def test_a_recipe_with_its_own_logger_or_callbacks_gets_no_plumbing(tmp_path):
    assert recipe_run_defaults(recipes_dir() / "quickstart.yaml") is None
    for extra in ("  logger: false\n", "  callbacks: []\n"):
        recipe = tmp_path / "own.yaml"
        recipe.write_text((recipes_dir() / "mae_hiera_t_in1k.yaml").read_text().replace(
            "trainer:\n", "trainer:\n" + extra, 1))
        assert recipe_run_defaults(recipe) is None
        config = parse_recipe(str(recipe))
        assert config.trainer.default_root_dir is None
    assert recipe_run_defaults(recipes_dir() / "presets" / "fsdp.yaml") is None  # not a recipe: no model


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
